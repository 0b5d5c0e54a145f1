"""Classical restoration baselines for the cDDPM table (Med-cDiff, Hung et al.), as plain functions.

- super-resolution: bilinear and bicubic interpolation of the low-resolution image;
- denoising: identity (the noisy image itself) and a median filter;
- inpainting: mean fill (missing pixels = mean of the known pixels of the image) and biharmonic fill
  (``skimage.restoration.inpaint_biharmonic``).

All take and return ``[B, 1, H, W]`` float tensors (any intensity range; the cDDPM evaluation uses [-1, 1]);
masks are 1 = missing. :func:`run_baseline` gives one uniform entry point, :data:`BASELINES` the names per task.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

BASELINES: dict[str, tuple[str, ...]] = {
    "sr": ("bilinear", "bicubic"),
    "denoise": ("identity", "median"),
    "inpaint": ("mean_fill", "biharmonic"),
}


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def upscale_bilinear(low_res: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear interpolation of ``[B, 1, h, w]`` to ``size``."""
    return F.interpolate(low_res.float(), size=_size(size), mode="bilinear", align_corners=False)


def upscale_bicubic(low_res: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of ``[B, 1, h, w]`` to ``size`` (overshoot is kept; clamp if needed)."""
    return F.interpolate(low_res.float(), size=_size(size), mode="bicubic", align_corners=False)


def identity(noisy: torch.Tensor) -> torch.Tensor:
    """The degraded image itself (the 'no restoration' reference)."""
    return noisy.float().clone()


def median_filter(noisy: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Per-pixel median over a ``size`` x ``size`` window (reflect padding), in torch on the input's device."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median filter size must be an odd number >= 1, got {size}")
    x = noisy.float()
    if size == 1:
        return x.clone()
    r = size // 2
    b, c, h, w = x.shape
    padded = F.pad(x, (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
    patches = F.unfold(padded, kernel_size=size)  # [B, C*size*size, H*W]
    patches = patches.view(b, c, size * size, h * w)
    return patches.median(dim=2).values.view(b, c, h, w)


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Missing pixels (mask 1) set to the mean of the image's known pixels."""
    x = image.float()
    m = (mask.to(x.device).float() > 0.5).expand_as(x)
    known = (~m).float()
    mean = (x * known).sum(dim=(1, 2, 3), keepdim=True) / known.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    return torch.where(m, mean.expand_as(x), x)


def biharmonic_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Missing pixels (mask 1) filled by biharmonic inpainting (scikit-image), image by image on the CPU."""
    from skimage.restoration import inpaint_biharmonic

    x = image.float()
    m = (mask.float() > 0.5).expand_as(x).cpu().numpy()
    arr = x.detach().cpu().numpy().astype(np.float64)
    out = arr.copy()
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            if m[b, c].any() and not m[b, c].all():
                out[b, c] = inpaint_biharmonic(np.where(m[b, c], 0.0, arr[b, c]), m[b, c])
    return torch.from_numpy(out).to(device=x.device, dtype=torch.float32)


def run_baseline(
    task: str,
    name: str,
    degraded: torch.Tensor,
    *,
    low_res: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    size: int | tuple[int, int] | None = None,
    median_size: int = 3,
) -> torch.Tensor:
    """Run baseline ``name`` of ``task`` (see :data:`BASELINES`).

    sr: ``low_res`` (the down-sampled image) is interpolated to ``size`` (default: the size of ``degraded``).
    denoise: ``degraded`` is the noisy image. inpaint: ``degraded`` is the image (its missing pixels are
    ignored) and ``mask`` is 1 where pixels are missing.
    """
    if task not in BASELINES:
        raise ValueError(f"task must be one of {tuple(BASELINES)}, got {task!r}")
    if name not in BASELINES[task]:
        raise ValueError(f"baseline {name!r} is not one of {task}'s baselines {BASELINES[task]}")
    if task == "sr":
        if low_res is None:
            raise ValueError("super-resolution baselines need low_res (the down-sampled image)")
        target = size or tuple(degraded.shape[-2:])
        fn: Callable = upscale_bilinear if name == "bilinear" else upscale_bicubic
        return fn(low_res, target)
    if task == "denoise":
        return identity(degraded) if name == "identity" else median_filter(degraded, median_size)
    if mask is None:
        raise ValueError("inpainting baselines need mask (1 = missing)")
    return mean_fill(degraded, mask) if name == "mean_fill" else biharmonic_fill(degraded, mask)


__all__ = [
    "BASELINES",
    "biharmonic_fill",
    "identity",
    "mean_fill",
    "median_filter",
    "run_baseline",
    "upscale_bicubic",
    "upscale_bilinear",
]
