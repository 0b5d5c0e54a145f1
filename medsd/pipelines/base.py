"""Saving and loading medsd pipelines so that both medsd and plain diffusers can open them.

A saved medsd pipeline folder holds, beside diffusers' usual ``model_index.json`` and component folders:

- ``pipeline_medsd.py``: a two-line inference script that imports the pipeline class from medsd, named in
  ``model_index.json`` as ``"_class_name": ["pipeline_medsd", "MedDDPMPipeline"]``. This is diffusers'
  own mechanism for pipelines that are not part of diffusers, so
  ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without medsd code;
- ``intensity_mapping.json``: how [-1, 1] maps back to original units (HU, 16-bit levels);
- ``medsd.json``: medsd metadata (task, sampler defaults, training data description).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from .output import load_intensity_mapping, resolve_local_dir, save_intensity_mapping

SHIM_MODULE = "pipeline_medsd"
METADATA_FILE = "medsd.json"

_SHIM = '''"""Inference script for a medsd pipeline (loaded by diffusers' DiffusionPipeline.from_pretrained).

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("{{this folder or hub id}}", trust_remote_code=True)
    images = pipe({call_example}).images

Needs `pip install medsd`.
"""

import medsd.models  # noqa: F401  (component classes, e.g. medsd.models.light_unet.LightUNet2DModel)
from medsd.pipelines.{module} import {class_name}  # noqa: F401
'''


class MedPipelineMixin:
    """Adds intensity mapping, medsd metadata and diffusers-compatible save/load to a DiffusionPipeline."""

    intensity_mapping: Any = None
    medsd_metadata: dict[str, Any]
    _call_example = "batch_size=4"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        directory = Path(save_directory)
        index_path = directory / "model_index.json"
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        module = type(self).__module__.rsplit(".", 1)[-1]
        (directory / f"{SHIM_MODULE}.py").write_text(
            _SHIM.format(module=module, class_name=type(self).__name__, call_example=self._call_example)
        )
        save_intensity_mapping(self.intensity_mapping, directory)
        with open(directory / METADATA_FILE, "w") as f:
            json.dump(getattr(self, "medsd_metadata", {}) or {}, f, indent=1)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ):
        """Load from a local folder or a Hub id; components are built by their own ``from_pretrained``."""
        hub_kwargs = {
            k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs
        }
        directory = resolve_local_dir(pretrained_model_name_or_path, **hub_kwargs)
        index_path = directory / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{directory} has no model_index.json: not a saved pipeline folder")
        with open(index_path) as f:
            index = json.load(f)
        class_name = index.get("_class_name")
        class_name = class_name[1] if isinstance(class_name, list) else class_name
        if class_name != cls.__name__:
            raise ValueError(f"{directory} holds a {class_name}, not a {cls.__name__}")
        components = {}
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
                continue
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            library, component_cls = spec
            component_type = getattr(importlib.import_module(library), component_cls)
            load_kwargs = {}
            if (
                torch_dtype is not None
                and isinstance(component_type, type)
                and issubclass(component_type, torch.nn.Module)
            ):
                load_kwargs["torch_dtype"] = torch_dtype
            components[name] = component_type.from_pretrained(directory / name, **load_kwargs)
        pipe = cls(**components, **kwargs)
        pipe.intensity_mapping = load_intensity_mapping(directory)
        meta_path = directory / METADATA_FILE
        pipe.medsd_metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return pipe


def register_with_diffusers(*classes: type) -> None:
    """Make ``getattr(diffusers, name)`` find medsd pipelines, for diffusers code that looks them up by name."""
    import diffusers

    for klass in classes:
        if not hasattr(diffusers, klass.__name__):
            setattr(diffusers, klass.__name__, klass)


__all__ = ["MedPipelineMixin", "DiffusionPipeline", "register_with_diffusers"]
