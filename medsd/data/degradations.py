"""Seeded image degradations for the image-conditioned cDDPM (Med-cDiff, Hung et al.): super-resolution,
denoising and inpainting conditions made from clean images.

Pure torch, on ``[B, 1, H, W]`` tensors in [-1, 1] on any device. Every random draw takes a
``torch.Generator`` or an integer seed (``None`` uses torch's global RNG, which accelerate checkpoints), so the
same seed gives exactly the same degradation. Random numbers are drawn on the generator's device and moved to
the image's device: a CPU generator (or an int seed) gives the same result on CPU and GPU; a CUDA generator is
faster on large batches.

Conventions:

- **sr**: area (or bicubic) down-sampling by ``factor`` (any factor > 1, e.g. ``2 * sqrt(2)``) to
  ``round(H / factor)`` pixels, then interpolation back up to ``H`` (bicubic by default). The condition is the
  up-sampled low-resolution image (1 channel).
- **denoise**: Gaussian noise whose sigma is drawn per image from ``noise_sigma`` (in units of the [0, 1]
  intensity range) plus salt-and-pepper noise whose amount (fraction of pixels) is drawn from ``sp_amount``
  (1 channel).
- **inpaint**: a mask with **1 = missing** (to be generated) and 0 = known; the condition is
  ``[image * (1 - mask) + fill * mask, mask]`` (2 channels). Masks are boxes, irregular free-form strokes, a
  mix of both, or read from a file. :meth:`Degradation.fixed` draws a fixed, seeded test set: the same index
  always gets the same mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TASKS = ("sr", "denoise", "inpaint")
COND_CHANNELS = {"sr": 1, "denoise": 1, "inpaint": 2}
DOWN_MODES = ("area", "bicubic", "bilinear")
UP_MODES = ("bicubic", "bilinear", "nearest")
MASK_KINDS = ("box", "irregular", "mixed", "file")

GeneratorLike = torch.Generator | int | None


# ----------------------------------------------------------------------------------------------------------
# random helpers
# ----------------------------------------------------------------------------------------------------------


def as_generator(generator: GeneratorLike, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` from a generator, an integer seed (a new generator on ``device``) or None."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"expected a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator(device=device).manual_seed(int(generator))


def index_seed(seed: int, index: int) -> int:
    """A deterministic seed for item ``index`` of a fixed test set seeded by ``seed``."""
    return (int(seed) * 1_000_003 + int(index) * 7_919 + 12_345) % (2**63 - 1)


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gdev).to(device)


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gdev).to(device)


def _per_image(name: str, value: Any, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One value per image of ``x``, uniform in ``value`` (a number or a (low, high) range), as [B, 1, 1, 1]."""
    lo, hi = _range(name, value)
    return (lo + (hi - lo) * _rand((x.shape[0],), generator, x.device))[:, None, None, None]


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {getattr(x, 'shape', type(x))}")


