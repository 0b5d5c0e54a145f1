"""Image-conditioned DDPM (Med-cDiff, Hung et al.): super-resolution, denoising and inpainting of 1-channel
medical images by a denoiser that sees the degraded image concatenated to x_t.

The condition ``y`` (``[B, cond_channels, H, W]``: the interpolated low-resolution image, the noisy image, or
the masked image plus its mask) is concatenated to ``x_t`` along the channels, so the U-Net has
``in_channels = 1 + cond_channels``; :func:`denoise` is the one code path for ``LightUNet2DModel`` and diffusers'
``UNet2DModel`` alike. Sampling defaults to the paper's full ancestral DDPM (T = 2000, linear betas,
sigma_t^2 = beta_t); DDIM or DPM-Solver++ are a ``sampler=`` away.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from medsd.data.degradations import COND_CHANNELS, TASKS, masked_condition, upsample

from .base import MedUNetPipeline
from .output import postprocess
from .samplers import FAST_STEPS, SAMPLER_NAMES, make_sampler, sampler_name

SAMPLERS = SAMPLER_NAMES
DEFAULT_FAST_STEPS = FAST_STEPS


def paper_scheduler(num_train_timesteps: int = 2000, **overrides: Any) -> DDPMScheduler:
    """The paper's forward process and ancestral sampler: T = 2000, linear betas 1e-4..0.02, sigma_t^2 = beta_t
    (diffusers' ``variance_type="fixed_large"``), x0 clipped to [-1, 1]."""
    kwargs: dict[str, Any] = dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="fixed_large",
        clip_sample=True,
        prediction_type="epsilon",
    )
    kwargs.update(overrides)
    return DDPMScheduler(**kwargs)


def make_scheduler(sampler: str, train_scheduler_config: Any) -> Any:
    """A sampler built from the training scheduler's config (:func:`medsd.pipelines.samplers.make_sampler`):
    "ddpm" (ancestral), "ddim" (eta 0), "dpm" (DPM-Solver++(2M), thresholded, see
    :func:`medsd.pipelines.ddpm.fast_scheduler`) or "unipc"."""
    return make_sampler(sampler, train_scheduler_config)


def denoise(unet: Any, x_t: torch.Tensor, cond: torch.Tensor, t: Any) -> torch.Tensor:
    """The conditional denoiser's prediction: ``unet(concat(x_t, cond), t).sample``."""
    if cond.shape[0] != x_t.shape[0] or cond.shape[-2:] != x_t.shape[-2:]:
        raise ValueError(f"condition {tuple(cond.shape)} does not match x_t {tuple(x_t.shape)}")
    return unet(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t).sample


def cond_channels_of(unet: Any) -> int:
    return int(unet.config.in_channels) - int(unet.config.out_channels)


def to_model_range(image: Any) -> torch.Tensor:
    """``[B, C, H, W]`` float in [-1, 1] from: a tensor already in [-1, 1] (``[H, W]``, ``[C, H, W]`` or
    ``[B, C, H, W]``), a float array in [0, 1], a uint8 array, or PIL image(s)."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], PIL.Image.Image):
        arrs = [np.asarray(im.convert("L"), dtype=np.float32) / 255.0 for im in image]
        return torch.from_numpy(np.stack(arrs))[:, None] * 2 - 1
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        t = torch.from_numpy(arr) * 2 - 1
    elif isinstance(image, torch.Tensor):
        t = image.float()
    else:
        raise TypeError(f"image: expected a tensor, an array or PIL image(s), got {type(image).__name__}")
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None] if isinstance(image, np.ndarray) else t[None]
    if t.ndim != 4:
        raise ValueError(
            f"image: expected [H, W], [B, H, W] / [C, H, W] or [B, C, H, W], got {tuple(t.shape)}"
        )
    return t


def to_mask(mask: Any) -> torch.Tensor:
    """A mask ``[B, 1, H, W]`` with 1 = missing from a tensor / array (nonzero = missing) or PIL image(s)."""
    if isinstance(mask, PIL.Image.Image):
        mask = [mask]
    if isinstance(mask, (list, tuple)) and mask and isinstance(mask[0], PIL.Image.Image):
        mask = np.stack([np.asarray(m.convert("L")) > 127 for m in mask])
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    m = (m > 0.5).float() if m.is_floating_point() else (m != 0).float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    return m


@dataclass
class MedCDDPMPipelineOutput(BaseOutput):
    """``images``: ``B * num_images_per_prompt`` restorations (input-major: the samples of input 0 first), as
    ``output_type`` asks. With more than one sample per input: ``mean`` (the per-pixel mean of each input's samples,
    same type as ``images``, ``B`` of them) and ``std`` (per-pixel standard deviation; float ``[B, H, W]`` in
    units of the [0, 1] intensity range, or a tensor ``[B, 1, H, W]`` in [-1, 1] units for ``output_type="pt"``).
    ``condition``: the model-space condition ``[B, cond_channels, H, W]`` the samples were drawn from."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    mean: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    std: np.ndarray | torch.Tensor | None = None
    condition: torch.Tensor | None = None


