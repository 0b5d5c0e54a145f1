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
    "MedsdError": "medsd.errors",
    "MedsdConfigError": "medsd.errors",
    "MissingPackageError": "medsd.data.errors",
    "IntensityMapping": "medsd.data.intensity",
    "WindowMapping": "medsd.data.intensity",
    "MinMaxMapping": "medsd.data.intensity",
    "PercentileMapping": "medsd.data.intensity",
    "mapping_from_dict": "medsd.data.intensity",
    "MedImage": "medsd.data.io",
    "read_image": "medsd.data.io",
    "read_nifti_slices": "medsd.data.io",
    "dicom_window": "medsd.data.io",
    "write_png8": "medsd.data.writers",
    "write_png16": "medsd.data.writers",
    "png8_bytes": "medsd.data.writers",
    "write_dicom_secondary_capture": "medsd.data.writers",
    "ImageTransform": "medsd.data.transforms",
    "Finding": "medsd.data.phantoms",
    "chest_phantom": "medsd.data.phantoms",
    "ct_phantom": "medsd.data.phantoms",
    "phantom_mask": "medsd.data.phantoms",
    "PhantomDataset": "medsd.data.phantoms",
    "PromptTemplate": "medsd.data.prompts",
    "patient_split": "medsd.data.datasets",
    "ImageSettings": "medsd.data.datasets",
    "FolderImageDataset": "medsd.data.datasets",
    "CSVImageDataset": "medsd.data.datasets",
    "HFImageDataset": "medsd.data.hf_datasets",
    "HFStreamingImageDataset": "medsd.data.hf_datasets",
    "DataConfig": "medsd.data.build",
    "build_dataset": "medsd.data.build",
    "UInt8ImageCache": "medsd.data.cache",
    # models
    "LightUNet2DModel": "medsd.models.light_unet",
    "LightUNet2DOutput": "medsd.models.light_unet",
    "build_unet": "medsd.models.presets",
    # pipelines
    "MedDDPMPipeline": "medsd.pipelines.ddpm",
    "MedImagePipelineOutput": "medsd.pipelines.ddpm",
    "MedCDDPMPipeline": "medsd.pipelines.cddpm",
    "MedCDDPMPipelineOutput": "medsd.pipelines.cddpm",
    "CDDPMTrainConfig": "medsd.training.cddpm",
    "CDDPMTask": "medsd.training.cddpm",
    "Degradation": "medsd.data.degradations",
    "fast_scheduler": "medsd.pipelines.ddpm",
    # metrics
    "EvalConfig": "medsd.metrics.evaluate",
    "evaluate": "medsd.metrics.evaluate",
    "EvalInputs": "medsd.metrics.evaluate",
    "SectionResult": "medsd.metrics.evaluate",
    "ImageSet": "medsd.metrics.io",
    "FeatureStats": "medsd.metrics.feature_stats",
    "frechet_distance_of_stats": "medsd.metrics.feature_stats",
    "load_image_set": "medsd.metrics.io",
    "MissingWeightsError": "medsd.metrics.features",
    "FeatureExtractor": "medsd.metrics.features",
    "RadiomicsExtractor": "medsd.metrics.features",
    "get_extractor": "medsd.metrics.features",
    "register_extractor": "medsd.metrics.features",
    "extract_features": "medsd.metrics.features",
    "available_extractors": "medsd.metrics.features",
    "frechet_distance": "medsd.metrics.distribution",
    "kernel_inception_distance": "medsd.metrics.distribution",
    "precision_recall": "medsd.metrics.distribution",
    "distribution_metrics": "medsd.metrics.distribution",
    "paired_metrics": "medsd.metrics.paired",
    "psnr": "medsd.metrics.paired",
    "ssim": "medsd.metrics.paired",
    "ms_ssim": "medsd.metrics.paired",
    "acutance": "medsd.metrics.paired",
    "class_set_table": "medsd.metrics.paired",
    "degenerate_mask": "medsd.metrics.diversity",
    "count_degenerate": "medsd.metrics.diversity",
    "mean_pairwise_ms_ssim": "medsd.metrics.diversity",
    "memorisation_audit": "medsd.metrics.memorisation",
    "RegisteredNCC": "medsd.metrics.copy_search",
    "PerceptualHash": "medsd.metrics.copy_search",
    "SearchResult": "medsd.metrics.copy_search",
    "plant_copies": "medsd.metrics.planting",
    "transform_copies": "medsd.metrics.planting",
    "AuditVerdict": "medsd.metrics.audit_gate",
    "MemorisationGateError": "medsd.metrics.audit_gate",
    "audit_verdict": "medsd.metrics.audit_gate",
    "check_audit_for_push": "medsd.metrics.audit_gate",
    "audit_card_section": "medsd.metrics.audit_gate",
    "downstream_utility": "medsd.metrics.downstream",
    "export_reader_study": "medsd.metrics.reader_study",
    "score_reader_study": "medsd.metrics.reader_study",
    "cohen_kappa": "medsd.metrics.reader_study",
    "score_answer_sheets": "medsd.metrics.reader_study",
    # reader-study web app
    "StudyCases": "medsd.reader_app.study",
    "ReaderStudyDB": "medsd.reader_app.db",
    "create_reader_app": "medsd.reader_app.server",
    # text-to-X-ray
    "MedPipeline": "medsd.pipelines.auto",
    "ModelFolderError": "medsd.pipelines.folder",
    "TextToXRayPipeline": "medsd.pipelines.text2xray",
    "TextToXRayPipelineOutput": "medsd.pipelines.text2xray",
    "export_merged_pipeline": "medsd.pipelines.lora_io",
    "SDLoRATrainConfig": "medsd.training.sd_lora",
    "SDLoRATask": "medsd.training.sd_lora",
    "train_sd_lora": "medsd.training.sd_lora",
    "DDPMTask": "medsd.training.ddpm",
    "train_ddpm": "medsd.training.ddpm",
    # training
    "TrainConfig": "medsd.training.config",
    "DPTraining": "medsd.training.dp",
    "PoissonUnitSampler": "medsd.training.dp",
    "TrainingTask": "medsd.training.core",
    "UNetDiffusionTask": "medsd.training.diffusion_task",
    "UNetDiffusionArgs": "medsd.training.diffusion_task",
    "NonFiniteLossError": "medsd.training.core",
    "CheckpointWriteError": "medsd.training.checkpoints",
    "TrainingInterrupted": "medsd.training.signals",
    "OutputDirInUseError": "medsd.training.run_guard",
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