def _range(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi or lo < 0:
        raise ValueError(f"{name}: expected 0 <= low <= high, got {value!r}")
    return lo, hi


# ----------------------------------------------------------------------------------------------------------
# super-resolution
# ----------------------------------------------------------------------------------------------------------


def low_res_size(size: int, factor: float) -> int:
    """Side of the low-resolution image for a factor: ``round(size / factor)`` (at least 1)."""
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return max(1, int(round(size / float(factor))))


def downsample(x: torch.Tensor, factor: float, mode: str = "area") -> torch.Tensor:
    """Down-sample ``[B, C, H, W]`` by ``factor`` (non-integer allowed) to ``round(H/f) x round(W/f)``.

    ``area`` averages the covered input pixels (exact box filter, also for non-integer factors);
    ``bicubic`` / ``bilinear`` use anti-aliased interpolation.
    """
    _check_images(x)
    if mode not in DOWN_MODES:
        raise ValueError(f"down-sampling mode must be one of {DOWN_MODES}, got {mode!r}")
    size = (low_res_size(x.shape[-2], factor), low_res_size(x.shape[-1], factor))
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def upsample(x: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Interpolate ``[B, C, h, w]`` up to ``size`` (bicubic, bilinear or nearest)."""
    _check_images(x)
    if mode not in UP_MODES:
        raise ValueError(f"up-sampling mode must be one of {UP_MODES}, got {mode!r}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def degrade_sr(
    x: torch.Tensor,
    factor: float,
    down_mode: str = "area",
    up_mode: str = "bicubic",
    size: int | tuple[int, int] | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """The super-resolution condition: down-sample by ``factor``, interpolate back to ``size`` (default H x W)."""
    if factor < 1:
        raise ValueError(f"super-resolution factor must be >= 1, got {factor}")
    low = downsample(x, factor, down_mode)
    up = upsample(low, size or tuple(x.shape[-2:]), up_mode)
    return up.clamp(-1, 1) if clamp else up


# ----------------------------------------------------------------------------------------------------------
# denoising
# ----------------------------------------------------------------------------------------------------------


def add_gaussian_noise(
    x: torch.Tensor, sigma: float | tuple[float, float], generator: GeneratorLike = None
) -> torch.Tensor:
    """Add Gaussian noise; sigma (per image, uniform in the range) is in units of the [0, 1] intensity range."""
    _check_images(x)
    g = as_generator(generator)
    s = _per_image("noise_sigma", sigma, x, g).to(x.dtype)
    noise = _randn(x.shape, g, x.device).to(x.dtype)
    return x + 2.0 * s * noise  # x is in [-1, 1]: a [0, 1]-sigma doubles


def add_salt_and_pepper(
    x: torch.Tensor, amount: float | tuple[float, float], generator: GeneratorLike = None
) -> torch.Tensor:
    """Set a fraction ``amount`` (per image, uniform in the range) of pixels to -1 or 1 with equal chance."""
    _check_images(x)
    g = as_generator(generator)
    a = _per_image("sp_amount", amount, x, g)
    u = _rand(x.shape, g, x.device)
    salt = _rand(x.shape, g, x.device) < 0.5
    hit = u < a
    out = torch.where(hit & salt, torch.ones_like(x), x)
    return torch.where(hit & ~salt, -torch.ones_like(x), out)


def degrade_noise(
    x: torch.Tensor,
    noise_sigma: float | tuple[float, float] = (0.05, 0.2),
    sp_amount: float | tuple[float, float] = (0.0, 0.05),
    generator: GeneratorLike = None,
    clamp: bool = True,
) -> torch.Tensor:
    """The denoising condition: Gaussian noise, then salt-and-pepper noise."""
    g = as_generator(generator)
    y = add_gaussian_noise(x, noise_sigma, g)
    if clamp:
        y = y.clamp(-1, 1)
    return add_salt_and_pepper(y, sp_amount, g)


# ----------------------------------------------------------------------------------------------------------
# masks (1 = missing)
# ----------------------------------------------------------------------------------------------------------


def box_mask(
    batch: int,
    size: int | tuple[int, int],
    generator: GeneratorLike = None,
    frac: tuple[float, float] = (0.25, 0.5),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random axis-aligned boxes ``[B, 1, H, W]`` (float 0/1); each side is ``frac`` of the image side."""
    h, w = (size, size) if isinstance(size, int) else size
    g = as_generator(generator)
    device = torch.device(device)
    lo, hi = _range("box frac", frac)
    r = _rand((batch, 4), g, torch.device("cpu")).double()
    bh = torch.clamp(((lo + (hi - lo) * r[:, 0]) * h).round().long(), 1, h)
    bw = torch.clamp(((lo + (hi - lo) * r[:, 1]) * w).round().long(), 1, w)
    y0 = torch.floor(r[:, 2] * (h - bh + 1).double()).long()
    x0 = torch.floor(r[:, 3] * (w - bw + 1).double()).long()
    ys = torch.arange(h)[None, :]
    xs = torch.arange(w)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + bh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + bw)[:, None])
    return (in_y[:, :, None] & in_x[:, None, :]).float()[:, None].to(device)


