"""A training run's figures: the loss curve and grids of validation images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def save_loss_curve(history: list[tuple[int, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def image_grid(images: list[Any], cols: int | None = None) -> Any:
    """PIL images as one grid image (diffusers' ``make_image_grid``; mode "L" when all are)."""
    from diffusers.utils import make_image_grid

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    if len(images) < rows * cols:
        from PIL import Image

        blank = Image.new(images[0].mode, images[0].size)
        images = list(images) + [blank] * (rows * cols - len(images))
    grid = make_image_grid(images, rows=rows, cols=cols)
    return grid.convert("L") if all(im.mode == "L" for im in images) else grid


def save_image_grid(images: list[Any], path: Path, cols: int | None = None) -> Path:
    """Save PIL images as one grid PNG; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols).save(path)
    return path
