"""Medical-image data layer: readers/writers, intensity mappings, transforms, datasets and phantoms.

Names are imported lazily (PEP 562) so that ``import medsd.data`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MedImageError": "errors",
    "IntensityMapping": "intensity",
    "WindowMapping": "intensity",
    "MinMaxMapping": "intensity",
    "PercentileMapping": "intensity",
    "mapping_from_dict": "intensity",
    "default_mapping": "intensity",
    "MissingPackageError": "errors",
    "default_min_size": "datasets",
    "MedImage": "io",
    "read_image": "io",
    "read_nifti_slices": "io",
    "dicom_window": "io",
    "write_png8": "writers",
    "write_png16": "writers",
    "png8_bytes": "writers",
    "write_dicom_secondary_capture": "writers",
    "resize_short_side": "transforms",
    "center_crop": "transforms",
    "random_crop": "transforms",
    "random_affine": "transforms",
    "hflip": "transforms",
    "random_hflip": "transforms",
    "augment_batch": "transforms",
    "ImageTransform": "transforms",
    "Finding": "phantoms",
    "chest_phantom": "phantoms",
    "ct_phantom": "phantoms",
    "phantom_mask": "phantoms",
    "PhantomDataset": "phantoms",
    "PromptTemplate": "prompts",
    "patient_split": "datasets",
    "ImageSettings": "datasets",
    "FolderImageDataset": "datasets",
    "CSVImageDataset": "datasets",
    "HFImageDataset": "hf_datasets",
    "HFStreamingImageDataset": "hf_datasets",
    "DataConfig": "build",
    "SourceSpec": "build",
    "parse_source": "build",
    "source_config": "build",
    "source_columns": "build",
    "is_saved_dataset": "build",
    "is_jsonl_imagefolder": "build",
    "PHANTOM_SOURCES": "build",
    "build_dataset": "build",
    "held_out": "build",
    "collate_items": "cache",
    "UInt8ImageCache": "cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medsd.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
