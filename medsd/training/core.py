"""The one training loop shared by every medsd model family.

A :class:`~medsd.training.task.TrainingTask` says what is trained (modules, data, loss, validation, how to
save); :class:`Trainer` does the rest with accelerate, in named steps: ``prepare`` (accelerator, optimizer,
LR schedule, EMA), ``resume``, ``batches``, ``step`` (gradient accumulation and clipping), ``log`` (loss
gathered across processes), ``checkpoint`` (atomic, exact resume), ``validate`` (grids) and ``finish`` (the
final save, summary and Hub push). Non-finite losses are detected without a host sync per step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsd.errors import MedsdConfigError, MedsdError
from medsd.metrics.figures import image_grid, save_loss_curve
from medsd.run_folder import CHECKPOINT_PREFIX, FINISHED_MARKERS, RUN_FINISHED, RunFolder

from .batches import BatchIndexStream, batch_stream, first_batch_indices
from .checkpoints import (
    check_output_dir,
    final_stage,
    find_checkpoint,
    list_checkpoints,
    publish_final,
    read_checkpoint_meta,
    save_checkpoint,
)
from .config import TrainConfig, save_config
from .dp import SUMMARY_KEY, start_dp
from .precision import resolve_mixed_precision
from .run_guard import (
    OutputDirLock,
    apply_config_to_state,
    checkpoint_to_resume,
    config_record,
    lock_output_dir,
)
from .signals import StopSignals, TrainingInterrupted
from .task import PREDICTION_TYPES, BatchSource, TrainingTask, default_collate, diffusion_target

logger = logging.getLogger("medsd.training")


class NonFiniteLossError(MedsdError, RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    loss_history: list[tuple[int, float]]
    seconds: float
    log_times: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(step, seconds since the loop started) at every logging step: step times for benchmarks."""


def effective_learning_rate(config: TrainConfig, num_processes: int) -> float:
    """The learning rate used: ``learning_rate``, times the global batch under ``scale_lr`` (the config itself
    is never changed, so a saved config trains the same way again)."""
    if not config.scale_lr:
        return config.learning_rate
    return config.learning_rate * config.gradient_accumulation_steps * config.train_batch_size * num_processes


