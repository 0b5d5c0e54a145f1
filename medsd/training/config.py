"""Typed training configs: dataclasses loadable from YAML and overridable on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medsd.errors import MedsdConfigError, OneLineArgumentParser, check_values

T = TypeVar("T")
SECRET_FIELDS = ("hub_token",)
"""Never written to training_config.yaml nor logged."""


@dataclasses.dataclass
class TrainConfig:
    """Settings of the shared training loop; each model family's config extends it."""

    output_dir: str = "outputs/run"
    seed: int = 0
    max_train_steps: int = 1000
    max_train_minutes: float | None = None
    """Stop after this many minutes of this launch's training loop and save the final model as at the last
    step (the LR schedule still spans max_train_steps: set it to what fits, e.g. from the logged ETA)."""
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    """'auto' (CUDA: bf16 where the GPU supports it, else fp16; CPU: bf16 where it has native bf16, i.e.
    AVX-512 BF16 or AMX, else no), 'no', 'fp16' or 'bf16'."""
    allow_tf32: bool = True
    torch_compile: bool = False
    channels_last: bool = False
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    ema_power: float = 0.75
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None
    """A checkpoint folder, or 'latest'."""
    allow_config_change: list[str] = dataclasses.field(default_factory=list)
    """Fields (comma-separated) a resume may change, e.g. learning_rate,ema_decay; without it a resume
    with another batch size, seed, LR, data, model, ... than its checkpoint's is refused."""
    validation_steps: int = 500
    num_validation_images: int = 16
    logging_steps: int = 10
    report_to: str = "tensorboard"
    """'tensorboard' (when installed), 'none', or any tracker accelerate knows."""
    dataloader_num_workers: int = 0
    cache_images_on_device: bool = True
    """Decode the dataset once into a uint8 tensor on the training device (when the task supports it)."""
    overwrite_output_dir: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = True
    hub_token: str | None = None
    """Hub token (default: HF_TOKEN or `huggingface-cli login`); never printed or saved."""
    progress_bar: bool = True
    """A tqdm bar; without it a line (step, loss, it/s, ETA) is printed at logging steps, at most every 30 s."""
    # differential privacy (DP-SGD through Opacus; docs/privacy.md)
    dp: bool = False
    """Train with DP-SGD: per-unit clipping, Gaussian noise, Poisson sampling at rate train_batch_size / N
    units; the (ε, δ) spent goes into the logs, train_summary.json and the model card."""
    dp_target_epsilon: float | None = None
    """With --dp: choose the noise multiplier that spends this ε over max_train_steps (or give
    dp_noise_multiplier)."""
    dp_noise_multiplier: float | None = None
    """With --dp: the Gaussian noise std as a multiple of dp_max_grad_norm (instead of dp_target_epsilon)."""
    dp_delta: float | None = None
    """δ of (ε, δ)-DP (default 1 / (10 N), N the number of privacy units)."""
    dp_max_grad_norm: float = 1.0
    """Per-unit gradient clipping norm (replaces max_grad_norm under --dp)."""
    dp_augmentation_multiplicity: int = 1
    """Noise draws and timesteps per unit, averaged before clipping (K)."""
    dp_unit: str = "image"
    """The privacy unit: image, or patient (ids from patient_column / patient_id_pattern)."""
    dp_max_images_per_patient: int = 4
    """With --dp_unit patient: at most this many of a sampled patient's images per step."""
    dp_accountant: str = "rdp"
    """Opacus accountant: rdp, prv or gdp."""


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


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[field.name]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(tp: Any) -> str:
    """How an error names the type a field expects ("an integer", "a list of str", ...)."""
    base, optional = _unwrap_optional(tp)
    name = _TYPE_NAMES.get(base)
    if name is None:
        origin = typing.get_origin(base)
        args = ", ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(base))
        name = f"a {getattr(origin, '__name__', None) or getattr(base, '__name__', str(base))}" + (
            f" of {args}" if args else ""
        )
    return f"{name} (or none)" if optional else name


def _convert(value: Any, tp: Any, name: str) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional and value is None:
            raise ValueError(f"{name}: expected {_type_name(tp)}, got None")
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if value not in (0, 1) or isinstance(value, float | list | dict):
                raise ValueError
            return bool(value)
        if base in (int, float, str):
            # YAML gives true/false, lists and mappings their own types: never silently cast them
            if isinstance(value, bool | list | dict) and not (base is str and isinstance(value, bool)):
                raise ValueError
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(base) or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            items = [_convert(v, item_tp, name) if item_tp is not Any else v for v in value]
            return items if origin is list else tuple(items)
        if origin is dict or base is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {_type_name(tp)}, got {value!r}") from None
    return value


