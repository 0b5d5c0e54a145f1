"""Sampler and family knowledge in one place: sampler names -> diffusers schedulers, pipeline classes -> families.

A sampler is built from the training scheduler's config. Pixel-space models (DDPM, cDDPM: images in
[-1, 1]) get x0 clipped to the data range (see :func:`medsd.pipelines.ddpm.fast_scheduler` for why);
latent-space models (Stable Diffusion) get the stock diffusers configuration. Adding a sampler is one entry
in :data:`PIXEL_SAMPLERS` and :data:`LATENT_SAMPLERS` (UniPC was added so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from .ddpm import fast_scheduler

FAMILIES = {
    "MedDDPMPipeline": "ddpm",
    "DDPMPipeline": "ddpm",
    "MedCDDPMPipeline": "cddpm",
    "StableDiffusionPipeline": "text2xray",
    "TextToXRayPipeline": "text2xray",
}
"""Pipeline class (as ``model_index.json`` or ``type(pipe)`` names it) -> medsd family."""
LORA_FAMILY = "text2xray"
"""The family of a LoRA folder (``pytorch_lora_weights.safetensors`` on a Stable Diffusion base)."""


def _ddim(config: Any) -> DDIMScheduler:
    return DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=True)


def _unipc(config: Any) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler.from_config(
        config,
        predict_x0=True,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        timestep_spacing="trailing",
        lower_order_final=True,
    )


PIXEL_SAMPLERS: dict[str, Callable[[Any], Any]] = {
    "ddpm": DDPMScheduler.from_config,
    "ddim": _ddim,
    "dpm": fast_scheduler,
    "unipc": _unipc,
}
LATENT_SAMPLERS: dict[str, Callable[[Any], Any]] = {
    "ddpm": DDPMScheduler.from_config,
    "ddim": DDIMScheduler.from_config,
    "dpm": DPMSolverMultistepScheduler.from_config,
    "unipc": UniPCMultistepScheduler.from_config,
}
SAMPLER_NAMES = tuple(PIXEL_SAMPLERS)
FAST_STEPS = {"ddim": 50, "dpm": 25, "unipc": 25}
"""Default steps of the fast samplers where a pipeline has no default of its own (ancestral DDPM: all)."""


def make_sampler(name: str, train_scheduler_config: Any, pixel_space: bool = True) -> Any:
    """The scheduler ``name`` built from a training scheduler config."""
    table = PIXEL_SAMPLERS if pixel_space else LATENT_SAMPLERS
    if name not in table:
        raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {name!r}")
    return table[name](train_scheduler_config)


def sampler_name(scheduler: Any) -> str:
    """The name of a scheduler instance's sampler (by class)."""
    classes = {
        DDPMScheduler: "ddpm",
        DDIMScheduler: "ddim",
        DPMSolverMultistepScheduler: "dpm",
        UniPCMultistepScheduler: "unipc",
    }
    return next((n for c, n in classes.items() if isinstance(scheduler, c)), "dpm")


def family_of_class(class_name: str | None) -> str | None:
    """The medsd family of a pipeline class name (None for a class medsd does not open)."""
    return FAMILIES.get(class_name or "")


__all__ = ["FAMILIES", "SAMPLER_NAMES", "family_of_class", "make_sampler", "sampler_name"]
