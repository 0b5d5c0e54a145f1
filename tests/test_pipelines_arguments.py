"""The three pipelines take diffusers' argument names (``num_images_per_prompt``, ``height``/``width``,
``num_inference_steps``, ``generator``) plus ``autocast_dtype``, and each gives its own default step count."""

from __future__ import annotations

import pytest
import sd_fixtures
import torch
from diffusers import DDPMScheduler

from medsd.data.degradations import Degradation
from medsd.models import LightUNet2DModel
from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler
from medsd.pipelines.ddpm import DEFAULT_FAST_STEPS, MedDDPMPipeline, fast_scheduler
from medsd.pipelines.samplers import FAST_STEPS

single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base


def _unet(in_channels: int = 1) -> LightUNet2DModel:
    torch.manual_seed(0)
    return LightUNet2DModel(
        sample_size=16, in_channels=in_channels, block_out_channels=(8, 16), norm_num_groups=4
    )


def test_ddpm_height_width_and_default_steps():
    train = DDPMScheduler(num_train_timesteps=40)
    pipe = MedDDPMPipeline(unet=_unet(), scheduler=fast_scheduler(train.config))
    assert pipe.default_num_inference_steps() == DEFAULT_FAST_STEPS
    out = pipe(batch_size=2, height=8, width=16, num_inference_steps=1, output_type="np").images
    assert out.shape == (2, 8, 16)
    assert pipe(batch_size=1, image_size=8, num_inference_steps=1, output_type="np").images.shape == (1, 8, 8)
    ancestral = MedDDPMPipeline(unet=_unet(), scheduler=train)
    assert ancestral.default_num_inference_steps() == 40


def test_cddpm_num_images_per_prompt_is_num_samples_and_steps_follow_the_sampler():
    d = Degradation("denoise")
    pipe = MedCDDPMPipeline(unet=_unet(1 + d.cond_channels), scheduler=paper_scheduler(30))
    pipe.medsd_metadata = {"task": "denoise", "cond_channels": d.cond_channels, "degradation": d.to_dict()}
    assert pipe.default_num_inference_steps() == 30  # ancestral DDPM: every training step, as the paper
    assert pipe.default_num_inference_steps("ddim") == FAST_STEPS["ddim"]
    x = torch.rand(2, 1, 16, 16) * 2 - 1

    def call(**kw):
        g = torch.Generator().manual_seed(0)
        return pipe(image=x, num_inference_steps=2, generator=g, output_type="pt", sampler="ddim", **kw)

    new, old = call(num_images_per_prompt=3), call(num_samples=3)
    assert new.images.shape == (6, 1, 16, 16) and new.mean.shape == (2, 1, 16, 16)
    assert torch.equal(new.images, old.images)  # the former name still works, the same draw
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        call(num_images_per_prompt=0)


def test_text_to_xray_defaults_from_the_saved_model_and_autocast(tiny_sd_base):
    from medsd.pipelines.auto import MedPipeline
    from medsd.pipelines.random_sd import TINY_RESOLUTION

    pipe = MedPipeline.from_pretrained(tiny_sd_base)
    pipe.set_progress_bar_config(disable=True)
    saved = pipe.info.get("default_num_inference_steps")
    assert pipe.default_num_inference_steps() == int(saved or 75)
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    common = dict(num_inference_steps=1, height=TINY_RESOLUTION, width=TINY_RESOLUTION, output_type="np")
    fp32 = pipe("a chest x-ray", num_images_per_prompt=2, generator=g, **common).images
    assert fp32.shape == (2, TINY_RESOLUTION, TINY_RESOLUTION)
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    bf16 = pipe(
        "a chest x-ray", num_images_per_prompt=2, generator=g, autocast_dtype=torch.bfloat16, **common
    )
    assert bf16.images.shape == fp32.shape and not (bf16.images == fp32).all()  # autocast did run
