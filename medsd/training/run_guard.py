"""Guards around one training run in one output folder: a lock against a second run, and a resume that
refuses a changed config unless told (``--allow_config_change``), then really applies what it was told.
Which fields a resume may change is each field's ``resume`` policy (:func:`medsd.flags.flag`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from medsd.errors import MedsdConfigError, MedsdError
from medsd.flags import resume_may_change, secret_fields
from medsd.run_folder import LOCK_NAME, RunFolder

from .checkpoints import find_checkpoint, read_checkpoint_config, read_checkpoint_meta

logger = logging.getLogger("medsd.training")


# -- the lock ------------------------------------------------------------------------------------------
class OutputDirInUseError(MedsdError):
    """Another live process trains into the same output folder."""


def _holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputDirLock:
    """An exclusive ``flock`` on ``OUTPUT/.tmp-medsd.lock`` holding the owner's pid and host.

    The kernel drops the lock when the process dies (even by SIGKILL), so a killed run never blocks its
    resume; the file it leaves behind only names the dead owner, and the next run takes over with a warning.
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.path = RunFolder(output_dir).lock
        self.fd: int | None = None
        self._created_dir = False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _open_locked(self) -> int | None:
        """The locked file descriptor; None where the file system (or the OS) has no locks."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            logger.warning("no file locks here; a second run into %s is not prevented", self.output_dir)
            return None

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                os.close(fd)
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who.get("since", 0)))
                raise OutputDirInUseError(
                    f"output_dir {self.output_dir} is in use by another training run (pid {who.get('pid', '?')} "
                    f"on host {who.get('host', '?')}, since {since}); wait for it to end, stop it, or choose "
                    "another --output_dir"
                ) from None
            except OSError as e:
                os.close(fd)
                logger.warning("output_dir %s: no file lock on this file system (%s); a second run into "
                               "it is not prevented", self.output_dir, e)  # fmt: skip
                return None
            try:  # a holder releasing it unlinks the file: then we locked an orphan; try again
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def acquire(self) -> OutputDirLock:
        """Take the lock (a no-op when this object holds it); :class:`OutputDirInUseError` when taken."""
        if self.fd is not None:
            return self
        self._created_dir = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = self._open_locked()
        except BaseException:
            self._remove_created_dir()
            raise
        if fd is None:
            return self
        old, host = _holder(fd), socket.gethostname()
        if old.get("pid") and old.get("pid") != os.getpid():
            gone = "which is no longer running" if old.get("host") == host and not _alive(int(old["pid"])) else (
                "whose lock was free"
            )  # fmt: skip
            logger.warning("output_dir %s: taking over the lock left by pid %s on host %s, %s",
                           self.output_dir, old["pid"], old.get("host", "?"), gone)  # fmt: skip
        record = json.dumps({"pid": os.getpid(), "host": host, "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file goes first, see :meth:`_open_locked`)."""
        if self.fd is None:
            return
        import fcntl

        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            try:
                self.output_dir.rmdir()  # only when the run left nothing in the folder it created
            except OSError:
                pass
            self._created_dir = False


_LOCKS: dict[str, OutputDirLock] = {}


def lock_output_dir(output_dir: str | Path) -> OutputDirLock:
    """This process's lock on ``output_dir``, taken once (only by the rank-0 process of a launch)."""
    key = os.path.realpath(output_dir)
    lock = _LOCKS.setdefault(key, OutputDirLock(output_dir))
    if os.environ.get("RANK", "0") == "0":
        lock.acquire()
    return lock


# -- the config a checkpoint was written with ----------------------------------------------------------
def config_record(config: Any) -> dict[str, Any]:
    """The config as JSON values (no secrets), stored in each checkpoint's ``medsd_checkpoint.json``."""
    hidden = secret_fields(config)
    data = {k: v for k, v in dataclasses.asdict(config).items() if k not in hidden}
    return json.loads(json.dumps(data, default=str))


