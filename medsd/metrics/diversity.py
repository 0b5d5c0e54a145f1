"""Diversity within a set and degenerate-image detection."""

from __future__ import annotations

import numpy as np

# The degenerate-image rule, on 8-bit images:
DEGENERATE_MEAN_LOW = 25.0
DEGENERATE_MEAN_HIGH = 230.0
DEGENERATE_STD_LOW = 10.0
DEGENERATE_NEIGHBOUR_CORR_LOW = 0.8
# ... set for images of 128 px and more. Down-sampling makes neighbouring pixels of a real image less alike
# (real chest phantoms: 0.97 at 128 px, 0.91 at 64, 0.78 at 32; NIH X-rays at 32 px: 5th percentile 0.88),
# while noise stays near 0 at any size, so below 128 px the threshold falls with the size (see
# neighbour_corr_threshold), never below a floor that still separates noise (|corr| < 0.15 from 16 px up).
DEGENERATE_REFERENCE_SIZE = 128
DEGENERATE_NEIGHBOUR_CORR_FLOOR = 0.3


def neighbour_corr_threshold(size: int) -> float:
    """The neighbour-correlation threshold at ``size`` px: 0.8 from 128 px, ``max(0.3, 1 - 0.2 * 128 / size)`` below.

    (64 px: 0.6, 48 px: 0.47, 32 px and less: 0.3.)
    """
    if size >= DEGENERATE_REFERENCE_SIZE:
        return DEGENERATE_NEIGHBOUR_CORR_LOW
    scaled = 1.0 - (1.0 - DEGENERATE_NEIGHBOUR_CORR_LOW) * DEGENERATE_REFERENCE_SIZE / max(int(size), 1)
    return float(max(DEGENERATE_NEIGHBOUR_CORR_FLOOR, scaled))


def neighbour_correlation(image: np.ndarray) -> float:
    """Pearson correlation between horizontally adjacent pixels (NaN -> 0 for constant images)."""
    x = np.asarray(image, dtype=np.float64)
    a, b = x[:, :-1].ravel(), x[:, 1:].ravel()
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def degenerate_stats(images_uint8: np.ndarray) -> dict:
    """Per-image mean, std and horizontal neighbour-pixel correlation on 0-255 images."""
    x = np.asarray(images_uint8)
    if x.ndim == 2:
        x = x[None]
    x = x.astype(np.float64)
    return {
        "mean": x.mean(axis=(1, 2)),
        "std": x.std(axis=(1, 2)),
        "neighbour_corr": np.array([neighbour_correlation(im) for im in x]),
    }


def degenerate_mask(images_uint8: np.ndarray, size: int | None = None) -> np.ndarray:
    """Boolean mask of degenerate images on 8-bit (0-255) images, the project rule made size-aware:

    degenerate if mean < 25 or mean > 230, or std < 10, or the correlation between horizontally adjacent pixels
    is below :func:`neighbour_corr_threshold` of the image size (0.8 at 128 px and more; constant images count
    as correlation 0, so they are degenerate either way). ``size`` defaults to the images' shorter side.
    """
    x = np.asarray(images_uint8)
    if x.ndim == 2:
        x = x[None]
    s = degenerate_stats(x)
    thr = neighbour_corr_threshold(size if size is not None else min(x.shape[-2:]))
    return (
        (s["mean"] < DEGENERATE_MEAN_LOW)
        | (s["mean"] > DEGENERATE_MEAN_HIGH)
        | (s["std"] < DEGENERATE_STD_LOW)
        | (s["neighbour_corr"] < thr)
    )


def degenerate_rule(size: int) -> str:
    """The rule in words at ``size`` px (for reports)."""
    return (
        f"mean<25 or mean>230 (of 255), or std<10, or horizontal neighbour-pixel correlation"
        f"<{neighbour_corr_threshold(size):.2f} (0.8 at 128 px and more, lower for smaller images)"
    )


def count_degenerate(images_uint8: np.ndarray, size: int | None = None) -> int:
    return int(degenerate_mask(images_uint8, size=size).sum())


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(images01, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def mean_pairwise_ms_ssim(images01: np.ndarray, max_pairs: int = 200, seed: int = 0) -> dict:
    """Mean MS-SSIM between distinct images of one group (lower = more diverse).

    All pairs when there are at most ``max_pairs``, else ``max_pairs`` distinct pairs sampled with ``seed``.
    """
    from .paired import ms_ssim_per_image

    x = np.asarray(images01, dtype=np.float32)
    n = len(x)
    if n < 2:
        return {"mean": float("nan"), "std": float("nan"), "n_pairs": 0}
    iu = np.stack(np.triu_indices(n, 1), axis=1)
    if len(iu) > max_pairs:
        rng = np.random.default_rng(seed)
        iu = iu[np.sort(rng.choice(len(iu), max_pairs, replace=False))]
    vals = np.concatenate(
        [ms_ssim_per_image(x[iu[i : i + 128, 0]], x[iu[i : i + 128, 1]]) for i in range(0, len(iu), 128)]
    )
    return {"mean": float(vals.mean()), "std": float(vals.std()), "n_pairs": int(len(iu))}
