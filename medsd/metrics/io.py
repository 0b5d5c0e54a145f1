"""Loading image sets for evaluation.

``load_image_set(spec, size)`` turns a *source* into an :class:`ImageSet`: float32 images ``[N, size, size]`` in
``[0, 1]`` plus paths, labels and patient ids. A source is one of

- a folder of images (searched recursively; images in sub-folders get the sub-folder name as label); a folder
  with a ``metadata.csv`` that has a ``filename`` column is read through that CSV,
- a metadata CSV with a ``filename`` column (paths relative to the CSV's folder) and optional ``label`` and
  ``patient_id`` columns,
- a Hugging Face ``datasets`` dataset: ``hf:owner/name[:split]`` (hub id, needs the dataset in the local cache when
  offline) or a folder written by ``Dataset.save_to_disk``.

Preprocessing (the same for every extractor and metric, documented in docs/evaluation.md):

1. decode with the data layer (``medsd.data.io.read_image``, the reader training uses) to grayscale (RGB with
   ``medsd.data.io.rgb_to_gray``, ITU-R 601 luma);
2. intensity to ``[0, 1]``: integer images are divided by their type's maximum (255 for 8-bit, 65535 for 16-bit), so
   global brightness and contrast differences between sets are kept; float images (DICOM/NIfTI through
   ``medsd.data.read_image``) are min-max scaled per image;
3. resize the short side to ``size`` and centre crop (``medsd.data.transforms``: bilinear, antialiased, as in
   training).

PNG/JPEG/TIFF are scaled by their bit depth, DICOM by its stored window, anything else min-max.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .subsample import stratified_subsample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


@dataclass
class ImageSet:
    """Preprocessed images ``[N, H, W]`` float32 in [0, 1] and their provenance."""

    images: np.ndarray
    paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    patient_ids: list[str | None] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index) -> ImageSet:
        index = np.asarray(index, dtype=int)
        return ImageSet(
            images=self.images[index],
            paths=[self.paths[i] for i in index] if self.paths else [],
            labels=[self.labels[i] for i in index] if self.labels else [],
            patient_ids=[self.patient_ids[i] for i in index] if self.patient_ids else [],
            source=self.source,
        )

    def to_uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.images * 255.0), 0, 255).astype(np.uint8)

    def fingerprint(self) -> str:
        """Content hash of the preprocessed pixels (used as feature-cache key)."""
        h = hashlib.sha1()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images, dtype=np.float32).tobytes())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------- pixels


def to_unit_range(array: np.ndarray) -> np.ndarray:
    """Map a decoded 2-D array to float32 [0, 1] (integer: divide by dtype max; float: min-max)."""
    from medsd.data.io import rgb_to_gray

    a = np.asarray(array)
    if a.ndim == 3:  # HxWxC -> grey
        a = rgb_to_gray(a) if a.shape[-1] >= 3 else a[..., 0]
    if np.issubdtype(np.asarray(array).dtype, np.integer):
        info = np.iinfo(np.asarray(array).dtype)
        out = a.astype(np.float32) / float(info.max)
    elif np.asarray(array).dtype == bool:
        out = a.astype(np.float32)
    else:
        a = a.astype(np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(out), 0.0, 1.0).astype(np.float32)


def square_resize(image01: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre crop a square, as training's transforms do."""
    import torch

    from medsd.data.transforms import center_crop, resize_short_side

    x = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None]
    if min(x.shape[-2:]) != size:
        x = resize_short_side(x, size)
    return center_crop(x, size)[0].numpy().clip(0, 1).astype(np.float32)


def preprocess(array: np.ndarray, size: int) -> np.ndarray:
    return square_resize(to_unit_range(array), size)


def _read_pixels(path: str) -> np.ndarray:
    """Decode one file with the data layer and map it to float32 [0, 1] by its metadata.

    PNG/JPEG/TIFF: divide by 2**bit_depth - 1; DICOM with a stored window: that window; otherwise min-max.
    """
    from medsd.data.io import read_image

    img = read_image(path)
    a = np.asarray(img.array, dtype=np.float32)
    meta = img.meta or {}
    depth = meta.get("bit_depth")
    if meta.get("format") != "DICOM" and depth in (8, 16):
        return np.clip(a / float(2**depth - 1), 0, 1)
    if meta.get("window"):
        c, w = meta["window"]
        return np.clip((a - (c - w / 2.0)) / max(w, 1e-6), 0, 1).astype(np.float32)
    return to_unit_range(a)


def read_preprocessed(path: str, size: int) -> np.ndarray:
    return square_resize(_read_pixels(path), size)


# ----------------------------------------------------------------------------------------------- sources


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _parse_labels(label) -> set[str] | None:
    if label is None or label == "":
        return None
    if isinstance(label, (list, tuple, set)):
        return {str(x) for x in label}
    return {x.strip() for x in str(label).split(",") if x.strip()}


def _list_folder(root: Path) -> list[tuple[str, str | None, str | None]]:
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if _is_image(fn):
                p = Path(dirpath) / fn
                rel = p.relative_to(root)
                label = rel.parts[0] if len(rel.parts) > 1 else None
                rows.append((str(p), label, None))
    return rows


