"""The Fréchet distance of a whole synthetic dataset, however large: images are read and featurised in chunks
and only each set's :class:`~medsd.metrics.feature_stats.FeatureStats` (count, mean, centred outer-product
sum) is kept, so memory does not grow with the number of images and the FD equals the FD of all features at
once (never an average of per-chunk or per-shard FDs). Chunks can be dealt to processes (``rank``/``world``)
whose statistics merge exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .feature_stats import FeatureStats, frechet_distance_of_stats

CHUNK_SIZE = 256
"""Images read and featurised at a time."""
IN_MEMORY_IMAGES = 2000
"""Generated images ``medsd eval`` holds in memory for its other metrics (KID, precision/recall, C2ST, audit)
when ``--max_images`` is not given; the whole-set FD still reads every image."""


def in_memory_cap(source: Any, max_images: int | None) -> int | None:
    """How many images of ``source`` ``medsd eval`` loads at once: ``max_images`` when given, else at most
    :data:`IN_MEMORY_IMAGES` of a ``medsd generate`` dataset (a seeded, label-proportional subsample), else all."""
    if max_images is not None or not is_generated_dataset(source):
        return max_images
    return IN_MEMORY_IMAGES


def is_generated_dataset(source: Any) -> bool:
    """Whether ``source`` is a folder ``medsd generate`` wrote (its ``manifest.json`` says so); False for
    in-memory sets (an ``ImageSet`` or array)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    manifest = Path(source) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return "num_images" in json.loads(manifest.read_text())
    except (json.JSONDecodeError, TypeError):
        return False


def stream_feature_stats(
    source: str | os.PathLike,
    extractor: Any,
    size: int = 128,
    chunk_size: int = CHUNK_SIZE,
    rank: int = 0,
    world: int = 1,
    **load_options: Any,
) -> FeatureStats:
    """Statistics of ``extractor``'s features over every image of ``source``, read ``chunk_size`` at a time
    as :func:`medsd.metrics.io.load_image_set` reads them; this process takes chunks ``k`` with
    ``k mod world == rank``. ``load_options``: :func:`medsd.metrics.io.eval_data_config`'s keywords."""
    from medsd.data.build import build_dataset

    from .io import eval_data_config

    dataset, _ = build_dataset(eval_data_config(str(source), size, **load_options))
    stats = FeatureStats()
    for start in range(rank * chunk_size, len(dataset), chunk_size * world):
        items = [dataset[i] for i in range(start, min(start + chunk_size, len(dataset)))]
        x = np.stack([it["pixel_values"][0].numpy() for it in items]).astype(np.float32)
        stats = stats.update(extractor(np.clip((x + 1.0) / 2.0, 0.0, 1.0)))
    return stats


def whole_set_fd_section(cfg: Any, extractors: dict[str, Any], log=print) -> dict[str, Any]:
    """``report["whole_set_fd"]`` of ``medsd eval``: the FD on raw features of every real and every generated
    image (``cfg.max_images`` aside), one chunk in memory at a time."""
    load = dict(image_column=cfg.filename_column, **cfg.read_options())
    section: dict[str, Any] = {
        "note": f"Fréchet distance on raw features of every image of both sets, streamed {CHUNK_SIZE} at a "
        "time and merged from sufficient statistics (equal to the FD of all features at once)"
    }
    for name, ext in extractors.items():
        real = stream_feature_stats(cfg.real, ext, cfg.size, **load)
        fake = stream_feature_stats(cfg.fake, ext, cfg.size, **load)
        fd = frechet_distance_of_stats(real, fake)
        section[name] = {"frechet_distance": fd, "n_real": real.count, "n_fake": fake.count}
        log(f"[whole-set FD] {name}: {fd:.4g} over {real.count} real and {fake.count} generated images")
    return section


__all__ = [
    "CHUNK_SIZE",
    "IN_MEMORY_IMAGES",
    "in_memory_cap",
    "is_generated_dataset",
    "stream_feature_stats",
    "whole_set_fd_section",
]
