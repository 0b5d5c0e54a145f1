"""1-channel text-to-X-ray generation with a Stable Diffusion pipeline (base + LoRA, or merged).

:class:`TextToXRayPipeline` wraps a diffusers ``StableDiffusionPipeline``: it runs it, averages the RGB
output to one channel and converts it with :func:`medsd.pipelines.output.postprocess` (PIL "L", float
arrays, 16-bit, or native units through the intensity mapping saved with the model). Defaults follow
RoentGen: guidance scale 4 and 75 denoising steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from .output import postprocess

DEFAULT_GUIDANCE_SCALE = 4.0
DEFAULT_NUM_INFERENCE_STEPS = 75


@dataclass
class TextToXRayPipelineOutput(BaseOutput):
    """``images``: PIL "L" images, or arrays / tensors as asked by ``output_type``; ``prompts``: one per image."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    prompts: list[str]


class TextToXRayPipeline:
    """Text-to-X-ray generation with 1-channel output.

    Args:
        pipe: a ``StableDiffusionPipeline`` (LoRA loaded or merged).
        intensity_mapping: the mapping saved with the model (for ``output_type="native"``).
        info: the model's ``medsd_lora.json`` (base model, prompt template, resolution, ...).
        lora_scale: strength of a loaded (unfused) LoRA; 0 gives the base model, 1 the trained LoRA.
    """

    def __init__(
        self,
        pipe: Any,
        intensity_mapping: Any = None,
        info: dict[str, Any] | None = None,
        lora_scale: float = 1.0,
    ):
        self.pipe = pipe
        self.intensity_mapping = intensity_mapping
        self.info = dict(info or {})
        self.lora_scale = float(lora_scale)

    # -- diffusers-like surface ------------------------------------------------------------------
    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self.pipe.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.dtype

    @property
    def components(self) -> dict[str, Any]:
        return self.pipe.components

    @property
    def prompt_template(self) -> str | None:
        return self.info.get("prompt_template")

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> TextToXRayPipeline:
        """Move (and cast) the wrapped pipeline, e.g. ``.to("cuda", torch.float16)``; returns self."""
        if isinstance(device, torch.dtype) and dtype is None:
            device, dtype = None, device
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        self.pipe.to(**kwargs)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.pipe.set_progress_bar_config(**kwargs)

    def __getattr__(self, name: str) -> Any:
        # enable_model_cpu_offload, enable_attention_slicing, vae, unet, ...: the wrapped pipeline's.
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)

    def _has_unfused_lora(self) -> bool:
        get = getattr(self.pipe, "get_list_adapters", None)
        try:
            return bool(get and any(get().values()))
        except Exception:  # pragma: no cover - pipelines without the LoRA mixin
            return False

    def prompt_for(self, label: str, **fields: Any) -> str:
        """The training prompt of a label, through the saved prompt template (``"{label}"`` without one);
        formatted like training prompts were (``medsd.data.PromptTemplate``: labels lower-cased, parts with
        missing fields dropped)."""
        from medsd.data.datasets import PromptTemplate

        return PromptTemplate(self.prompt_template or "{label}").format(label=label, **fields) or ""

    # -- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> TextToXRayPipelineOutput | tuple:
        """Generate X-rays; ``output_type``: pil (mode "L"), np ([B, H, W] in [0, 1]), uint16, native, pt."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(negative_prompt, str):  # diffusers wants a list when the prompts are a list
            negative_prompt = [negative_prompt] * len(prompts)
        resolution = self.info.get("resolution")
        height = height or resolution
        width = width or resolution
        if self.lora_scale != 1.0 and self._has_unfused_lora():
            cak = dict(kwargs.pop("cross_attention_kwargs", None) or {})
            cak.setdefault("scale", self.lora_scale)
            kwargs["cross_attention_kwargs"] = cak
        rgb = self.pipe(
            prompts,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            output_type="pt",
            **kwargs,
        ).images
        gray = rgb.float().mean(dim=1, keepdim=True) * 2 - 1
        images = postprocess(gray, output_type, self.intensity_mapping)
        expanded = [p for p in prompts for _ in range(num_images_per_prompt)]
        if not return_dict:
            return (images,)
        return TextToXRayPipelineOutput(images=images, prompts=expanded)

    def __repr__(self) -> str:
        base = self.info.get("base_model", "?")
        return f"TextToXRayPipeline(base_model={base!r}, lora_scale={self.lora_scale}, device={self.device})"


__all__ = ["TextToXRayPipeline", "TextToXRayPipelineOutput"]
