"""The shared training core: exact resume, atomic checkpoints, NaN stop, output-folder protection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from medsd.training.config import TrainConfig, config_from_dict, load_yaml, parse_config, save_config
from medsd.training.core import (
    BatchIndexStream,
    NonFiniteLossError,
    TrainingTask,
    list_checkpoints,
    train,
)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class RegressionTask(TrainingTask):
    """A tiny noisy regression: uses the global RNG in the loss like diffusion does (noise, t)."""

    ema_module = "net"

    def __init__(self, nan_at_step: int | None = None):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls = 0
        self.nan_at_step = nan_at_step
        self.saved: dict | None = None

    def modules(self):
        return {"net": self.net}

    def train_dataset(self):
        return _Data()

    def loss(self, batch, modules, accelerator):
        self.calls += 1
        noise = 0.01 * torch.randn_like(batch["x"])
        loss = nn.functional.mse_loss(modules["net"](batch["x"] + noise), batch["y"])
        if self.nan_at_step is not None and self.calls >= self.nan_at_step:
            loss = loss * float("nan")
        return loss

    def save(self, output_dir, modules, accelerator):
        self.saved = {k: v.detach().clone() for k, v in modules["net"].state_dict().items()}
        torch.save(self.saved, Path(output_dir) / "net.pt")


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_train_steps=8,
        train_batch_size=4,
        learning_rate=1e-2,
        checkpointing_steps=4,
        validation_steps=0,
        logging_steps=2,
        report_to="none",
        progress_bar=False,
        mixed_precision="no",
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(task: RegressionTask) -> torch.Tensor:
    return torch.cat([v.flatten() for v in task.saved.values()])


@pytest.mark.parametrize("use_ema,accum", [(False, 1), (True, 2)])
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, use_ema, accum):
    """N steps straight vs N/2, stop, resume, N/2: the same weights (model, EMA, optimizer, LR, RNG, data)."""
    opts = dict(use_ema=use_ema, gradient_accumulation_steps=accum, lr_scheduler="cosine")
    straight = RegressionTask()
    train(straight, _config(tmp_path / "a", **opts))

    # Run the same schedule, then "stop" at step 4: keep only checkpoint-4, drop everything written later.
    train(RegressionTask(), _config(tmp_path / "b", **opts))
    run = tmp_path / "b" / "run"
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["checkpoint-4", "checkpoint-8"]
    shutil.rmtree(ckpts[-1])
    for name in ("net.pt", "train_summary.json"):
        (run / name).unlink()

    resumed = RegressionTask()
    result = train(resumed, _config(tmp_path / "b", resume_from_checkpoint="latest", **opts))
    assert result.global_step == 8
    assert resumed.calls == 4 * accum  # only the second half ran
    torch.testing.assert_close(_weights(resumed), _weights(straight), rtol=1e-5, atol=1e-6)
    init = torch.cat([p.detach().flatten() for p in RegressionTask().net.state_dict().values()])
    assert (_weights(straight) - init).abs().max() > 1e-3  # it really trained


def test_checkpoints_are_rotated_and_carry_their_step(tmp_path):
    train(
        RegressionTask(),
        _config(tmp_path, max_train_steps=10, checkpointing_steps=2, checkpoints_total_limit=2),
    )
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["checkpoint-8", "checkpoint-10"]
    meta = json.loads((ckpts[-1] / "medsd_checkpoint.json").read_text())
    assert meta["step"] == 10
    assert not list((tmp_path / "run").glob(".tmp-*"))


def test_log_times_follow_the_logged_steps(tmp_path):
    """Benchmarks read step times from TrainResult.log_times: one increasing entry per logged step."""
    result = train(RegressionTask(), _config(tmp_path, logging_steps=1, checkpointing_steps=0))
    steps = [s for s, _ in result.log_times]
    times = [t for _, t in result.log_times]
    assert steps == [s for s, _ in result.loss_history] == list(range(1, 9))
    assert all(b > a for a, b in zip(times, times[1:])) and 0 < times[-1] <= result.seconds
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert [s for s, _ in summary["log_times"]] == steps


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    train(RegressionTask(), _config(tmp_path, max_train_steps=4, checkpointing_steps=4))
    good = list_checkpoints(tmp_path / "run")[-1]
    before = sorted(p.name for p in good.iterdir())

    from accelerate import Accelerator

    def crash(self, output_dir, **kw):  # killed mid-save: a partial temporary folder is left behind
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Accelerator, "save_state", crash)
    cfg = _config(tmp_path, max_train_steps=8, checkpointing_steps=4, resume_from_checkpoint="latest")
    with pytest.raises(KeyboardInterrupt):
        train(RegressionTask(), cfg)
    assert list_checkpoints(tmp_path / "run") == [good]
    assert sorted(p.name for p in good.iterdir()) == before
    monkeypatch.undo()
    # and the run can resume from it
    result = train(RegressionTask(), cfg)
    assert result.global_step == 8


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _config(tmp_path, max_train_steps=12, checkpointing_steps=4, logging_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"step 6\b.*checkpoint-4"):
        train(RegressionTask(nan_at_step=6), cfg)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-4"]
    assert not (tmp_path / "run" / "net.pt").exists()


def test_finished_output_dir_is_not_overwritten(tmp_path):
    train(RegressionTask(), _config(tmp_path, max_train_steps=2, checkpointing_steps=0))
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        train(RegressionTask(), _config(tmp_path, max_train_steps=2, checkpointing_steps=0))
    result = train(
        RegressionTask(),
        _config(tmp_path, max_train_steps=2, checkpointing_steps=0, overwrite_output_dir=True),
    )
    assert result.global_step == 2


def test_batch_stream_is_deterministic_and_shards_without_overlap():
    a = BatchIndexStream(24, 4, seed=3, rank=0, world=2)
    b = BatchIndexStream(24, 4, seed=3, rank=1, world=2)
    assert a.indices(5) == BatchIndexStream(24, 4, seed=3, rank=0, world=2).indices(5)
    assert not set(a.indices(0)) & set(b.indices(0))
    epoch0 = [i for k in range(a.batches_per_epoch) for i in a.indices(k) + b.indices(k)]
    assert sorted(epoch0) == list(range(24))
    assert a.indices(0) != a.indices(a.batches_per_epoch)  # a new permutation each epoch


def test_config_yaml_and_flags(tmp_path):
    cfg = _config(tmp_path, max_train_steps=7)
    save_config(cfg, tmp_path / "c.yaml")
    assert config_from_dict(TrainConfig, load_yaml(tmp_path / "c.yaml")) == cfg
    parsed = parse_config(
        TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--max_train_steps", "9", "--use_ema"]
    )
    assert (
        parsed.max_train_steps == 9 and parsed.use_ema is True and parsed.learning_rate == cfg.learning_rate
    )
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict(TrainConfig, {"max_train_stepz": 3})
    with pytest.raises(ValueError, match="max_train_steps"):
        config_from_dict(TrainConfig, {"max_train_steps": "many"})


def test_scale_lr_leaves_the_config_and_the_saved_yaml_unchanged(tmp_path):
    cfg = _config(tmp_path, max_train_steps=2, checkpointing_steps=0, scale_lr=True)
    result = train(RegressionTask(), cfg)
    assert cfg.learning_rate == 1e-2
    assert load_yaml(result.output_dir / "training_config.yaml")["learning_rate"] == 1e-2
    summary = json.loads((result.output_dir / "train_summary.json").read_text())
    assert summary["learning_rate"] == pytest.approx(1e-2 * 4)  # x batch 4, 1 process, no accumulation


def test_seed_fixes_the_initial_weights(tmp_path):
    """Two identical commands give identical weights: the U-Net is built after set_seed."""
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(1234 + len(name))  # whatever the global RNG was before, --seed decides
        cfg = DDPMTrainConfig(
            output_dir=str(tmp_path / name), resolution=16, phantom_count=8, data_split="all",
            model="light-tiny", train_batch_size=4, max_train_steps=1, checkpointing_steps=0,
            validation_steps=0, report_to="none", progress_bar=False, mixed_precision="no", seed=seed,
        )  # fmt: skip
        result = train_ddpm(cfg)
        from safetensors.torch import load_file

        (weights,) = (result.output_dir / "unet").glob("*.safetensors")
        return load_file(weights)

    a, b, c = run("a", 0), run("bb", 0), run("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_train_steps", 0),
        ("max_train_steps", -1),
        ("train_batch_size", 0),
        ("gradient_accumulation_steps", 0),
        ("logging_steps", 0),
        ("learning_rate", 0.0),
        ("ema_decay", 1.5),
        ("checkpoints_total_limit", 0),
        ("mixed_precision", "fp8"),
    ],
)
def test_out_of_range_flags_stop_before_anything_is_loaded(tmp_path, capsys, field, value):
    """One line naming the flag (e.g. --max_train_steps 0 saved the random weights as finished)."""
    from medsd.cli import main

    out = tmp_path / "run"
    code = main(["train", "ddpm", f"--{field}", str(value), "--output_dir", str(out), "--report_to", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--{field}: expected" in err[0], err
    assert not out.exists()


def test_max_train_minutes_stops_and_saves_a_finished_model(tmp_path):
    cfg = _config(tmp_path, max_train_steps=10**7, max_train_minutes=0.02, checkpointing_steps=0)
    task = RegressionTask()
    result = train(task, cfg)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert 0 < result.global_step < 10**7
    assert summary["stopped_by"] == "max_train_minutes" and summary["steps"] == result.global_step
    assert 1.0 <= result.seconds < 30 and task.saved is not None
    assert summary["loss_history"][-1][0] == result.global_step


def test_max_train_minutes_must_be_positive():
    with pytest.raises(Exception, match="max_train_minutes"):
        parse_config(TrainConfig, ["--max_train_minutes", "0"])


def test_without_a_progress_bar_a_line_per_30_seconds_and_the_last_step(tmp_path, capsys):
    train(RegressionTask(), _config(tmp_path, max_train_steps=8, logging_steps=2, checkpointing_steps=0))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2/8", "8/8"]
    assert all(" it/s " in x and " ETA " in x and " loss " in x for x in lines)
