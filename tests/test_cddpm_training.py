"""Each cDDPM task trains through the shared core ``train(task, config)`` and samples end to end on CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medsd.training.cddpm import CDDPMTask, CDDPMTrainConfig, main
from medsd.training.core import train


def tiny_config(tmp_path, task: str, **kw) -> CDDPMTrainConfig:
    base = dict(
        task=task,
        output_dir=str(tmp_path / task),
        resolution=16,
        phantom_count=24,
        block_out_channels=[8, 16],
        max_train_steps=4,
        train_batch_size=4,
        learning_rate=1e-3,
        num_train_timesteps=100,
        checkpointing_steps=0,
        validation_steps=0,
        num_validation_images=2,
        validation_inference_steps=2,
        logging_steps=2,
        report_to="none",
        mixed_precision="no",
        progress_bar=False,
        seed=0,
    )
    base.update(kw)
    return CDDPMTrainConfig(**base)


@pytest.mark.parametrize("task", ["sr", "denoise", "inpaint"])
def test_task_trains_saves_and_samples(tmp_path, task):
    from PIL import Image

    from medsd.pipelines.cddpm import MedCDDPMPipeline

    config = tiny_config(tmp_path, task, factor=2 * math.sqrt(2))
    cddpm = CDDPMTask(config)
    assert cddpm.unet.config.in_channels == 1 + {"sr": 1, "denoise": 1, "inpaint": 2}[task]
    result = train(cddpm, config)
    out = result.output_dir
    assert result.global_step == 4
    assert all(math.isfinite(loss) for _, loss in result.loss_history)
    meta = json.loads((out / "model_index.json").read_text())["medsd_metadata"]
    assert meta["task"] == task and meta["family"] == "cddpm"
    assert meta["train_scheduler"]["num_train_timesteps"] == 100
    # validation grid: rows condition | sample | target, one column per validation image
    grid = Image.open(next((out / "samples").glob("*.png")))
    assert grid.size == (2 * 16 + 2, 3 * 16 + 2 * 2)

    pipe = MedCDDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    clean = cddpm.dataset.get_batch([0, 1])["pixel_values"]
    degraded = cddpm.degradation.fixed(clean, [0, 1])
    res = pipe(
        degraded.condition[:, :1],
        mask=degraded.mask,
        num_inference_steps=2,
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        sampler="dpm",
    )
    assert res.images.shape == (4, 16, 16) and res.std.shape == (2, 16, 16)
    assert (res.images >= 0).all() and (res.images <= 1).all()


def test_degradation_is_applied_in_the_loss(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "inpaint")
    cddpm = CDDPMTask(config)
    seen = {}

    def spy(unet, x_t, cond, t):
        seen["cond"] = cond
        return torch.zeros_like(x_t, requires_grad=True)

    monkeypatch.setattr("medsd.pipelines.cddpm.denoise", spy)
    batch = cddpm.dataset.get_batch([0, 1, 2, 3], "cpu")
    loss = cddpm.loss(batch, {"unet": cddpm.unet}, None)
    assert seen["cond"].shape == (4, 2, 16, 16)
    assert seen["cond"][:, 1].sum() > 0  # the mask channel holds a mask
    assert 0.5 < loss.item() < 2  # MSE(eps, 0) ~ 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_follows_prediction_type(tmp_path, monkeypatch, prediction_type):
    """A network that outputs exactly the right target has zero loss; the scheduler saved with the model
    reads its output the same way."""
    config = tiny_config(tmp_path, "sr", prediction_type=prediction_type)
    cddpm = CDDPMTask(config)
    batch = cddpm.dataset.get_batch([0, 1, 2, 3], "cpu")
    clean = batch["pixel_values"].float()
    captured = {}

    def add_noise(x0, noise, t):
        captured.update(noise=noise, t=t)
        return type(cddpm.noise_scheduler).add_noise(cddpm.noise_scheduler, x0, noise, t)

    def oracle(unet, x_t, cond, t):
        noise, ts = captured["noise"], captured["t"]
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return clean
        return cddpm.noise_scheduler.get_velocity(clean, noise, ts)

    monkeypatch.setattr(cddpm.noise_scheduler, "add_noise", add_noise)
    monkeypatch.setattr("medsd.pipelines.cddpm.denoise", oracle)
    assert cddpm.loss(batch, {"unet": cddpm.unet}, None).item() < 1e-10
    assert cddpm.pipeline(cddpm.unet).scheduler.config.prediction_type == prediction_type


def test_main_parses_flags_and_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: denoise\nnoise_sigma: [0.1, 0.3]\nresolution: 16\n")
    from medsd.training.config import parse_config

    c = parse_config(CDDPMTrainConfig, ["--config", str(cfg), "--sp_amount", "0,0.1", "--factor", "2.83"])
    assert (
        c.task == "denoise" and c.noise_sigma == [0.1, 0.3] and c.sp_amount == [0.0, 0.1] and c.factor == 2.83
    )
    assert c.num_train_timesteps == 2000 and c.beta_schedule == "linear" and c.learning_rate == 1e-4
    with pytest.raises(ValueError):
        CDDPMTask(tiny_config(tmp_path, "deblur"))
    assert callable(main)