def check_resume_config(saved: dict[str, Any] | None, config: Any, step: int, checkpoint: Path) -> list[str]:
    """Refuse, in one line, resuming ``checkpoint`` with a semantically different config unless every
    changed field is named in ``allow_config_change``; returns the accepted changes (``field: old -> new``)."""
    if config.max_train_steps < step:
        raise MedsdConfigError(
            f"--max_train_steps {config.max_train_steps} is below the step of {checkpoint} ({step}): pass "
            f"--max_train_steps {step} or more, or resume an earlier checkpoint with --resume_from_checkpoint PATH"
        )
    new = config_record(config)
    allowed = set(config.allow_config_change or [])
    unknown = sorted(allowed - set(new))
    if unknown:
        raise MedsdConfigError(f"--allow_config_change: unknown field(s) {', '.join(unknown)}")
    if saved is None:
        logger.warning("%s does not record its training config (an older medsd wrote it); the config is "
                       "not compared", checkpoint)  # fmt: skip
        return []
    if saved.get("max_train_steps") not in (None, config.max_train_steps) and config.lr_scheduler not in (
        "constant",
        "constant_with_warmup",
    ):
        logger.warning("max_train_steps %s -> %s: the %s learning-rate schedule is stretched to the new "
                       "length", saved["max_train_steps"], config.max_train_steps, config.lr_scheduler)  # fmt: skip
    changed = [
        (k, saved[k], new[k])
        for k in new
        if k in saved and not resume_may_change(config, k) and saved[k] != new[k]
    ]
    refused = [c for c in changed if c[0] not in allowed]
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {now!r}" for k, old, now in refused)
        raise MedsdConfigError(
            f"resume_from_checkpoint: {checkpoint} was trained with another config ({listed}); resume with "
            f"the old values, pass --allow_config_change {','.join(k for k, _, _ in refused)} to go on with "
            "the new ones, or start a new run in another --output_dir"
        )
    accepted = [f"{k}: {old!r} -> {now!r}" for k, old, now in changed]
    if accepted:
        logger.warning("resuming %s with changed settings (--allow_config_change): %s", checkpoint,
                       "; ".join(accepted))  # fmt: skip
    return accepted


def checkpoint_to_resume(output_dir: Path, config: Any) -> tuple[Path | None, list[str]]:
    """The checkpoint ``resume_from_checkpoint`` names (None: none yet) and the config changes accepted
    against the one it was written with (:func:`check_resume_config`)."""
    if not config.resume_from_checkpoint:
        return None, []
    ckpt = find_checkpoint(output_dir, config.resume_from_checkpoint)
    if ckpt is None:
        return None, []
    step, _ = read_checkpoint_meta(ckpt)
    kind, saved = read_checkpoint_config(ckpt)
    if kind is not None and kind != type(config).__name__:
        raise MedsdConfigError(
            f"resume_from_checkpoint: {ckpt} is a {kind} run, not a {type(config).__name__} one; resume it "
            "with the medsd train command that wrote it"
        )
    return ckpt, check_resume_config(saved, config, step, ckpt)


def apply_config_to_state(
    optimizer: Any, lr_scheduler: Any, ema: Any, config: Any, learning_rate: float
) -> None:
    """After ``accelerator.load_state``: the optimizer, LR schedule and EMA came back with the old run's
    hyper-parameters; put the current config's in (a no-op when nothing changed, so a resume stays exact)."""
    sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
    groups = optimizer.param_groups
    old_bases = list(getattr(sched, "base_lrs", []))  # none on DeepSpeed's stand-in scheduler
    if old_bases:
        sched.base_lrs = [learning_rate] * len(old_bases)
    lambdas = getattr(sched, "lr_lambdas", None)  # diffusers' schedules are LambdaLR: lr = base * f(step)
    for i, (g, old) in enumerate(zip(groups, old_bases)):
        # the optimizer's saved LR is the old schedule's: recompute it (the same value when nothing changed;
        # the new one after a change of learning_rate, max_train_steps, warm-up or schedule)
        if lambdas:
            g["lr"] = learning_rate * lambdas[i](sched.last_epoch)
        elif old != learning_rate:
            g["lr"] = g["lr"] * learning_rate / old if old else learning_rate
        g["initial_lr"] = learning_rate
    if old_bases:
        sched._last_lr = [g["lr"] for g in groups]
    hyper = {
        "betas": (config.adam_beta1, config.adam_beta2),
        "weight_decay": config.adam_weight_decay,
        "eps": config.adam_epsilon,
    }
    for g in groups:
        for key, value in hyper.items():
            if key in g and (tuple(g[key]) if key == "betas" else g[key]) != value:
                g[key] = value
    if ema is not None:
        ema.decay, ema.power = config.ema_decay, config.ema_power


__all__ = [
    "LOCK_NAME",
    "OutputDirInUseError",
    "OutputDirLock",
    "apply_config_to_state",
    "check_resume_config",
    "checkpoint_to_resume",
    "config_record",
    "lock_output_dir",
]
