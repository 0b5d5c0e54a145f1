"""Unconditional 1-channel DDPM pipeline for CT and X-ray, with a sound fast sampler by default."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .base import MedUNetPipeline
from .output import postprocess

DEFAULT_FAST_STEPS = 25


@dataclass
class MedImagePipelineOutput(BaseOutput):
    """``images``: PIL "L" images, or arrays/tensors as asked by ``output_type``."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def fast_scheduler(train_scheduler_config: Any) -> DPMSolverMultistepScheduler:
    """SDE-DPM-Solver++(2M) set up to sample pixel-space images soundly in 25 steps or fewer.

    The usual ``DPMSolverMultistepScheduler.from_config(ddpm.config)`` swap fails for two reasons, both
    measured in ``benchmarks/fast_sampler.py`` (docs/ddpm.md has the table):

    1. It silently drops DDPM's ``clip_sample=True``: DPM-Solver++ then trusts every x0 prediction, and a
       model still imprecise at high noise predicts x0 far outside [-1, 1] (x0 = x_t / sqrt(abar_t) - ...
       divides by ~0.006 at t = 999); the multistep update carries that into all-black, all-white or flat
       images. ``thresholding=True`` with ``sample_max_value=1`` clips x0 to the data range, as DDPM does.
    2. It is a deterministic (probability-flow ODE) solver. DDPM's ancestral sampling re-injects noise at
       every step, which corrects the model's errors; an ODE solver accumulates them. With clipping alone,
       DDIM and DPM-Solver++ still gave 27-100% flat or noisy images on an under-trained model; the SDE
       variant of DPM-Solver++, which adds noise like ancestral sampling, gave about 1%.

    Trailing timestep spacing starts the solver at the last training step, where x_T really is N(0, I).
    """
    return DPMSolverMultistepScheduler.from_config(
        train_scheduler_config,
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        timestep_spacing="trailing",
        lower_order_final=True,
        final_sigmas_type="zero",
    )


class MedDDPMPipeline(MedUNetPipeline):
    """Generate 1-channel medical images with an unconditional denoising U-Net.

    Args:
        unet: ``LightUNet2DModel`` or diffusers ``UNet2DModel`` predicting noise (or v / x0 as its
            scheduler's ``prediction_type`` says).
        scheduler: any diffusers scheduler; medsd saves :func:`fast_scheduler` as the default.
        intensity_mapping: the training data's mapping (an ``IntensityMapping`` or its ``to_dict()``).
        medsd_metadata: medsd metadata (family, training scheduler, data).

    A folder whose U-Net is a diffusers ``UNet2DModel`` is saved as a stock ``DDPMPipeline`` folder:
    ``diffusers.DDPMPipeline.from_pretrained(folder)`` opens it without medsd.
    """

    _folder_class_names = ("DDPMPipeline",)
    """Class names of the folders this class opens besides its own (stock diffusers DDPM folders)."""

    def _saved_class_name(self) -> str | list[str]:
        if type(self) is MedDDPMPipeline and type(self.unet) is UNet2DModel:
            return "DDPMPipeline"
        return super()._saved_class_name()

    def default_num_inference_steps(self) -> int:
        """All training steps for ``DDPMScheduler`` (ancestral sampling), 25 for the fast samplers."""
        if isinstance(self.scheduler, DDPMScheduler):
            return int(self.scheduler.config.num_train_timesteps)
        return DEFAULT_FAST_STEPS

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        image_size: int | tuple[int, int] | None = None,
        return_dict: bool = True,
        autocast_dtype: torch.dtype | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> MedImagePipelineOutput | tuple:
        """Sample ``batch_size`` images.

        Args:
            num_inference_steps: default :meth:`default_num_inference_steps`.
            output_type: "pil" (mode "L"), "np" (float in [0, 1]), "pt" (tensor in [-1, 1]), "uint16",
                or "native" (original units, e.g. HU, through the saved intensity mapping).
            height, width: output size (diffusers' names); default ``image_size`` (int or (H, W)), else the
                U-Net's ``sample_size``.
            autocast_dtype: run the U-Net under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``,
                2x faster on CPUs with native bf16); the sampler's arithmetic stays in the image dtype.
        """
        size = image_size or self.unet.config.sample_size
        size_h, size_w = (size, size) if isinstance(size, int) else size
        height, width = height or size_h, width or size_w
        num_inference_steps = num_inference_steps or self.default_num_inference_steps()
        shape = (batch_size, self.unet.config.out_channels, height, width)
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        # stochastic schedulers take the generator; deterministic ones (e.g. UniPC) have no such argument
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            with torch.autocast(image.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                model_output = self.unet(model_input, t).sample.to(image.dtype)
            image = self.scheduler.step(model_output, t, image, **step_kwargs).prev_sample

        images = postprocess(image, output_type, self.intensity_mapping)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return MedImagePipelineOutput(images=images)
