"""Datasets yielding ``{"pixel_values", "label", "prompt", "path", "patient_id"}`` items.

``pixel_values`` is a FloatTensor [1, H, W] in [-1, 1]: the native image (``read_image``) mapped by an
``IntensityMapping`` and then resized/cropped by an ``ImageTransform``. Sources: a folder tree, a metadata
CSV, a Hugging Face ``datasets`` dataset (optionally streamed) and seeded phantoms. ``build_dataset``
builds one from a ``DataConfig``, applies a patient-level split and fits the intensity mapping.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import MedImageError
from .intensity import IntensityMapping, WindowMapping
from .io import IMAGE_EXTENSIONS, read_image
from .prompts import PromptTemplate, _as_template, _missing, normalize_label  # noqa: F401
from .transforms import ImageTransform

SPLITS = ("train", "val", "test")


def patient_split(
    patient_ids: Sequence[Any] | int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split item indices into (train, val, test) so that no patient is on two sides.

    Items with a missing id (or ``patient_ids=N`` for N items without ids) are split individually.
    Patients are shuffled with ``seed`` and assigned greedily to the split that most lacks items.
    """
    if isinstance(patient_ids, int):
        patient_ids = [None] * patient_ids
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise MedImageError(f"split fractions: expected 3 non-negative numbers summing to 1, got {fractions}")
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(patient_ids):
        key = f"item:{i}" if _missing(pid) else f"patient:{pid}"
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n = len(patient_ids)
    target = [f * n for f in fr]
    counts = [0, 0, 0]
    out: list[list[int]] = [[], [], []]
    for k in order:
        members = groups[keys[k]]
        need = [target[s] - counts[s] if fr[s] > 0 else -math.inf for s in range(3)]
        s = int(np.argmax(need))
        out[s].extend(members)
        counts[s] += len(members)
    return tuple(np.array(sorted(o), dtype=np.int64) for o in out)  # type: ignore[return-value]


def _hash_fraction(key: str, seed: int) -> float:
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def _hash_part(key: str, fractions: Sequence[float], seed: int) -> str:
    u, acc = _hash_fraction(key, seed), 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