def settable_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields a user sets (flags, YAML keys); ``init=False`` fields are derived from them."""
    return [f for f in dataclasses.fields(cls) if f.init]


def unknown_keys_error(source: str, unknown: list[str], known: Any) -> str:
    """``SOURCE: unknown field 'x' (did you mean 'y'?)``, or the known fields when nothing is close."""
    import difflib

    known = sorted(known)
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    tail = "" if all("did you mean" in p for p in parts) else f"; known fields: {known}"
    return f"{source}: unknown field{'s' if len(parts) > 1 else ''} {', '.join(parts)}{tail}"


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config", flags: Any = ()) -> T:
    """Build ``cls`` from a mapping, converting types and rejecting unknown keys with a clear error.

    An error names ``SOURCE: key`` (e.g. the YAML file), or ``--key`` for the keys in ``flags``.
    """
    fields = {f.name: f for f in settable_fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise MedsdConfigError(unknown_keys_error(source, unknown, fields))
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = _convert(v, _field_type(cls, fields[k]), k)
        except ValueError as e:
            raise MedsdConfigError(f"--{e}" if k in flags else f"{source}: {e}") from None
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; every problem is one line naming the file (and the line
    and column of a syntax error)."""
    path = Path(path)
    if path.is_dir():
        raise MedsdConfigError(f"--config {path} is a folder; expected a YAML file of field: value lines")
    if not path.is_file():
        raise MedsdConfigError(f"--config {path} does not exist; expected a YAML file of field: value lines")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MedsdConfigError(f"{path}: not a text file; expected YAML field: value lines") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MedsdConfigError(
            f"{path}: YAML syntax error{where} ({problem}); expected field: value lines"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsdConfigError(
            f"{path}: expected a mapping of field: value at the top level, got a {type(data).__name__}"
        )
    return data


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the record of what a run used)."""
    with open(path, "w") as f:
        names = {f.name for f in settable_fields(config)} - set(SECRET_FIELDS)
        data = {k: v for k, v in dataclasses.asdict(config).items() if k in names}
        yaml.safe_dump(data, f, sort_keys=False)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one ``--<field>`` flag per dataclass field (help from field docs)."""
    parser.add_argument(
        "--config", default=None, help="YAML file with field: value pairs (flags override it)"
    )
    docs = _field_docs(cls)
    for f in settable_fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        tp, _ = _unwrap_optional(_field_type(cls, f))
        help_text = docs.get(f.name, "")
        help_text = f"{help_text} (default: {default})".strip()
        if tp is bool:
            parser.add_argument(
                f"--{f.name}",
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{f.name}", default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text
            )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the YAML given by ``--config``, then explicit flags."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        data.update(load_yaml(args.config))
    names = {f.name for f in settable_fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    data.update(flags)
    return config_from_dict(cls, data, source=getattr(args, "config", None) or "command line", flags=flags)


def parse_config(
    cls: type[T], argv: list[str] | None = None, description: str | None = None, prog: str | None = None
) -> T:
    """Parse ``--config FILE`` and per-field flags into ``cls``."""
    parser = OneLineArgumentParser(prog=prog, description=description or cls.__doc__)
    add_config_arguments(parser, cls)
    config = config_from_args(cls, parser.parse_args(argv))
    if isinstance(config, TrainConfig):
        check_ranges(config)
    return config


def _field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal after a field) read from the source, for ``--help``."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = str(nxt.value.value).strip()
    return docs


_AT_LEAST = {
    **dict.fromkeys(
        (
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "dp_augmentation_multiplicity",
            "dp_max_images_per_patient",
        ),
        1,
    ),
    **dict.fromkeys(
        (
            "lr_warmup_steps",
            "checkpointing_steps",
            "validation_steps",
            "num_validation_images",
            "dataloader_num_workers",
            "max_grad_norm",
            "adam_weight_decay",
            "dp_noise_multiplier",
        ),
        0,
    ),
}
_POSITIVE = ("learning_rate", "adam_epsilon", "max_train_minutes", "dp_target_epsilon", "dp_max_grad_norm")
_UNIT_INTERVAL = ("adam_beta1", "adam_beta2", "ema_decay")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


def _choices() -> dict[str, tuple[str, ...]]:
    """The string flags with a fixed set of values, checked before anything is loaded (a wrong one used to
    surface as a traceback from the scheduler, or after the data was decoded, or not at all)."""
    from diffusers.optimization import SchedulerType

    from medsd.data.build import INTENSITY_CHOICES, SPLIT_CHOICES
    from medsd.models import PRESETS

    from .dp import DP_ACCOUNTANTS, DP_UNITS
    from .task import PREDICTION_TYPES

    return {
        "lr_scheduler": tuple(s.value for s in SchedulerType),
        "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"),
        "prediction_type": PREDICTION_TYPES,
        "crop": ("center", "random"),
        "intensity": INTENSITY_CHOICES,
        "split": SPLIT_CHOICES,
        "model": tuple(sorted(PRESETS)),
        "dp_unit": DP_UNITS,
        "dp_accountant": DP_ACCOUNTANTS,
    }


def check_ranges(config: TrainConfig) -> None:
    """Refuse, in one line naming the flag, a value the loop cannot use (e.g. ``--max_train_steps 0``
    would save the random initial weights as a finished model; ``--gradient_accumulation_steps 0`` would
    never run a backward pass)."""

    def bad(name: str, expected: str) -> MedsdConfigError:
        return MedsdConfigError(f"--{name}: expected {expected}, got {getattr(config, name)!r}")

    check_values(
        config,
        at_least=_AT_LEAST,
        positive=_POSITIVE,
        unit_interval=_UNIT_INTERVAL,
        one_of={k: v for k, v in _choices().items() if hasattr(config, k)},
    )
    if config.checkpoints_total_limit is not None and config.checkpoints_total_limit < 1:
        raise bad("checkpoints_total_limit", "a number >= 1 (or none for no limit)")
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise bad("mixed_precision", " / ".join(MIXED_PRECISIONS))
    from .dp import check_dp_config

    check_dp_config(config)