def sample_statistics(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and (population) std over dim 1 of ``[B, S, C, H, W]``; exactly 0 std for equal samples."""
    ref = samples[:, :1]
    dev = samples - ref
    mean_dev = dev.mean(dim=1, keepdim=True)
    mean = (ref + mean_dev)[:, 0]
    std = ((dev - mean_dev) ** 2).mean(dim=1).sqrt()
    return mean, std


class MedCDDPMPipeline(MedUNetPipeline):
    """Restore 1-channel medical images with an image-conditioned DDPM (Med-cDiff).

    Args:
        unet: ``LightUNet2DModel`` or diffusers ``UNet2DModel`` with ``in_channels = 1 + cond_channels``
            predicting noise.
        scheduler: the training ``DDPMScheduler`` (default sampler: full ancestral sampling); any diffusers
            scheduler built from its config works (see ``sampler=``).

    ``medsd_metadata`` (kept in the diffusers config, i.e. ``model_index.json``) holds ``task``, ``cond_channels``, ``factor`` and the
    ``degradation`` settings; without it the task is inferred from the U-Net (2 condition channels =
    inpainting).
    """

    _call_example = (
        "image=degraded_images, num_samples=4"  # as in saved shims, which medsd recognises by text
    )

    @property
    def task(self) -> str | None:
        task = (self.medsd_metadata or {}).get("task")
        if task:
            return task
        return "inpaint" if cond_channels_of(self.unet) == 2 else None

    def prepare_condition(
        self,
        image: Any,
        mask: Any = None,
        task: str | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(condition, mask, image) in model space for a degraded ``image``.

        sr: a low-resolution image is interpolated (the saved ``up_mode``, bicubic by default) to
        ``image_size`` (default: the U-Net's ``sample_size``); an image already at that size is used as is.
        denoise: the noisy image. inpaint: the image and its mask (1 = missing) give
        ``[image * (1 - mask), mask]``.
        """
        task = task or self.task or "sr"
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        expected = cond_channels_of(self.unet)
        if COND_CHANNELS[task] != expected:
            raise ValueError(
                f"task {task!r} needs {COND_CHANNELS[task]} condition channel(s) but this U-Net takes {expected}"
            )
        x = to_model_range(image).to(self._execution_device, dtype=torch.float32)
        if x.shape[1] != 1:
            raise ValueError(f"image: expected 1 channel, got {x.shape[1]}")
        if task == "sr":
            size = image_size or self.unet.config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if tuple(x.shape[-2:]) != size:
                up_mode = (self.medsd_metadata or {}).get("degradation", {}).get("up_mode", "bicubic")
                x = upsample(x, size, up_mode).clamp(-1, 1)
            return x, None, x
        if task == "denoise":
            return x, None, x
        if mask is None:
            raise ValueError("inpainting needs mask= (1 = missing pixels)")
        m = to_mask(mask).to(x.device)
        if m.shape[0] == 1 and x.shape[0] > 1:
            m = m.expand(x.shape[0], -1, -1, -1)
        if m.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"mask size {tuple(m.shape[-2:])} differs from the image size {tuple(x.shape[-2:])}"
            )
        fill = float((self.medsd_metadata or {}).get("degradation", {}).get("fill", 0.0))
        return masked_condition(x, m, fill), m, x

    def default_num_inference_steps(self, sampler: str | None = None) -> int:
        """All training steps for the ancestral DDPM sampler (the paper), else the fast sampler's default
        (:data:`medsd.pipelines.samplers.FAST_STEPS`); ``sampler``: a ``sampler=`` name, default this
        pipeline's scheduler."""
        name = sampler or sampler_name(self.scheduler)
        return int(self.scheduler.config.num_train_timesteps) if name == "ddpm" else DEFAULT_FAST_STEPS[name]

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        mask: Any = None,
        num_inference_steps: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        keep_known_pixels: bool = True,
        task: str | None = None,
        sampler: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        return_dict: bool = True,
        autocast_dtype: torch.dtype | None = None,
        height: int | None = None,
        width: int | None = None,
        num_samples: int | None = None,
    ) -> MedCDDPMPipelineOutput | tuple:
        """Draw ``num_images_per_prompt`` restorations of each degraded image.

        Args:
            image: degraded image(s): tensor in [-1, 1] (``[B, 1, H, W]``), float array in [0, 1], uint8 array or
                PIL. For super-resolution either the low-resolution image or its interpolation.
            mask: inpainting only; 1 (or white) = missing.
            num_inference_steps: default :meth:`default_num_inference_steps` (all training steps for the DDPM
                sampler, as the paper samples; 50 for DDIM, 25 for DPM-Solver and UniPC).
            num_images_per_prompt: samples per input (diffusers' name; ``num_samples`` is the same); with more
                than one, ``mean`` and ``std`` maps are returned too.
            generator: a ``torch.Generator`` (or one per sample) for reproducible output.
            output_type: "pil", "np", "pt", "uint16" or "native" (see ``medsd.pipelines.output.postprocess``).
            keep_known_pixels: inpainting: at every step replace the known pixels by the original noised to the
                next timestep (RePaint-style), and return the known pixels exactly as given.
            task: "sr", "denoise" or "inpaint" (default: the saved task).
            sampler: "ddpm", "ddim", "dpm" or "unipc": sample with a scheduler built from this pipeline's
                scheduler config (the pipeline's own scheduler is left unchanged). Default: the pipeline's.
            image_size, height, width: super-resolution output size (default: the U-Net's ``sample_size``).
            autocast_dtype: run the U-Net under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16`` on
                CPUs with native bf16); the sampler's arithmetic stays in the image dtype.
        """
        num_samples = num_images_per_prompt if num_samples is None else num_samples
        if num_samples < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_samples}")
        task = task or self.task or "sr"
        if height or width:
            image_size = (height or width, width or height)
        cond, m, x_in = self.prepare_condition(image, mask, task, image_size)
        scheduler = make_scheduler(sampler, self.scheduler.config) if sampler else self.scheduler
        steps = num_inference_steps or self.default_num_inference_steps(sampler)
        inpaint_mask = m if task == "inpaint" and keep_known_pixels else None
        x = self._sample(cond, x_in, inpaint_mask, num_samples, scheduler, steps, generator, autocast_dtype)
        mean = std = None
        if num_samples > 1:
            b = cond.shape[0]
            mean_t, std_t = sample_statistics(x.clamp(-1, 1).reshape(b, num_samples, *x.shape[1:]))
            if inpaint_mask is not None:
                mean_t = torch.where(m > 0.5, mean_t, x_in.float())
            mean = postprocess(mean_t, output_type, self.intensity_mapping)
            std = std_t if output_type == "pt" else (std_t[:, 0] / 2).cpu().numpy().astype(np.float32)
        images = postprocess(x, output_type, self.intensity_mapping)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, mean, std)
        return MedCDDPMPipelineOutput(images=images, mean=mean, std=std, condition=cond)

    def _sample(
        self,
        cond: torch.Tensor,
        x_in: torch.Tensor,
        inpaint_mask: torch.Tensor | None,
        num_samples: int,
        scheduler: Any,
        num_inference_steps: int,
        generator: Any,
        autocast_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        """The denoising loop: ``num_samples`` float32 images ``[-1, 1]`` per condition (input-major); with an
        ``inpaint_mask`` the known pixels are re-noised at every step and returned as given."""
        device, dtype = self._execution_device, self.unet.dtype
        n = cond.shape[0] * num_samples
        cond_rep = cond.repeat_interleave(num_samples, dim=0).to(dtype)
        shape = (n, self.unet.config.out_channels, *cond.shape[-2:])
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
        if inpaint_mask is not None:
            known = x_in.repeat_interleave(num_samples, dim=0).to(dtype)
            missing = inpaint_mask.repeat_interleave(num_samples, dim=0).to(device) > 0.5
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        # stochastic schedulers take the generator; deterministic ones (e.g. UniPC) have no such argument
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = scheduler.scale_model_input(x, t)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                eps = denoise(self.unet, model_input, cond_rep, t).to(x.dtype)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
            if inpaint_mask is not None and i + 1 < len(timesteps):
                noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                t_prev = timesteps[i + 1].reshape(1).expand(n)
                x = torch.where(missing, x, scheduler.add_noise(known, noise, t_prev))
        x = x.float()
        if inpaint_mask is not None:
            x = torch.where(missing, x.clamp(-1, 1), x_in.repeat_interleave(num_samples, dim=0).float())
        return x


__all__ = [
    "MedCDDPMPipeline",
    "MedCDDPMPipelineOutput",
    "denoise",
    "make_scheduler",
    "paper_scheduler",
    "sample_statistics",
    "to_model_range",
    "to_mask",
]
