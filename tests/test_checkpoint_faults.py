"""Faults around checkpoints: signals, incomplete and half-deleted checkpoints, a full disk,
resuming with a changed config, the output folder's lock."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from test_training_core import RegressionTask, _config, _weights

from medsd.errors import MedsdConfigError
from medsd.training.checkpoints import CheckpointWriteError, find_checkpoint, list_checkpoints
from medsd.training.core import NonFiniteLossError, Trainer, train
from medsd.training.run_guard import LOCK_NAME, OutputDirInUseError, OutputDirLock
from medsd.training.signals import TrainingInterrupted


class SignalledTask(RegressionTask):
    """Sends itself ``signum`` during the loss of micro-batch ``at_call`` (as a cluster's pre-emption would)."""

    def __init__(self, signum: int, at_call: int):
        super().__init__()
        self.signum, self.at_call = signum, at_call

    def loss(self, batch, modules, accelerator):
        loss = super().loss(batch, modules, accelerator)
        if self.calls == self.at_call:
            os.kill(os.getpid(), self.signum)
        return loss


@pytest.mark.parametrize("signum,at_call", [(signal.SIGTERM, 3), (signal.SIGINT, 6)])
def test_signal_writes_a_checkpoint_and_resume_is_exact(tmp_path, signum, at_call):
    straight = RegressionTask()
    train(straight, _config(tmp_path / "a", checkpointing_steps=100))
    cfg = _config(tmp_path / "b", checkpointing_steps=100)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(SignalledTask(signum, at_call), cfg)
    assert stopped.value.exit_code == 128 + signum
    assert signal.Signals(signum).name in str(stopped.value)
    (ckpt,) = list_checkpoints(tmp_path / "b" / "run")
    assert ckpt.name == f"checkpoint-{at_call}"  # the step it was in, not the last periodic one
    resumed = RegressionTask()
    result = train(resumed, _config(tmp_path / "b", checkpointing_steps=100, resume_from_checkpoint="latest"))
    assert result.global_step == 8
    assert torch.equal(_weights(resumed), _weights(straight))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_latest_skips_an_incomplete_checkpoint(tmp_path, caplog):
    train(RegressionTask(), _config(tmp_path, max_train_steps=4))
    run = tmp_path / "run"
    (run / "checkpoint-9").mkdir()  # a checkpoint whose metadata was never written
    with caplog.at_level("WARNING"):
        assert find_checkpoint(run, "latest") == run / "checkpoint-4"
    assert "incomplete" in caplog.text and "checkpoint-9" in caplog.text


def test_a_kill_while_removing_never_leaves_half_a_checkpoint(tmp_path, monkeypatch):
    """Rotation and replacement rename a checkpoint away before deleting it."""
    cfg = _config(tmp_path, max_train_steps=8, checkpointing_steps=2, checkpoints_total_limit=1)
    real_rmtree = shutil.rmtree
    calls = []

    def killed_midway(path, *a, **kw):
        calls.append(Path(path).name)
        if Path(path).name.startswith(".trash-checkpoint-2"):
            (Path(path) / "medsd_checkpoint.json").unlink()  # part of it is gone ...
            raise KeyboardInterrupt("killed")  # ... when the process dies
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        train(RegressionTask(), cfg)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4"]  # nothing half-deleted is listed
    result = train(RegressionTask(), _config(tmp_path, max_train_steps=8, checkpointing_steps=2,
                                             checkpoints_total_limit=1, resume_from_checkpoint="latest"))  # fmt: skip
    assert result.global_step == 8 and not list(run.glob(".trash-*"))  # leftovers are cleaned


def test_full_disk_names_the_cause_frees_the_space_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    train(RegressionTask(), _config(tmp_path, max_train_steps=4, checkpointing_steps=4))
    run = tmp_path / "run"
    from accelerate import Accelerator

    def full_disk(self, output_dir, **kw):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    cfg = _config(tmp_path, max_train_steps=8, checkpointing_steps=4, resume_from_checkpoint="latest")
    with pytest.raises(CheckpointWriteError) as e:
        train(RegressionTask(), cfg)
    msg = str(e.value)
    assert "no space left on device" in msg and "checkpoint-4" in msg and "\n" not in msg
    assert not list(run.glob(".tmp-*"))  # the partial folder no longer holds the space
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4"]


def test_output_folder_with_other_files_or_old_checkpoints_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="not empty.*README.md"):
        train(RegressionTask(), _config(tmp_path))
    assert (run / "README.md").read_text() == "my notes"  # nothing was written over

    other = tmp_path / "other"
    train(RegressionTask(), _config(other, max_train_steps=4))
    for marker in ("net.pt", "train_summary.json"):
        (other / "run" / marker).unlink(missing_ok=True)  # a run that died after its checkpoint
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run.*checkpoint-4"):
        train(RegressionTask(), _config(other, max_train_steps=4))


