"""medsd: synthetic medical images (chest X-ray, CT) with Hugging Face diffusers.

Public classes are exported lazily (PEP 562), so ``import medsd`` does not import torch, diffusers,
open_clip or pydicom until a class is used. diffusers reloads custom components through this table
(``["medsd", "LightUNet2DModel"]`` in a pipeline's ``model_index.json``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # data
    "MedImageError": "medsd.data.errors",
    "IntensityMapping": "medsd.data.intensity",
    "WindowMapping": "medsd.data.intensity",
    "MinMaxMapping": "medsd.data.intensity",
    "PercentileMapping": "medsd.data.intensity",
    "mapping_from_dict": "medsd.data.intensity",
    "MedImage": "medsd.data.io",
    "read_image": "medsd.data.io",
    "read_nifti_slices": "medsd.data.io",
    "dicom_window": "medsd.data.io",
    "write_png8": "medsd.data.io",
    "write_png16": "medsd.data.io",
    "write_dicom_secondary_capture": "medsd.data.io",
    "ImageTransform": "medsd.data.transforms",
    "Finding": "medsd.data.phantoms",
    "chest_phantom": "medsd.data.phantoms",
    "ct_phantom": "medsd.data.phantoms",
    "phantom_mask": "medsd.data.phantoms",
    "PhantomDataset": "medsd.data.phantoms",
    "PromptTemplate": "medsd.data.datasets",
    "patient_split": "medsd.data.datasets",
    "FolderImageDataset": "medsd.data.datasets",
    "CSVImageDataset": "medsd.data.datasets",
    "HFImageDataset": "medsd.data.datasets",
    "HFStreamingImageDataset": "medsd.data.datasets",
    "DataConfig": "medsd.data.datasets",
    "build_dataset": "medsd.data.datasets",
    "UInt8ImageCache": "medsd.data.datasets",
    # models
    "LightUNet2DModel": "medsd.models.light_unet",
    "LightUNet2DOutput": "medsd.models.light_unet",
    "build_unet": "medsd.models.presets",
    # pipelines
    "MedDDPMPipeline": "medsd.pipelines.ddpm",
    "MedImagePipelineOutput": "medsd.pipelines.ddpm",
    "fast_scheduler": "medsd.pipelines.ddpm",
    # training
    "TrainConfig": "medsd.training.config",
    "TrainingTask": "medsd.training.core",
    "NonFiniteLossError": "medsd.training.core",
    "train": "medsd.training.core",
    "DDPMTrainConfig": "medsd.training.ddpm",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medsd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
