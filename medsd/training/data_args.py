"""Training-data settings shared by the model families' configs, turned into a ``medsd.data`` dataset."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class DataArgs:
    """Where training images come from and how they are prepared."""

    train_data: str = "phantom"
    """'phantom' (generated chest radiographs), 'phantom-ct', a folder (labels from sub-folders), a
    metadata CSV, or a Hugging Face datasets id / local dataset folder ('hf:NAME')."""
    image_column: str | None = None
    """Image path column of a metadata CSV (default 'filename') or image column of a datasets dataset
    (default 'image')."""
    label_column: str | None = None
    caption_column: str | None = None
    patient_column: str | None = None
    """Patient id column: splits never put one patient on both sides."""
    train_labels: str | None = None
    """Keep only images with these labels (comma-separated), e.g. 'Pneumonia' for a class-specific model."""
    prompt_template: str | None = None
    """e.g. 'a chest x-ray, {label}' (fields from the metadata)."""
    data_split: str = "train"
    """train, val, test or all (patient-level split of the source)."""
    resolution: int = 64
    crop: str = "center"
    """center or random."""
    affine_jitter: bool = False
    random_flip: bool = False
    """Off by default: a flip swaps left and right in a chest X-ray."""
    intensity: str = "auto"
    """auto (chosen from the data: 8-bit 0..255, 16-bit its range, CT DICOM HU -1000..1000, other DICOM its
    stored window, NIfTI percentiles, float [0, 1] 0..1), window (window_low..window_high; without them
    auto), minmax or percentile."""
    window_low: float | None = None
    window_high: float | None = None
    max_train_samples: int | None = None
    phantom_count: int = 512
    finding_probability: float = 0.5
    skip_bad_images: bool = False
    """Skip unreadable images (listed at the end) instead of stopping."""
    min_image_size: int | None = None
    """Smallest accepted image side in pixels (default: max(16, resolution // 8), at most resolution)."""
    max_aspect_ratio: float | None = 4.0
    """Largest accepted long:short side ratio of an image."""
    allow_paths_outside_root: bool = False
    """Let a metadata CSV name images outside its folder (../x.png, absolute paths)."""
    streaming: bool = False
    center_crop: bool | None = None
    """diffusers' flag: true = crop center, false = crop random (alias of crop)."""

    def __post_init__(self) -> None:
        if self.center_crop is not None:
            self.crop = "center" if self.center_crop else "random"


def data_config(args: DataArgs, seed: int = 0, split: str | None = None) -> Any:
    """The ``medsd.data.DataConfig`` these settings describe."""
    from medsd.data import DataConfig, parse_source

    spec = parse_source(args.train_data, streaming=args.streaming)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    values = dict(
        source=spec.kind,
        path=spec.path,
        image_column=args.image_column,
        label_column=args.label_column,
        caption_column=args.caption_column,
        patient_column=args.patient_column,
        prompt_template=args.prompt_template,
        resolution=args.resolution,
        crop=args.crop,
        affine=args.affine_jitter,
        hflip=args.random_flip,
        intensity=args.intensity,
        window=(args.window_low, args.window_high) if args.window_low is not None else None,
        split=split or args.data_split,
        seed=seed,
        max_samples=args.max_train_samples,
        skip_bad_images=args.skip_bad_images,
        min_image_size=args.min_image_size,
        max_aspect_ratio=args.max_aspect_ratio,
        allow_outside_root=args.allow_paths_outside_root,
        streaming=args.streaming,
        data_dir=spec.data_dir,
        phantom_kind=spec.phantom_kind,
        phantom_count=args.phantom_count,
        finding_probability=args.finding_probability,
    )
    return DataConfig(**{k: v for k, v in values.items() if k in fields and v is not None})


class DeviceAugmentedCache:
    """A ``UInt8ImageCache`` whose batches get the random augmentation where they live (the GPU).

    The cache holds un-augmented images; every batch draws new jitter/flips from the global RNG, which
    checkpoints save and restore, so resumed runs see the same augmentations.
    """

    def __init__(self, cache: Any, affine: bool, hflip: bool):
        self.cache, self.affine, self.hflip = cache, affine, hflip

    def __len__(self) -> int:
        return len(self.cache)

    def to(self, device: Any) -> DeviceAugmentedCache:
        self.cache = self.cache.to(device)
        return self

    def get_batch(self, indices: Any, device: Any = None) -> dict:
        import torch

        from medsd.data.transforms import random_affine

        batch = self.cache.get_batch(indices, device)
        x = batch["pixel_values"]
        if self.affine:
            x = random_affine(x)
        if self.hflip:
            flip = (torch.rand(x.shape[0]) < 0.5).to(x.device)[:, None, None, None]
            x = x.flip(-1).where(flip, x)
        batch["pixel_values"] = x
        return batch


def select_labels(dataset: Any, labels: str) -> Any:
    """The items of ``dataset`` whose label is one of the comma-separated ``labels`` (case-insensitive)."""
    wanted = {w.strip().lower() for w in labels.split(",") if w.strip()}
    if not hasattr(dataset, "labels") or not hasattr(dataset, "select"):
        raise ValueError("train_labels: this data source has no labels to select from (streaming?)")
    have = [str(lab).lower() if lab is not None else None for lab in dataset.labels]
    keep = [i for i, lab in enumerate(have) if lab in wanted]
    if not keep:
        raise ValueError(
            f"train_labels: no image has a label in {sorted(wanted)}; labels present: {sorted({h for h in have if h})}"
        )
    return dataset.select(keep)


def build_training_data(args: Any, cache: bool | None = None) -> tuple[Any, Any]:
    """(dataset, intensity mapping).

    With ``cache_images_on_device`` (default) the images are decoded once into a uint8 tensor that the
    core moves to the training device; jitter and flips then run there, batch by batch.
    """
    from medsd.data import UInt8ImageCache, build_dataset

    use_cache = getattr(args, "cache_images_on_device", False) if cache is None else cache
    use_cache = use_cache and not args.streaming and args.crop == "center"
    cfg = data_config(args, seed=getattr(args, "seed", 0))
    if use_cache:
        cfg.affine, cfg.hflip = False, False  # augment per batch on the device, not once in the cache
    dataset, mapping = build_dataset(cfg)
    skipped = list(getattr(dataset, "skipped", []) or [])
    if args.train_labels:
        dataset = select_labels(dataset, args.train_labels)
    if use_cache:
        dataset = UInt8ImageCache.from_dataset(dataset)
        if args.affine_jitter or args.random_flip:
            dataset = DeviceAugmentedCache(dataset, args.affine_jitter, args.random_flip)
    dataset.skipped = skipped  # (path, reason) of unreadable images, listed again when training ends
    return dataset, mapping