def test_overwrite_retires_the_old_checkpoints(tmp_path):
    train(RegressionTask(), _config(tmp_path, max_train_steps=8, checkpointing_steps=4))
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4", "checkpoint-8"]
    with pytest.raises(TrainingInterrupted):  # the new run is pre-empted at step 2, before any periodic save
        train(
            SignalledTask(signal.SIGTERM, 2),
            _config(tmp_path, checkpointing_steps=100, overwrite_output_dir=True),
        )
    # a crash of the new run can only resume the new run
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]


# -- resuming with a changed config ----------------------------------------------------------
def _trained(tmp_path: Path, **kw) -> Path:
    """An 8-step run that stopped at its step-4 checkpoint."""
    train(RegressionTask(), _config(tmp_path, max_train_steps=8, checkpointing_steps=4, **kw))
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoint-8")
    for name in ("net.pt", "train_summary.json"):
        (run / name).unlink()
    return run


def test_a_resume_with_another_config_is_refused_listing_the_differences(tmp_path):
    run = _trained(tmp_path)
    before = (run / "training_config.yaml").read_text()
    cfg = _config(tmp_path, resume_from_checkpoint="latest", train_batch_size=2, learning_rate=1e-3,
                  gradient_accumulation_steps=2, seed=7)  # fmt: skip
    with pytest.raises(MedsdConfigError) as e:
        train(RegressionTask(), cfg)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint-4" in msg
    for diff in ("seed: 0 -> 7", "train_batch_size: 4 -> 2", "gradient_accumulation_steps: 1 -> 2",
                 "learning_rate: 0.01 -> 0.001"):  # fmt: skip
        assert diff in msg, msg
    assert "--allow_config_change seed,train_batch_size,gradient_accumulation_steps,learning_rate" in msg
    assert (run / "training_config.yaml").read_text() == before  # refused before anything was written
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4"]


def test_harmless_changes_resume_without_complaint(tmp_path, caplog):
    _trained(tmp_path)
    cfg = _config(tmp_path, resume_from_checkpoint="latest", max_train_steps=10, logging_steps=1,
                  checkpointing_steps=3, checkpoints_total_limit=1, validation_steps=5, progress_bar=True)  # fmt: skip
    with caplog.at_level("WARNING"):
        result = train(RegressionTask(), cfg)
    assert result.global_step == 10 and "changed settings" not in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-9"]


def test_max_train_steps_below_the_checkpoint_step_is_refused(tmp_path):
    _trained(tmp_path)
    for allow in ([], ["max_train_steps"]):  # no flag makes it possible: those steps are trained
        cfg = _config(tmp_path, resume_from_checkpoint="latest", max_train_steps=3, allow_config_change=allow)
        with pytest.raises(
            MedsdConfigError, match=r"--max_train_steps 3 is below the step of .*checkpoint-4 \(4\)"
        ):
            train(RegressionTask(), cfg)


