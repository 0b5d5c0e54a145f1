"""Training-data settings shared by the model families' configs, turned into a ``medsd.data`` dataset."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from medsd.data.build import DataConfig, parse_source
from medsd.flags import flag


@dataclasses.dataclass
class DataArgs(DataConfig):
    """Where training images come from and how they are prepared: every ``medsd.data.DataConfig`` field is a
    flag of the same name (a new ``DataConfig`` field is a new flag, its aliases declared with it);
    ``train_data`` is the source string."""

    train_data: str = flag(
        "phantom",
        help="'phantom' (generated chest radiographs), 'phantom-ct', a folder (labels from sub-folders), a "
        "metadata CSV, or a Hugging Face datasets id / local dataset folder ('hf:NAME').",
    )
    train_labels: str | None = flag(
        None,
        help="Keep only images with these labels (comma-separated), e.g. 'Pneumonia' for a class-specific model.",
    )
    phantom_count: int = 512
    # what train_data names: set from it, not flags
    source: str = dataclasses.field(default="phantom", init=False)
    path: str | None = dataclasses.field(default=None, init=False)
    data_dir: str | None = dataclasses.field(default=None, init=False)
    phantom_kind: str = dataclasses.field(default="chest", init=False)

    def __post_init__(self) -> None:
        if os.path.exists(self.train_data):  # a resume from another folder must still find the data
            self.train_data = os.path.abspath(self.train_data)
        spec = parse_source(self.train_data, streaming=self.streaming)
        self.source, self.path, self.data_dir, self.phantom_kind = (
            spec.kind,
            spec.path,
            spec.data_dir,
            spec.phantom_kind,
        )
        if spec.hf_split is not None:
            self.hf_split = spec.hf_split

    def data_config(self, **changes: Any) -> DataConfig:
        """The plain ``DataConfig`` of these settings (its fields, by name), with ``changes`` applied."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)}
        return DataConfig(**{**values, **changes})


def data_config(args: DataArgs, seed: int | None = None, split: str | None = None) -> DataConfig:
    """``args.data_config()``, with the split seed and the split part replaced when given."""
    changes: dict[str, Any] = {} if seed is None else {"seed": seed}
    return args.data_config(**changes, **({"split": split} if split else {}))


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
        from medsd.data.transforms import augment_batch

        batch = self.cache.get_batch(indices, device)
        batch["pixel_values"] = augment_batch(batch["pixel_values"], self.affine, self.hflip)
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


def build_training_data(args: Any, cache: bool | None = None, *, augment: bool = True) -> tuple[Any, Any]:
    """(dataset, intensity mapping) of a family's ``DataArgs``: the one road from data flags to training data.

    With ``cache_images_on_device`` (default) the images are decoded once into a uint8 tensor that the
    core moves to the training device; jitter and flips then run there, batch by batch. With
    ``augment=False`` the items come without jitter or flips: the caller augments batches itself
    (``medsd.data.transforms.augment_batch``), e.g. after caching them in another form.
    """
    from medsd.data import UInt8ImageCache, build_dataset

    use_cache = getattr(args, "cache_images_on_device", False) if cache is None else cache
    use_cache = use_cache and not args.streaming and args.crop == "center"
    # with the cache, jitter and flips run per batch on the device, not once in the cache
    plain = use_cache or not augment
    cfg = args.data_config(**({"affine": False, "hflip": False} if plain else {}))
    dataset, mapping = build_dataset(cfg)
    skipped = list(getattr(dataset, "skipped", []) or [])
    if args.train_labels:
        dataset = select_labels(dataset, args.train_labels)
    if use_cache:
        dataset = UInt8ImageCache.from_dataset(dataset)
        if args.affine or args.hflip:
            dataset = DeviceAugmentedCache(dataset, args.affine, args.hflip)
    dataset.skipped = skipped  # (path, reason) of unreadable images, listed again when training ends
    return dataset, mapping
