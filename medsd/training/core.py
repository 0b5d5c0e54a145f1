"""The one training loop shared by every medsd model family.

A :class:`TrainingTask` says what is trained (modules, data, loss, validation, how to save); :func:`train`
does the rest with accelerate: mixed precision, gradient accumulation and clipping, AdamW, diffusers'
LR schedulers and ``EMAModel``, a deterministic data order, atomic checkpoints with exact resume,
non-finite loss detection without a host sync per step, progress, validation grids and the final save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, save_config

logger = logging.getLogger("medsd.training")

CHECKPOINT_PREFIX = "checkpoint-"
FINISHED_MARKERS = ("model_index.json", "pytorch_lora_weights.safetensors", "train_summary.json")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class TrainingTask:
    """One model family's part of training. Subclasses override the methods marked below."""

    ema_module: str | None = None
    """Name (in :meth:`modules`) of the module tracked with EMA when ``use_ema`` is set."""

    def modules(self) -> dict[str, nn.Module]:  # override
        """Modules with trainable parameters; they are prepared by accelerate and checkpointed."""
        raise NotImplementedError

    def setup(self, accelerator: Any) -> None:
        """Place frozen parts (VAE, text encoder, caches) on ``accelerator.device``. Optional."""

    def trainable_parameters(self, modules: dict[str, nn.Module]) -> list[nn.Parameter]:
        return [p for m in modules.values() for p in m.parameters() if p.requires_grad]

    def train_dataset(self) -> Any:  # override
        """A map-style dataset, or an object with ``__len__`` and ``get_batch(indices, device)``."""
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(items)

    def loss(self, batch: dict[str, Any], modules: dict[str, nn.Module], accelerator: Any) -> torch.Tensor:
        """Scalar loss of one micro-batch (override)."""
        raise NotImplementedError

    def validate(self, modules: dict[str, nn.Module], step: int, accelerator: Any) -> list[Any]:
        """Images (PIL) rendered from the unwrapped (EMA) modules. Must not use the global RNG."""
        return []

    def save(self, output_dir: Path, modules: dict[str, nn.Module], accelerator: Any) -> None:  # override
        """Write the final model (``save_pretrained``) from the unwrapped (EMA) modules."""
        raise NotImplementedError


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    loss_history: list[tuple[int, float]]
    seconds: float
    log_times: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(step, seconds since the loop started) at every logging step: step times for benchmarks."""


def default_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def resolve_mixed_precision(requested: str) -> str | None:
    """'auto' picks bf16 on GPUs that support it, fp16 on other CUDA GPUs, bf16 on CPUs with native
    bf16 (``precision.cpu_has_native_bf16``) and no on other CPUs.

    Returns None when accelerate's own configuration (``accelerate launch --mixed_precision``) should
    decide, so a precision given to accelerate is honoured.
    """
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    from .precision import auto_mixed_precision

    return auto_mixed_precision()


def weight_dtype_for(accelerator: Any) -> torch.dtype:
    """dtype for frozen weights under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        str(accelerator.mixed_precision), torch.float32
    )


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def diffusion_target(
    scheduler: Any, prediction_type: str, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network learns to predict for ``prediction_type`` (as diffusers' schedulers read it)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def check_output_dir(config: TrainConfig) -> Path:
    """Refuse to write over a finished model unless asked to."""
    out = Path(config.output_dir)
    if out.exists() and not config.overwrite_output_dir and not config.resume_from_checkpoint:
        finished = [m for m in FINISHED_MARKERS if (out / m).exists()]
        if finished:
            raise FileExistsError(
                f"output_dir {out} already holds a finished model ({finished[0]}); pass "
                "--overwrite_output_dir to replace it or --resume_from_checkpoint latest to continue"
            )
    return out


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def find_checkpoint(output_dir: str | Path, which: str) -> Path | None:
    if which == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / which
    if not (path / "medsd_checkpoint.json").is_file():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a medsd checkpoint folder")
    return path


class BatchIndexStream:
    """Deterministic, resumable batch order: epoch ``e`` is a permutation seeded by ``seed + e``.

    Micro-batch ``k`` is always the same indices, so a resumed run sees exactly the data it would
    have seen; each process takes its own slice of every global batch.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        global_batch = batch_size * world
        if length < global_batch:
            raise ValueError(
                f"dataset has {length} images, fewer than one global batch ({batch_size} x {world} processes)"
            )
        self.length, self.batch_size, self.seed, self.rank, self.world = length, batch_size, seed, rank, world
        self.batches_per_epoch = length // global_batch

    def indices(self, micro_step: int) -> list[int]:
        epoch, within = divmod(micro_step, self.batches_per_epoch)
        perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = (within * self.world + self.rank) * self.batch_size
        return perm[start : start + self.batch_size].tolist()

    def iterate(self, start_micro_step: int) -> Iterator[list[int]]:
        k = start_micro_step
        while True:
            yield self.indices(k)
            k += 1


def _save_checkpoint(accelerator: Any, output_dir: Path, step: int, meta: dict, limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` atomically: save into a temporary folder, then rename."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / "medsd_checkpoint.json", "w") as f:
            json.dump(meta, f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if limit is not None and limit > 0:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kwargs = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def _save_loss_curve(history: list[tuple[int, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, losses, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_image_grid(images: list[Any], path: Path, cols: int | None = None) -> Path:
    """Save PIL images as one grid PNG (diffusers' ``make_image_grid``)."""
    from diffusers.utils import make_image_grid

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    if len(images) < rows * cols:
        from PIL import Image

        blank = Image.new(images[0].mode, images[0].size)
        images = list(images) + [blank] * (rows * cols - len(images))
    grid = make_image_grid(images, rows=rows, cols=cols)
    if all(im.mode == "L" for im in images):
        grid = grid.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def train(task: TrainingTask, config: TrainConfig) -> TrainResult:
    """Run (or resume) training of ``task`` under ``config`` and save the final model."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    output_dir = check_output_dir(config)
    log_with = None
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            logger.warning(
                "tensorboard is not installed; logging to the console only (pip install tensorboard)"
            )
    elif config.report_to not in ("none", "", None):
        log_with = config.report_to
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "training_config.yaml")
    set_seed(config.seed)
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    modules = task.modules()
    for m in modules.values():
        m.to(accelerator.device)
        if config.channels_last:
            m.to(memory_format=torch.channels_last)
    task.setup(accelerator)
    params = task.trainable_parameters(modules)
    if not params:
        raise ValueError("the task has no trainable parameters")
    if config.scale_lr:
        config.learning_rate *= (
            config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
        )
    optimizer = _make_optimizer(config, params)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )

    ema = None
    if config.use_ema:
        if task.ema_module is None:
            raise ValueError("use_ema is set but this task names no module to average")
        target = modules[task.ema_module]
        ema = EMAModel(
            target.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=True,
            power=config.ema_power,
            model_cls=type(target),
            model_config=getattr(target, "config", None),
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    names = list(modules)
    prepared = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
    modules = dict(zip(names, prepared[: len(names)]))
    optimizer, lr_scheduler = prepared[len(names) :]
    if config.torch_compile:
        modules = {k: torch.compile(m) for k, m in modules.items()}

    # Resume.
    global_step, history = 0, []
    if config.resume_from_checkpoint:
        ckpt = find_checkpoint(output_dir, config.resume_from_checkpoint)
        if ckpt is None:
            accelerator.print(f"No checkpoint in {output_dir}; starting a new run.")
        else:
            accelerator.load_state(str(ckpt))
            with open(ckpt / "medsd_checkpoint.json") as f:
                meta = json.load(f)
            global_step = int(meta["step"])
            history = [tuple(h) for h in meta.get("loss_history", [])]
            accelerator.print(f"Resumed from {ckpt} at step {global_step}.")
    last_good_checkpoint = (list_checkpoints(output_dir) or [None])[-1]

    # Data: a deterministic stream of index batches, sliced on the device or fed through a DataLoader.
    dataset = task.train_dataset()
    start_micro = global_step * config.gradient_accumulation_steps
    if isinstance(dataset, torch.utils.data.IterableDataset):
        batches = _stream_batches(dataset, task, config, accelerator, start_micro)
    else:
        stream = BatchIndexStream(
            len(dataset),
            config.train_batch_size,
            config.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        if hasattr(dataset, "get_batch") and config.cache_images_on_device:
            if hasattr(dataset, "to"):
                dataset = dataset.to(accelerator.device)
            batches = (dataset.get_batch(idx, accelerator.device) for idx in stream.iterate(start_micro))
        else:
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=stream.iterate(start_micro),  # type: ignore[arg-type]
                collate_fn=task.collate,
                num_workers=config.dataloader_num_workers,
                pin_memory=accelerator.device.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed),
            )
            batches = (_to_device(b, accelerator.device) for b in loader)

    if accelerator.is_main_process and log_with:
        accelerator.init_trackers(
            "medsd", config={k: _loggable(v) for k, v in dataclasses.asdict(config).items()}
        )

    def run_validation(step: int) -> None:
        if not accelerator.is_main_process:
            return
        unwrapped = {k: accelerator.unwrap_model(m) for k, m in modules.items()}
        if ema is not None:
            ema.store(unwrapped[task.ema_module].parameters())
            ema.copy_to(unwrapped[task.ema_module].parameters())
        try:
            images = task.validate(unwrapped, step, accelerator)
        finally:
            if ema is not None:
                ema.restore(unwrapped[task.ema_module].parameters())
        if images:
            grid_path = save_image_grid(images, output_dir / "samples" / f"step-{step:07d}.png")
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    import numpy as np
                    from PIL import Image

                    arr = np.asarray(Image.open(grid_path).convert("RGB"))
                    tracker.writer.add_image("validation", arr, step, dataformats="HWC")

    def meta(step: int) -> dict:
        return {"step": step, "loss_history": history}

    progress = tqdm(
        total=config.max_train_steps,
        initial=global_step,
        desc="training",
        disable=not (accelerator.is_local_main_process and config.progress_bar),
        dynamic_ncols=True,
    )
    device = accelerator.device
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    log_times: list[tuple[int, float]] = []
    t_start = time.perf_counter()
    t_window = t_start

    def check_finite() -> None:
        bad = int(first_bad_step.item())
        if bad >= 0:
            where = (
                f"the last good checkpoint is {last_good_checkpoint}"
                if last_good_checkpoint
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"non-finite training loss at step {bad}; training stopped, {where}. "
                "Try a lower --learning_rate, --mixed_precision bf16 or no, or check the data."
            )

    try:
        while global_step < config.max_train_steps:
            for m in modules.values():
                m.train()
            for _ in range(config.gradient_accumulation_steps):
                batch = next(batches)
                with accelerator.accumulate(*modules.values()):
                    loss = task.loss(batch, modules, accelerator)
                    detached = loss.detach().float()
                    finite = torch.isfinite(detached)
                    first_bad_step = torch.where(
                        (~finite) & (first_bad_step < 0),
                        torch.full_like(first_bad_step, global_step + 1),
                        first_bad_step,
                    )
                    loss_sum += torch.where(finite, detached, torch.zeros_like(detached))
                    loss_count += 1
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(modules[task.ema_module]).parameters())
            progress.update(1)

            if global_step % config.logging_steps == 0 or global_step == config.max_train_steps:
                check_finite()
                avg = (loss_sum / max(loss_count, 1)).item()
                loss_sum.zero_()
                loss_count = 0
                now = time.perf_counter()
                steps_per_s = config.logging_steps / max(now - t_window, 1e-9)
                t_window = now
                lr = lr_scheduler.get_last_lr()[0]
                history.append((global_step, avg))
                log_times.append((global_step, now - t_start))
                progress.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}", it_s=f"{steps_per_s:.2f}")
                accelerator.log(
                    {"train_loss": avg, "lr": lr, "steps_per_second": steps_per_s}, step=global_step
                )

            if config.checkpointing_steps > 0 and global_step % config.checkpointing_steps == 0:
                check_finite()
                last_good_checkpoint = _save_checkpoint(
                    accelerator, output_dir, global_step, meta(global_step), config.checkpoints_total_limit
                )
            if config.validation_steps > 0 and global_step % config.validation_steps == 0:
                run_validation(global_step)
        check_finite()
    finally:
        progress.close()

    accelerator.wait_for_everyone()
    if config.validation_steps <= 0 or global_step % config.validation_steps != 0:
        run_validation(global_step)
    seconds = time.perf_counter() - t_start
    if accelerator.is_main_process:
        unwrapped = {k: accelerator.unwrap_model(m) for k, m in modules.items()}
        if ema is not None:
            ema.copy_to(unwrapped[task.ema_module].parameters())
        task.save(output_dir, unwrapped, accelerator)
        save_config(config, output_dir / "training_config.yaml")
        _save_loss_curve(history, output_dir / "loss_curve.png")
        with open(output_dir / "train_summary.json", "w") as f:
            json.dump(
                {"steps": global_step, "seconds": seconds, "loss_history": history, "log_times": log_times},
                f,
                indent=1,
            )
        if config.push_to_hub:
            push_folder_to_hub(output_dir, config.hub_model_id, private=config.hub_private)
    skipped = getattr(dataset, "skipped", None)
    if skipped and accelerator.is_main_process:
        accelerator.print(f"{len(skipped)} image(s) were skipped as unreadable (--skip_bad_images):")
        for path, reason in skipped:
            accelerator.print(f"  {path}: {reason}")
    accelerator.end_training()
    return TrainResult(
        output_dir=output_dir,
        global_step=global_step,
        loss_history=history,
        seconds=seconds,
        log_times=log_times,
    )


def push_folder_to_hub(folder: Path, repo_id: str | None, private: bool = True) -> str:
    """Upload a finished output folder (model card included), skipping checkpoints and logs."""
    from huggingface_hub import create_repo, upload_folder

    if not repo_id:
        raise ValueError("push_to_hub needs --hub_model_id (e.g. your-name/medsd-cxr)")
    create_repo(repo_id, private=private, exist_ok=True)
    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", ".tmp-*", "logs/*"],
        commit_message="Upload medsd model",
    )
    return repo_id


def _stream_batches(
    dataset: Any, task: TrainingTask, config: TrainConfig, accelerator: Any, start_micro: int
):
    """Batches from a streaming dataset (corpora that do not fit on disk or in memory).

    Epochs repeat the stream; process ``r`` of ``w`` takes every ``w``-th batch. On resume the batches
    already seen are read and skipped, so the data order continues where it stopped.
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        collate_fn=task.collate,
        num_workers=config.dataloader_num_workers,
        drop_last=True,
        pin_memory=accelerator.device.type == "cuda",
    )
    k, seen = 0, 0
    while True:
        produced = False
        for batch in loader:
            produced = True
            mine = k % accelerator.num_processes == accelerator.process_index
            k += 1
            if not mine:
                continue
            seen += 1
            if seen <= start_micro:
                continue
            yield _to_device(batch, accelerator.device)
        if not produced:
            raise ValueError(
                "the streaming dataset yielded no full batch; lower train_batch_size or check the data"
            )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _loggable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) else str(v)
