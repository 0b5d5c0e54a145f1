"""Small composable image transforms on torch tensors [C, H, W] or [B, C, H, W] (CPU or GPU).

Apply them after the intensity mapping (values in [-1, 1]). Random transforms take an optional
``torch.Generator``; without one they use the global torch RNG (which DataLoader seeds per worker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MedImageError

Size = int | Sequence[int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise MedImageError(
        f"transforms: expected a tensor [C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}"
    )


def _where(path: str | None) -> str:
    return f"{path}: " if path else ""


def resize_short_side(x: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Resize (bilinear, antialiased when shrinking) so that the shorter side equals ``size``."""
    b, single = _batched(x)
    h, w = b.shape[-2:]
    s = min(h, w)
    if s == size:
        return x
    nh, nw = max(1, round(h * size / s)), max(1, round(w * size / s))
    out = F.interpolate(b.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    return out[0] if single else out


def _check_fits(x: torch.Tensor, th: int, tw: int, path: str | None) -> None:
    h, w = x.shape[-2:]
    if h < th or w < tw:
        raise MedImageError(f"{_where(path)}image is {h}x{w}, smaller than the crop size {th}x{tw}")


def center_crop(x: torch.Tensor, size: Size, *, path: str | None = None) -> torch.Tensor:
    """Crop the central ``size`` region; ``MedImageError`` (naming ``path``) if the image is smaller."""
    th, tw = _hw(size)
    _check_fits(x, th, tw, path)
    h, w = x.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def random_crop(
    x: torch.Tensor, size: Size, generator: torch.Generator | None = None, *, path: str | None = None
) -> torch.Tensor:
    """Crop a random ``size`` region (one position per batch item)."""
    th, tw = _hw(size)
    _check_fits(x, th, tw, path)
    b, single = _batched(x)
    h, w = b.shape[-2:]
    tops = torch.randint(0, h - th + 1, (b.shape[0],), generator=generator).tolist()
    lefts = torch.randint(0, w - tw + 1, (b.shape[0],), generator=generator).tolist()
    out = torch.stack([b[i, :, t : t + th, le : le + tw] for i, (t, le) in enumerate(zip(tops, lefts))])
    return out[0] if single else out


def random_affine(
    x: torch.Tensor,
    degrees: float = 5.0,
    translate: float = 0.03,
    scale: tuple[float, float] = (0.95, 1.05),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Small random rotation (+-``degrees``), translation (+- fraction of size) and zoom, per batch item.

    Uses ``affine_grid``/``grid_sample`` (bilinear, border padding), so it runs batched on the tensor's device.
    """
    b, single = _batched(x)
    n = b.shape[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand(n, 4, generator=generator, device=gdev).to(b.device, torch.float32)
    angle = (r[:, 0] * 2 - 1) * math.radians(degrees)
    tx, ty = (r[:, 1] * 2 - 1) * translate * 2, (r[:, 2] * 2 - 1) * translate * 2  # grid spans 2 units
    zoom = scale[0] + r[:, 3] * (scale[1] - scale[0])
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(b.shape), align_corners=False)
    out = F.grid_sample(b.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0] if single else out


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror left-right. Note: this swaps the patient's left and right anatomy (e.g. the heart side)."""
    return x.flip(-1)


def random_hflip(
    x: torch.Tensor, generator: torch.Generator | None = None, *, mirrored: torch.Tensor | None = None
) -> torch.Tensor:
    """Each item of ``x`` ([C, H, W] or [B, C, H, W]) mirrored left-right with probability 0.5.

    ``mirrored`` gives the mirror images when they are not ``x.flip(-1)`` (e.g. VAE latents encoded from the
    mirrored image). The coin flips come from ``generator`` or the global CPU RNG, whatever device ``x`` is on.
    """
    b, single = _batched(x)
    other = hflip(b) if mirrored is None else _batched(mirrored)[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(b.shape[0], generator=generator, device=gdev) < 0.5
    out = torch.where(flip.to(b.device)[:, None, None, None], other, b)
    return out[0] if single else out


def augment_batch(x: torch.Tensor, affine: bool, flip: bool) -> torch.Tensor:
    """The training jitter of a batch where it lives: ``random_affine`` then ``random_hflip``, each when asked."""
    if affine:
        x = random_affine(x)
    return random_hflip(x) if flip else x


class ImageTransform:
    """Resize the short side to ``resolution``, crop to a square, then optional jitter.

    ``crop``: ``"center"`` or ``"random"``; ``affine``: small ``random_affine`` jitter; ``hflip``: random
    horizontal flip with probability 0.5 (off by default: it swaps left/right anatomy); ``upscale=False``
    refuses images smaller than ``resolution`` (``MedImageError``) instead of enlarging them.
    Accepts a tensor [C, H, W] / [B, C, H, W] or a numpy HxW array; ``path`` names the file in errors.
    """

    def __init__(
        self,
        resolution: int,
        crop: str = "center",
        affine: bool = False,
        hflip: bool = False,
        *,
        upscale: bool = True,
        degrees: float = 5.0,
        translate: float = 0.03,
        scale: tuple[float, float] = (0.95, 1.05),
        generator: torch.Generator | None = None,
    ) -> None:
        if crop not in ("center", "random"):
            raise MedImageError(f"ImageTransform crop: expected 'center' or 'random', got {crop!r}")
        if not isinstance(resolution, int) or resolution < 1:
            raise MedImageError(f"ImageTransform resolution: expected a positive integer, got {resolution!r}")
        self.resolution, self.crop, self.affine, self.hflip = resolution, crop, affine, hflip
        self.upscale, self.degrees, self.translate, self.scale = upscale, degrees, translate, scale
        self.generator = generator

    def __call__(self, x: Any, path: str | None = None) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            x = x[None] if x.ndim == 2 else x
        h, w = x.shape[-2:]
        if not self.upscale and min(h, w) < self.resolution:
            raise MedImageError(
                f"{_where(path)}image is {h}x{w}, smaller than the crop size {self.resolution}x{self.resolution}"
            )
        x = resize_short_side(x, self.resolution)
        if self.crop == "center":
            x = center_crop(x, self.resolution, path=path)
        else:
            x = random_crop(x, self.resolution, self.generator, path=path)
        if self.affine:
            x = random_affine(x, self.degrees, self.translate, self.scale, self.generator)
        if self.hflip:
            x = random_hflip(x, self.generator)
        return x.float().contiguous()

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resolution={self.resolution}, crop={self.crop!r}, affine={self.affine}, "
            f"hflip={self.hflip}, upscale={self.upscale})"
        )
