"""medsd's figures: one image grid, one figure of labelled image rows, and the plots of reports and runs.

Every picture of several images goes through :func:`image_grid` (a PIL image) or
:func:`labelled_rows_figure` (matplotlib, a title per row). Grayscale inputs are PIL images or [H, W]
arrays in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image, dtype=np.float32)
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8), mode="L")


def image_grid(images: Sequence[Any], cols: int | None = None, pad: int = 0, background: int = 0) -> Any:
    """The images as one PIL image, row-major, ``cols`` per row (default: a square grid), ``pad`` pixels of
    ``background`` between them; mode "L" when all images are grayscale. Hand-written: diffusers'
    ``make_image_grid`` needs a full last row and has no padding."""
    from PIL import Image

    pics = [_as_pil(im) for im in images]
    if not pics:
        raise ValueError("image_grid: no images")
    cols = cols or math.ceil(math.sqrt(len(pics)))
    rows = math.ceil(len(pics) / cols)
    mode = "L" if all(p.mode == "L" for p in pics) else "RGB"
    w, h = pics[0].size
    grid = Image.new(mode, (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), background)
    for k, pic in enumerate(pics):
        r, c = divmod(k, cols)
        grid.paste(pic.convert(mode), (c * (w + pad), r * (h + pad)))
    return grid


def save_image_grid(images: Sequence[Any], path: Path, cols: int | None = None) -> Path:
    """Save :func:`image_grid` of the images as a PNG; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols).save(path)
    return path


def labelled_rows_figure(rows: dict[str, Sequence[Any]], path: Path) -> Path:
    """A figure with one titled row of grayscale images per entry of ``rows``; returns its path."""
    plt = _pyplot()
    n_cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.3 * n_cols, 1.45 * len(rows)), dpi=110, squeeze=False
    )
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            axes[r][c].axis("off")
            if c < len(images):
                axes[r][c].imshow(images[c], cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_grid(images01: np.ndarray, path: str | Path, title: str, n: int = 16, seed: int = 0) -> str:
    """A titled grid of ``n`` randomly chosen images (seeded) saved as PNG."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images01), min(n, len(images01)), replace=False))
    grid = np.asarray(image_grid(images01[idx], pad=2, background=255))
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.3))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def feature_plots(
    real_z: np.ndarray, fake_z: np.ndarray, names: list[str] | None, path: str | Path, title: str
) -> str:
    """PCA scatter (fitted on real) + the features with the largest standardised mean difference."""
    plt = _pyplot()
    mu = real_z.mean(0)
    _, _, vt = np.linalg.svd(real_z - mu, full_matrices=False)
    pr, pf = (real_z - mu) @ vt[:2].T, (fake_z - mu) @ vt[:2].T
    smd = fake_z.mean(0) - real_z.mean(0)
    top = np.argsort(-np.abs(smd))[:12]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.6, label="real")
    a.scatter(pf[:, 0], pf[:, 1], s=6, alpha=0.6, label="fake")
    a.set_xlabel("PC1 (real)")
    a.set_ylabel("PC2 (real)")
    a.legend(fontsize=8)
    a.set_title(title, fontsize=9)
    labels = [names[i] if names and i < len(names) else f"f{i}" for i in top]
    b.barh(range(len(top))[::-1], smd[top])
    b.set_yticks(range(len(top))[::-1], labels, fontsize=7)
    b.set_xlabel("fake mean - real mean (real std units)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def save_loss_curve(history: list[tuple[int, float]], path: Path) -> None:
    """A training run's loss against its step, log scale (nothing when there is no history)."""
    if not history:
        return
    plt = _pyplot()
    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, losses, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
