"""Reading medsd Stable Diffusion LoRA folders and exporting them as merged pipelines.

A LoRA folder written by ``medsd.training.sd_lora`` holds ``pytorch_lora_weights.safetensors`` (diffusers
format) and ``medsd_lora.json`` (base model, revision, prompt template, resolution, intensity mapping, LoRA
rank / alpha, whether the text encoder has LoRA).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medsd.data.intensity import mapping_from_dict
from medsd.errors import MedsdConfigError

from .folder import (
    INTENSITY_FILE,
    LORA_INFO_FILE,
    LORA_WEIGHTS_FILE,
    check_intensity_mapping,
    check_lora_folder,
    read_json_file,
)
from .output import looks_like_path


def read_lora_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``medsd_lora.json`` of a folder (checked: a JSON object with a valid mapping), or None when it has none."""
    folder = Path(folder)
    return check_lora_folder(folder) if (folder / LORA_INFO_FILE).is_file() else None


def intensity_mapping_of(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> Any:
    """The intensity mapping of a LoRA folder (``medsd_lora.json``, else an ``intensity_mapping.json``), or None."""
    if info and info.get("intensity_mapping"):
        return mapping_from_dict(info["intensity_mapping"])
    path = Path(folder) / INTENSITY_FILE
    if not path.is_file():
        return None
    value = read_json_file(path, "an intensity mapping object")
    check_intensity_mapping(value, str(path))
    return mapping_from_dict(value)


def load_base_pipeline(
    base_model: str | os.PathLike, pipeline_class: type | None = None, **kwargs: Any
) -> Any:
    """``pipeline_class.from_pretrained(base_model, **kwargs)`` (default: ``TextToXRayPipeline``) without
    safety checker (these are synthetic radiographs); every diffusers loading argument passes through."""
    if pipeline_class is None:
        from .text2xray import TextToXRayPipeline as pipeline_class
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)
    return pipeline_class.from_pretrained(str(base_model), **kwargs)


def load_lora_pipeline(
    lora_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    pipeline_class: type | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """(base pipeline with the LoRA of ``lora_dir`` loaded, the folder's medsd_lora.json).

    The base comes from ``base_model`` when given, else from ``medsd_lora.json`` (with its revision and
    variant). A ``TextToXRayPipeline`` by default, carrying the folder's intensity mapping and metadata;
    ``allow_pickle`` and every diffusers argument in ``kwargs`` go to the base model's ``from_pretrained``.
    """
    lora_dir = Path(lora_dir)
    info = read_lora_info(lora_dir) or {}
    base = base_model or info.get("base_model")
    if not base:
        raise MedsdConfigError(
            f"{lora_dir} names no base model ({LORA_INFO_FILE} missing or without 'base_model'); pass base_model="
        )
    if looks_like_path(str(base)) and not Path(base).is_dir():
        source = "base_model=" if base_model else f"{lora_dir / LORA_INFO_FILE}: 'base_model'"
        raise MedsdConfigError(
            f"{source} {base} does not exist; expected the Stable Diffusion folder (or Hub id) the LoRA was "
            "trained on"
        )
    if base_model is None:
        for key in ("revision", "variant"):
            if kwargs.get(key) is None and info.get(key) is not None:
                kwargs[key] = info[key]
    if pipeline_class is None:
        from .text2xray import TextToXRayPipeline as pipeline_class

        kwargs.setdefault("intensity_mapping", intensity_mapping_of(lora_dir, info))
        kwargs.setdefault("medsd_metadata", info)
    pipe = load_base_pipeline(base, pipeline_class=pipeline_class, **kwargs)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHTS_FILE)
    return pipe, info


def export_merged_pipeline(
    lora_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
) -> Path:
    """Write a full pipeline (fp32, a stock ``StableDiffusionPipeline`` folder) with the LoRA of ``lora_dir``
    fused into its weights; the medsd metadata and intensity mapping ride along in ``model_index.json`` and
    in ``medsd_lora.json``."""
    lora_dir, out_dir = Path(lora_dir), Path(out_dir)
    pipe, info = load_lora_pipeline(lora_dir, base_model=base_model)
    pipe.fuse_lora(lora_scale=lora_scale)
    pipe.unload_lora_weights()
    merged_info = dict(info, merged=True, lora_scale=lora_scale)
    pipe.medsd_metadata = merged_info
    pipe.save_pretrained(out_dir)
    with open(out_dir / LORA_INFO_FILE, "w") as f:
        json.dump(merged_info, f, indent=1)
    return out_dir
