"""Image-conditioned DDPM (Med-cDiff): conditional denoiser, pipeline, save/load, training on the shared core."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsd.data.degradations import Degradation
from medsd.data.intensity import WindowMapping
from medsd.models import LightUNet2DModel, build_unet
from medsd.pipelines.cddpm import (
    MedCDDPMPipeline,
    denoise,
    paper_scheduler,
    sample_statistics,
)

SIZE = 16


def tiny_unet(cond_channels: int = 1, seed: int = 0) -> LightUNet2DModel:
    torch.manual_seed(seed)
    return LightUNet2DModel(
        sample_size=SIZE, in_channels=1 + cond_channels, block_out_channels=(8, 16), norm_num_groups=8
    )


def tiny_pipe(task: str = "sr", t: int = 50) -> MedCDDPMPipeline:
    d = Degradation(task)
    pipe = MedCDDPMPipeline(unet=tiny_unet(d.cond_channels), scheduler=paper_scheduler(t))
    pipe.medsd_metadata = {"task": task, "cond_channels": d.cond_channels, "degradation": d.to_dict()}
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_paper_scheduler_settings():
    s = paper_scheduler()
    assert s.config.num_train_timesteps == 2000 and s.config.beta_schedule == "linear"
    assert s.config.variance_type == "fixed_large"  # sigma_t^2 = beta_t
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)


@pytest.mark.parametrize("kind", ["light", "diffusers"])
def test_conditional_unet_sees_the_condition(kind):
    if kind == "light":
        unet = tiny_unet(2)
    else:
        unet = build_unet("diffusers-small", sample_size=SIZE, in_channels=3, block_out_channels=(8, 16, 16))
    assert unet.config.in_channels == 3
    unet.eval()
    x, t = images(2), torch.tensor([10, 500])
    y1, y2 = images(2, 1).repeat(1, 2, 1, 1), images(2, 2).repeat(1, 2, 1, 1)
    with torch.no_grad():
        a, b, a2 = denoise(unet, x, y1, t), denoise(unet, x, y2, t), denoise(unet, x, y1, t)
    assert a.shape == x.shape
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError):
        denoise(unet, x, y1[:1], t)


def test_tiny_model_overfits_a_fixed_pair():
    torch.manual_seed(0)
    unet = tiny_unet(1)
    sched = paper_scheduler(100)
    clean = images(1)
    cond = Degradation("sr", factor=4)(clean).condition
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 1, SIZE, SIZE, generator=g)
    t = torch.tensor([5, 30, 60, 95])
    losses = []
    for _ in range(40):
        x_t = sched.add_noise(clean.expand(4, -1, -1, -1), noise, t)
        loss = F.mse_loss(denoise(unet, x_t, cond.expand(4, -1, -1, -1), t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("sampler", [None, "ddim", "dpm"])
def test_inpainting_keeps_known_pixels_exactly(sampler):
    pipe = tiny_pipe("inpaint")
    x = images(2)
    mask = Degradation("inpaint", mask_kind="box")(x, 0).mask
    g = torch.Generator().manual_seed(0)
    out = pipe(
        x, mask=mask, num_inference_steps=4, num_samples=2, generator=g, output_type="pt", sampler=sampler
    )
    known = (mask < 0.5).repeat_interleave(2, 0)
    xs = x.repeat_interleave(2, 0)
    assert torch.equal(out.images[known], xs[known])
    assert not torch.equal(out.images[~known], xs[~known])
    assert torch.equal(out.mean[mask < 0.5], x[mask < 0.5])
    free = pipe(
        x,
        mask=mask,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        sampler=sampler,
        keep_known_pixels=False,
    )
    assert not torch.equal(free.images[mask < 0.5], x[mask < 0.5])


def test_mean_and_std_maps():
    pipe = tiny_pipe("denoise")
    x = images(2)
    out = pipe(
        x, num_inference_steps=3, num_samples=3, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert out.images.shape == (6, 1, SIZE, SIZE)
    assert out.mean.shape == (2, 1, SIZE, SIZE) and out.std.shape == (2, 1, SIZE, SIZE)
    samples = out.images.reshape(2, 3, 1, SIZE, SIZE)
    assert torch.allclose(out.mean, samples.mean(1), atol=1e-6)
    assert torch.allclose(out.std, samples.std(1, unbiased=False), atol=1e-6)
    assert out.std.max() > 0
    np_out = pipe(
        x, num_inference_steps=3, num_samples=3, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert np_out.images.shape == (6, SIZE, SIZE) and np_out.mean.shape == (2, SIZE, SIZE)
    assert np_out.std.shape == (2, SIZE, SIZE) and np.allclose(
        np_out.std, out.std[:, 0].numpy() / 2, atol=1e-6
    )
    single = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert single.mean is None and single.std is None


def test_std_is_zero_when_all_samples_are_equal():
    same = images(2).unsqueeze(1).repeat(1, 4, 1, 1, 1)
    mean, std = sample_statistics(same)
    assert torch.equal(mean, same[:, 0]) and torch.equal(std, torch.zeros_like(std))
    # through the pipeline: inpainting with nothing missing returns the input for every sample
    pipe = tiny_pipe("inpaint")
    x = images(2)
    out = pipe(
        x,
        mask=torch.zeros(2, 1, SIZE, SIZE),
        num_inference_steps=2,
        num_samples=3,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out.std, torch.zeros(2, 1, SIZE, SIZE))
    assert torch.equal(out.mean, x)


def test_sr_accepts_low_resolution_input_and_checks_task():
    pipe = tiny_pipe("sr")
    low = torch.rand(1, 1, 4, 4) * 2 - 1
    out = pipe(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 1, SIZE, SIZE) and out.condition.shape == (1, 1, SIZE, SIZE)
    pil = pipe(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert pil.images[0].size == (SIZE, SIZE) and pil.images[0].mode == "L"
    with pytest.raises(ValueError):
        pipe(low, task="inpaint", num_inference_steps=2)
    with pytest.raises(ValueError):
        tiny_pipe("inpaint")(images(1), num_inference_steps=2)  # inpainting without a mask


def test_save_load_round_trip_gives_identical_output(tmp_path):
    pipe = tiny_pipe("inpaint")
    pipe.intensity_mapping = WindowMapping(-1000, 400)
    x = images(2)
    mask = Degradation("inpaint")(x, 3).mask

    def run(p):
        return p(
            x,
            mask=mask,
            num_inference_steps=5,
            num_samples=2,
            output_type="pt",
            generator=torch.Generator().manual_seed(7),
        ).images

    ref = run(pipe)
    pipe.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model_index.json").read_text())["medsd_metadata"]
    assert meta["task"] == "inpaint" and meta["cond_channels"] == 2
    loaded = MedCDDPMPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.task == "inpaint" and loaded.intensity_mapping == pipe.intensity_mapping
    assert loaded.scheduler.config.variance_type == "fixed_large"
    assert torch.equal(run(loaded), ref)
    assert not torch.equal(
        ref,
        pipe(
            x,
            mask=mask,
            num_inference_steps=5,
            num_samples=2,
            output_type="pt",
            generator=torch.Generator().manual_seed(8),
        ).images,
    )
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(tmp_path / "m", trust_remote_code=True)
    plain.set_progress_bar_config(disable=True)
    assert type(plain).__name__ == "MedCDDPMPipeline" and plain.task == "inpaint"  # inferred from 2 channels
    assert torch.equal(run(plain), ref)


def test_bf16_autocast_runs_the_unet_in_bf16_and_keeps_float32_images():
    pipe, cond = tiny_pipe("denoise", t=20), images(1)

    def run(**kw):
        g = torch.Generator().manual_seed(0)
        return pipe(cond, num_inference_steps=5, generator=g, output_type="pt", **kw).images

    full, fast = run(), run(autocast_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    assert 0 < (fast - full).abs().max().item() < 0.1