def test_an_unknown_field_to_allow_is_refused(tmp_path):
    _trained(tmp_path)
    cfg = _config(tmp_path, resume_from_checkpoint="latest", allow_config_change=["learning_rat"])
    with pytest.raises(MedsdConfigError, match="--allow_config_change: unknown field.*learning_rat"):
        train(RegressionTask(), cfg)


def _resumed(tmp_path: Path, **kw) -> tuple[Trainer, RegressionTask]:
    """A trainer on the step-4 checkpoint, prepared and resumed (not yet trained on)."""
    task = RegressionTask()
    trainer = Trainer(task, _config(tmp_path, resume_from_checkpoint="latest", **kw))
    trainer.prepare()
    trainer.resume()
    return trainer, task


def _finish(trainer: Trainer) -> None:
    try:
        trainer.batches()
        trainer.loop()
        trainer.finish()
    finally:
        trainer.lock.release()


def test_an_allowed_learning_rate_change_really_applies(tmp_path):
    """accelerate.load_state brings the old LR back (optimizer and scheduler state); the new one must win."""
    for name in ("old", "new"):
        _trained(tmp_path / name, lr_scheduler="cosine", lr_warmup_steps=2)
    old, old_task = _resumed(tmp_path / "old", lr_scheduler="cosine", lr_warmup_steps=2)
    old_lr = old.optimizer.param_groups[0]["lr"]
    new, new_task = _resumed(tmp_path / "new", lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=1e-3,
                             allow_config_change=["learning_rate"])  # fmt: skip
    # the same point of the schedule, a tenth of the base LR
    assert new.lr_scheduler.get_last_lr()[0] == pytest.approx(old_lr / 10, rel=1e-6)
    assert new.optimizer.param_groups[0]["lr"] == pytest.approx(old_lr / 10, rel=1e-6)
    _finish(old)
    _finish(new)
    assert new.lr_scheduler.scheduler.base_lrs == [1e-3]
    assert not torch.equal(_weights(old_task), _weights(new_task))


def test_an_allowed_ema_decay_change_really_applies(tmp_path):
    _trained(tmp_path, use_ema=True)
    with pytest.raises(MedsdConfigError, match="ema_decay: 0.9999 -> 0.5"):
        train(
            RegressionTask(), _config(tmp_path, use_ema=True, ema_decay=0.5, resume_from_checkpoint="latest")
        )
    trainer, _ = _resumed(tmp_path, use_ema=True, ema_decay=0.5, allow_config_change=["ema_decay"])
    assert trainer.ema.decay == 0.5 and trainer.ema.optimization_step == 4  # the rest of the EMA is kept
    _finish(trainer)


# -- the output folder's lock ----------------------------------------------------------------------------
def test_a_held_lock_refuses_a_second_run_in_one_line(tmp_path):
    run = tmp_path / "run"
    holder = OutputDirLock(run).acquire()
    try:
        with pytest.raises(OutputDirInUseError) as e:
            train(RegressionTask(), _config(tmp_path))
    finally:
        holder.release()
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert not run.exists()  # nothing was written (the folder the lock made is gone again)
    assert train(RegressionTask(), _config(tmp_path)).global_step == 8


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
    with caplog.at_level("WARNING"):
        train(RegressionTask(), _config(tmp_path, max_train_steps=2))
    assert (
        f"taking over the lock left by pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
    )
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_the_lock_is_released_after_an_error_and_a_signal(tmp_path):
    def free(run: Path) -> bool:
        try:
            OutputDirLock(run).acquire().release()
        except OutputDirInUseError:
            return False
        return True

    with pytest.raises(NonFiniteLossError):
        train(RegressionTask(nan_at_step=2), _config(tmp_path / "a"))
    with pytest.raises(TrainingInterrupted):
        train(SignalledTask(signal.SIGTERM, 2), _config(tmp_path / "b", checkpointing_steps=100))
    assert free(tmp_path / "a" / "run") and free(tmp_path / "b" / "run")
    assert not (tmp_path / "b" / "run" / LOCK_NAME).exists()
