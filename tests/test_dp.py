"""Differentially private training (``--dp``, Opacus): accounting, per-unit clipping, exact resume after a kill,
the records (summary, model card, dataset card) and the one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("opacus")

from medsd.errors import MedsdConfigError  # noqa: E402
from medsd.training.config import TrainConfig, parse_config  # noqa: E402
from medsd.training.dp import DPTraining, group_grad_samples, repeat_batch, start_dp  # noqa: E402


def _ddpm_fields(out: Path, **kw) -> dict:
    fields = dict(
        train_data="phantom",
        phantom_count=40,
        resolution=16,
        model="light-tiny",
        block_out_channels=[8, 16],
        max_train_steps=6,
        train_batch_size=4,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=2,
        progress_bar=False,
        report_to="none",
        mixed_precision="no",
        output_dir=str(out),
        dp=True,
        dp_noise_multiplier=1.1,
    )
    fields.update(kw)
    return fields


def _train(out: Path, **kw):
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    return train_ddpm(DDPMTrainConfig(**_ddpm_fields(out, **kw)))


def _summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())["differential_privacy"]


def _n_train_images(out: Path) -> int:
    from medsd.training.data_args import build_training_data
    from medsd.training.ddpm import DDPMTrainConfig

    return len(build_training_data(DDPMTrainConfig(**_ddpm_fields(out)))[0])


def test_epsilon_is_opacus_accountant_for_the_noise_rate_and_steps(tmp_path):
    from opacus.accountants import RDPAccountant

    _train(tmp_path / "run", dp_augmentation_multiplicity=2)
    rec = _summary(tmp_path / "run")
    n = _n_train_images(tmp_path / "x")
    assert rec["unit"] == "image" and rec["n_units"] == n and rec["steps"] == 6
    assert rec["sample_rate"] == pytest.approx(4 / n)
    assert rec["delta"] == pytest.approx(1 / (10 * n))
    reference = RDPAccountant()
    for _ in range(6):
        reference.step(noise_multiplier=1.1, sample_rate=4 / n)
    assert rec["epsilon"] == pytest.approx(reference.get_epsilon(delta=1 / (10 * n)), rel=1e-9)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "- differential-privacy" in card and "## Differential privacy" in card
    assert f"{rec['epsilon']:.3g}" in card


def test_target_epsilon_is_spent_and_not_exceeded(tmp_path):
    _train(tmp_path / "run", dp_noise_multiplier=None, dp_target_epsilon=4.0)
    rec = _summary(tmp_path / "run")
    assert 0.9 * 4.0 <= rec["epsilon"] <= 4.0 + 1e-6
    assert rec["noise_multiplier"] > 0


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, patient_ids: list | None = None):
        self.n, self.patient_ids = n, patient_ids

    def __len__(self) -> int:
        return self.n


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 16, 1)
    )


def _update(x: torch.Tensor, y: torch.Tensor, clip: float, k: int = 2) -> torch.Tensor:
    """The parameter change of one DP step (no noise, SGD lr 1) on units ``x``, each repeated ``k`` times."""
    cfg = TrainConfig(dp=True, dp_noise_multiplier=0.0, dp_max_grad_norm=clip, train_batch_size=4)
    net = _net()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    dp = DPTraining(cfg, _Rows(10))
    opt = dp.wrap({"net": net}, torch.optim.SGD(net.parameters(), lr=1.0))
    batch = repeat_batch({"x": x, "y": y}, k)
    loss = nn.functional.mse_loss(net(batch["x"]).squeeze(1), batch["y"])
    loss.backward()
    group_grad_samples(dp.params, torch.arange(len(x)).repeat_interleave(k), len(x))
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in dp.params]).norm(dim=0)
    opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()]) - before, norms


def test_per_unit_clipping_bounds_each_examples_contribution():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, generator=g)
    x_out, y_out = x.clone(), y.clone()
    x_out[2], y_out[2] = 30 * torch.randn(1, 4, 4, generator=g), 1e4  # another example, with a huge loss
    clip, batch = 0.5, 4
    plain, norms = _update(x, y, clip)
    attacked, norms_out = _update(x_out, y_out, clip)
    assert norms_out[2] > 1000 * clip  # unclipped, the outlier would dominate the update
    # replacing one unit moves the summed clipped gradient by at most 2 C: the update by 2 C lr / batch
    assert (attacked - plain).norm() <= 2 * clip / batch + 1e-5
    assert (attacked - plain).norm() > 0.1 * clip / batch  # ... and it did move (the test can fail)


def test_patient_units_average_their_images_before_clipping():
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    p = nn.Parameter(torch.zeros(2))
    p.grad_sample = grads.clone()
    group_grad_samples([p], torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(p.grad_sample, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_per_patient_sampling_caps_images_and_records_the_unit():
    cfg = TrainConfig(
        dp=True, dp_noise_multiplier=1.0, dp_unit="patient", dp_max_images_per_patient=2, train_batch_size=2
    )
    pids = [f"p{i // 3}" for i in range(30)]  # 10 patients, 3 images each
    dp = DPTraining(cfg, _Rows(30, pids))
    assert dp.n_units == 10 and dp.sample_rate == pytest.approx(0.2)
    seen = 0
    for step in range(20):
        items, owner = dp.sampler.sample(step)
        assert items == dp.sampler.sample(step)[0]  # the same draw on resume
        for u in set(owner):
            mine = [items[j] for j, o in enumerate(owner) if o == u]
            assert len(mine) <= 2 and len({pids[i] for i in mine}) == 1
        seen += len(set(owner))
    assert 0 < seen < 20 * 10  # Poisson: some patients per step, not all


_KILL_CHILD = """
import os, signal, sys
from medsd.training import core
from medsd.training.ddpm import DDPMTrainConfig, train_ddpm
real = core.Trainer.checkpoint
def checkpoint_then_die(self):
    real(self)
    if self.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
