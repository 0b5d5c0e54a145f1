"""MedDDPMPipeline: save/load through medsd and plain diffusers, scheduler swap, outputs, DDPM training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler

from medsd.data import WindowMapping
from medsd.models import LightUNet2DModel
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    train_sched = DDPMScheduler(num_train_timesteps=100)
    p = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(train_sched.config))
    p.intensity_mapping = WindowMapping(-1000.0, 400.0)  # e.g. HU
    p.set_progress_bar_config(disable=True)
    return p


def _sample(p, seed=0, **kw):
    return p(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(seed), **kw).images


def test_outputs_are_one_channel_in_every_type(pipe):
    pil = _sample(pipe)
    assert len(pil) == 2 and pil[0].mode == "L" and pil[0].size == (16, 16)
    arr = _sample(pipe, output_type="np")
    assert arr.shape == (2, 16, 16) and arr.min() >= 0 and arr.max() <= 1
    pt = _sample(pipe, output_type="pt")
    assert pt.shape == (2, 1, 16, 16)
    u16 = _sample(pipe, output_type="uint16")
    assert u16.dtype == np.uint16
    hu = _sample(pipe, output_type="native")
    assert hu.min() >= -1000 - 1e-3 and hu.max() <= 400 + 1e-3
    np.testing.assert_allclose(hu, -1000 + arr * 1400, rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="output_type"):
        _sample(pipe, output_type="rgb")


def test_same_seed_same_images_and_other_seed_differs(pipe):
    a, b, c = (
        _sample(pipe, 1, output_type="np"),
        _sample(pipe, 1, output_type="np"),
        _sample(pipe, 2, output_type="np"),
    )
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_roundtrip_through_medsd_and_plain_diffusers(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_medsd", "MedDDPMPipeline"]
    expected = _sample(pipe, 3, output_type="np")

    loaded = MedDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_sample(loaded, 3, output_type="np"), expected, atol=1e-5)
    assert loaded.intensity_mapping.to_dict() == pipe.intensity_mapping.to_dict()
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler) and loaded.scheduler.config.thresholding

    plain = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(plain).__name__ == "MedDDPMPipeline"
    plain.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_sample(plain, 3, output_type="np"), expected, atol=1e-5)

    from medsd.pipelines.auto import MedPipeline

    auto = MedPipeline.from_pretrained(str(tmp_path))
    auto.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_sample(auto, 3, output_type="np"), expected, atol=1e-5)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_scheduler_swap(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    out = _sample(pipe, output_type="np")
    assert out.shape == (2, 16, 16) and np.isfinite(out).all()


def test_default_steps_are_fast_unless_ddpm(pipe):
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    pipe(batch_size=1, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 25
    calls.clear()
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe(batch_size=1, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 100  # all training steps


def test_fast_scheduler_keeps_x0_in_range():
    """The medsd sampler clips x0 like DDPM's clip_sample; the stock swap does not."""
    cfg = DDPMScheduler(num_train_timesteps=1000).config
    ours, stock = fast_scheduler(cfg), DPMSolverMultistepScheduler.from_config(cfg)
    assert ours.config.thresholding and ours.config.sample_max_value == 1.0
    assert not stock.config.thresholding
    # A model that predicts far too little noise at high t makes x0 = x_t / sqrt(abar_t) explode.
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    bad_eps = torch.zeros_like(x)
    x0 = {}
    for name, sched in (("ours", ours), ("stock", stock)):
        sched.set_timesteps(10)
        # One public step; multistep solvers keep their converted x0 predictions in model_outputs.
        sched.step(bad_eps, sched.timesteps[0], x, generator=torch.Generator().manual_seed(0))
        x0[name] = sched.model_outputs[-1]
    assert x0["ours"].abs().max() <= 1.0 + 1e-6
    assert x0["stock"].abs().max() > 10


