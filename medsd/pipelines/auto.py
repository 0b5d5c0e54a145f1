"""``MedPipeline.from_pretrained``: open any medsd model folder (or Hub id) with one call.

- a Stable Diffusion LoRA folder (``pytorch_lora_weights.safetensors`` + ``medsd_lora.json``): the base model
  named in ``medsd_lora.json`` (or ``base_model=``) with the LoRA loaded -> :class:`TextToXRayPipeline`;
- a merged / plain Stable Diffusion pipeline folder -> :class:`TextToXRayPipeline`;
- a medsd DDPM or cDDPM pipeline folder -> ``MedDDPMPipeline`` / ``MedCDDPMPipeline``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from .folder import (
    MODEL_INDEX,
    ModelFolderError,
    check_lora_folder,
    check_pipeline_folder,
    folder_class_name,
    not_a_model_error,
    read_model_index,
)
from .lora_io import LORA_WEIGHTS_FILE, intensity_mapping_of, load_lora_pipeline, read_lora_info
from .output import resolve_local_dir

# model_index.json class name -> (module, medsd class); "DDPMPipeline" folders are medsd DDPMs on a diffusers
# UNet2DModel (stock diffusers opens them too).
MEDSD_PIPELINES = {
    "MedDDPMPipeline": ("medsd.pipelines.ddpm", "MedDDPMPipeline"),
    "DDPMPipeline": ("medsd.pipelines.ddpm", "MedDDPMPipeline"),
    "MedCDDPMPipeline": ("medsd.pipelines.cddpm", "MedCDDPMPipeline"),
    "StableDiffusionPipeline": ("medsd.pipelines.text2xray", "TextToXRayPipeline"),
    "TextToXRayPipeline": ("medsd.pipelines.text2xray", "TextToXRayPipeline"),
}
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")


def _dtype_kwarg() -> str:
    """``dtype`` where diffusers takes it (``torch_dtype`` is deprecated there), else ``torch_dtype``."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


_DTYPE_KWARG = _dtype_kwarg()


def _pipeline_class(name: str | None) -> type | None:
    spec = MEDSD_PIPELINES.get(name or "")
    return getattr(importlib.import_module(spec[0]), spec[1]) if spec else None


def check_model_folder(folder: str | os.PathLike, allow_pickle: bool = False) -> str:
    """Check, without loading it, that a local folder is a model ``MedPipeline.from_pretrained`` opens:
    returns "pipeline" or "lora"; otherwise a one-line :class:`ModelFolderError`."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ModelFolderError(f"{folder} {what}; expected a model folder")
    if (folder / MODEL_INDEX).is_file():
        index = read_model_index(folder)
        klass = _pipeline_class(folder_class_name(index))
        if klass is None:
            raise _unsupported(folder, folder_class_name(index))
        check_pipeline_folder(folder, klass, allow_pickle=allow_pickle)
        return "pipeline"
    if (folder / LORA_WEIGHTS_FILE).is_file():
        check_lora_folder(folder)
        return "lora"
    raise not_a_model_error(folder)


def _unsupported(folder: Path, name: str | None) -> ModelFolderError:
    return ModelFolderError(
        f"{folder / MODEL_INDEX}: unsupported pipeline class {name!r}; expected one of {sorted(MEDSD_PIPELINES)}"
    )


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
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a medsd model folder or Hub id.

        Args:
            torch_dtype: e.g. ``torch.float16`` on CUDA.
            device: where to move the pipeline ("cuda", "cpu").
            lora_scale: LoRA strength (0 = base model, 1 = as trained).
            base_model: base Stable Diffusion model for a LoRA folder (default: the one in medsd_lora.json).
            fuse_lora: fuse the LoRA into the weights (slightly faster; lora_scale is then fixed).
            allow_pickle: also load pickle weights (``.bin``, ``.pt``, ...), which can run code when loaded;
                by default only safetensors weights load and a pickle-only folder is refused.
            kwargs: ``revision`` / ``token`` / ``cache_dir`` for the Hub; every other diffusers
                ``from_pretrained`` argument (``variant``, ``use_safetensors``, ``low_cpu_mem_usage``, ...)
                passes through (for a LoRA folder, to the base model; ``base_revision`` is its revision).
        """
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        folder = resolve_local_dir(path_or_id, **hub_kwargs)
        if torch_dtype is not None:
            kwargs[_DTYPE_KWARG] = torch_dtype
        kwargs["allow_pickle"] = allow_pickle
        if (folder / MODEL_INDEX).is_file():
            pipe = cls._load_pipeline_folder(folder, read_model_index(folder), kwargs)
        elif (folder / LORA_WEIGHTS_FILE).is_file():
            kwargs["revision"] = kwargs.pop("base_revision", None)
            pipe, _ = load_lora_pipeline(folder, base_model=base_model, lora_scale=lora_scale, **kwargs)
            if fuse_lora:
                pipe.fuse_lora(lora_scale=lora_scale)
                pipe.unload_lora_weights()
                pipe.lora_scale = 1.0
        else:
            raise not_a_model_error(folder)
        if device is None:
            return pipe
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ModelFolderError(f"device={str(device)!r}: expected cpu, cuda, cuda:N or mps") from None
        return pipe.to(device)

    @staticmethod
    def _load_pipeline_folder(folder: Path, index: dict[str, Any], kwargs: dict[str, Any]) -> Any:
        name = folder_class_name(index)
        klass = _pipeline_class(name)
        if klass is None:
            raise _unsupported(folder, name)
        if klass.__name__ == "TextToXRayPipeline":
            kwargs.setdefault("safety_checker", None)
            if not index.get("medsd_metadata"):  # a plain SD folder: the LoRA's own files may say
                info = read_lora_info(folder) or {}
                kwargs.setdefault("medsd_metadata", info)
                kwargs.setdefault("intensity_mapping", intensity_mapping_of(folder, info))
        pipe = klass.from_pretrained(folder, **kwargs)
        if klass.__name__ == "TextToXRayPipeline":
            pipe.set_progress_bar_config(disable=True)
        return pipe


__all__ = ["MedPipeline", "check_model_folder"]
