"""``DataConfig`` and ``build_dataset``: one source description to a dataset with a patient split and a fitted intensity mapping."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsd.flags import Alias, AliasedInit, flag, to_bool

from .datasets import CSVImageDataset, FolderImageDataset, patient_split
from .errors import MedImageError
from .hf_datasets import HFImageDataset, HFStreamingImageDataset
from .intensity import IntensityMapping, MinMaxMapping, PercentileMapping, WindowMapping, default_mapping
from .splits import HELDOUT, SPLIT_CHOICES
from .transforms import ImageTransform

logger = logging.getLogger("medsd.data")

PHANTOM_SOURCES = {"phantom": "chest", "phantom-chest": "chest", "phantom-ct": "ct"}
"""Source strings of the embedded procedural phantoms, and the phantom kind each names."""


@dataclass(frozen=True)
class SourceSpec:
    """What a source string names: ``kind`` (phantom, csv, folder or hf), the path or ``datasets`` id, the
    ``data_dir`` of a ``datasets`` imagefolder, and the phantom kind (chest or ct)."""

    kind: str
    path: str | None = None
    data_dir: str | None = None
    phantom_kind: str = "chest"
    hf_split: str | None = None
    """The split named by ``hf:ID:SPLIT`` (None: the config's ``hf_split``)."""


def is_jsonl_imagefolder(source: str) -> bool:
    """A folder in diffusers' imagefolder layout: images with ``metadata.jsonl`` (``file_name`` + captions)."""
    from pathlib import Path

    return Path(source).is_dir() and (Path(source) / "metadata.jsonl").is_file()


def is_saved_dataset(source: str) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``)."""
    from pathlib import Path

    p = Path(source)
    return p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file())


def _csv_header(path: Any) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def parse_source(
    source: str, streaming: bool = False, *, metadata_csv: str | None = None, hub_ids: bool = True
) -> SourceSpec:
    """The one reading of medsd's source grammar (``--train_data``, ``--data``, ``--real`` / ``--fake``).

    ``phantom`` / ``phantom-chest`` / ``phantom-ct``; ``hf:ID`` or ``hf:ID:SPLIT`` (a ``datasets`` id); a
    ``.csv`` metadata file; a ``save_to_disk`` folder; a folder (read by ``datasets``' imagefolder when it has
    ``metadata.jsonl`` or ``streaming`` is set; read through its ``metadata.csv`` when ``metadata_csv`` names
    an image column that CSV has); anything else is a ``datasets`` id, or, with ``hub_ids=False``, refused
    as not found.
    """
    from pathlib import Path

    if source in PHANTOM_SOURCES:
        return SourceSpec("phantom", phantom_kind=PHANTOM_SOURCES[source])
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        return SourceSpec("hf", name, hf_split=split or None)
    if source.endswith(".csv"):
        return SourceSpec("csv", source)
    p = Path(source)
    if p.is_dir():
        if is_saved_dataset(source):
            return SourceSpec("hf", source)
        if streaming or is_jsonl_imagefolder(source):
            return SourceSpec("hf", "imagefolder", data_dir=source)
        table = p / "metadata.csv"
        if metadata_csv and table.is_file() and metadata_csv in _csv_header(table):
            return SourceSpec("csv", str(table))
        return SourceSpec("folder", source)
    if not hub_ids:
        raise MedImageError(
            f"{source}: image source not found; expected a folder, a .csv file, 'phantom' / 'phantom-ct' "
            "or hf:<dataset id>[:split]"
        )
    return SourceSpec("hf", source)


INTENSITY_CHOICES = ("auto", "window", "minmax", "percentile")


def _center_or_random(value: Any) -> str:
    return "center" if to_bool("center_crop")(value) else "random"


@dataclass
class DataConfig(metaclass=AliasedInit):
    """Everything ``build_dataset`` needs. ``image_column`` defaults to ``"filename"`` (csv) / ``"image"``
    (hf); ``split`` picks one part of a patient-level split (``"all"`` keeps everything); ``hf_split`` is
    the Hugging Face split to load.

    ``intensity``: ``"auto"`` (default) chooses the mapping from the data's type and modality
    (``medsd.data.intensity.default_mapping``); ``"window"`` with ``window=(low, high)`` is fixed (without
    ``window`` it is ``"auto"``); ``"minmax"`` / ``"percentile"`` are fitted on ``fit_samples`` images.
    ``min_image_size`` (default ``max(16, resolution // 8)``, at most ``resolution``) and
    ``max_aspect_ratio`` (default 4; None: no limit) refuse images too small or too elongated to become
    data; ``allow_outside_root`` lets CSV paths leave the CSV's folder (``../x.png``, absolute paths)."""

    source: str = flag("phantom", help="phantom, folder, csv or hf (see :func:`parse_source`).")
    path: str | None = None
    image_column: str | None = flag(
        None,
        help="Image path column of a metadata CSV (default 'filename') or image column of a datasets dataset "
        "(default 'image').",
    )
    label_column: str | None = None
    caption_column: str | None = None
    patient_column: str | None = flag(
        None, help="Patient id column: splits never put one patient on both sides."
    )
    patient_id_pattern: str | None = flag(
        None, help="Folders: a regex whose first group, searched in the file name, is the patient id."
    )
    prompt_template: str | None = flag(None, help="e.g. 'a chest x-ray, {label}' (fields from the metadata).")
    resolution: int = 64
    crop: str = flag(
        "center",
        choices=("center", "random"),
        aliases=(Alias("center_crop", convert=_center_or_random, takes_bool=True),),
        help="center or random (diffusers' --center_crop true / false: center / random).",
    )
    affine: bool = flag(
        False,
        aliases=(Alias("affine_jitter", removed_in="0.3.0"),),
        help="Small random rotation, shift and zoom.",
    )
    hflip: bool = flag(
        False,
        aliases=("random_flip",),
        help="Random left-right flip (diffusers' --random_flip); off by default: a flip swaps left and right in "
        "a chest X-ray.",
    )
    upscale: bool = flag(True, help="Enlarge images smaller than the resolution (false: refuse them).")
    intensity: str = flag(
        "auto",
        choices=INTENSITY_CHOICES,
        help="auto (chosen from the data's type and modality), window (fixed; see window), minmax or percentile "
        "(fitted).",
    )
    window: tuple[float, float] | None = flag(
        None,
        aliases=(
            Alias("window_low", part=0, removed_in="0.3.0"),
            Alias("window_high", part=1, removed_in="0.3.0"),
        ),
        help="(low, high) of the window mapping in native units; on the command line LOW,HIGH "
        "(--window=-1000,400 for HU).",
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    fit_samples: int = flag(64, help="Images a fitted intensity mapping (minmax, percentile) is fitted on.")
    split: str = flag(
        "train",
        choices=SPLIT_CHOICES,
        aliases=(Alias("data_split", removed_in="0.3.0"),),
        help="train, val, test, heldout (val and test) or all (patient-level split of the source).",
    )
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_samples: int | None = flag(
        None, aliases=("max_train_samples",), help="Keep at most this many images (the first of the split)."
    )
    skip_bad_images: bool = flag(
        False, help="Skip unreadable images (listed at the end) instead of stopping."
    )
    streaming: bool = False
    hf_split: str = flag("train", help="Split of a Hugging Face dataset to load.")
    data_dir: str | None = None
    phantom_kind: str = "chest"
    phantom_count: int = 1000
    finding_probability: float = 0.5
    min_image_size: int | None = None
    max_aspect_ratio: float | None = 4.0
    allow_outside_root: bool = False

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


def source_config(
    source: str,
    *,
    streaming: bool = False,
    metadata_csv: str | None = None,
    hub_ids: bool = True,
    **fields: Any,
) -> DataConfig:
    """The :class:`DataConfig` of a source string (:func:`parse_source`), with any other ``fields`` set."""
    spec = parse_source(source, streaming, metadata_csv=metadata_csv, hub_ids=hub_ids)
    values: dict[str, Any] = dict(
        source=spec.kind, path=spec.path, data_dir=spec.data_dir, phantom_kind=spec.phantom_kind
    )
    if spec.hf_split is not None:
        values["hf_split"] = spec.hf_split
    return DataConfig(**{**values, "streaming": streaming, **fields})


def source_columns(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(columns, image columns) a CSV or ``datasets`` source offers; image columns are the ``datasets``
    ``Image`` features. Folders and phantoms have none."""
    if cfg.source == "csv":
        from pathlib import Path

        if not Path(cfg.path).is_file():
            raise MedImageError(f"{cfg.path}: CSV file not found")
        return _csv_header(cfg.path), []
    if cfg.source != "hf":
        return [], []
    from .hf_datasets import _load_hf, _require_datasets

    ds = _load_hf(cfg.path, cfg.hf_split, cfg.data_dir, cfg.streaming)
    features = ds.features or {}
    image = _require_datasets().Image
    return list(features), [k for k, v in features.items() if isinstance(v, image)]


def _make_mapping(cfg: DataConfig) -> IntensityMapping | None:
    """The configured mapping (unfitted for minmax/percentile), or None for ``"auto"``."""
    if cfg.intensity == "auto" or (cfg.intensity == "window" and cfg.window is None):
        return None
    if cfg.intensity == "window":
        low, high = cfg.window  # type: ignore[misc]
        if low is None or high is None:
            raise MedImageError(f"data config window: expected (low, high), got {cfg.window!r}")
        return WindowMapping(low, high)
    if cfg.intensity == "minmax":
        return MinMaxMapping()
    if cfg.intensity == "percentile":
        return PercentileMapping(*cfg.percentiles)
    raise MedImageError(
        f"data config intensity: expected one of {', '.join(INTENSITY_CHOICES)}, got {cfg.intensity!r}"
    )


def _fit_samples(ds: Any, cfg: DataConfig, streaming: bool) -> list:
    """(array, meta) of up to ``fit_samples`` checked images (a seeded pick); a bad one raises."""
    if cfg.fit_samples < 1:
        raise MedImageError(f"data config fit_samples: expected a positive integer, got {cfg.fit_samples}")
    if streaming:
        return [(img.array, img.meta) for img in ds.iter_samples(cfg.fit_samples)]
    rng = np.random.default_rng(cfg.seed)
    pick = sorted(rng.choice(len(ds), size=min(cfg.fit_samples, len(ds)), replace=False))
    return ds.samples([int(i) for i in pick])


def _source_dataset(cfg: DataConfig, mapping: IntensityMapping | None) -> Any:
    """The whole source ``cfg`` names, before any split (phantoms already in [0, 1])."""
    common = dict(crop=cfg.crop, affine=cfg.affine, hflip=cfg.hflip, upscale=cfg.upscale)
    common.update(
        prompt_template=cfg.prompt_template, min_size=cfg.min_image_size, max_aspect=cfg.max_aspect_ratio
    )
    if cfg.source == "phantom":
        from .phantoms import PhantomDataset

        return PhantomDataset(
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
    if cfg.source in ("folder", "csv", "hf") and not cfg.path:
        raise MedImageError(f"data config path: required for source {cfg.source!r}")
    if cfg.source == "folder":
        return FolderImageDataset(
            cfg.path, cfg.resolution, mapping=mapping, patient_id_pattern=cfg.patient_id_pattern, **common
        )
    columns = (cfg.label_column, cfg.caption_column, cfg.patient_column)
    if cfg.source == "csv":
        return CSVImageDataset(
            cfg.path,
            cfg.image_column or "filename",
            *columns,
            resolution=cfg.resolution,
            mapping=mapping,
            allow_outside_root=cfg.allow_outside_root,
            **common,
        )
    if cfg.source == "hf":
        return HFImageDataset(
            cfg.path,
            cfg.hf_split,
            cfg.image_column or "image",
            *columns,
            cfg.resolution,
            data_dir=cfg.data_dir,
            streaming=cfg.streaming,
            mapping=mapping,
            skip_bad_images=cfg.skip_bad_images and cfg.streaming,
            **common,
        )
    raise MedImageError(
        f"data config source: expected 'phantom', 'folder', 'csv' or 'hf', got {cfg.source!r}"
    )


def _restrict(ds: Any, cfg: DataConfig, streaming: bool) -> Any:
    """Split part ``cfg.split`` (patient-level, seeded), at most ``max_samples``, bad images dropped when asked."""
    if cfg.split != "all":
        if streaming:
            ds.restrict(cfg.split, cfg.split_fractions, cfg.seed)
        else:
            keys = ds.split_keys if hasattr(ds, "split_keys") else ds.patient_ids
            train, val, test = patient_split(keys, cfg.split_fractions, cfg.seed)
            parts = {"train": train, "val": val, "test": test, HELDOUT: np.sort(np.concatenate([val, test]))}
            ds = ds.select(parts[cfg.split])
    if cfg.max_samples is not None:
        if streaming:
            ds.max_samples = cfg.max_samples
        else:
            ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if not streaming and len(ds) == 0:
        raise MedImageError(f"data config: split {cfg.split!r} of {cfg.source} source {cfg.path!r} is empty")
    if cfg.skip_bad_images and not streaming and cfg.source != "phantom":
        ds.drop_bad_images()
    return ds


def build_dataset(cfg: DataConfig) -> tuple[Any, IntensityMapping]:
    """Build the dataset described by ``cfg`` and its (fitted) intensity mapping.

    Order: load the source, take split ``cfg.split`` (patient-level, seeded), cap at ``max_samples``, drop
    bad images if ``skip_bad_images``, then choose (``"auto"``) or fit (``"minmax"``, ``"percentile"``) the
    mapping on up to ``fit_samples`` images. Phantoms are always in [0, 1] and use ``WindowMapping(0, 1)``.
    Images with NaN/inf pixels, below ``min_image_size`` or beyond ``max_aspect_ratio`` raise
    ``MedImageError`` naming the file (or are skipped and listed in ``dataset.skipped``).
    """
    if cfg.split not in SPLIT_CHOICES:
        raise MedImageError(f"data config split: expected one of {SPLIT_CHOICES}, got {cfg.split!r}")
    mapping = _make_mapping(cfg)  # checked for every source: phantoms then use their fixed [0, 1] window
    if cfg.source == "phantom":
        mapping = WindowMapping(0.0, 1.0)
    ds = _source_dataset(cfg, mapping)
    streaming = isinstance(ds, HFStreamingImageDataset)
    ds = _restrict(ds, cfg, streaming)
    if mapping is None:
        mapping, why = default_mapping(_fit_samples(ds, cfg, streaming), f"{cfg.source} source {cfg.path!r}")
        logger.info("intensity mapping of %s: %r (%s)", cfg.path, mapping, why)
    elif not mapping.fitted:
        samples = _fit_samples(ds, cfg, streaming)
        if not samples:
            raise MedImageError(f"data config: no images to fit the {cfg.intensity!r} intensity mapping on")
        mapping.fit([a for a, _ in samples])
    if cfg.source != "phantom":
        ds.mapping = mapping
    return ds, mapping


HELD_OUT_PHANTOM_SEED = 99_991
"""Added to the seed of fresh held-out phantoms: training phantoms use the run's seed itself."""


def held_out(source: str | DataConfig, n: int, seed: int = 0, *, resolution: int | None = None) -> np.ndarray:
    """Up to ``n`` real images a model trained on ``source`` never saw, as [N, H, W] float32 in [0, 1]:
    fresh phantoms for a phantom source, else the test part of the patient-level split (seeded with
    ``seed``, as training splits it). ``source``: a source string or the training run's ``DataConfig``."""
    cfg = source if isinstance(source, DataConfig) else source_config(source)
    cfg = dataclasses.replace(cfg, seed=seed, resolution=resolution or cfg.resolution)
    if cfg.source == "phantom":
        from .phantoms import PhantomDataset

        ds: Any = PhantomDataset(
            n, size=cfg.resolution, kind=cfg.phantom_kind, seed=seed + HELD_OUT_PHANTOM_SEED
        )
    else:
        plain = dict(split="test", max_samples=None, affine=False, hflip=False, crop="center")
        ds, _ = build_dataset(dataclasses.replace(cfg, **plain))
    images = [(ds[i]["pixel_values"][0].numpy() + 1.0) / 2.0 for i in range(min(n, len(ds)))]
    return np.stack(images).astype(np.float32)