def test_ddpm_training_end_to_end(tmp_path):
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    cfg = DDPMTrainConfig(
        output_dir=str(tmp_path / "run"),
        resolution=16,
        phantom_count=32,
        data_split="all",
        block_out_channels=[8, 16],
        max_train_steps=6,
        train_batch_size=4,
        checkpointing_steps=3,
        validation_steps=6,
        num_validation_images=4,
        validation_inference_steps=3,
        logging_steps=2,
        report_to="none",
        progress_bar=False,
        use_ema=True,
    )
    from medsd.models import presets

    presets.PRESETS["light-tiny"]["norm_num_groups"], old = (
        4,
        presets.PRESETS["light-tiny"]["norm_num_groups"],
    )
    try:
        result = train_ddpm(cfg)
    finally:
        presets.PRESETS["light-tiny"]["norm_num_groups"] = old
    assert result.global_step == 6
    out = tmp_path / "run"
    assert (out / "samples" / "step-0000006.png").is_file()
    assert "medsd" in (out / "README.md").read_text()
    loaded = MedDDPMPipeline.from_pretrained(out)
    assert loaded.intensity_mapping is not None and loaded.medsd_metadata["family"] == "ddpm"
    assert loaded.unet.config.block_out_channels == [8, 16] or tuple(
        loaded.unet.config.block_out_channels
    ) == (8, 16)


