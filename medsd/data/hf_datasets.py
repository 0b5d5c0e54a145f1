"""Hugging Face ``datasets`` sources (map-style and streamed) yielding medsd image items."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from .datasets import SPLITS, _hash_part, _ImageItems, _warn_skipped
from .errors import MedImageError, one_line
from .io import MedImage, check_finite, pil_to_array, read_image, rgb_to_gray
from .listing import check_columns
from .prompts import _missing


def _image_to_medimage(value: Any, where: str) -> MedImage:
    """A ``datasets`` image value (PIL image, {"bytes"/"path"} dict, array) -> ``MedImage`` in native units."""
    from PIL import Image

    try:
        if isinstance(value, dict):
            if value.get("bytes"):
                import io as _io

                value = Image.open(_io.BytesIO(value["bytes"]))
            elif value.get("path"):
                return read_image(value["path"])
            else:
                raise MedImageError(f"{where}: image value has neither bytes nor a path; expected an image")
        if isinstance(value, Image.Image):
            value.load()
            a, depth = pil_to_array(value)
            meta = {
                "path": where,
                "format": value.format,
                "bit_depth": depth,
                "modality": None,
                "window": None,
            }
            return MedImage(a, meta)
        raw = np.asarray(value)
        depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(raw.dtype, 32)
        a = raw.astype(np.float32)
    except MedImageError:
        raise
    except Image.DecompressionBombError as e:
        raise MedImageError(f"{where}: refused as a possible decompression bomb ({one_line(e)})") from None
    except Exception as e:
        raise MedImageError(
            f"{where}: cannot decode image ({type(e).__name__}: {one_line(e)}); expected an image"
        ) from None
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = rgb_to_gray(a)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise MedImageError(f"{where}: expected a 2-D image, got shape {a.shape}")
    check_finite(a, where)
    return MedImage(
        a, {"path": where, "format": "array", "bit_depth": depth, "modality": None, "window": None}
    )


def _undecoded(hf: Any, column: str) -> Any:
    """``hf`` with ``column`` left as {"bytes", "path"} when it is an ``Image`` feature: medsd decodes it,
    so that a bad image gives one line naming it (and can be skipped) instead of breaking the iteration."""
    datasets = _require_datasets()
    feature = (hf.features or {}).get(column) if getattr(hf, "features", None) else None
    if isinstance(feature, datasets.Image) and feature.decode:
        return hf.cast_column(column, datasets.Image(decode=False))
    return hf


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
        load_kwargs: dict | None = None,
        **settings: Any,
    ) -> None:
        self.name = f"{name_or_path}[{split}]"
        self._setup(resolution, settings)
        self.hf = _load_hf(name_or_path, split, data_dir, streaming, **(load_kwargs or {}))
        self.image_column, self.label_column = image_column, label_column
        self.caption_column, self.patient_column = caption_column, patient_column
        features = self.hf.features or {}
        columns = list(features) if features else list(getattr(self.hf, "column_names", None) or [])
        if columns:
            roles = dict(
                image_column=image_column,
                label_column=label_column,
                caption_column=caption_column,
                patient_column=patient_column,
            )
            check_columns(self.name, columns, roles)
        self.hf = _undecoded(self.hf, image_column)
        label_feature = features.get(label_column) if label_column and features else None
        self._int2str = getattr(label_feature, "int2str", None)
        if not streaming:
            self.indices = list(range(len(self.hf)))
            self._drop_bad_if_asked()

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
        arr = _image_to_medimage(ex[self.image_column], path).array
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

    def read_sample(self, i: int) -> MedImage:
        """Item ``i`` as a checked ``MedImage`` in native units (before mapping and transforms)."""
        idx = self.indices[i]
        ex = self.hf[idx]
        path = self._path(ex, idx)
        img = _image_to_medimage(ex[self.image_column], path)
        self._validate(img.array, path)
        return img

    def _where(self, i: int) -> str:
        idx = self.indices[i]
        return self._path(self.hf[idx], idx)

    def _keep(self, positions: Sequence[int]) -> None:
        self.indices = [self.indices[int(i)] for i in positions]


class HFStreamingImageDataset(HFImageDataset, IterableDataset):
    """Streaming variant of ``HFImageDataset`` (create it with ``HFImageDataset(..., streaming=True)``).

    Examples are decoded lazily while iterating. In DataLoader workers ``datasets`` gives each worker its own
    shards (so at most ``num_shards`` workers are useful) and ``max_samples`` caps each worker's items.
    ``restrict(part, fractions, seed)`` keeps a hash-based patient-level split (stable across runs).
    Bad examples are skipped (and listed in ``skipped``) when ``skip_bad_images`` is set.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_bad_images = self.settings.skip_bad_images
        self.max_samples: int | None = None
        self.part: tuple[str, tuple[float, ...], int] | None = None

    def __len__(self) -> int:
        raise TypeError("a streaming HFImageDataset has no length; iterate over it")

    def _auto_samples(self, n: int) -> list[tuple[np.ndarray, dict]]:
        return [(img.array, img.meta) for img in self.iter_samples(n, strict=False)]

    def __getitem__(self, i: int) -> dict:
        raise TypeError("a streaming HFImageDataset is not indexable; iterate over it")

    def restrict(self, part: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0):
        """Keep only split ``part`` using a stable hash of the patient id (else the image path or position)."""
        if part not in SPLITS:
            raise MedImageError(f"split: expected one of {SPLITS} or 'all', got {part!r}")
        self.part = (part, tuple(float(f) for f in fractions), seed)
        return self

    def _examples(self) -> Iterator[tuple[int, dict]]:
        it = iter(self.hf)
        for idx in itertools.count():
            try:
                ex = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a broken shard or file: one line naming the source
                raise MedImageError(
                    f"{self.name}: cannot read example {idx} ({type(e).__name__}: {one_line(e)}); "
                    "expected a readable dataset"
                ) from e
            if self.part is not None:
                pid = ex.get(self.patient_column) if self.patient_column else None
                key = f"item:{self._path(ex, idx)}" if _missing(pid) else f"patient:{pid}"
                if _hash_part(key, self.part[1], self.part[2]) != self.part[0]:
                    continue
            yield idx, ex

    def iter_samples(self, n: int, strict: bool | None = None) -> Iterator[MedImage]:
        """The first ``n`` good images of the (split-restricted) stream as checked ``MedImage``; bad ones
        raise, or are skipped when ``strict`` is False (default: not ``skip_bad_images``)."""
        strict = not self.skip_bad_images if strict is None else strict
        k = 0
        for idx, ex in self._examples():
            if k >= n:
                return
            path = self._path(ex, idx)
            try:
                img = _image_to_medimage(ex[self.image_column], path)
                self._validate(img.array, path)
            except MedImageError:
                if strict:
                    raise
                continue
            k += 1
            yield img

    def __iter__(self) -> Iterator[dict]:
        skipped: list[tuple[str, str]] = []
        seen = 0
        for k, (idx, ex) in enumerate(self._examples()):
            if self.max_samples is not None and k >= self.max_samples:
                break
            seen += 1
            try:
                yield self._example_item(ex, idx)
            except MedImageError as e:
                if not self.skip_bad_images:
                    raise
                skipped.append((self._path(ex, idx), str(e)))
                self.skipped.append(skipped[-1])
                if len(skipped) <= 5:
                    warnings.warn(f"{self.name}: skipped bad image: {e}", stacklevel=2)
        _warn_skipped(self.name, skipped, seen)
