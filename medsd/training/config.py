"""Typed training configs: dataclasses loadable from YAML and overridable on the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medsd.errors import OneLineArgumentParser
from medsd.flags import (
    AliasedInit,
    add_dataclass_arguments,
    check_field_values,
    config_from_args,
    config_from_dict,
    flag,
    load_yaml,
    public_values,
    settable_fields,
    unknown_keys_error,
)

T = TypeVar("T")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
DP_UNITS = ("image", "patient")
DP_ACCOUNTANTS = ("rdp", "prv", "gdp")


def scheduler_names() -> tuple[str, ...]:
    """diffusers' learning-rate schedules (``--lr_scheduler``)."""
    from diffusers.optimization import SchedulerType

    return tuple(s.value for s in SchedulerType)


@dataclasses.dataclass
class TrainConfig(metaclass=AliasedInit):
    """Settings of the shared training loop; each model family's config extends it."""

    output_dir: str = flag("outputs/run", resume="free")
    seed: int = 0
    max_train_steps: int = flag(1000, min=1, resume="free")
    max_train_minutes: float | None = flag(
        None,
        positive=True,
        resume="free",
        help="Stop after this many minutes of this launch's training loop and save the final model as at the "
        "last step (the LR schedule still spans max_train_steps: set it to what fits, e.g. from the logged ETA).",
    )
    train_batch_size: int = flag(16, min=1)
    gradient_accumulation_steps: int = flag(1, min=1)
    learning_rate: float = flag(1e-4, positive=True)
    scale_lr: bool = False
    lr_scheduler: str = flag("constant", choices=scheduler_names)
    lr_warmup_steps: int = flag(0, min=0)
    adam_beta1: float = flag(0.9, min=0, max=1)
    adam_beta2: float = flag(0.999, min=0, max=1)
    adam_weight_decay: float = flag(1e-2, min=0)
    adam_epsilon: float = flag(1e-8, positive=True)
    use_8bit_adam: bool = False
    max_grad_norm: float = flag(1.0, min=0)
    mixed_precision: str = flag(
        "auto",
        choices=MIXED_PRECISIONS,
        help="'auto' (CUDA: bf16 where the GPU supports it, else fp16; CPU: bf16 where it has native bf16, i.e. "
        "AVX-512 BF16 or AMX, else no), 'no', 'fp16' or 'bf16'.",
    )
    allow_tf32: bool = True
    torch_compile: bool = flag(False, resume="free")
    channels_last: bool = flag(False, resume="free")
    gradient_checkpointing: bool = flag(False, resume="free")
    use_ema: bool = False
    ema_decay: float = flag(0.9999, min=0, max=1)
    ema_power: float = 0.75
    checkpointing_steps: int = flag(500, min=0, resume="free")
    checkpoints_total_limit: int | None = flag(3, min=1, resume="free")
    resume_from_checkpoint: str | None = flag(None, resume="free", help="A checkpoint folder, or 'latest'.")
    allow_config_change: list[str] = flag(
        [],
        resume="free",
        help="Fields (comma-separated) a resume may change, e.g. learning_rate,ema_decay; without it a resume "
        "with another batch size, seed, LR, data, model, ... than its checkpoint's is refused.",
    )
    validation_steps: int = flag(500, min=0, resume="free")
    num_validation_images: int = flag(16, min=0, resume="free")
    logging_steps: int = flag(10, min=1, resume="free")
    report_to: str = flag(
        "tensorboard",
        resume="free",
        aliases=("logger",),
        help="'tensorboard' (when installed), 'none', or any tracker accelerate knows.",
    )
    dataloader_num_workers: int = flag(0, min=0, resume="free")
    cache_images_on_device: bool = flag(
        True,
        resume="free",
        help="Decode the dataset once into a uint8 tensor on the training device (when the task supports it).",
    )
    overwrite_output_dir: bool = flag(False, resume="free")
    push_to_hub: bool = flag(False, resume="free")
    hub_model_id: str | None = flag(None, resume="free")
    hub_private: bool = flag(True, resume="free")
    hub_token: str | None = flag(
        None,
        resume="free",
        secret=True,
        help="Hub token (default: HF_TOKEN or `huggingface-cli login`); never printed or saved.",
    )
    progress_bar: bool = flag(
        True,
        resume="free",
        help="A tqdm bar; without it a line (step, loss, it/s, ETA) is printed at logging steps, at most every "
        "30 s.",
    )
    # differential privacy (DP-SGD through Opacus; medsd.training.dp, docs/privacy.md)
    dp: bool = flag(
        False,
        help="Train with DP-SGD: per-unit clipping, Gaussian noise, Poisson sampling at rate train_batch_size / N "
        "units; the (ε, δ) spent goes into the logs, train_summary.json and the model card.",
    )
    dp_target_epsilon: float | None = flag(
        None,
        positive=True,
        help="With --dp: choose the noise multiplier that spends this ε over max_train_steps (or give "
        "dp_noise_multiplier).",
    )
    dp_noise_multiplier: float | None = flag(
        None,
        min=0,
        help="With --dp: the Gaussian noise std as a multiple of dp_max_grad_norm (instead of ε).",
    )
    dp_delta: float | None = flag(
        None, help="δ of (ε, δ)-DP, in (0, 1) (default 1 / (10 N), N the number of privacy units)."
    )
    dp_max_grad_norm: float = flag(
        1.0, positive=True, help="Per-unit gradient clipping norm (replaces max_grad_norm under --dp)."
    )
    dp_augmentation_multiplicity: int = flag(
        1, min=1, help="Noise draws and timesteps per unit, averaged before clipping (K)."
    )
    dp_unit: str = flag(
        "image",
        choices=DP_UNITS,
        help="The privacy unit: image, or patient (ids from patient_column / patient_id_pattern).",
    )
    dp_max_images_per_patient: int = flag(
        4, min=1, help="With --dp_unit patient: at most this many of a sampled patient's images per step."
    )
    dp_accountant: str = flag("rdp", choices=DP_ACCOUNTANTS, help="Opacus accountant: rdp, prv or gdp.")


