"""MedPipeline.from_pretrained and the 1-channel TextToXRayPipeline on a tiny trained LoRA (offline, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sd_fixtures
import torch
from sd_fixtures import TINY_RESOLUTION

from medsd.pipelines.auto import MedPipeline
from medsd.pipelines.text2xray import TextToXRayPipeline

PROMPT = "a chest x-ray, opacity"
STEPS = 3

# pytest fixtures shared with test_sd_lora.py
single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base
trained_lora = sd_fixtures.trained_lora


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def xray_pipe(trained_lora) -> TextToXRayPipeline:
    pipe = MedPipeline.from_pretrained(trained_lora.output_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_folder_gives_one_channel_images(xray_pipe, trained_lora):
    assert isinstance(xray_pipe, TextToXRayPipeline)
    assert xray_pipe.info["base_model"] == str(trained_lora.base)
    assert xray_pipe.prompt_template == "a chest x-ray, {label}"
    assert xray_pipe.prompt_for("opacity") == PROMPT
    out = xray_pipe(PROMPT, num_inference_steps=STEPS, generator=_gen(), num_images_per_prompt=2)
    assert len(out.images) == 2 and out.prompts == [PROMPT, PROMPT]
    assert all(im.mode == "L" and im.size == (TINY_RESOLUTION, TINY_RESOLUTION) for im in out.images)


def test_output_types_agree(xray_pipe):
    kw = dict(num_inference_steps=STEPS, guidance_scale=4.0)
    pt = xray_pipe(PROMPT, generator=_gen(), output_type="pt", **kw).images
    assert pt.shape == (1, 1, TINY_RESOLUTION, TINY_RESOLUTION) and pt.min() >= -1 and pt.max() <= 1
    arr = xray_pipe(PROMPT, generator=_gen(), output_type="np", **kw).images
    assert arr.shape == (1, TINY_RESOLUTION, TINY_RESOLUTION) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, ((pt[:, 0] + 1) / 2).numpy(), atol=1e-5)
    u16 = xray_pipe(PROMPT, generator=_gen(), output_type="uint16", **kw).images
    assert u16.dtype == np.uint16 and abs(u16.astype(np.float64) / 65535 - arr).max() < 1e-4
    # phantoms were trained with WindowMapping(0, 1): native units are [0, 1]
    native = xray_pipe(PROMPT, generator=_gen(), output_type="native", **kw).images
    np.testing.assert_allclose(native, arr, atol=1e-5)


def test_seeded_and_lora_scale(xray_pipe, trained_lora):
    kw = dict(num_inference_steps=STEPS, output_type="np")
    a = xray_pipe(PROMPT, generator=_gen(3), **kw).images
    b = xray_pipe(PROMPT, generator=_gen(3), **kw).images
    c = xray_pipe(PROMPT, generator=_gen(4), **kw).images
    np.testing.assert_array_equal(a, b)
    assert abs(a - c).max() > 1e-3

    from diffusers import StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(trained_lora.base, safety_checker=None)
    base.set_progress_bar_config(disable=True)
    base_rgb = base(
        PROMPT, num_inference_steps=STEPS, guidance_scale=4.0, generator=_gen(3), output_type="np"
    ).images
    base_gray = base_rgb.mean(axis=-1)
    assert abs(a - base_gray).max() > 1e-3, "the LoRA should change the image"
    xray_pipe.lora_scale = 0.0
    try:
        off = xray_pipe(PROMPT, generator=_gen(3), **kw).images
    finally:
        xray_pipe.lora_scale = 1.0
    np.testing.assert_allclose(off, base_gray, atol=2e-3)


def test_scheduler_swap_and_to(xray_pipe):
    from diffusers import DPMSolverMultistepScheduler

    original = xray_pipe.scheduler
    xray_pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    try:
        assert isinstance(xray_pipe.components["scheduler"], DPMSolverMultistepScheduler)
        img = xray_pipe(PROMPT, num_inference_steps=2, generator=_gen(), output_type="np").images
        assert img.shape == (1, TINY_RESOLUTION, TINY_RESOLUTION) and np.isfinite(img).all()
    finally:
        xray_pipe.scheduler = original
    assert xray_pipe.to("cpu") is xray_pipe and xray_pipe.device.type == "cpu"


def test_base_model_override_and_fused_lora(trained_lora, tmp_path):
    moved = tmp_path / "lora_only"
    moved.mkdir()
    for name in ("pytorch_lora_weights.safetensors", "intensity_mapping.json"):
        (moved / name).write_bytes((trained_lora.output_dir / name).read_bytes())
    with pytest.raises(ValueError, match="base"):
        MedPipeline.from_pretrained(moved)
    pipe = MedPipeline.from_pretrained(moved, base_model=trained_lora.base)
    fused = MedPipeline.from_pretrained(trained_lora.output_dir, fuse_lora=True)
    kw = dict(
        num_inference_steps=STEPS,
        generator=None,
        output_type="np",
        height=TINY_RESOLUTION,
        width=TINY_RESOLUTION,
    )
    a = pipe(PROMPT, **{**kw, "generator": _gen(5)}).images
    b = fused(PROMPT, **{**kw, "generator": _gen(5)}).images
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_merged_folder_opens_as_text_to_xray(trained_lora):
    merged = MedPipeline.from_pretrained(trained_lora.output_dir / "merged")
    lora = MedPipeline.from_pretrained(trained_lora.output_dir)
    assert isinstance(merged, TextToXRayPipeline) and merged.info.get("merged") is True
    assert merged.intensity_mapping is not None
    a = merged(PROMPT, num_inference_steps=STEPS, generator=_gen(2), output_type="np").images
    b = lora(PROMPT, num_inference_steps=STEPS, generator=_gen(2), output_type="np").images
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_medsd_ddpm_folder_dispatches(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from medsd.pipelines.ddpm import MedDDPMPipeline

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )
    MedDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        tmp_path / "ddpm"
    )
    index = json.loads((tmp_path / "ddpm" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"  # a stock diffusers folder
    pipe = MedPipeline.from_pretrained(tmp_path / "ddpm", device="cpu")
    assert isinstance(pipe, MedDDPMPipeline)


def test_rejects_folders_that_are_not_models(tmp_path):
    from medsd.pipelines.folder import ModelFolderError

    with pytest.raises(ModelFolderError, match="is an empty folder"):
        MedPipeline.from_pretrained(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelFolderError, match="not a medsd model"):
        MedPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="unsupported"):
        MedPipeline.from_pretrained(tmp_path)
    with pytest.raises(TypeError):
        MedPipeline()