def _make_optimizer(config: TrainConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    kwargs = dict(
        lr=lr,
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
    # torch's fused AdamW kernel exists for CPU and CUDA: about 8x faster than the per-parameter loop on CPU
    fused = bool(params) and {p.device.type for p in params} in ({"cpu"}, {"cuda"})
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def _tracker(config: TrainConfig) -> str | None:
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            return "tensorboard"
        except ImportError:
            logger.warning(
                "tensorboard is not installed; logging to the console only (pip install tensorboard)"
            )
            return None
    return None if config.report_to in ("none", "", None) else config.report_to


class Trainer:
    """Train (or resume) ``task`` under ``config``: ``Trainer(task, config).run()``, or
    ``Trainer.from_config(TaskClass, config).run()`` to have the task built after the checks."""

    def __init__(self, task: TrainingTask, config: TrainConfig, lock: OutputDirLock | None = None):
        self.task, self.config = task, config
        # taken before anything looks at (or retires) the folder; from_config hands over the one it took
        self.lock = lock if lock is not None else lock_output_dir(config.output_dir)
        self.config_changes: list[str] = []
        try:
            self.output_dir = check_output_dir(
                config.output_dir, config.overwrite_output_dir, bool(config.resume_from_checkpoint)
            )
            # checked before anything is written: a refused resume leaves the folder as it was
            self.resume_from, self.config_changes = checkpoint_to_resume(self.output_dir, config)
        except BaseException:
            self.lock.release()
            raise
        self.global_step = 0
        self.history: list[tuple[int, float]] = []
        self.log_times: list[tuple[int, float]] = []
        self.ema: Any = None
        self.last_good_checkpoint: Path | None = None
        self.dp: Any = None

    # -- prepare -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Accelerator, modules on the device, optimizer, LR schedule and EMA, all through accelerate."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed
        from diffusers.optimization import get_scheduler

        from .distributed import accelerator_cpu_flag, describe

        config, out = self.config, self.output_dir
        self.log_with = _tracker(config)
        self.accelerator = accelerator = Accelerator(
            cpu=accelerator_cpu_flag(),
            mixed_precision=resolve_mixed_precision("no" if config.dp else config.mixed_precision),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=self.log_with,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(RunFolder(out).logs)),
        )
        accelerator.print(describe(accelerator))
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
        set_seed(config.seed)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        modules = self.task.modules()
        for m in modules.values():
            m.to(accelerator.device)
            if config.channels_last:
                m.to(memory_format=torch.channels_last)
        self.task.setup(accelerator)
        self.params = self.task.trainable_parameters(modules)
        if not self.params:
            raise ValueError("the task has no trainable parameters")
        self.learning_rate = effective_learning_rate(config, accelerator.num_processes)
        optimizer = _make_optimizer(config, self.params, self.learning_rate)
        self.dp = start_dp(config, self.task, accelerator)
        if self.dp is not None:  # Opacus' per-sample hooks and its clipping, noising optimizer
            optimizer = self.dp.wrap(modules, optimizer)
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=config.max_train_steps * accelerator.num_processes,
        )
        self._prepare_ema(modules)
        names = list(modules)
        prepared = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
        self.modules = dict(zip(names, prepared[: len(names)]))
        self.optimizer, self.lr_scheduler = prepared[len(names) :]
        if config.torch_compile:
            self.modules = {k: torch.compile(m) for k, m in self.modules.items()}

    def _prepare_ema(self, modules: dict[str, nn.Module]) -> None:
        from diffusers.training_utils import EMAModel

        if not self.config.use_ema:
            return
        if self.task.ema_module is None:
            raise ValueError("use_ema is set but this task names no module to average")
        target = modules[self.task.ema_module]
        self.ema = EMAModel(
            target.parameters(),
            decay=self.config.ema_decay,
            use_ema_warmup=True,
            power=self.config.ema_power,
            model_cls=type(target),
            model_config=getattr(target, "config", None),
            foreach=True,  # one multi-tensor update instead of a loop over parameters
        )
        self.ema.to(self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.ema)

    # -- resume and batches ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the checkpoint named by ``resume_from_checkpoint`` (optimizer, RNG, EMA, step, loss history),
        then put in the hyper-parameters of the current config (``--allow_config_change``)."""
        ckpt = self.resume_from
        if self.config.resume_from_checkpoint and ckpt is None:
            self.accelerator.print(f"No checkpoint in {self.output_dir}; starting a new run.")
        elif ckpt is not None:
            try:
                self.accelerator.load_state(str(ckpt))
            except Exception as e:
                if not self.config_changes:
                    raise
                raise MedsdConfigError(
                    f"could not load {ckpt} with the changed settings ({'; '.join(self.config_changes)}): "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                ) from e
            apply_config_to_state(
                self.optimizer, self.lr_scheduler, self.ema, self.config, self.learning_rate
            )
            self.global_step, self.history = read_checkpoint_meta(ckpt)
            if self.dp is not None:
                self.dp.load_state(ckpt)
            self.accelerator.print(f"Resumed from {ckpt} at step {self.global_step}.")
        self.last_good_checkpoint = find_checkpoint(self.output_dir, "latest")
        if self.accelerator.is_main_process:  # the record of this run, once its checkpoint has loaded
            save_config(self.config, self.output_dir / "training_config.yaml")

    def batches(self) -> None:
        """The deterministic micro-batch stream, continuing where a resumed run stopped."""
        self.dataset = self.task.train_dataset()
        self.start_micro = self.global_step * self.config.gradient_accumulation_steps
        stream = self.dp.batches if self.dp is not None else batch_stream
        self.batch_iter = stream(self.dataset, self.task, self.config, self.accelerator, self.start_micro)

    # -- one optimisation step -----------------------------------------------------------------------
    def step(self) -> None:
        """One optimizer step: ``gradient_accumulation_steps`` micro-batches, clipping, EMA."""
        acc, config = self.accelerator, self.config
        for m in self.modules.values():
            m.train()
        for _ in range(0 if self.dp is not None else config.gradient_accumulation_steps):
            batch = next(self.batch_iter)
            with acc.accumulate(*self.modules.values()):
                loss = self.task.loss(batch, self.modules, acc)
                self._record(loss.detach().float())
                acc.backward(loss)
                if acc.sync_gradients and config.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, config.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        if self.dp is not None:
            self.dp.step(self)
        self.global_step += 1
        if self.ema is not None:
            self.ema.step(acc.unwrap_model(self.modules[self.task.ema_module]).parameters())
        self.progress.update(1)

    def _record(self, loss: torch.Tensor) -> None:
        """Accumulate a micro-batch loss on the device (no host sync); remember the first non-finite step."""
        finite = torch.isfinite(loss)
        self.first_bad_step = torch.where(
            (~finite) & (self.first_bad_step < 0),
            torch.full_like(self.first_bad_step, self.global_step + 1),
            self.first_bad_step,
        )
        self.loss_sum += torch.where(finite, loss, torch.zeros_like(loss))
        self.loss_count += 1

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` when any process saw a NaN/inf loss since the start."""
        bad = int(self.accelerator.reduce(self.first_bad_step.clone(), reduction="max").item())
        if bad >= 0:
            where = (
                f"the last good checkpoint is {self.last_good_checkpoint}"
                if self.last_good_checkpoint
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"non-finite training loss at step {bad}; training stopped, {where}. "
                "Try a lower --learning_rate, --mixed_precision bf16 or no, or check the data."
            )

    # -- log, checkpoint, validate ---------------------------------------------------------------------
    def log(self) -> None:
        """Mean loss since the last log over all processes' micro-batches, LR and speed."""
        self.check_finite()
        totals = torch.stack([self.loss_sum, torch.full_like(self.loss_sum, self.loss_count)])
        loss_sum, count = self.accelerator.reduce(totals, reduction="sum").tolist()
        avg = loss_sum / max(count, 1)
        self.loss_sum.zero_()
        self.loss_count = 0
        now = time.perf_counter()
        steps_per_s = self.config.logging_steps / max(now - self.t_window, 1e-9)
        self.t_window = now
        lr = self.lr_scheduler.get_last_lr()[0]
        self.history.append((self.global_step, avg))
        self.log_times.append((self.global_step, now - self.t_start))
        self.progress.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}", it_s=f"{steps_per_s:.2f}")
        eps = {"epsilon": self.dp.epsilon()} if self.dp is not None else {}
        self._log_line(avg, lr, steps_per_s, now, eps)
        self.accelerator.log(
            {"train_loss": avg, "lr": lr, "steps_per_second": steps_per_s, **eps}, step=self.global_step
        )

    def _log_line(self, loss: float, lr: float, steps_per_s: float, now: float, eps: dict) -> None:
        """Without a progress bar, one line at most every 30 s (and at the last step): a silent run looks hung."""
        config, step = self.config, self.global_step
        if config.progress_bar or not self.accelerator.is_local_main_process:
            return
        if now - self.t_line < 30 and step < config.max_train_steps:
            return
        self.t_line = now
        eta = (config.max_train_steps - step) / max(steps_per_s, 1e-9)
        self.accelerator.print(
            f"step {step}/{config.max_train_steps} loss {loss:.4f} lr {lr:.2e} {steps_per_s:.2f} it/s "
            + "".join(f"ε {v:.3g} " for v in eps.values())
            + f"elapsed {_clock(now - self.t_start)} ETA {_clock(eta)}",
            flush=True,
        )

    def time_is_up(self, at_log: bool) -> bool:
        """``max_train_minutes`` have passed (decided at logging steps alike on every process)."""
        limit = self.config.max_train_minutes
        if not limit:
            return False
        up = time.perf_counter() - self.t_start >= limit * 60
        acc = self.accelerator
        if acc.num_processes == 1:
            return up
        if not at_log:
            return False
        return bool(acc.reduce(torch.tensor(int(up), device=acc.device), reduction="max").item())

    def checkpoint(self) -> None:
        self.check_finite()
        meta = {
            "step": self.global_step,
            "loss_history": self.history,
            "config_class": type(self.config).__name__,
            "config": config_record(self.config),
        }
        if self.dp is not None:
            meta[SUMMARY_KEY] = self.dp.state()
        self.last_good_checkpoint = save_checkpoint(
            self.accelerator, self.output_dir, self.global_step, meta, self.config.checkpoints_total_limit
        )

    def _unwrapped(self) -> dict[str, nn.Module]:
        return {k: self.accelerator.unwrap_model(m) for k, m in self.modules.items()}

    def validate(self) -> None:
        """Render the task's validation images from the (EMA) weights and save a grid (main process)."""
        if not self.accelerator.is_main_process:
            return
        unwrapped = self._unwrapped()
        ema_params = unwrapped[self.task.ema_module].parameters if self.ema is not None else None
        if ema_params is not None:
            self.ema.store(ema_params())
            self.ema.copy_to(ema_params())
        try:
            images = self.task.validate(unwrapped, self.global_step, self.accelerator)
        finally:
            if ema_params is not None:
                self.ema.restore(ema_params())
        if images:
            grid = image_grid(images)
            path = RunFolder(self.output_dir).sample_grid(self.global_step)
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
            for tracker in self.accelerator.trackers:
                if tracker.name == "tensorboard":
                    import numpy as np

                    arr = np.asarray(grid.convert("RGB"))
                    tracker.writer.add_image("validation", arr, self.global_step, dataformats="HWC")

    # -- the loop and the end ----------------------------------------------------------------------
    def _start_loop(self) -> None:
        from tqdm.auto import tqdm

        acc, config = self.accelerator, self.config
        if acc.is_main_process and self.log_with:
            acc.init_trackers(
                "medsd",
                config={k: _loggable(v) for k, v in config_record(config).items()},
            )
        self.progress = tqdm(
            total=config.max_train_steps,
            initial=self.global_step,
            desc="training",
            disable=not (acc.is_local_main_process and config.progress_bar),
            dynamic_ncols=True,
        )
        self.loss_sum = torch.zeros((), device=acc.device)
        self.loss_count = 0
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)
        self.t_start = self.t_window = time.perf_counter()
        self.t_line = -1e9
        self.stopped_by_time = False

    def loop(self) -> None:
        """Steps until ``max_train_steps``, with logging, checkpoints and validation at their intervals."""
        config = self.config
        self._start_loop()
        try:
            with StopSignals() as stop:
                while self.global_step < config.max_train_steps:
                    self.step()
                    step = self.global_step
                    at_log = step % config.logging_steps == 0 or step == config.max_train_steps
                    if at_log:
                        self.log()
                    if config.checkpointing_steps > 0 and step % config.checkpointing_steps == 0:
                        self.checkpoint()
                    if config.validation_steps > 0 and step % config.validation_steps == 0:
                        self.validate()
                    signum = stop.requested(self.accelerator, at_log)
                    if signum:
                        self.stop_on_signal(signum)
                    if self.time_is_up(at_log):
                        self.stopped_by_time = True
                        if not at_log:
                            self.log()
                        self.accelerator.print(
                            f"max_train_minutes={config.max_train_minutes} reached at step {step}: saving the model"
                        )
                        break
            self.check_finite()
        finally:
            self.progress.close()
        self.accelerator.wait_for_everyone()
        if config.validation_steps <= 0 or self.global_step % config.validation_steps != 0:
            self.validate()
        self.seconds = time.perf_counter() - self.t_start

    def stop_on_signal(self, signum: int) -> None:
        """Checkpoint the current step (unless that just happened) and stop with :class:`TrainingInterrupted`."""
        import signal

        name = signal.Signals(signum).name
        done = self.last_good_checkpoint is not None and self.last_good_checkpoint.name.endswith(
            f"-{self.global_step}"
        )
        if not done:
            self.checkpoint()
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.global_step}; {self.last_good_checkpoint} is written: continue with "
            "--resume_from_checkpoint latest",
            exit_code=128 + signum,
        )

    def finish(self) -> TrainResult:
        """Save the final (EMA) model, the config, loss curve and summary; push to the Hub if asked."""
        from .distributed import process_record

        acc, config, out = self.accelerator, self.config, self.output_dir
        first = first_batch_indices(self.dataset, config, acc, self.start_micro)
        processes = process_record(acc, self.params, first, config.train_batch_size)
        if acc.is_main_process:
            # written beside the folder's files, then moved in with train_summary.json last: a run killed
            # while saving leaves no half model that looks finished, and its resume saves again
            stage = final_stage(out)
            unwrapped = self._unwrapped()
            if self.ema is not None:
                self.ema.copy_to(unwrapped[self.task.ema_module].parameters())
            self.task.save(stage, unwrapped, acc)
            privacy = self.dp.summary(self.global_step, stage) if self.dp is not None else None
            save_config(config, stage / "training_config.yaml")
            save_loss_curve(self.history, stage / "loss_curve.png")
            summary = {
                "steps": self.global_step,
                "seconds": self.seconds,
                "learning_rate": self.learning_rate,
                "num_processes": acc.num_processes,
                "processes": processes,
                "loss_history": self.history,
                "log_times": self.log_times,
                "stopped_by": "max_train_minutes" if self.stopped_by_time else None,
                **({SUMMARY_KEY: privacy} if privacy is not None else {}),
            }
            (stage / RUN_FINISHED).write_text(json.dumps(summary, indent=1))
            publish_final(stage, out)
            if config.push_to_hub:
                push_folder_to_hub(
                    out, config.hub_model_id, private=config.hub_private, token=config.hub_token
                )
        skipped = getattr(self.dataset, "skipped", None)
        if skipped and acc.is_main_process:
            acc.print(f"{len(skipped)} image(s) were skipped as unreadable (--skip_bad_images):")
            for path, reason in skipped:
                acc.print(f"  {path}: {reason}")
        acc.end_training()
        return TrainResult(out, self.global_step, self.history, self.seconds, self.log_times)

    def run(self) -> TrainResult:
        """prepare, resume, batches, loop (step, log, checkpoint, validate), finish; the output folder's
        lock is released at the end, on an error and on a signal."""
        try:
            self.prepare()
            self.resume()
            self.batches()
            self.loop()
            return self.finish()
        finally:
            self.lock.release()

    @classmethod
    def from_config(cls, task_cls: Callable[[Any], TrainingTask], config: TrainConfig) -> Trainer:
        """The trainer of ``task_cls(config)``: the checks that need no data (flag ranges, the launch, the
        Hub) run once, the output folder is locked once (a second run into it stops before loading
        anything), then ``set_seed(config.seed)`` (so ``--seed`` fixes the initial weights) and the task. The
        task's config (e.g. with epochs counted into steps) is the one trained."""
        from accelerate.utils import set_seed

        from .config import check_ranges
        from .distributed import check_launch

        check_ranges(config)
        check_launch()  # e.g. --multi_gpu without GPUs stops here; `--cpu --num_processes N` starts N processes
        if config.push_to_hub:  # diffusers' examples create the repo first: fail before loading, not after
            from .hub import check_hub_ready

            check_hub_ready(config.hub_model_id, config.hub_token)
        lock = lock_output_dir(config.output_dir)
        try:
            set_seed(config.seed)
            task = task_cls(config)
            return cls(task, getattr(task, "config", config), lock=lock)
        except BaseException:
            lock.release()
            raise


def train(task: TrainingTask, config: TrainConfig) -> TrainResult:
    """Run (or resume) training of ``task`` under ``config`` and save the final model."""
    return Trainer(task, config).run()


def push_folder_to_hub(
    folder: Path, repo_id: str | None, private: bool = True, token: str | None = None
) -> str:
    """Upload a finished output folder (model card included), skipping checkpoints and logs (``medsd push``)."""
    from .hub import push_folder

    return push_folder(folder, repo_id, token=token, private=private, check=False)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _loggable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) else str(v)


__all__ = [
    "CHECKPOINT_PREFIX",
    "FINISHED_MARKERS",
    "PREDICTION_TYPES",
    "BatchIndexStream",
    "BatchSource",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "default_collate",
    "diffusion_target",
    "effective_learning_rate",
    "list_checkpoints",
    "image_grid",
    "train",
]
