"""``UInt8ImageCache``: decode a dataset once, then slice batches on the training device; ``collate_items``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset

from .datasets import _progress
from .errors import MedImageError


def collate_items(items: Sequence[dict]) -> dict:
    """DataLoader ``collate_fn``: stack ``pixel_values``; other keys become lists (None allowed)."""
    out: dict[str, Any] = {"pixel_values": torch.stack([it["pixel_values"] for it in items])}
    for k in items[0]:
        if k != "pixel_values":
            out[k] = [it[k] for it in items]
    return out


class UInt8ImageCache:
    """All items of a dataset decoded once into a uint8 tensor [N, 1, H, W] (+ labels, prompts, paths,
    patient ids). Batches are sliced where the tensor lives (``.to("cuda")``) and converted to float
    [-1, 1] there. uint8 keeps 256 levels: fine for 8-bit sources, a quantisation for 16-bit / HU data."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: list | None = None,
        prompts: list | None = None,
        paths: list | None = None,
        patient_ids: list | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise MedImageError(
                f"UInt8ImageCache: expected a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        n = images.shape[0]
        self.images = images
        self.labels = list(labels) if labels is not None else [None] * n
        self.prompts = list(prompts) if prompts is not None else [None] * n
        self.paths = list(paths) if paths is not None else [None] * n
        self.patient_ids = list(patient_ids) if patient_ids is not None else [None] * n

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] floats -> uint8 (round to nearest of 256 levels)."""
        return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)

    @classmethod
    def from_dataset(
        cls, ds: Any, progress: bool = True, num_workers: int = 0, max_items: int | None = None
    ) -> UInt8ImageCache:
        """Decode every item of ``ds`` (map-style or iterable) once, with a tqdm bar when ``progress``."""
        try:
            total = len(ds)
        except TypeError:
            total = None
        if max_items is not None:
            total = min(total, max_items) if total is not None else max_items
        if num_workers > 0:
            source = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        elif total is not None and not isinstance(ds, IterableDataset):
            source = (ds[i] for i in range(total))
        else:
            source = iter(ds)
        images, labels, prompts, paths, pids = [], [], [], [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-image ops are tiny: intra-op threads only add overhead here
        try:
            for k, item in enumerate(_progress(source, total, "decoding images", progress)):
                if max_items is not None and k >= max_items:
                    break
                x = item["pixel_values"]
                if images and x.shape != images[0].shape:
                    raise MedImageError(
                        f"{item.get('path')}: item shape {tuple(x.shape)} differs from {tuple(images[0].shape)}; "
                        "UInt8ImageCache needs equal sizes (use a fixed resolution crop)"
                    )
                images.append(cls.to_uint8(x))
                labels.append(item.get("label"))
                prompts.append(item.get("prompt"))
                paths.append(item.get("path"))
                pids.append(item.get("patient_id"))
        finally:
            torch.set_num_threads(threads)
        if not images:
            raise MedImageError("UInt8ImageCache.from_dataset: the dataset yielded no items")
        return cls(torch.stack(images), labels, prompts, paths, pids)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device) -> UInt8ImageCache:
        """Move the uint8 images to ``device`` (in place; returns self)."""
        self.images = self.images.to(device)
        return self

    def pin_memory(self) -> UInt8ImageCache:
        """Pin the (CPU) images for faster asynchronous copies to the GPU (in place; returns self)."""
        if self.images.device.type == "cpu" and torch.cuda.is_available():
            self.images = self.images.pin_memory()
        return self

    def get_batch(
        self, indices: Sequence[int] | torch.Tensor, device: str | torch.device | None = None
    ) -> dict:
        """Items ``indices`` as a batch dict; ``pixel_values`` float [-1, 1] [B, 1, H, W] on ``device``
        (default: where the cache lives); the uint8 -> float conversion happens on that device."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        imgs = self.images[idx.to(self.images.device)]
        if device is not None:
            imgs = imgs.to(device, non_blocking=True)
        pixel_values = imgs.float().div_(127.5).sub_(1.0)
        ids = idx.tolist()
        return {
            "pixel_values": pixel_values,
            "label": [self.labels[i] for i in ids],
            "prompt": [self.prompts[i] for i in ids],
            "path": [self.paths[i] for i in ids],
            "patient_id": [self.patient_ids[i] for i in ids],
            "index": idx,
        }
