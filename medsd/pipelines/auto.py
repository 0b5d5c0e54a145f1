"""``MedPipeline.from_pretrained``: open any medsd model folder (or Hub id) with one call.

- a Stable Diffusion LoRA folder (``pytorch_lora_weights.safetensors`` + ``medsd_lora.json``): the base model
  named in ``medsd_lora.json`` (or ``base_model=``) with the LoRA loaded -> :class:`TextToXRayPipeline`;
- a merged / plain Stable Diffusion pipeline folder -> :class:`TextToXRayPipeline`;
- a medsd DDPM or cDDPM pipeline folder -> ``MedDDPMPipeline`` / ``MedCDDPMPipeline``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .lora_io import (
    LORA_WEIGHTS_FILE,
    intensity_mapping_of,
    load_base_pipeline,
    load_lora_pipeline,
    read_lora_info,
)
from .output import resolve_local_dir

MEDSD_PIPELINES = {
    "MedDDPMPipeline": "medsd.pipelines.ddpm",
    "MedCDDPMPipeline": "medsd.pipelines.cddpm",
}
SD_PIPELINES = ("StableDiffusionPipeline",)


def _class_name(index: dict[str, Any]) -> str | None:
    name = index.get("_class_name")
    if isinstance(name, list | tuple):
        return name[1] if len(name) > 1 else None
    return name


class MedPipeline:
    """Factory: ``MedPipeline.from_pretrained(path_or_id)`` returns the right medsd pipeline."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError("MedPipeline is a factory; use MedPipeline.from_pretrained(path_or_id)")

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        lora_scale: float = 1.0,
        base_model: str | os.PathLike | None = None,
        fuse_lora: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a medsd model folder or Hub id.

        Args:
            torch_dtype: e.g. ``torch.float16`` on CUDA.
            device: where to move the pipeline ("cuda", "cpu").
            lora_scale: LoRA strength (0 = base model, 1 = as trained).
            base_model: base Stable Diffusion model for a LoRA folder (default: the one in medsd_lora.json).
            fuse_lora: fuse the LoRA into the weights (slightly faster; lora_scale is then fixed).
            kwargs: ``revision`` / ``token`` / ``cache_dir`` for the Hub; ``variant`` for the base model.
        """
        hub_kwargs = {
            k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs
        }
        folder = resolve_local_dir(path_or_id, **hub_kwargs)
        index_path = folder / "model_index.json"
        if index_path.is_file():
            with open(index_path) as f:
                index = json.load(f)
            name = _class_name(index)
            if name in MEDSD_PIPELINES:
                module = importlib.import_module(MEDSD_PIPELINES[name])
                pipe = getattr(module, name).from_pretrained(folder, torch_dtype=torch_dtype, **kwargs)
                return pipe.to(device) if device is not None else pipe
            if name in SD_PIPELINES or "unet" in index and "text_encoder" in index:
                info = read_lora_info(folder) or {}
                pipe = load_base_pipeline(
                    folder, torch_dtype=torch_dtype, variant=kwargs.pop("variant", None)
                )
                return cls._wrap(pipe, folder, info, 1.0, device)
            raise ValueError(f"{folder}: unsupported pipeline class {name!r} in model_index.json")
        if (folder / LORA_WEIGHTS_FILE).is_file():
            pipe, info = load_lora_pipeline(
                folder,
                base_model=base_model,
                torch_dtype=torch_dtype,
                revision=kwargs.pop("base_revision", None),
                variant=kwargs.pop("variant", None),
            )
            if fuse_lora:
                pipe.fuse_lora(lora_scale=lora_scale)
                pipe.unload_lora_weights()
                lora_scale = 1.0
            return cls._wrap(pipe, folder, info, lora_scale, device)
        raise FileNotFoundError(
            f"{folder} is not a medsd model: expected model_index.json (a pipeline) or {LORA_WEIGHTS_FILE} (a LoRA)"
        )

    @staticmethod
    def _wrap(pipe: Any, folder: Path, info: dict[str, Any], lora_scale: float, device: Any) -> Any:
        from .text2xray import TextToXRayPipeline

        wrapped = TextToXRayPipeline(pipe, intensity_mapping_of(folder, info), info, lora_scale=lora_scale)
        return wrapped.to(device) if device is not None else wrapped


__all__ = ["MedPipeline"]