def _warn_skipped(name: str, skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        first = "; ".join(f"{p} ({r})" for p, r in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(f"{name}: skipped {len(skipped)} of {total} bad images: {first}{more}", stacklevel=3)


def _progress(iterable, total: int | None, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img")


class _ImageItems:
    """Shared behaviour: map, transform and package one native image as a dataset item."""

    mapping: IntensityMapping
    transform: ImageTransform
    template: PromptTemplate | None

    def _setup(self, resolution, mapping, crop, affine, hflip, upscale, prompt_template, transform) -> None:
        self.mapping = mapping if mapping is not None else WindowMapping(0, 255)
        self.transform = transform or ImageTransform(resolution, crop, affine, hflip, upscale=upscale)
        self.template = _as_template(prompt_template)
        self.skipped: list[tuple[str, str]] = []

    def _item(self, array: np.ndarray, path: str, label, caption, patient_id, fields: dict) -> dict:
        x = torch.from_numpy(self.mapping.forward(np.asarray(array, dtype=np.float32)))[None]
        x = self.transform(x, path=path)
        if not _missing(caption):
            prompt = str(caption)
        elif self.template is not None:
            extra = {k: v for k, v in fields.items() if k != "label"}
            prompt = self.template.format(label=fields.get("label") if _missing(label) else label, **extra)
        else:
            prompt = None
        return {
            "pixel_values": x,
            "label": None if _missing(label) else str(label),
            "prompt": prompt,
            "path": path,
            "patient_id": None if _missing(patient_id) else str(patient_id),
        }

    def _check_native(self, array: np.ndarray, path: str) -> None:
        if array.size == 0:
            raise MedImageError(f"{path}: empty image (shape {array.shape})")
        if not getattr(self.transform, "upscale", True):
            self.transform(torch.zeros(1, *array.shape[-2:]), path=path)  # raises if too small for the crop


class _RecordDataset(_ImageItems, Dataset):
    """A map-style dataset over a list of file records."""

    name = "dataset"

    def _init_records(self, records: list[dict], skip_bad_images: bool, progress: bool = True) -> None:
        self.records = records
        if skip_bad_images:
            self.drop_bad_images(progress=progress)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self.records]

    @property
    def labels(self) -> list[str | None]:
        return [r["label"] for r in self.records]

    @property
    def patient_ids(self) -> list[str | None]:
        return [r["patient_id"] for r in self.records]

    def read_native(self, i: int) -> np.ndarray:
        """Item ``i`` as a float32 HxW array in native units (before mapping and transforms)."""
        return read_image(self.records[i]["path"]).array

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = read_image(r["path"])
        return self._item(img.array, r["path"], r["label"], r.get("caption"), r["patient_id"], r["fields"])

    def select(self, indices: Sequence[int]):
        """A shallow copy restricted to ``indices``."""
        out = copy.copy(self)
        out.records = [self.records[int(i)] for i in indices]
        out.skipped = []
        return out

    def drop_bad_images(self, progress: bool = True):
        """Decode every file once; drop unreadable ones (and ones too small for the crop), listing them in
        ``skipped`` as (path, reason) and warning with a summary."""
        good, skipped = [], []
        it = _progress(self.records, len(self.records), f"checking {self.name}", progress and len(self) > 200)
        for r in it:
            try:
                self._check_native(read_image(r["path"]).array, r["path"])
                good.append(r)
            except MedImageError as e:
                skipped.append((r["path"], str(e)))
        self.records, self.skipped = good, self.skipped + skipped
        _warn_skipped(self.name, skipped, len(good) + len(skipped))
        if not good:
            raise MedImageError(
                f"{self.name}: no readable images left after skipping {len(skipped)} bad files"
            )
        return self


class FolderImageDataset(_RecordDataset):
    """All images under ``root`` (recursive, sorted). The label is the first sub-folder name, e.g.
    ``chest_xray/train/PNEUMONIA/x.jpeg`` with ``root="chest_xray/train"`` -> ``"PNEUMONIA"``; files directly
    in ``root`` have label None. ``patient_id_pattern`` is a regex whose first group, searched in the file
    name, gives the patient id (e.g. ``r"^(\\d+)_"`` for NIH names, ``r"^(person\\d+)_"`` for Kaggle)."""

    def __init__(
        self,
        root: str | Path,
        resolution: int = 64,
        *,
        mapping: IntensityMapping | None = None,
        crop: str = "center",
        affine: bool = False,
        hflip: bool = False,
        upscale: bool = True,
        prompt_template: str | PromptTemplate | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        patient_id_pattern: str | None = None,
        skip_bad_images: bool = False,
        transform: ImageTransform | None = None,
        progress: bool = True,
    ) -> None:
        root = Path(root)
        self.root, self.name = root, str(root)
        if not root.is_dir():
            raise MedImageError(f"{root}: not a directory; expected a folder of images")
        self._setup(resolution, mapping, crop, affine, hflip, upscale, prompt_template, transform)
        exts = tuple(e.lower() for e in extensions)
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.name.lower().endswith(exts) and not any(s.startswith(".") for s in p.parts)
        )
        if not files:
            raise MedImageError(f"{root}: no image files found (looked for {', '.join(exts)}, recursively)")
        pattern = re.compile(patient_id_pattern) if patient_id_pattern else None
        records = []
        for p in files:
            rel = p.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            pid = None
            if pattern is not None:
                m = pattern.search(p.name)
                pid = (m.group(1) if m.groups() else m.group(0)) if m else None
            fields = {"filename": p.name}
            records.append({"path": str(p), "label": label, "patient_id": pid, "fields": fields})
        self._init_records(records, skip_bad_images, progress)


class CSVImageDataset(_RecordDataset):
    """Images listed in a metadata CSV. Paths in ``image_column`` are relative to ``root`` (default: the CSV's
    folder). Every column is available to the prompt template (e.g. ``{view}``); ``caption_column``, when
    set and non-empty, is used as the prompt as it is."""

    def __init__(
        self,
        csv_path: str | Path,
        image_column: str = "filename",
        label_column: str | None = None,
        caption_column: str | None = None,
        patient_column: str | None = None,
        root: str | Path | None = None,
        resolution: int = 64,
        *,
        mapping: IntensityMapping | None = None,
        crop: str = "center",
        affine: bool = False,
        hflip: bool = False,
        upscale: bool = True,
        prompt_template: str | PromptTemplate | None = None,
        skip_bad_images: bool = False,
        transform: ImageTransform | None = None,
        progress: bool = True,
    ) -> None:
        csv_path = Path(csv_path)
        self.name = str(csv_path)
        if not csv_path.is_file():
            raise MedImageError(f"{csv_path}: CSV file not found")
        self._setup(resolution, mapping, crop, affine, hflip, upscale, prompt_template, transform)
        root = Path(root) if root is not None else csv_path.parent
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            for role, col in (
                ("image_column", image_column),
                ("label_column", label_column),
                ("caption_column", caption_column),
                ("patient_column", patient_column),
            ):
                if col is not None and col not in columns:
                    raise MedImageError(
                        f"{csv_path}: column {col!r} ({role}) not found; available columns: {', '.join(columns)}"
                    )
            rows = list(reader)
        if not rows:
            raise MedImageError(f"{csv_path}: no rows; expected one row per image")
        records = []
        for n, row in enumerate(rows, start=2):
            name = (row.get(image_column) or "").strip()
            if not name:
                raise MedImageError(f"{csv_path}: line {n}: empty {image_column!r}; expected an image path")
            p = Path(name)
            records.append(
                {
                    "path": str(p if p.is_absolute() else root / p),
                    "label": row.get(label_column) if label_column else None,
                    "caption": row.get(caption_column) if caption_column else None,
                    "patient_id": row.get(patient_column) if patient_column else None,
                    "fields": dict(row),
                }
            )
        self._init_records(records, skip_bad_images, progress)