def test_ddpm_trains_from_a_streamed_folder_and_resumes(tmp_path):
    """Large corpora stream through datasets (no full copy in memory); resume continues the stream."""
    from PIL import Image

    from medsd.data import chest_phantom
    from medsd.training.core import list_checkpoints
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((chest_phantom(16, seed=i) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    common = dict(
        output_dir=str(tmp_path / "run"),
        train_data=str(folder),
        streaming=True,
        data_split="all",
        resolution=16,
        model="diffusers-small",
        block_out_channels=[8, 16, 16],
        train_batch_size=4,
        checkpointing_steps=2,
        validation_steps=0,
        logging_steps=1,
        report_to="none",
        progress_bar=False,
    )
    import medsd.models.presets as presets

    old = presets.PRESETS["diffusers-small"]["norm_num_groups"]
    presets.PRESETS["diffusers-small"]["norm_num_groups"] = 4
    try:
        first = train_ddpm(DDPMTrainConfig(max_train_steps=2, **common))
        assert first.global_step == 2
        (tmp_path / "run" / "train_summary.json").unlink()
        (tmp_path / "run" / "model_index.json").unlink()
        resumed = train_ddpm(DDPMTrainConfig(max_train_steps=5, resume_from_checkpoint="latest", **common))
    finally:
        presets.PRESETS["diffusers-small"]["norm_num_groups"] = old
    assert resumed.global_step == 5
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "checkpoint-4"


def test_augmentation_runs_per_batch_on_the_cached_tensor():
    import torch

    from medsd.training.data_args import DeviceAugmentedCache, build_training_data
    from medsd.training.ddpm import DDPMTrainConfig

    cfg = DDPMTrainConfig(
        resolution=16, phantom_count=16, data_split="all", affine_jitter=True, random_flip=True
    )
    ds, _ = build_training_data(cfg)
    assert isinstance(ds, DeviceAugmentedCache)
    before = ds.cache.images.clone()
    a = ds.get_batch([0, 1, 2, 3], "cpu")["pixel_values"]
    b = ds.get_batch([0, 1, 2, 3], "cpu")["pixel_values"]
    assert a.shape == (4, 1, 16, 16) and not torch.allclose(a, b)  # fresh jitter every batch
    assert torch.equal(ds.cache.images, before)  # the cache itself is never augmented
    plain, _ = build_training_data(DDPMTrainConfig(resolution=16, phantom_count=16, data_split="all"))
    torch.testing.assert_close(
        plain.get_batch([0], "cpu")["pixel_values"], plain.get_batch([0], "cpu")["pixel_values"]
    )


@pytest.mark.parametrize("fmt", ["png8", "png16", "dicom"])
def test_sample_command_writes_original_units(pipe, tmp_path, fmt):
    from medsd.cli import main
    from medsd.data import read_image

    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = [
        "sample",
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(out),
        "--num_images",
        "2",
        "--num_inference_steps",
        "5",
        "--format",
        fmt,
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    files = sorted(f for f in out.glob("sample_*") if f.suffix != ".json")  # each has a NAME.json sidecar
    assert len(files) == 2 and len(list(out.glob("sample_*.json"))) == 2
    # image k is drawn with its own generator seeded seed + k (medsd generate's convention)
    gen = [torch.Generator().manual_seed(0)]
    expected = pipe(batch_size=1, num_inference_steps=5, generator=gen, output_type="native").images[0]
    img = read_image(files[0])
    if fmt == "dicom":  # HU written through the saved mapping come back within rescale precision
        np.testing.assert_allclose(img.array, expected, atol=1.0)
    elif fmt == "png16":  # 16-bit levels of the [-1000, 400] window
        np.testing.assert_allclose(-1000 + img.array / 65535 * 1400, expected, atol=0.1)
    written = {f.name: f.read_bytes() for f in out.glob("sample_*")}
    assert main(args) == 0  # the same command again: every image verifies, nothing is drawn or rewritten
    assert {f.name: f.read_bytes() for f in out.glob("sample_*")} == written


def test_train_labels_selects_one_class():
    from medsd.training.data_args import build_training_data
    from medsd.training.ddpm import DDPMTrainConfig

    cfg = DDPMTrainConfig(resolution=16, phantom_count=40, data_split="all", train_labels="opacity")
    ds, _ = build_training_data(cfg, cache=False)
    assert 0 < len(ds) < 40 and set(ds.labels) == {"opacity"}
    with pytest.raises(ValueError, match="labels present"):
        build_training_data(
            DDPMTrainConfig(resolution=16, phantom_count=8, train_labels="pneumonia"), cache=False
        )


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_ddpm_trains_in_mixed_precision_on_cuda(tmp_path, precision):
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    cfg = DDPMTrainConfig(
        output_dir=str(tmp_path / precision),
        resolution=32,
        phantom_count=64,
        data_split="all",
        max_train_steps=20,
        train_batch_size=8,
        mixed_precision=precision,
        channels_last=True,
        checkpointing_steps=10,
        validation_steps=20,
        num_validation_images=4,
        logging_steps=5,
        report_to="none",
        progress_bar=False,
        use_ema=True,
    )
    result = train_ddpm(cfg)
    losses = [loss for _, loss in result.loss_history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    loaded = MedDDPMPipeline.from_pretrained(tmp_path / precision)
    assert all(p.dtype == torch.float32 for p in loaded.unet.parameters())


def test_skipped_bad_images_are_listed_when_training_ends(tmp_path, capsys):
    from PIL import Image

    from medsd.data import MedImageError, chest_phantom
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray((chest_phantom(16, seed=i) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = dict(
        train_data=str(folder),
        data_split="all",
        resolution=16,
        model="light-tiny",
        max_train_steps=1,
        train_batch_size=4,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        progress_bar=False,
    )
    with pytest.raises(MedImageError, match="broken.png"):
        train_ddpm(DDPMTrainConfig(output_dir=str(tmp_path / "a"), **common))
    train_ddpm(DDPMTrainConfig(output_dir=str(tmp_path / "b"), skip_bad_images=True, **common))
    out = capsys.readouterr().out
    assert "1 image(s) were skipped" in out and "broken.png" in out


def test_bf16_autocast_runs_the_unet_in_bf16_and_keeps_float32_images(pipe):
    full = _sample(pipe, output_type="pt")
    fast = _sample(pipe, output_type="pt", autocast_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    diff = (fast - full).abs().max().item()
    assert 0 < diff < 0.1  # bf16 arithmetic (so not identical), close to fp32
