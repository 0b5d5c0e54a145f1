"""Faults around checkpoints (issue #12): signals, incomplete and half-deleted checkpoints, a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from test_training_core import RegressionTask, _config, _weights

from medsd.training.checkpoints import CheckpointWriteError, find_checkpoint, list_checkpoints
from medsd.training.core import train
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
