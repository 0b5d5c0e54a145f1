"""Datasets yielding ``{"pixel_values", "label", "prompt", "path", "patient_id"}`` items.

``pixel_values`` is a FloatTensor [1, H, W] in [-1, 1]: the native image (``read_image``) mapped by an
``IntensityMapping`` and then resized/cropped by an ``ImageTransform``. Sources: a folder tree, a metadata
CSV, a Hugging Face ``datasets`` dataset (optionally streamed) and seeded phantoms. ``build_dataset``
builds one from a ``DataConfig``, applies a patient-level split and fits the intensity mapping.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .errors import MedImageError
from .intensity import IntensityMapping, MinMaxMapping, PercentileMapping, WindowMapping
from .io import IMAGE_EXTENSIONS, pil_to_array, read_image
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


def _image_to_array(value: Any, where: str) -> np.ndarray:
    """A ``datasets`` image value (PIL image, {"bytes"/"path"} dict, array) -> float32 HxW native array."""
    from PIL import Image

    try:
        if isinstance(value, dict):
            if value.get("bytes"):
                import io as _io

                value = Image.open(_io.BytesIO(value["bytes"]))
            elif value.get("path"):
                return read_image(value["path"]).array
        if isinstance(value, Image.Image):
            value.load()
            return pil_to_array(value)[0]
        a = np.asarray(value, dtype=np.float32)
    except MedImageError:
        raise
    except Exception as e:
        raise MedImageError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise MedImageError(f"{where}: expected a 2-D image, got shape {a.shape}")
    return a


def _load_hf(name_or_path: str | Path, split: str, data_dir: str | None, streaming: bool, **kwargs: Any):
    datasets = _require_datasets()
    p = Path(name_or_path)
    try:
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
            return ds.to_iterable_dataset() if streaming else ds
        return datasets.load_dataset(
            str(name_or_path), data_dir=data_dir, split=split, streaming=streaming, **kwargs
        )
    except MedImageError:
        raise
    except Exception as e:
        raise MedImageError(
            f"{name_or_path}: cannot load Hugging Face dataset split {split!r} ({type(e).__name__}: {e})"
        ) from None


def _require_datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            'the Hugging Face "datasets" package is required: pip install medsd (or datasets)'
        ) from None
    return datasets


class HFImageDataset(_ImageItems, Dataset):
    """A Hugging Face ``datasets`` image dataset: a hub id, a local folder / ``save_to_disk`` folder, or a
    builder such as ``"imagefolder"`` with ``data_dir``. ``ClassLabel`` labels are turned into their names.
    With ``streaming=True`` the constructor returns an ``HFStreamingImageDataset`` (a torch
    ``IterableDataset``) that decodes examples one at a time, so huge corpora never load fully."""

    def __new__(cls, *args: Any, **kwargs: Any):
        if kwargs.get("streaming") and cls is HFImageDataset:
            cls = HFStreamingImageDataset
        return super().__new__(cls)

    def __init__(
        self,
        name_or_path: str | Path,
        split: str = "train",
        image_column: str = "image",
        label_column: str | None = None,
        caption_column: str | None = None,
        patient_column: str | None = None,
        resolution: int = 64,
        *,
        data_dir: str | None = None,
        streaming: bool = False,
        mapping: IntensityMapping | None = None,
        crop: str = "center",
        affine: bool = False,
        hflip: bool = False,
        upscale: bool = True,
        prompt_template: str | PromptTemplate | None = None,
        skip_bad_images: bool = False,
        transform: ImageTransform | None = None,
        progress: bool = True,
        load_kwargs: dict | None = None,
    ) -> None:
        self.name = f"{name_or_path}[{split}]"
        self._setup(resolution, mapping, crop, affine, hflip, upscale, prompt_template, transform)
        self.hf = _load_hf(name_or_path, split, data_dir, streaming, **(load_kwargs or {}))
        self.image_column, self.label_column = image_column, label_column
        self.caption_column, self.patient_column = caption_column, patient_column
        features = self.hf.features or {}
        columns = list(features) if features else list(getattr(self.hf, "column_names", None) or [])
        for role, col in (
            ("image_column", image_column),
            ("label_column", label_column),
            ("caption_column", caption_column),
            ("patient_column", patient_column),
        ):
            if col is not None and columns and col not in columns:
                raise MedImageError(
                    f"{self.name}: column {col!r} ({role}) not found; available columns: {', '.join(columns)}"
                )
        label_feature = features.get(label_column) if label_column and features else None
        self._int2str = getattr(label_feature, "int2str", None)
        if not streaming:
            self.indices = list(range(len(self.hf)))
            if skip_bad_images:
                self.drop_bad_images(progress=progress)

    def _label(self, v: Any) -> Any:
        if self._int2str is not None and isinstance(v, int | np.integer):
            return self._int2str(int(v))
        return v

    def _path(self, ex: dict, idx: int) -> str:
        v = ex.get(self.image_column)
        p = getattr(v, "filename", None) or (v.get("path") if isinstance(v, dict) else None)
        return str(p) if p else f"hf://{self.name}/{idx}"

    def _example_item(self, ex: dict, idx: int) -> dict:
        path = self._path(ex, idx)
        arr = _image_to_array(ex[self.image_column], path)
        label = self._label(ex.get(self.label_column)) if self.label_column else None
        fields = {k: v for k, v in ex.items() if k != self.image_column and isinstance(v, str | int | float)}
        if label is not None:
            fields["label"] = label
        caption = ex.get(self.caption_column) if self.caption_column else None
        pid = ex.get(self.patient_column) if self.patient_column else None
        return self._item(arr, path, label, caption, pid, fields)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        return self._example_item(self.hf[idx], idx)

    def _column(self, col: str | None) -> list:
        if col is None:
            return [None] * len(self.indices)
        values = self.hf[col]
        return [values[i] for i in self.indices]

    @property
    def labels(self) -> list:
        return [self._label(v) for v in self._column(self.label_column)]

    @property
    def patient_ids(self) -> list:
        return [None if _missing(v) else str(v) for v in self._column(self.patient_column)]

    def read_native(self, i: int) -> np.ndarray:
        idx = self.indices[i]
        ex = self.hf[idx]
        return _image_to_array(ex[self.image_column], self._path(ex, idx))

    def select(self, indices: Sequence[int]):
        out = copy.copy(self)
        out.indices = [self.indices[int(i)] for i in indices]
        out.skipped = []
        return out

    def drop_bad_images(self, progress: bool = True):
        """Decode every example once; drop bad ones, listing them in ``skipped`` and warning a summary."""
        good, skipped = [], []
        for idx in _progress(
            self.indices, len(self.indices), f"checking {self.name}", progress and len(self) > 200
        ):
            try:
                ex = self.hf[idx]
                path = self._path(ex, idx)
                self._check_native(_image_to_array(ex[self.image_column], path), path)
                good.append(idx)
            except MedImageError as e:
                skipped.append((f"hf://{self.name}/{idx}", str(e)))
        self.indices, self.skipped = good, self.skipped + skipped
        _warn_skipped(self.name, skipped, len(good) + len(skipped))
        if not good:
            raise MedImageError(
                f"{self.name}: no readable images left after skipping {len(skipped)} bad examples"
            )
        return self


class HFStreamingImageDataset(HFImageDataset, IterableDataset):
    """Streaming variant of ``HFImageDataset`` (create it with ``HFImageDataset(..., streaming=True)``).

    Examples are decoded lazily while iterating. In DataLoader workers ``datasets`` gives each worker its own
    shards (so at most ``num_shards`` workers are useful) and ``max_samples`` caps each worker's items.
    ``restrict(part, fractions, seed)`` keeps a hash-based patient-level split (stable across runs).
    Bad examples are skipped (and listed in ``skipped``) when ``skip_bad_images`` is set.
    """

    def __init__(self, *args: Any, skip_bad_images: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_bad_images = skip_bad_images
        self.max_samples: int | None = None
        self.part: tuple[str, tuple[float, ...], int] | None = None

    def __len__(self) -> int:
        raise TypeError("a streaming HFImageDataset has no length; iterate over it")

    def __getitem__(self, i: int) -> dict:
        raise TypeError("a streaming HFImageDataset is not indexable; iterate over it")

    def restrict(self, part: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0):
        """Keep only split ``part`` using a stable hash of the patient id (else the image path or position)."""
        if part not in SPLITS:
            raise MedImageError(f"split: expected one of {SPLITS} or 'all', got {part!r}")
        self.part = (part, tuple(float(f) for f in fractions), seed)
        return self

    def _examples(self) -> Iterator[tuple[int, dict]]:
        for idx, ex in enumerate(self.hf):
            if self.part is not None:
                pid = ex.get(self.patient_column) if self.patient_column else None
                key = f"item:{self._path(ex, idx)}" if _missing(pid) else f"patient:{pid}"
                if _hash_part(key, self.part[1], self.part[2]) != self.part[0]:
                    continue
            yield idx, ex

    def iter_native(self, n: int) -> Iterator[np.ndarray]:
        """The first ``n`` images of the (split-restricted) stream in native units."""
        for k, (idx, ex) in enumerate(self._examples()):
            if k >= n:
                return
            yield _image_to_array(ex[self.image_column], self._path(ex, idx))

    def __iter__(self) -> Iterator[dict]:
        for k, (idx, ex) in enumerate(self._examples()):
            if self.max_samples is not None and k >= self.max_samples:
                return
            try:
                yield self._example_item(ex, idx)
            except MedImageError as e:
                if not self.skip_bad_images:
                    raise
                self.skipped.append((f"hf://{self.name}/{idx}", str(e)))
                warnings.warn(f"{self.name}: skipped bad example {idx}: {e}", stacklevel=2)


@dataclass
class DataConfig:
    """Everything ``build_dataset`` needs. ``image_column`` defaults to ``"filename"`` (csv) / ``"image"``
    (hf); ``window`` (low, high) defaults to (0, 255); ``split`` picks one part of a patient-level split
    (``"all"`` keeps everything); ``hf_split`` is the Hugging Face split to load."""

    source: str = "phantom"
    path: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None
    patient_column: str | None = None
    patient_id_pattern: str | None = None
    prompt_template: str | None = None
    resolution: int = 64
    crop: str = "center"
    affine: bool = False
    hflip: bool = False
    upscale: bool = True
    intensity: str = "window"
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    fit_samples: int = 64
    split: str = "train"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_samples: int | None = None
    skip_bad_images: bool = False
    streaming: bool = False
    hf_split: str = "train"
    data_dir: str | None = None
    phantom_kind: str = "chest"
    phantom_count: int = 1000
    finding_probability: float = 0.5

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        """Build from a plain dict (e.g. YAML), rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MedImageError(f"data config: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _make_mapping(cfg: DataConfig) -> IntensityMapping:
    if cfg.intensity == "window":
        low, high = cfg.window if cfg.window is not None else (0.0, 255.0)
        return WindowMapping(low, high)
    if cfg.intensity == "minmax":
        return MinMaxMapping()
    if cfg.intensity == "percentile":
        return PercentileMapping(*cfg.percentiles)
    raise MedImageError(
        f"data config intensity: expected 'window', 'minmax' or 'percentile', got {cfg.intensity!r}"
    )


def build_dataset(cfg: DataConfig) -> tuple[Any, IntensityMapping]:
    """Build the dataset described by ``cfg`` and its (fitted) intensity mapping.

    Order: load the source, take split ``cfg.split`` (patient-level, seeded), cap at ``max_samples``, drop
    bad images if ``skip_bad_images``, then fit a data-dependent mapping on up to ``fit_samples`` images.
    Phantoms are always in [0, 1] and use ``WindowMapping(0, 1)``.
    """
    if cfg.split not in (*SPLITS, "all"):
        raise MedImageError(f"data config split: expected one of {(*SPLITS, 'all')}, got {cfg.split!r}")
    common = dict(crop=cfg.crop, affine=cfg.affine, hflip=cfg.hflip, upscale=cfg.upscale)
    common["prompt_template"] = cfg.prompt_template
    mapping = _make_mapping(cfg)
    if cfg.source == "phantom":
        from .phantoms import PhantomDataset

        ds: Any = PhantomDataset(
            cfg.phantom_count,
            size=cfg.resolution,
            kind=cfg.phantom_kind,
            finding_probability=cfg.finding_probability,
            seed=cfg.seed,
            prompt_template=cfg.prompt_template,
            transform=ImageTransform(cfg.resolution, cfg.crop, cfg.affine, cfg.hflip)
            if (cfg.affine or cfg.hflip or cfg.crop == "random")
            else None,
        )
        mapping = WindowMapping(0.0, 1.0)
    elif cfg.source in ("folder", "csv", "hf") and not cfg.path:
        raise MedImageError(f"data config path: required for source {cfg.source!r}")
    elif cfg.source == "folder":
        ds = FolderImageDataset(
            cfg.path, cfg.resolution, mapping=mapping, patient_id_pattern=cfg.patient_id_pattern, **common
        )
    elif cfg.source == "csv":
        ds = CSVImageDataset(
            cfg.path,
            cfg.image_column or "filename",
            cfg.label_column,
            cfg.caption_column,
            cfg.patient_column,
            resolution=cfg.resolution,
            mapping=mapping,
            **common,
        )
    elif cfg.source == "hf":
        ds = HFImageDataset(
            cfg.path,
            cfg.hf_split,
            cfg.image_column or "image",
            cfg.label_column,
            cfg.caption_column,
            cfg.patient_column,
            cfg.resolution,
            data_dir=cfg.data_dir,
            streaming=cfg.streaming,
            mapping=mapping,
            skip_bad_images=cfg.skip_bad_images and cfg.streaming,
            **common,
        )
    else:
        raise MedImageError(
            f"data config source: expected 'phantom', 'folder', 'csv' or 'hf', got {cfg.source!r}"
        )

    streaming = isinstance(ds, HFStreamingImageDataset)
    if cfg.split != "all":
        if streaming:
            ds.restrict(cfg.split, cfg.split_fractions, cfg.seed)
        else:
            parts = patient_split(ds.patient_ids, cfg.split_fractions, cfg.seed)
            ds = ds.select(parts[SPLITS.index(cfg.split)])
    if cfg.max_samples is not None:
        if streaming:
            ds.max_samples = cfg.max_samples
        else:
            ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if not streaming and len(ds) == 0:
        raise MedImageError(f"data config: split {cfg.split!r} of {cfg.source} source {cfg.path!r} is empty")
    if cfg.skip_bad_images and not streaming and cfg.source != "phantom":
        ds.drop_bad_images()
    if not mapping.fitted:
        if streaming:
            arrays = list(ds.iter_native(cfg.fit_samples))
        else:
            rng = np.random.default_rng(cfg.seed)
            pick = sorted(rng.choice(len(ds), size=min(cfg.fit_samples, len(ds)), replace=False))
            arrays = [ds.read_native(int(i)) for i in pick]
        if not arrays:
            raise MedImageError(f"data config: no images to fit the {cfg.intensity!r} intensity mapping on")
        mapping.fit(arrays)
    if cfg.source != "phantom":
        ds.mapping = mapping
    return ds, mapping


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
