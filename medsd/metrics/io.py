"""Loading image sets for evaluation, through the data layer that training reads with.

``load_image_set(spec, size)`` turns a *source* into an :class:`ImageSet`: float32 images ``[N, size, size]`` in
``[0, 1]`` plus paths, labels and patient ids. A source is anything ``medsd.data.parse_source`` reads (a folder,
a metadata CSV, ``hf:ID[:SPLIT]``, a ``save_to_disk`` folder, ``phantom`` / ``phantom-ct``); a folder with a
``metadata.csv`` that has the image column is read through that CSV.

The set is built by ``medsd.data.build_dataset`` from a :class:`~medsd.data.DataConfig` (``split="all"``,
``resolution=size``, centre crop), so every image is decoded, intensity-mapped, resized and cropped exactly as a
training run with that config reads it; ``pixel_values`` in [-1, 1] become ``(x + 1) / 2`` in [0, 1]. The
intensity mapping is the config's (``intensity`` / ``window`` as in training; the default is training's
default). Pass ``data=`` a training run's ``DataConfig`` to evaluate with its exact settings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .subsample import stratified_subsample


@dataclass
class ImageSet:
    """Preprocessed images ``[N, H, W]`` float32 in [0, 1] and their provenance."""

    images: np.ndarray
    paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    patient_ids: list[str | None] = field(default_factory=list)
    source: str = ""
    intensity: dict | None = None
    """The intensity mapping the images were read with (``IntensityMapping.to_dict()``), when from a source."""

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
            intensity=self.intensity,
        )

    def to_uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.images * 255.0), 0, 255).astype(np.uint8)

    def fingerprint(self) -> str:
        """Content hash of the preprocessed pixels (used as feature-cache key)."""
        h = hashlib.sha1()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images, dtype=np.float32).tobytes())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------- arrays


def to_unit_range(array: np.ndarray) -> np.ndarray:
    """Map an in-memory 2-D array (e.g. a generated image) to float32 [0, 1]: integer types are divided by
    their maximum, floats are min-max scaled; colour is reduced with ``medsd.data.io.rgb_to_gray``."""
    from medsd.data.io import rgb_to_gray

    a = np.asarray(array)
    if a.ndim == 3:  # HxWxC -> grey
        a = rgb_to_gray(a) if a.shape[-1] >= 3 else a[..., 0]
    if np.issubdtype(np.asarray(array).dtype, np.integer):
        out = a.astype(np.float32) / float(np.iinfo(np.asarray(array).dtype).max)
    elif np.asarray(array).dtype == bool:
        out = a.astype(np.float32)
    else:
        a = a.astype(np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(out), 0.0, 1.0).astype(np.float32)


def square_resize(image01: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre crop a square with training's ``ImageTransform``."""
    from medsd.data.transforms import ImageTransform

    x = ImageTransform(size)(np.ascontiguousarray(image01, dtype=np.float32))
    return x[0].numpy().clip(0, 1).astype(np.float32)


def preprocess(array: np.ndarray, size: int) -> np.ndarray:
    """An in-memory image to ``[size, size]`` float32 in [0, 1] (:func:`to_unit_range`, :func:`square_resize`)."""
    return square_resize(to_unit_range(array), size)


# ----------------------------------------------------------------------------------------------- sources


def _label_set(label) -> set[str] | None:
    if label is None or label == "":
        return None
    if isinstance(label, (list, tuple, set)):
        return {str(x) for x in label}
    return {x.strip() for x in str(label).split(",") if x.strip()}