core.Trainer.checkpoint = checkpoint_then_die
train_ddpm(DDPMTrainConfig(**FIELDS))
"""


def test_resume_after_sigkill_gives_the_same_epsilon_and_weights(tmp_path):
    from safetensors.torch import load_file

    kw = dict(max_train_steps=8, checkpointing_steps=2, use_ema=True, dp_augmentation_multiplicity=2)
    _train(tmp_path / "straight", **kw)
    fields = _ddpm_fields(tmp_path / "killed", **kw)
    code = textwrap.dedent(_KILL_CHILD).replace("FIELDS", repr(fields))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (tmp_path / "killed" / "train_summary.json").exists()
    _train(tmp_path / "killed", resume_from_checkpoint="latest", **kw)
    a, b = _summary(tmp_path / "straight"), _summary(tmp_path / "killed")
    assert b["steps"] == 8 and b["epsilon"] == a["epsilon"]
    wa = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "killed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_stopped_early_reports_the_epsilon_it_spent(tmp_path):
    _train(tmp_path / "short", max_train_steps=3)
    _train(tmp_path / "long", max_train_steps=6)
    assert 0 < _summary(tmp_path / "short")["epsilon"] < _summary(tmp_path / "long")["epsilon"]


def test_a_resume_on_changed_data_is_refused(tmp_path):
    cfg = TrainConfig(dp=True, dp_noise_multiplier=1.0, train_batch_size=2)
    dp = DPTraining(cfg, _Rows(10))
    state = dp.state()
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "medsd_checkpoint.json").write_text(json.dumps({"step": 2, "differential_privacy": state}))
    other = DPTraining(cfg, _Rows(11))
    with pytest.raises(MedsdConfigError, match="training data changed") as e:
        other.load_state(ckpt)
    assert "\n" not in str(e.value)
    (ckpt / "medsd_checkpoint.json").write_text(json.dumps({"step": 2}))
    with pytest.raises(MedsdConfigError, match="without --dp"):
        dp.load_state(ckpt)


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--dp"], "exactly one of --dp_target_epsilon"),
        (["--dp", "--dp_noise_multiplier", "1", "--dp_target_epsilon", "3"], "exactly one of"),
        (["--dp", "--dp_noise_multiplier", "1", "--mixed_precision", "fp16"], "fp16 is not supported"),
        (["--dp", "--dp_noise_multiplier", "1", "--gradient_accumulation_steps", "2"], "must be 1"),
        (["--dp", "--dp_noise_multiplier", "1", "--dp_unit", "study"], "--dp_unit"),
        (["--dp", "--dp_noise_multiplier", "1", "--dp_delta", "2"], "--dp_delta"),
        (["--dp", "--dp_target_epsilon", "0"], "--dp_target_epsilon"),
    ],
)
def test_settings_that_break_the_guarantee_are_refused_in_one_line(flags, match):
    with pytest.raises(MedsdConfigError, match=match) as e:
        parse_config(TrainConfig, flags)
    assert "\n" not in str(e.value)


def test_batch_statistics_and_multi_process_are_refused():
    cfg = TrainConfig(dp=True, dp_noise_multiplier=1.0, train_batch_size=2)
    dp = DPTraining(cfg, _Rows(10))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(MedsdConfigError, match="BatchNorm") as e:
        dp.wrap({"net": bn}, torch.optim.SGD(bn.parameters(), lr=0.1))
    assert "\n" not in str(e.value)

    class TwoProcesses:
        num_processes, mixed_precision = 2, "no"

    with pytest.raises(MedsdConfigError, match="multi-process"):
        start_dp(cfg, None, TwoProcesses())


def test_patient_unit_needs_patient_ids():
    cfg = TrainConfig(dp=True, dp_noise_multiplier=1.0, dp_unit="patient", train_batch_size=2)
    with pytest.raises(MedsdConfigError, match="patient id"):
        DPTraining(cfg, _Rows(10, [None] * 10))


def test_generated_dataset_card_carries_the_models_guarantee(tmp_path):
    from medsd.commands.dataset_card import write_dataset_card

    model = tmp_path / "model"
    model.mkdir()
    record = {"epsilon": 3.0, "delta": 1e-5, "unit": "patient", "accountant": "rdp", "steps": 100}
    (model / "train_summary.json").write_text(json.dumps({"differential_privacy": record}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png"}) + "\n")
    card = write_dataset_card(data, {"model": str(model), "family": "ddpm"}).read_text()
    assert "- differential-privacy" in card and "ε = 3" in card and "per patient" in card


def test_sd_lora_trains_privately_with_only_its_adapters(tmp_path):
    from safetensors.torch import load_file
    from sd_fixtures import quick_config, run_training

    from medsd.pipelines.random_sd import save_random_sd_pipeline

    base = save_random_sd_pipeline(tmp_path / "base")
    cfg = quick_config(
        base,
        tmp_path / "lora",
        phantom_count=16,
        max_train_steps=3,
        dp=True,
        dp_noise_multiplier=1.0,
        dp_augmentation_multiplicity=2,
    )
    task, result = run_training(cfg)
    rec = _summary(tmp_path / "lora")
    assert result.global_step == 3 and rec["steps"] == 3 and rec["epsilon"] > 0
    lora = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora)
    assert "- differential-privacy" in (tmp_path / "lora" / "README.md").read_text()


@pytest.mark.parametrize("task", ["sr", "inpaint"])
def test_cddpm_trains_privately(tmp_path, task):
    from test_cddpm_training import tiny_config

    from medsd.training.cddpm import CDDPMTask
    from medsd.training.core import train

    config = tiny_config(tmp_path, task, dp=True, dp_target_epsilon=5.0, dp_augmentation_multiplicity=2)
    result = train(CDDPMTask(config), config)
    rec = _summary(result.output_dir)
    assert result.global_step == 4 and 4.5 <= rec["epsilon"] <= 5.0 + 1e-6
    assert "## Differential privacy" in (result.output_dir / "README.md").read_text()


NIH = Path("/work/shared/data/nih_cxr14/metadata.csv")


@pytest.mark.skipif(not NIH.is_file(), reason="the NIH development images are not on this machine")
def test_per_patient_privacy_on_real_patient_ids(tmp_path):
    import csv

    _train(
        tmp_path / "run",
        train_data=str(NIH),
        label_column="label",
        patient_column="patient_id",
        max_samples=120,
        max_train_steps=2,
        dp_unit="patient",
        dp_max_images_per_patient=2,
    )
    rec = _summary(tmp_path / "run")
    assert rec["unit"] == "patient" and rec["max_images_per_patient"] == 2
    with open(NIH, newline="") as f:
        patients = {row["patient_id"] for row in csv.DictReader(f)}
    assert rec["n_units"] <= 120 and rec["n_units"] <= len(patients)
    assert "one patient's images" in (tmp_path / "run" / "README.md").read_text()
