"""Datasets yielding ``{"pixel_values", "label", "prompt", "path", "patient_id"}`` items.

``pixel_values`` is a FloatTensor [1, H, W] in [-1, 1]: the native image (``read_image``) mapped by an
``IntensityMapping`` and then resized/cropped by an ``ImageTransform``. Sources: a folder tree, a metadata
CSV, a Hugging Face ``datasets`` dataset (optionally streamed) and seeded phantoms. ``build_dataset``
builds one from a ``DataConfig``, applies a patient-level split and fits the intensity mapping.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medsd.errors import MedsdError

from .errors import MedImageError, one_line
from .intensity import IntensityMapping, default_mapping
from .io import DATASET_EXTENSIONS, MedImage, check_finite, read_image
from .listing import (
    _MULTI_FRAME,
    check_columns,
    confined_path,
    frames_of,
    other_files_hint,
    read_csv_rows,
    walk_images,
)
from .prompts import PromptTemplate, _as_template, _missing
from .splits import SPLITS
from .transforms import ImageTransform

logger = logging.getLogger("medsd.data")


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


def default_min_size(resolution: int) -> int:
    """The smallest image side accepted by default: 16 px or 1/8 of ``resolution``, whichever is larger,
    and never more than ``resolution`` (so a 1x1 image or a thumbnail is never upscaled into data)."""
    return min(int(resolution), max(16, int(resolution) // 8))


MAX_ASPECT_RATIO = 4.0
"""Default largest long/short side ratio of an image (a 10x20000 strip is not an image to crop)."""


@dataclass
class ImageSettings:
    """How an image source checks each native image and turns it into an item: the keyword arguments
    that ``FolderImageDataset``, ``CSVImageDataset`` and ``HFImageDataset`` share.

    ``resolution``: the output side; ``mapping``: native units -> [-1, 1] (None: chosen from the data by
    ``default_mapping``); ``crop``, ``affine``, ``hflip``, ``upscale``: the ``ImageTransform`` built when
    ``transform`` is None; ``prompt_template``: the prompt of items without a caption; ``min_size`` (None:
    ``default_min_size``) and ``max_aspect``: the smallest side and largest long/short ratio accepted;
    ``skip_bad_images``: drop images failing the checks at load, listing them in ``skipped``; ``progress``:
    progress bars for long listings and checks.
    """

    resolution: int = 64
    mapping: IntensityMapping | None = None
    crop: str = "center"
    affine: bool = False
    hflip: bool = False
    upscale: bool = True
    prompt_template: str | PromptTemplate | None = None
    transform: ImageTransform | None = None
    min_size: int | None = None
    max_aspect: float | None = MAX_ASPECT_RATIO
    skip_bad_images: bool = False
    progress: bool = True

    @classmethod
    def from_keywords(cls, owner: str, resolution: int, keywords: dict[str, Any]) -> ImageSettings:
        """The settings a dataset constructor's ``resolution`` and other keywords give; an unknown keyword
        is a ``TypeError`` naming the constructor, as Python's own would."""
        unknown = sorted(set(keywords) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(
                f"{owner}() got unexpected keyword argument(s) {', '.join(unknown)}; expected the fields of "
                "ImageSettings"
            )
        return cls(resolution, **keywords)


class _ImageItems:
    """Shared behaviour: check, map, transform and package one native image as a dataset item."""

    transform: ImageTransform
    template: PromptTemplate | None
    name: str

    def _setup(self, resolution: int, keywords: dict[str, Any]) -> None:
        s = self.settings = ImageSettings.from_keywords(type(self).__name__, resolution, keywords)
        self._mapping = s.mapping
        self.transform = s.transform or ImageTransform(
            s.resolution, s.crop, s.affine, s.hflip, upscale=s.upscale
        )
        res = int(getattr(self.transform, "resolution", s.resolution))
        self.min_size = default_min_size(res) if s.min_size is None else int(s.min_size)
        if s.max_aspect is not None and not s.max_aspect >= 1.0:
            raise MedImageError(f"max_aspect_ratio: expected a number >= 1 or None, got {s.max_aspect!r}")
        self.max_aspect = s.max_aspect
        self.template = _as_template(s.prompt_template)
        self.skipped: list[tuple[str, str]] = []

    @property
    def mapping(self) -> IntensityMapping:
        """The intensity mapping; without one given it is chosen from the data (``default_mapping``)."""
        if self._mapping is None:
            mapping, why = default_mapping(self._auto_samples(16), self.name)
            logger.info("%s: intensity mapping %r (%s)", self.name, mapping, why)
            self._mapping = mapping
        return self._mapping

    @mapping.setter
    def mapping(self, value: IntensityMapping | None) -> None:
        self._mapping = value

    def read_sample(self, i: int) -> MedImage:
        """Item ``i`` as a checked ``MedImage`` in native units (before mapping and transforms)."""
        raise NotImplementedError

    def _where(self, i: int) -> str:
        """The file (or example) item ``i`` comes from, as errors and ``skipped`` name it."""
        raise NotImplementedError

    def _keep(self, positions: Sequence[int]) -> None:
        """Restrict this dataset, in place, to the items at ``positions``."""
        raise NotImplementedError

    def read_native(self, i: int) -> np.ndarray:
        """Item ``i`` as a float32 HxW array in native units (before mapping and transforms)."""
        return self.read_sample(i).array

    def samples(self, indices: Sequence[int], strict: bool = True) -> list[tuple[np.ndarray, dict]]:
        """(array, meta) of items ``indices``; bad items raise when ``strict``, else are left out."""
        out, first = [], None
        for i in indices:
            try:
                img = self.read_sample(int(i))
            except MedImageError as e:
                if strict:
                    raise
                first = first or e
                continue
            out.append((img.array, img.meta))
        if not out and first is not None:
            raise first
        return out

    def _auto_samples(self, n: int) -> list[tuple[np.ndarray, dict]]:
        m = len(self)
        if not m:
            return []
        return self.samples(sorted({int(round(v)) for v in np.linspace(0, m - 1, min(n, m))}), strict=False)

    def select(self, indices: Sequence[int]):
        """A shallow copy restricted to ``indices``."""
        out = copy.copy(self)
        out._keep(indices)
        out.skipped = []
        return out

    def drop_bad_images(self, progress: bool = True):
        """Decode every image once; drop unreadable ones (and ones failing the size, aspect and finite-pixel
        checks), listing them in ``skipped`` as (path, reason) and warning with a summary."""
        good, skipped = [], []
        n = len(self)
        for i in _progress(range(n), n, f"checking {self.name}", progress and n > 200):
            try:
                self.read_sample(i)
                good.append(i)
            except MedImageError as e:
                skipped.append((self._where(i), str(e)))
        self._keep(good)
        self.skipped = self.skipped + skipped
        _warn_skipped(self.name, skipped, len(good) + len(skipped))
        if not good:
            raise MedImageError(
                f"{self.name}: no readable images left after skipping {len(skipped)} bad images"
            )
        return self

    def _drop_bad_if_asked(self) -> None:
        if self.settings.skip_bad_images:
            self.drop_bad_images(progress=self.settings.progress)

    def _validate(self, array: np.ndarray, where: str) -> None:
        """Refuse what must not become training or evaluation data: not 2-D, NaN/inf pixels, smaller
        than ``min_size`` (or the crop without ``upscale``), longer than ``max_aspect`` : 1."""
        a = np.asarray(array)
        if a.ndim != 2 or a.size == 0:
            raise MedImageError(f"{where}: expected a 2-D image, got shape {a.shape}")
        check_finite(a, where)
        h, w = a.shape
        if self.max_aspect is not None and max(h, w) > self.max_aspect * min(h, w):
            raise MedImageError(
                f"{where}: image is {h}x{w}, aspect ratio {max(h, w) / min(h, w):.1f}:1 over the limit of "
                f"{self.max_aspect:g}:1; expected a roughly square image (max_aspect_ratio)"
            )
        res = int(getattr(self.transform, "resolution", 0))
        if not getattr(self.transform, "upscale", True) and min(h, w) < res:
            raise MedImageError(f"{where}: image is {h}x{w}, smaller than the crop size {res}x{res}")
        if min(h, w) < self.min_size:
            raise MedImageError(
                f"{where}: image is {h}x{w}, below the minimum side of {self.min_size} px; expected images "
                f"of at least {self.min_size}x{self.min_size} (min_image_size)"
            )

    def _item(
        self, array: np.ndarray, path: str, label, caption, patient_id, fields: dict, where: str | None = None
    ) -> dict:
        where = where or path
        self._validate(array, where)
        x = torch.from_numpy(self.mapping.forward(np.asarray(array, dtype=np.float32)))[None]
        x = self.transform(x, path=where)
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


def _read_record(r: dict) -> MedImage:
    """``read_image`` of a record; an unexpected library error still becomes one line naming the file."""
    try:
        return read_image(r["path"], frame=r.get("frame"))
    except MedsdError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder's own exception type; keep it chained for --debug
        raise MedImageError(f"{_where(r)}: cannot read image ({type(e).__name__}: {one_line(e)})") from e


def _where(r: dict) -> str:
    return r["path"] if r.get("frame") is None else f"{r['path']} (frame {r['frame']})"


class _RecordDataset(_ImageItems, Dataset):
    """A map-style dataset over a list of file records (``path``, optional ``frame``, label, ...)."""

    name = "dataset"

    def _init_records(self, records: list[dict]) -> None:
        self.records = _expand(records, self.settings.progress, self.name)
        self._drop_bad_if_asked()

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

    @property
    def split_keys(self) -> list[str | None]:
        """What a patient-level split groups by: the patient id, else the file for the frames / slices of
        one multi-frame file (so one volume is never on two sides), else None (the item on its own)."""
        return [
            r["patient_id"]
            if not _missing(r["patient_id"])
            else (f"file:{r['path']}" if r.get("frame") is not None else None)
            for r in self.records
        ]

    def read_sample(self, i: int) -> MedImage:
        """Item ``i`` as a checked ``MedImage`` in native units (before mapping and transforms)."""
        r = self.records[i]
        img = _read_record(r)
        self._validate(img.array, _where(r))
        return img

    def _where(self, i: int) -> str:
        return _where(self.records[i])

    def _keep(self, positions: Sequence[int]) -> None:
        self.records = [self.records[int(i)] for i in positions]

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = _read_record(r)
        return self._item(
            img.array, r["path"], r["label"], r.get("caption"), r["patient_id"], r["fields"], where=_where(r)
        )


def _expand(records: list[dict], progress: bool, name: str) -> list[dict]:
    """One record per 2-D image: multi-frame DICOM / multi-page TIFF frames and NIfTI slices."""
    out = []
    multi = [r for r in records if Path(r["path"]).name.lower().endswith(_MULTI_FRAME)]
    frames = {}
    for r in _progress(multi, len(multi), f"listing frames of {name}", progress and len(multi) > 200):
        frames[r["path"]] = frames_of(Path(r["path"]))
    for r in records:
        for f in frames.get(r["path"], [None]):
            out.append(r if f is None else {**r, "frame": f})
    return out


class FolderImageDataset(_RecordDataset):
    """All images under ``root`` (recursive, sorted; linked folders followed once). The label is the first
    sub-folder name, e.g. ``chest_xray/train/PNEUMONIA/x.jpeg`` with ``root="chest_xray/train"`` ->
    ``"PNEUMONIA"``; files directly in ``root`` have label None. NIfTI volumes give one item per non-empty
    axial slice, multi-frame DICOM / multi-page TIFF one per frame. ``patient_id_pattern`` is a regex whose
    first group, searched in the file name, gives the patient id (e.g. ``r"^(\\d+)_"`` for NIH names).
    Other keywords (``mapping``, ``crop``, ``prompt_template``, ``skip_bad_images``, ...) are the fields of
    ``ImageSettings``."""

    def __init__(
        self,
        root: str | Path,
        resolution: int = 64,
        *,
        extensions: Sequence[str] = DATASET_EXTENSIONS,
        patient_id_pattern: str | None = None,
        **settings: Any,
    ) -> None:
        root = Path(root)
        self.root, self.name = root, str(root)
        if not root.is_dir():
            raise MedImageError(f"{root}: not a directory; expected a folder of images")
        self._setup(resolution, settings)
        files = walk_images(root, extensions)
        if not files:
            raise MedImageError(
                f"{root}: no image files found (looked for {', '.join(extensions)}, recursively)"
                + other_files_hint(root)
            )
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
        self._init_records(records)


class CSVImageDataset(_RecordDataset):
    """Images listed in a UTF-8 metadata CSV. Paths in ``image_column`` are relative to ``root`` (default: the
    CSV's folder) and must stay inside it unless ``allow_outside_root``. Every column is available to the
    prompt template (e.g. ``{view}``); ``caption_column``, when set and non-empty, is used as the prompt as
    it is. A row naming a NIfTI volume or multi-frame file gives one item per slice / frame. Other keywords
    (``mapping``, ``crop``, ``prompt_template``, ``skip_bad_images``, ...) are the fields of ``ImageSettings``."""

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
        allow_outside_root: bool = False,
        **settings: Any,
    ) -> None:
        csv_path = Path(csv_path)
        self.name = str(csv_path)
        if not csv_path.is_file():
            raise MedImageError(f"{csv_path}: CSV file not found")
        self._setup(resolution, settings)
        root = Path(root) if root is not None else csv_path.parent
        columns, rows = read_csv_rows(csv_path)
        roles = dict(
            image_column=image_column,
            label_column=label_column,
            caption_column=caption_column,
            patient_column=patient_column,
        )
        check_columns(str(csv_path), columns, roles)
        if not rows:
            raise MedImageError(f"{csv_path}: no rows; expected one row per image")
        records = []
        for n, row in rows:
            name = (row.get(image_column) or "").strip()
            if not name:
                raise MedImageError(f"{csv_path}: line {n}: empty {image_column!r}; expected an image path")
            records.append(
                {
                    "path": confined_path(csv_path, n, root, name, allow_outside_root),
                    "label": row.get(label_column) if label_column else None,
                    "caption": row.get(caption_column) if caption_column else None,
                    "patient_id": row.get(patient_column) if patient_column else None,
                    "fields": {k: v for k, v in row.items() if k is not None},
                }
            )
        self._init_records(records)