def irregular_mask(
    batch: int,
    size: int | tuple[int, int],
    generator: GeneratorLike = None,
    max_strokes: int = 5,
    max_vertices: int = 8,
    width_frac: tuple[float, float] = (0.05, 0.15),
    length_frac: tuple[float, float] = (0.1, 0.3),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random free-form masks (DeepFill-style brush strokes) ``[B, 1, H, W]`` (float 0/1).

    Each image gets 1..``max_strokes`` strokes; a stroke is a polyline of 2..``max_vertices`` vertices with
    random turning angles, segment lengths ``length_frac`` x side and a width ``width_frac`` x side. All random
    numbers are drawn at once (a fixed count per image) and the stroke geometry is computed on the CPU in float64,
    so a seed gives the same strokes everywhere; they are rasterised on ``device`` (vectorised distance-to-segment
    tests), so the same seed on the same device gives the same mask.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if max_strokes < 1 or max_vertices < 2:
        raise ValueError("irregular masks need max_strokes >= 1 and max_vertices >= 2")
    g = as_generator(generator)
    cpu = torch.device("cpu")
    s, v = int(max_strokes), int(max_vertices)
    side = float(min(h, w))
    r = _rand((batch, 1 + 4 * s + 2 * s * (v - 1)), g, cpu).double()
    n_strokes = (1 + (r[:, 0] * s).floor()).clamp(max=s)  # [B]
    p = r[:, 1 : 1 + 4 * s].reshape(batch, s, 4)
    q = r[:, 1 + 4 * s :].reshape(batch, s, v - 1, 2)
    n_vert = (2 + (p[..., 0] * (v - 1)).floor()).clamp(max=v)  # [B, S]
    width = (width_frac[0] + (width_frac[1] - width_frac[0]) * p[..., 1]) * side
    stroke_on = torch.arange(s, dtype=torch.float64)[None, :] < n_strokes[:, None]  # [B, S]
    y, x = p[..., 2] * h, p[..., 3] * w
    device = torch.device(device)
    yy = (torch.arange(h, dtype=torch.float32, device=device) + 0.5)[None, None, :, None]
    xx = (torch.arange(w, dtype=torch.float32, device=device) + 0.5)[None, None, None, :]
    masks = torch.zeros(batch, s, h, w, dtype=torch.bool, device=device)
    angle = torch.zeros_like(y)
    for k in range(v - 1):
        turn = q[:, :, k, 0] * 2 * math.pi
        angle = turn if k == 0 else angle + (turn - math.pi) * 0.5
        length = (length_frac[0] + (length_frac[1] - length_frac[0]) * q[:, :, k, 1]) * side
        ny = (y + length * torch.sin(angle)).clamp(0, h)
        nx = (x + length * torch.cos(angle)).clamp(0, w)
        on = stroke_on & (k < n_vert - 1)
        ends = [c.to(device, torch.float32)[..., None, None] for c in (y, x, ny, nx)]
        d2 = _segment_distance2(yy, xx, *ends)
        radius2 = (width / 2).square().to(device, torch.float32)[..., None, None]
        masks |= (d2 <= radius2) & on.to(device)[..., None, None]
        y, x = ny, nx
    return masks.any(dim=1).float()[:, None]


def _segment_distance2(yy, xx, y0, x0, y1, x1) -> torch.Tensor:
    """Squared distance of pixel centres ``(yy, xx)`` to segments ``(y0, x0)-(y1, x1)`` (broadcast tensors)."""
    dy, dx = y1 - y0, x1 - x0
    inv = 1.0 / (dy * dy + dx * dx).clamp_min(1e-12)
    ry, rx = yy - y0, xx - x0
    t = ((ry * dy + rx * dx) * inv).clamp_(0, 1)
    return (ry - t * dy).square_() + (rx - t * dx).square_()


def load_mask(
    path: str | Path, size: int | tuple[int, int] | None = None, invert: bool = False
) -> torch.Tensor:
    """A mask ``[1, 1, H, W]`` (float 0/1, 1 = missing) from an image file: pixels > 50 % of the maximum are 1.

    ``size`` resizes it (nearest neighbour); ``invert`` swaps missing and known (for masks saved as 1 = known).
    """
    import numpy as np
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("F") if im.mode not in ("L", "1", "I;16", "I") else im, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.mean(-1)
    peak = arr.max()
    m = torch.from_numpy(arr > (peak / 2 if peak > 0 else 0.5)).float()[None, None]
    if invert:
        m = 1 - m
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, mode="nearest-exact")
    return m


