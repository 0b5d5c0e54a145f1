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

import torch

from .output import INTENSITY_FILE, load_intensity_mapping, resolve_local_dir

LORA_INFO_FILE = "medsd_lora.json"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def read_lora_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``medsd_lora.json`` of a folder, or None when it has none."""
    path = Path(folder) / LORA_INFO_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def is_lora_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / LORA_WEIGHTS_FILE).is_file() and not (folder / "model_index.json").is_file()


def intensity_mapping_of(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> Any:
    """The intensity mapping saved in a folder (``intensity_mapping.json`` or ``medsd_lora.json``)."""
    mapping = load_intensity_mapping(folder)
    if mapping is None and info and info.get("intensity_mapping"):
        from medsd.data.intensity import mapping_from_dict

        mapping = mapping_from_dict(info["intensity_mapping"])
    return mapping


def load_base_pipeline(
    base_model: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    revision: str | None = None,
    variant: str | None = None,
) -> Any:
    """A ``StableDiffusionPipeline`` without safety checker (these are synthetic radiographs)."""
    from diffusers import StableDiffusionPipeline

    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if revision is not None:
        kwargs["revision"] = revision
    if variant is not None:
        kwargs["variant"] = variant
    return StableDiffusionPipeline.from_pretrained(str(base_model), **kwargs)


def load_lora_pipeline(
    lora_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    revision: str | None = None,
    variant: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(base ``StableDiffusionPipeline`` with the LoRA of ``lora_dir`` loaded, the folder's medsd_lora.json).

    The base comes from ``base_model`` when given, else from ``medsd_lora.json``.
    """
    lora_dir = Path(lora_dir)
    info = read_lora_info(lora_dir) or {}
    base = base_model or info.get("base_model")
    if not base:
        raise ValueError(
            f"{lora_dir} names no base model ({LORA_INFO_FILE} missing or without 'base_model'); pass base_model="
        )
    if base_model is None:
        revision = revision if revision is not None else info.get("revision")
        variant = variant if variant is not None else info.get("variant")
    pipe = load_base_pipeline(base, torch_dtype=torch_dtype, revision=revision, variant=variant)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHTS_FILE)
    return pipe, info


def export_merged_pipeline(
    lora_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
) -> Path:
    """Write a full ``StableDiffusionPipeline`` (fp32) with the LoRA of ``lora_dir`` fused into its weights."""
    lora_dir, out_dir = Path(lora_dir), Path(out_dir)
    pipe, info = load_lora_pipeline(lora_dir, base_model=base_model)
    pipe.fuse_lora(lora_scale=lora_scale)
    pipe.unload_lora_weights()
    pipe.save_pretrained(out_dir)
    merged_info = dict(info, merged=True, lora_scale=lora_scale)
    with open(out_dir / LORA_INFO_FILE, "w") as f:
        json.dump(merged_info, f, indent=1)
    src = lora_dir / INTENSITY_FILE
    if src.is_file():
        (out_dir / INTENSITY_FILE).write_bytes(src.read_bytes())
    return out_dir


def resolve_folder(path_or_id: str | os.PathLike, **hub_kwargs: Any) -> Path:
    return resolve_local_dir(path_or_id, **hub_kwargs)