def eval_data_config(
    source: str | os.PathLike,
    size: int = 128,
    *,
    image_column: str = "filename",
    label_column: str | None = "label",
    patient_column: str | None = "patient_id",
    intensity: str | None = None,
    window: tuple[float, float] | None = None,
    seed: int = 0,
) -> Any:
    """The ``DataConfig`` evaluation reads ``source`` with: every image (``split="all"``) at ``size`` px,
    centre-cropped, intensity as training maps it. The label, patient and image columns are used when the
    source has them (a CSV's ``image_column``; a ``datasets`` source's first ``Image`` column)."""
    from medsd.data.build import source_columns, source_config

    cfg = source_config(
        str(source), metadata_csv=image_column, hub_ids=False, resolution=size, split="all", seed=seed
    )
    if intensity is not None:
        cfg.intensity = intensity
    if window is not None:
        cfg.window = (float(window[0]), float(window[1]))
    columns, image_columns = source_columns(cfg)
    if cfg.source == "csv":
        cfg.image_column = image_column
    elif image_columns:
        cfg.image_column = image_columns[0]
    cfg.label_column = label_column if label_column in columns else None
    cfg.patient_column = patient_column if patient_column in columns else None
    return cfg


def _decode(dataset: Any, progress: bool, name: str) -> list[dict]:
    indices: Any = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"load {name}", unit="img")
    return [dataset[i] for i in indices]


def load_image_set(
    spec: str | os.PathLike | ImageSet | np.ndarray,
    size: int = 128,
    label: str | list[str] | None = None,
    label_column: str = "label",
    filename_column: str = "filename",
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = False,
    *,
    patient_column: str | None = "patient_id",
    intensity: str | None = None,
    window: tuple[float, float] | None = None,
    data: Any = None,
    split: str = "all",
) -> ImageSet:
    """Load a set of images through ``medsd.data`` (see the module docstring for sources and preprocessing).

    ``label`` keeps only images whose label is in it (a comma-separated string or a list). ``max_images``
    subsamples with :func:`~medsd.metrics.subsample.stratified_subsample` (seeded; label shares kept,
    each label spread over patients), keeping source order; only the chosen images are decoded (a fitted
    intensity mapping also reads the images it is fitted on). ``data``: a ``DataConfig`` to read with
    instead of :func:`eval_data_config` (e.g. a training run's, with its split and intensity). ``split``: one
    part of the source's patient-level split (as training splits it with the same ``seed``), e.g. ``heldout``.
    """
    from medsd.data.build import build_dataset

    if isinstance(spec, ImageSet):
        return spec
    if isinstance(spec, np.ndarray):
        arr = spec if spec.ndim == 3 else spec[:, 0]
        return ImageSet(np.stack([preprocess(a, size) for a in arr]), [], [], [], source="<array>")
    s = str(spec)
    cfg = (
        data
        if data is not None
        else eval_data_config(
            s,
            size,
            image_column=filename_column,
            label_column=label_column,
            patient_column=patient_column,
            intensity=intensity,
            window=window,
            seed=seed,
        )
    )
    if data is None and split != "all":
        cfg.split = split
    dataset, mapping = build_dataset(cfg)
    labels = [None if v is None else str(v) for v in dataset.labels]
    patient_ids = list(dataset.patient_ids)
    wanted = _label_set(label)
    keep = [i for i, lab in enumerate(labels) if wanted is None or lab in wanted]
    chosen = stratified_subsample(
        len(keep),
        max_images,
        labels=[labels[i] for i in keep],
        patient_ids=[patient_ids[i] for i in keep],
        seed=seed,
    )
    if not chosen:
        raise ValueError(f"no images found in {s}" + (f" with label in {sorted(wanted)}" if wanted else ""))
    items = _decode(dataset.select([keep[i] for i in chosen]), progress, os.path.basename(s.rstrip("/")))
    x = np.stack([it["pixel_values"][0].numpy() for it in items]).astype(np.float32)
    return ImageSet(
        np.clip((x + 1.0) / 2.0, 0.0, 1.0),
        [str(it["path"]) for it in items],
        [it["label"] for it in items],
        [it["patient_id"] for it in items],
        source=s,
        intensity=mapping.to_dict(),
    )


load_subsampled = load_image_set
"""The former name of :func:`load_image_set` (which now subsamples by label and patient itself)."""
