"""What every medsd pipeline adds to a diffusers ``DiffusionPipeline``: its state lives in the diffusers config.

A medsd pipeline takes two optional ``__init__`` arguments that it registers with ``register_to_config``:

- ``intensity_mapping``: how [-1, 1] maps back to original units (HU, 16-bit levels), as a
  ``mapping.to_dict()`` dict;
- ``medsd_metadata``: task, sampler defaults, training data description.

Both are therefore written to ``model_index.json`` by diffusers' own ``save_pretrained`` and handed back to
``__init__`` by diffusers' own ``from_pretrained``, ``from_pipe`` and ``components``: a folder loaded with plain
``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` and saved again keeps them.

How a folder names its class:

- a pipeline stock diffusers can run (:class:`MedDDPMPipeline` on a diffusers ``UNet2DModel``) is saved as
  ``"_class_name": "DDPMPipeline"``: ``diffusers.DDPMPipeline.from_pretrained(folder)`` opens it without medsd
  (the extra config keys are ignored), and medsd opens it as a ``MedDDPMPipeline`` with its extras;
- every other medsd pipeline is saved as ``"_class_name": ["pipeline_medsd", "<class>"]`` beside a two-line
  ``pipeline_medsd.py`` that imports the class from medsd: diffusers' own mechanism for pipelines that are not
  part of diffusers (``trust_remote_code=True``).

medsd's own ``from_pretrained`` never runs that file (nor any code from a folder): it takes the class from the
installed medsd, checks the folder first (:mod:`medsd.pipelines.folder`: allowed component libraries only,
safetensors weights unless ``allow_pickle=True``) and never passes ``trust_remote_code`` to diffusers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Union

from diffusers import DiffusionPipeline, SchedulerMixin, UNet2DModel

from medsd.data.intensity import IntensityMapping, mapping_from_dict
from medsd.errors import MedsdConfigError
from medsd.models.light_unet import LightUNet2DModel

from .folder import (
    SHIM_MODULE,
    ModelFolderError,
    check_pipeline_folder,
)
from .output import resolve_local_dir

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")

_SHIM = '''"""Inference script for a medsd pipeline (loaded by diffusers' DiffusionPipeline.from_pretrained).

    from diffusers import DiffusionPipeline, SchedulerMixin, UNet2DModel
    pipe = DiffusionPipeline.from_pretrained("{{this folder or hub id}}", trust_remote_code=True)
    images = pipe({call_example}).images

Needs `pip install medsd`.
"""

import medsd.models  # noqa: F401  (component classes, e.g. medsd.models.light_unet.LightUNet2DModel)
from medsd.pipelines.{module} import {class_name}  # noqa: F401
'''


def mapping_to_config(mapping: IntensityMapping | dict | None) -> dict | None:
    """The JSON form of an intensity mapping as kept in a pipeline config (None stays None)."""
    if mapping is None or isinstance(mapping, dict):
        return dict(mapping) if mapping else None
    return mapping.to_dict()


def shim_text(pipeline_class: type) -> str:
    """The ``pipeline_medsd.py`` medsd writes for ``pipeline_class`` (also used to recognise its own shim)."""
    module = pipeline_class.__module__.rsplit(".", 1)[-1]
    example = getattr(pipeline_class, "_call_example", "batch_size=4")
    return _SHIM.format(module=module, class_name=pipeline_class.__name__, call_example=example)


class MedPipelineMixin:
    """Intensity mapping and medsd metadata kept in the diffusers config of a ``DiffusionPipeline``.

    Subclasses call :meth:`register_medsd_state` in ``__init__`` with their two optional arguments.
    """

    _call_example: ClassVar[str] = "batch_size=4"
    _folder_class_names: ClassVar[tuple[str, ...]] = ()
    """``_class_name`` values besides the class's own that ``from_pretrained`` opens (stock diffusers ones)."""

    def register_medsd_state(self, intensity_mapping: Any = None, medsd_metadata: dict | None = None) -> None:
        self.register_to_config(  # type: ignore[attr-defined]
            intensity_mapping=mapping_to_config(intensity_mapping), medsd_metadata=dict(medsd_metadata or {})
        )

    @property
    def intensity_mapping(self) -> IntensityMapping | None:
        """The mapping of the training data (``output_type="native"``), rebuilt from the config."""
        d = self.config.get("intensity_mapping")  # type: ignore[attr-defined]
        return mapping_from_dict(d) if d else None

    @intensity_mapping.setter
    def intensity_mapping(self, mapping: IntensityMapping | dict | None) -> None:
        self.register_to_config(intensity_mapping=mapping_to_config(mapping))  # type: ignore[attr-defined]

    @property
    def medsd_metadata(self) -> dict[str, Any]:
        """medsd metadata (task, sampler defaults, data); a copy: assign a new dict to change it."""
        return dict(self.config.get("medsd_metadata") or {})  # type: ignore[attr-defined]

    @medsd_metadata.setter
    def medsd_metadata(self, metadata: dict[str, Any] | None) -> None:
        self.register_to_config(medsd_metadata=dict(metadata or {}))  # type: ignore[attr-defined]

    def _saved_class_name(self) -> str | list[str]:
        """What ``model_index.json`` names: a stock diffusers class when it can run the folder, else the shim."""
        return [SHIM_MODULE, type(self).__name__]

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, with the class named so that diffusers (and medsd) reopen it."""
        super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        directory = Path(save_directory)
        index_path = directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = self._saved_class_name()
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        shim = directory / f"{SHIM_MODULE}.py"
        if isinstance(index["_class_name"], list):
            shim.write_text(shim_text(type(self)))
        elif shim.is_file():
            shim.unlink()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, allow_pickle: bool = False, **kwargs: Any
    ):
        """diffusers' ``from_pretrained`` on a checked folder (every diffusers argument works: ``torch_dtype``,
        ``variant``, ``use_safetensors``, ``low_cpu_mem_usage``, ``device_map``, ...).

        A Hub id is downloaded first (``revision``, ``token``, ``cache_dir``, ``local_files_only``). The folder
        is checked by :func:`medsd.pipelines.folder.check_pipeline_folder`: no code from it is run (the class
        is this one, from the installed medsd), components come from allowed libraries only, and pickle
        weights are refused unless ``allow_pickle=True``."""
        if kwargs.pop("trust_remote_code", False):
            raise MedsdConfigError(
                "trust_remote_code: medsd never runs code that comes with a model folder; open the folder with "
                "diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True) if you trust it"
            )
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        folder = resolve_local_dir(pretrained_model_name_or_path, **hub_kwargs)
        check_pipeline_folder(folder, cls, allow_pickle=allow_pickle, passed=set(kwargs))
        if not allow_pickle:
            if kwargs.get("use_safetensors") is False:
                raise MedsdConfigError(
                    "use_safetensors=False loads pickle weights; pass allow_pickle=True too"
                )
            kwargs["use_safetensors"] = True
        pipe = super().from_pretrained(folder, **kwargs)  # type: ignore[misc]
        return pipe

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``load_config``, with a ``[module, "<class>"]`` class name read as ``"<class>"``: diffusers
        then builds this class instead of importing ``<module>.py`` (``pipeline_medsd.py``) from the folder."""
        result = super().load_config(*args, **kwargs)  # type: ignore[misc]
        config = result[0] if isinstance(result, tuple) else result
        name = config.get("_class_name") if isinstance(config, dict) else None
        if isinstance(name, list) and len(name) == 2:
            config["_class_name"] = name[1]
        return result


class MedUNetPipeline(MedPipelineMixin, DiffusionPipeline):
    """Base of the 1-channel U-Net pipelines (DDPM, cDDPM): a U-Net, a scheduler and the medsd state."""

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: Union[LightUNet2DModel, UNet2DModel],  # noqa: UP007 - diffusers' from_pipe reads typing.Union
        scheduler: SchedulerMixin,
        intensity_mapping: Any = None,
        medsd_metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_medsd_state(intensity_mapping, medsd_metadata)


__all__ = [
    "DiffusionPipeline",
    "MedPipelineMixin",
    "MedUNetPipeline",
    "ModelFolderError",
    "mapping_to_config",
    "shim_text",
]
