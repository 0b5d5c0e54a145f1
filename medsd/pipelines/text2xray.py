"""1-channel text-to-X-ray generation with a Stable Diffusion pipeline (base + LoRA, or merged).

:class:`TextToXRayPipeline` is a diffusers ``StableDiffusionPipeline``: it runs it, averages the RGB
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
from diffusers import StableDiffusionPipeline
from diffusers.utils import BaseOutput

from medsd.data.prompts import PromptTemplate

from .base import MedPipelineMixin
from .output import postprocess

DEFAULT_GUIDANCE_SCALE = 4.0
DEFAULT_NUM_INFERENCE_STEPS = 75


@dataclass
class TextToXRayPipelineOutput(BaseOutput):
    """``images``: PIL "L" images, or arrays / tensors as asked by ``output_type``; ``prompts``: one per image."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    prompts: list[str]


class TextToXRayPipeline(MedPipelineMixin, StableDiffusionPipeline):
    """Text-to-X-ray generation with 1-channel output: a diffusers ``StableDiffusionPipeline``.

    Takes the Stable Diffusion components (no safety checker by default: these are synthetic radiographs)
    plus three optional arguments kept in the diffusers config:

    Args:
        intensity_mapping: the mapping saved with the model (for ``output_type="native"``).
        medsd_metadata: the model's ``medsd_lora.json`` (base model, prompt template, resolution, ...);
            also available as ``info``.
        lora_scale: strength of a loaded (unfused) LoRA; 0 gives the base model, 1 the trained LoRA.

    Saved folders name ``StableDiffusionPipeline``: stock diffusers opens them; medsd reopens them as this class.
    """

    _folder_class_names = ("StableDiffusionPipeline",)

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = False,
        intensity_mapping: Any = None,
        medsd_metadata: dict[str, Any] | None = None,
        lora_scale: float = 1.0,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_medsd_state(intensity_mapping, medsd_metadata)
        self.register_to_config(lora_scale=float(lora_scale))

    def _saved_class_name(self) -> str | list[str]:
        return "StableDiffusionPipeline"

    @property
    def info(self) -> dict[str, Any]:
        """The model's medsd metadata (``medsd_lora.json``)."""
        return self.medsd_metadata

    @property
    def lora_scale(self) -> float:
        return float(self.config.get("lora_scale", 1.0))

    @lora_scale.setter
    def lora_scale(self, scale: float) -> None:
        self.register_to_config(lora_scale=float(scale))

    @property
    def prompt_template(self) -> str | None:
        return self.info.get("prompt_template")

    def _has_unfused_lora(self) -> bool:
        return any(self.get_list_adapters().values())

    def prompt_for(self, label: str, **fields: Any) -> str:
        """The training prompt of a label, through the saved prompt template (``"{label}"`` without one);
        formatted like training prompts were (``medsd.data.PromptTemplate``: labels lower-cased, parts with
        missing fields dropped)."""
        return PromptTemplate(self.prompt_template or "{label}").format(label=label, **fields) or ""

    # -- generation --------------------------------------------------------------------------------
    def default_num_inference_steps(self) -> int:
        """The steps the model was saved with (``medsd_info``), else 75."""
        return int(self.info.get("default_num_inference_steps") or DEFAULT_NUM_INFERENCE_STEPS)

    def default_guidance_scale(self) -> float:
        """The guidance scale the model was saved with (``medsd_info``), else 4."""
        return float(self.info.get("default_guidance_scale") or DEFAULT_GUIDANCE_SCALE)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        return_dict: bool = True,
        autocast_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TextToXRayPipelineOutput | tuple:
        """Generate X-rays; ``output_type``: pil (mode "L"), np ([B, H, W] in [0, 1]), uint16, native, pt.
        Steps and guidance default to the saved ones (:meth:`default_num_inference_steps`,
        :meth:`default_guidance_scale`); ``autocast_dtype`` runs the networks under ``torch.autocast``."""
        num_inference_steps = num_inference_steps or self.default_num_inference_steps()
        guidance_scale = self.default_guidance_scale() if guidance_scale is None else guidance_scale
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
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            rgb = (
                super()
                .__call__(
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
                )
                .images
            )
        gray = rgb.float().mean(dim=1, keepdim=True) * 2 - 1
        images = postprocess(gray, output_type, self.intensity_mapping)
        expanded = [p for p in prompts for _ in range(num_images_per_prompt)]
        if not return_dict:
            return (images,)
        return TextToXRayPipelineOutput(images=images, prompts=expanded)


__all__ = ["TextToXRayPipeline", "TextToXRayPipelineOutput"]