def random_masks(
    batch: int,
    size: int | tuple[int, int],
    kind: str = "mixed",
    generator: GeneratorLike = None,
    device: torch.device | str = "cpu",
    box_frac: tuple[float, float] = (0.25, 0.5),
    mask_file: str | None = None,
) -> torch.Tensor:
    """``batch`` masks of a kind: box, irregular, mixed (each image box or irregular with equal chance), file."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    g = as_generator(generator)
    if kind == "file":
        if not mask_file:
            raise ValueError("mask kind 'file' needs mask_file")
        return load_mask(mask_file, size).expand(batch, 1, -1, -1).to(device).clone()
    if kind == "box":
        return box_mask(batch, size, g, frac=box_frac, device=device)
    if kind == "irregular":
        return irregular_mask(batch, size, g, device=device)
    choose_box = (_rand((batch,), g, torch.device("cpu")) < 0.5).to(device)[:, None, None, None]
    boxes = box_mask(batch, size, g, frac=box_frac, device=device)
    strokes = irregular_mask(batch, size, g, device=device)
    return torch.where(choose_box, boxes, strokes)


def fixed_masks(
    indices: Sequence[int],
    size: int | tuple[int, int],
    kind: str = "mixed",
    seed: int = 0,
    device: torch.device | str = "cpu",
    box_frac: tuple[float, float] = (0.25, 0.5),
    mask_file: str | None = None,
) -> torch.Tensor:
    """The fixed test masks for ``indices``: mask ``i`` depends only on ``(seed, i)``, on every call."""
    return torch.cat(
        [
            random_masks(1, size, kind, index_seed(seed, i), device, box_frac=box_frac, mask_file=mask_file)
            for i in indices
        ]
    )


def masked_condition(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """The inpainting condition ``[x * (1 - m) + fill * m, m]`` (2 channels per input channel pair)."""
    _check_images(x)
    mask = mask.to(device=x.device, dtype=x.dtype)
    if mask.shape[0] == 1 and x.shape[0] > 1:
        mask = mask.expand(x.shape[0], -1, -1, -1)
    if mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"mask size {tuple(mask.shape[-2:])} differs from the image size {tuple(x.shape[-2:])}"
        )
    return torch.cat([x * (1 - mask) + fill * mask, mask], dim=1)


# ----------------------------------------------------------------------------------------------------------
# one object per task
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Degraded:
    """A degraded batch: ``condition`` [B, cond_channels, H, W] for the denoiser, ``mask`` (inpainting only)."""

    condition: torch.Tensor
    mask: torch.Tensor | None = None


@dataclasses.dataclass
class Degradation:
    """One degradation task and its settings; ``__call__`` makes conditions from clean images.

    Args:
        task: "sr", "denoise" or "inpaint".
        factor: super-resolution factor (any value >= 1; e.g. 2.828 for 2*sqrt(2)).
        down_mode / up_mode: interpolation down to round(H/factor) and back up.
        noise_sigma / sp_amount: ranges of the Gaussian sigma ([0, 1] units) and salt-and-pepper fraction.
        mask_kind: "box", "irregular", "mixed" or "file" (with ``mask_file``).
        box_frac: box side as a fraction of the image side.
        fill: value of missing pixels in the masked-image channel.
    """

    task: str = "sr"
    factor: float = 4.0
    down_mode: str = "area"
    up_mode: str = "bicubic"
    noise_sigma: tuple[float, float] = (0.05, 0.2)
    sp_amount: tuple[float, float] = (0.0, 0.05)
    mask_kind: str = "mixed"
    mask_file: str | None = None
    box_frac: tuple[float, float] = (0.25, 0.5)
    fill: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"degradation task must be one of {TASKS}, got {self.task!r}")
        if self.task == "sr" and not float(self.factor) >= 1:
            raise ValueError(f"super-resolution factor must be >= 1, got {self.factor}")
        if self.down_mode not in DOWN_MODES:
            raise ValueError(f"down_mode must be one of {DOWN_MODES}, got {self.down_mode!r}")
        if self.up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {self.up_mode!r}")
        if self.mask_kind not in MASK_KINDS:
            raise ValueError(f"mask_kind must be one of {MASK_KINDS}, got {self.mask_kind!r}")
        self.factor = float(self.factor)
        self.noise_sigma = _range("noise_sigma", self.noise_sigma)
        self.sp_amount = _range("sp_amount", self.sp_amount)
        self.box_frac = _range("box_frac", self.box_frac)

    @property
    def cond_channels(self) -> int:
        return COND_CHANNELS[self.task]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("noise_sigma", "sp_amount", "box_frac"):
            d[k] = list(d[k])
        d["cond_channels"] = self.cond_channels
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Degradation:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

    def masks(self, batch: int, size: tuple[int, int], generator: GeneratorLike, device) -> torch.Tensor:
        return random_masks(batch, size, self.mask_kind, generator, device, self.box_frac, self.mask_file)

    def condition_from_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_condition(x, mask, self.fill)

    def __call__(
        self, x: torch.Tensor, generator: GeneratorLike = None, mask: torch.Tensor | None = None
    ) -> Degraded:
        """Degrade clean images ``[B, 1, H, W]`` with random draws from ``generator`` (random training data).

        For inpainting, ``mask`` (1 = missing) overrides the random masks.
        """
        _check_images(x)
        g = as_generator(generator)
        if self.task == "sr":
            return Degraded(degrade_sr(x, self.factor, self.down_mode, self.up_mode))
        if self.task == "denoise":
            return Degraded(degrade_noise(x, self.noise_sigma, self.sp_amount, g))
        if mask is None:
            mask = self.masks(x.shape[0], tuple(x.shape[-2:]), g, x.device)
        mask = mask.to(device=x.device, dtype=x.dtype)
        if mask.shape[0] == 1 and x.shape[0] > 1:
            mask = mask.expand(x.shape[0], -1, -1, -1)
        return Degraded(self.condition_from_mask(x, mask), mask)

    def fixed(self, x: torch.Tensor, indices: Sequence[int], seed: int = 0) -> Degraded:
        """Degrade a test batch: item ``k`` uses the seed of ``indices[k]`` only, so the same test index always
        gets the same mask / noise, whatever the batch it is in."""
        _check_images(x)
        if len(indices) != x.shape[0]:
            raise ValueError(f"got {len(indices)} indices for a batch of {x.shape[0]}")
        parts = [self(x[k : k + 1], index_seed(seed, i)) for k, i in enumerate(indices)]
        cond = torch.cat([p.condition for p in parts])
        mask = torch.cat([p.mask for p in parts]) if self.task == "inpaint" else None
        return Degraded(cond, mask)

    def describe(self) -> str:
        if self.task == "sr":
            return f"sr x{self.factor:g} ({self.down_mode} down, {self.up_mode} up)"
        if self.task == "denoise":
            s, a = self.noise_sigma, self.sp_amount
            return f"denoise (gaussian sigma {s[0]:g}-{s[1]:g}, salt-and-pepper {a[0]:g}-{a[1]:g})"
        return f"inpaint ({self.mask_kind} masks)"