def steps_for_epochs(epochs: int, n_images: int, config: TrainConfig) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_images`` (all processes, gradient accumulation), as
    diffusers' example scripts count them: whole steps per epoch, times the epochs."""
    import math
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_step = config.train_batch_size * world * config.gradient_accumulation_steps
    return max(1, math.ceil(n_images / per_step)) * epochs


def with_epochs(config: T, n_images: int, epochs: int | None, validation_epochs: int | None = None) -> T:
    """``config`` with ``max_train_steps`` (and ``validation_steps``) counted from epochs over ``n_images``:
    a copy (``dataclasses.replace``); the config given is never changed."""
    changes: dict[str, int] = {}
    if epochs:
        changes["max_train_steps"] = steps_for_epochs(epochs, n_images, config)  # type: ignore[arg-type]
    if validation_epochs:
        changes["validation_steps"] = steps_for_epochs(validation_epochs, n_images, config)  # type: ignore[arg-type]
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[type-var]


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the record of what a run used; secrets left out)."""
    with open(path, "w") as f:
        yaml.safe_dump(public_values(config), f, sort_keys=False)


def parse_config(
    cls: type[T],
    argv: list[str] | None = None,
    description: str | None = None,
    prog: str | None = None,
    check: bool = True,
) -> T:
    """Parse ``--config FILE`` and per-field flags into ``cls`` (``check``: also refuse values out of range,
    unless whoever runs the config checks it, as :meth:`~medsd.training.core.Trainer.from_config` does)."""
    parser = OneLineArgumentParser(prog=prog, description=description or cls.__doc__)
    add_dataclass_arguments(parser, cls)
    config = config_from_args(cls, parser.parse_args(argv))
    if check and isinstance(config, TrainConfig):
        check_ranges(config)
    return config


def check_ranges(config: TrainConfig) -> None:
    """Refuse, in one line naming the flag, a value the loop cannot use (e.g. ``--max_train_steps 0``
    would save the random initial weights as a finished model; ``--gradient_accumulation_steps 0`` would
    never run a backward pass): each field's range and choices, from its :func:`~medsd.flags.flag`."""
    check_field_values(config)
    from .dp import check_dp_config

    check_dp_config(config)


__all__ = [
    "DP_ACCOUNTANTS",
    "DP_UNITS",
    "MIXED_PRECISIONS",
    "TrainConfig",
    "check_ranges",
    "config_from_args",
    "config_from_dict",
    "load_yaml",
    "parse_config",
    "save_config",
    "settable_fields",
    "steps_for_epochs",
    "unknown_keys_error",
    "with_epochs",
]
