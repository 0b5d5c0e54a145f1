"""Transformed copies of training images, planted to test that a memorisation audit catches them.

Each kind is one change that augmentation or a generative model makes to a memorised image, at moderate
strength (random within the range, seeded); ``combined`` stacks a flip, a shift, a rotation, a crop and a
gamma change.
"""

from __future__ import annotations

import numpy as np

PLANT_KINDS: dict[str, str] = {
    "exact": "unchanged",
    "hflip": "horizontal flip",
    "vflip": "vertical flip",
    "shift": "translation by 5-8% of the side (border pixels repeated)",
    "rotate": "rotation by 4-8 degrees either way",
    "crop": "crop to 88-92% of the side at a random position, resized back",
    "gamma": "gamma 0.6-0.8 or 1.3-1.6",
    "contrast": "contrast x1.2-1.5 about a random level, clipped to [0, 1] (a narrower window)",
    "noise": "Gaussian noise, sigma 0.03-0.05",
    "blur": "Gaussian blur, sigma 1.5% of the side (1 px at 64 px)",
    "combined": "horizontal flip + 4% shift + 4 degree rotation + crop to 92% + gamma 0.8",
}


def _affine(images01: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Resample each image with its 2 x 3 sampling matrix (normalised coordinates; border pixels repeated)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images01, dtype=np.float32))[:, None]
    theta = torch.tensor(np.asarray(matrices), dtype=torch.float32)
    grid = F.affine_grid(theta, tuple(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0].numpy().clip(0, 1)


def _matrix(rot_deg=0.0, zoom=1.0, shift=(0.0, 0.0), hflip=False) -> np.ndarray:
    """Sampling matrix: output p reads input at flip(R p * zoom + shift); zoom < 1 crops (zooms in)."""
    c, s = np.cos(np.deg2rad(rot_deg)), np.sin(np.deg2rad(rot_deg))
    a = np.array([[c, -s], [s, c]]) * zoom
    t = np.array(shift, dtype=float)
    if hflip:
        a, t = np.diag([-1.0, 1.0]) @ a, np.array([-t[0], t[1]])
    return np.hstack([a, t[:, None]])


def _sign(rng) -> float:
    return float(rng.choice([-1.0, 1.0]))


def transform_copies(images01: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Copies of ``images01`` ``[N, H, W]`` in [0, 1] changed the way ``kind`` (a key of :data:`PLANT_KINDS`)
    says."""
    from scipy.ndimage import gaussian_filter

    if kind not in PLANT_KINDS:
        raise ValueError(f"unknown planted-copy kind {kind!r}; expected one of {', '.join(PLANT_KINDS)}")
    rng = np.random.default_rng(seed)
    x = np.asarray(images01, dtype=np.float32)
    n, side = len(x), x.shape[-1]
    if kind == "exact":
        return x.copy()
    if kind in ("hflip", "vflip"):
        return np.ascontiguousarray(np.flip(x, axis=-1 if kind == "hflip" else -2))
    if kind == "shift":
        m = []
        for _ in range(n):
            ang = rng.uniform(0, 2 * np.pi)
            r = 2 * rng.uniform(0.05, 0.08)  # normalised coordinates span 2
            m.append(_matrix(shift=(r * np.cos(ang), r * np.sin(ang))))
        return _affine(x, np.array(m))
    if kind == "rotate":
        return _affine(x, np.array([_matrix(rot_deg=_sign(rng) * rng.uniform(4, 8)) for _ in range(n)]))
    if kind == "crop":
        m = []
        for _ in range(n):
            z = rng.uniform(0.88, 0.92)
            m.append(_matrix(zoom=z, shift=tuple(rng.uniform(-(1 - z), 1 - z, 2))))
        return _affine(x, np.array(m))
    if kind == "gamma":
        g = np.where(rng.random(n) < 0.5, rng.uniform(0.6, 0.8, n), rng.uniform(1.3, 1.6, n))
        return (np.clip(x, 0, 1) ** g[:, None, None]).astype(np.float32)
    if kind == "contrast":
        gain = rng.uniform(1.2, 1.5, n)[:, None, None]
        level = rng.uniform(0.35, 0.65, n)[:, None, None]
        return np.clip((x - level) * gain + level, 0, 1).astype(np.float32)
    if kind == "noise":
        sigma = rng.uniform(0.03, 0.05, n)[:, None, None]
        return np.clip(x + rng.normal(size=x.shape) * sigma, 0, 1).astype(np.float32)
    if kind == "blur":
        return gaussian_filter(x, sigma=(0, 0.015 * side, 0.015 * side)).astype(np.float32)
    m = [_matrix(rot_deg=_sign(rng) * 4, zoom=0.92, shift=(2 * 0.04 * _sign(rng), 0.0), hflip=True)]
    return _affine(x, np.array(m * n)) ** 0.8


def plant_copies(
    train01: np.ndarray, kinds: list[str] | tuple[str, ...], per_kind: int, seed: int = 0
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``per_kind`` training images (distinct within a kind, seeded) changed by each kind:
    ``(images [len(kinds) * per_kind, H, W], kind per image, training index per image)``."""
    rng = np.random.default_rng(seed)
    images, names, sources = [], [], []
    for j, kind in enumerate(kinds):
        src = rng.choice(len(train01), min(per_kind, len(train01)), replace=False)
        images.append(transform_copies(train01[src], kind, seed=seed + 1000 * (j + 1)))
        names += [kind] * len(src)
        sources.append(src)
    return np.concatenate(images).astype(np.float32), names, np.concatenate(sources)