def _list_csv(
    csv_path: Path, label_column: str, filename_column: str
) -> list[tuple[str, str | None, str | None]]:
    rows = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if filename_column not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no '{filename_column}' column (columns: {reader.fieldnames})")
        for r in reader:
            p = Path(r[filename_column])
            if not p.is_absolute():
                p = csv_path.parent / p
            rows.append((str(p), r.get(label_column), r.get("patient_id") or None))
    return rows


def _load_hf(spec: str, size: int, labels: set[str] | None, label_column: str, max_images, seed) -> ImageSet:
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("Hugging Face sources need the 'datasets' package (pip install datasets)") from e
    if spec.startswith("hf:"):
        name = spec[3:]
        split = "train"
        if ":" in name:
            name, split = name.rsplit(":", 1)
        try:
            ds = datasets.load_dataset(name, split=split)
        except Exception as e:
            raise RuntimeError(
                f"could not load Hugging Face dataset '{name}' split '{split}' ({type(e).__name__}: {e}); offline it "
                "must already be in the local datasets cache (or pass a folder written by save_to_disk)"
            ) from e
    else:
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[list(ds.keys())[0]]
    image_col = next(
        (k for k, v in ds.features.items() if isinstance(v, datasets.Image)),
        "image" if "image" in ds.column_names else None,
    )
    if image_col is None:
        raise ValueError(f"{spec}: no image column (columns: {ds.column_names})")
    lab_names = None
    all_labels: list[str | None] = [None] * len(ds)
    if label_column in ds.column_names:
        feat = ds.features[label_column]
        lab_names = getattr(feat, "names", None)
        raw = ds[label_column]
        all_labels = [lab_names[x] if lab_names is not None else str(x) for x in raw]
    index = [i for i, lab in enumerate(all_labels) if labels is None or lab in labels]
    index = _subsample(index, max_images, seed)
    images, paths, out_labels, pids = [], [], [], []
    for i in index:
        row = ds[int(i)]
        images.append(preprocess(np.asarray(row[image_col]), size))
        paths.append(f"{spec}#{i}")
        out_labels.append(all_labels[i])
        pids.append(str(row["patient_id"]) if "patient_id" in row else None)
    return ImageSet(_stack(images, size), paths, out_labels, pids, source=spec)


def _subsample(index: list, max_images: int | None, seed: int) -> list:
    if max_images is not None and 0 < max_images < len(index):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(index), size=max_images, replace=False))
        return [index[i] for i in pick]
    return list(index)


def _stack(images: list[np.ndarray], size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, size, size), dtype=np.float32)
    return np.stack(images).astype(np.float32)


def load_image_set(
    spec: str | os.PathLike | ImageSet | np.ndarray,
    size: int = 128,
    label: str | list[str] | None = None,
    label_column: str = "label",
    filename_column: str = "filename",
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ImageSet:
    """Load and preprocess a set of images (see module docstring for sources and preprocessing).

    ``label`` keeps only images whose label is in it (a comma-separated string or a list). ``max_images``
    subsamples with :func:`~medsd.metrics.subsample.stratified_subsample` (seeded; label shares kept,
    each label spread over patients), keeping file order.
    """
    if isinstance(spec, ImageSet):
        return spec
    if isinstance(spec, np.ndarray):
        arr = spec if spec.ndim == 3 else spec[:, 0]
        return ImageSet(np.stack([preprocess(a, size) for a in arr]), [], [], [], source="<array>")
    labels = _parse_labels(label)
    s = str(spec)
    p = Path(s)
    is_saved_dataset = p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists())
    if s.startswith("hf:") or is_saved_dataset:
        return _load_hf(s, size, labels, label_column, max_images, seed)
    if p.is_dir():
        csv_in_dir = p / "metadata.csv"
        rows = None
        if csv_in_dir.exists():  # a folder with its metadata.csv: use it (labels, patient ids)
            try:
                rows = _list_csv(csv_in_dir, label_column, filename_column)
            except ValueError:
                rows = None
        if rows is None:
            rows = _list_folder(p)
    elif p.is_file() and p.suffix.lower() == ".csv":
        rows = _list_csv(p, label_column, filename_column)
    elif p.is_file() and _is_image(p.name):
        rows = [(str(p), None, None)]
    else:
        raise FileNotFoundError(
            f"image source not found: {s} (expected a folder, a .csv, or hf:<dataset id>)"
        )
    if labels is not None:
        rows = [r for r in rows if r[1] in labels]
    rows = [
        rows[i]
        for i in stratified_subsample(
            len(rows), max_images, labels=[r[1] for r in rows], patient_ids=[r[2] for r in rows], seed=seed
        )
    ]
    if not rows:
        raise ValueError(f"no images found in {s}" + (f" with label in {sorted(labels)}" if labels else ""))
    iterator = rows
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(rows, desc=f"load {Path(s).name}", unit="img")
    images = [read_preprocessed(r[0], size) for r in iterator]
    return ImageSet(
        _stack(images, size),
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        source=s,
    )


load_subsampled = load_image_set
"""The former name of :func:`load_image_set` (which now subsamples by label and patient itself)."""
