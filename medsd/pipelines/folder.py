"""Checks on a model folder before diffusers opens it, each failure one line naming the file and what was expected.

medsd never runs code that comes with a model folder:

- the component libraries named in ``model_index.json`` must be ``diffusers``, ``transformers``, one of
  diffusers' own pipeline modules (e.g. ``stable_diffusion`` for a safety checker) or ``medsd.models``; any
  other name is refused before anything is imported (:func:`component_class`);
- ``pipeline_medsd.py`` (the two-line shim medsd writes for plain diffusers users) and any other ``.py`` file
  are never imported: medsd's loaders take the pipeline class from the installed medsd package, and never pass
  ``trust_remote_code`` to diffusers;
- weights must be ``.safetensors``: pickle files (``.bin``, ``.pt``, ``.ckpt``, ...) can run code when loaded,
  and are refused unless ``allow_pickle=True`` (``--allow_pickle`` on the command line).

A folder that is no model at all (empty, a training checkpoint, a run still training, a folder of images) is
told apart from a broken one (:func:`not_a_model_error`).
"""

from __future__ import annotations

import importlib
import json
import re
import types
from pathlib import Path
from typing import Any

from medsd.errors import MedsdConfigError
from medsd.run_folder import looks_like_checkpoint

MODEL_INDEX = "model_index.json"
SHIM_MODULE = "pipeline_medsd"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
LORA_INFO_FILE = "medsd_lora.json"
INTENSITY_FILE = "intensity_mapping.json"
"""An intensity mapping beside a LoRA (the mapping of a pipeline lives in ``model_index.json``)."""
ACCELERATE_STATE_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
COMPONENT_LIBRARIES = ("diffusers", "transformers")
MEDSD_COMPONENT_PACKAGE = "medsd.models"
ALLOWED_LIBRARIES_TEXT = "diffusers, transformers, a diffusers pipeline module or medsd.models"
PICKLE_HINT = "pass --allow_pickle (allow_pickle=True) only if you trust the file"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModelFolderError(MedsdConfigError):
    """A folder that medsd will not open as a model (not a model, broken, unsafe); the message is one line."""


def read_json_file(path: Path, expected: str) -> Any:
    """The parsed JSON of ``path``, or a one-line error naming the file, the position and ``expected``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path}: not a text file; expected {expected}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFolderError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}); expected {expected}"
        ) from None


def read_model_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of ``folder``: a JSON object whose ``_class_name`` is a name or [module, name]."""
    path = folder / MODEL_INDEX
    index = read_json_file(path, "the JSON object diffusers' save_pretrained writes")
    if not isinstance(index, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got a JSON {type(index).__name__}")
    name = index.get("_class_name")
    pair = isinstance(name, list) and len(name) == 2 and all(isinstance(n, str) for n in name)
    if not (name is None or isinstance(name, str) or pair):
        raise ModelFolderError(
            f"{path}: '_class_name' must be a pipeline class name or [module, class name], got {name!r}"
        )
    return index


def folder_class_name(index: dict[str, Any]) -> str | None:
    """The pipeline class a ``model_index.json`` names (the class of a ``[module, class]`` pair)."""
    name = index.get("_class_name")
    if isinstance(name, list):
        return name[1]
    if name is None and "unet" in index and "text_encoder" in index:
        return "StableDiffusionPipeline"  # written by very old diffusers versions
    return name


def not_a_model_error(folder: Path) -> ModelFolderError:
    """Why ``folder`` (a directory with neither ``model_index.json`` nor LoRA weights) is not a model."""
    expected = f"expected a model folder ({MODEL_INDEX}) or a LoRA folder ({LORA_WEIGHTS_FILE})"
    entries = sorted(folder.iterdir())
    if not entries:
        return ModelFolderError(f"{folder} is an empty folder; {expected}")
    names = {p.name for p in entries}
    if looks_like_checkpoint(folder) or names & set(ACCELERATE_STATE_FILES):
        return ModelFolderError(
            f"{folder} is a training checkpoint, not a model: use the run folder it belongs to "
            f"({folder.parent}) once training has finished, or continue training with "
            f"--resume_from_checkpoint {folder}"
        )
    if any(p.is_dir() and looks_like_checkpoint(p) for p in entries):
        return ModelFolderError(
            f"{folder} holds training checkpoints but no finished model (no {MODEL_INDEX}): training has not "
            "finished; continue it with --resume_from_checkpoint latest"
        )
    if "pytorch_lora_weights.bin" in names:
        return ModelFolderError(
            f"{folder / 'pytorch_lora_weights.bin'}: pickle LoRA weights; expected {LORA_WEIGHTS_FILE} "
            "(medsd reads LoRA weights in safetensors only)"
        )
    inner = [p for p in entries if p.is_dir() and (p / MODEL_INDEX).is_file()]
    hint = f"; did you mean {inner[0]}?" if len(inner) == 1 else ""
    return ModelFolderError(f"{folder} is not a medsd model; {expected}{hint}")


def component_class(library: Any, class_name: Any, where: str) -> type:
    """The class a ``[library, class]`` entry names, resolved only in the allowed installed packages."""
    if not isinstance(library, str) or not isinstance(class_name, str):
        raise ModelFolderError(
            f"{where}: expected [library, class name] (two strings), got {[library, class_name]!r}"
        )
    module: Any = None
    if library in COMPONENT_LIBRARIES:
        module = importlib.import_module(library)
    elif library == MEDSD_COMPONENT_PACKAGE or library.startswith(MEDSD_COMPONENT_PACKAGE + "."):
        if _MODULE_NAME.match(library):
            try:  # a submodule of the installed medsd package (medsd is imported: never looked up in cwd)
                module = importlib.import_module(library)
            except ImportError:
                module = None
        if module is None:
            raise ModelFolderError(f"{where}: no module {library!r} in the installed medsd")
    elif _MODULE_NAME.match(library) and "." not in library:
        from diffusers import pipelines

        candidate = getattr(pipelines, library, None) if hasattr(pipelines, library) else None
        if isinstance(candidate, types.ModuleType) and candidate.__name__.startswith("diffusers.pipelines."):
            module = candidate
    if module is None:
        raise ModelFolderError(
            f"{where}: library {library!r} is not allowed; medsd loads components only from "
            f"{ALLOWED_LIBRARIES_TEXT} and never runs code that comes with a model folder"
        )
    klass = getattr(module, class_name, None) if class_name.isidentifier() else None
    if not isinstance(klass, type):
        raise ModelFolderError(f"{where}: {library} has no class {class_name!r}")
    return klass


def check_component_folder(folder: Path, name: str, library: str, klass: type, allow_pickle: bool) -> None:
    """The component's sub-folder exists, holds valid JSON configs and (for a network) safetensors weights."""
    sub = folder / name
    if not sub.is_dir():
        raise ModelFolderError(
            f"{folder / MODEL_INDEX} names a '{name}' component ({klass.__name__}) but {sub} is missing; "
            "expected the folder save_pretrained writes"
        )
    if (sub / f"{library}.py").is_file():
        raise ModelFolderError(
            f"{sub / f'{library}.py'}: a model folder's code is never run by medsd; expected only configs and weights"
        )
    for config in sorted(sub.glob("*.json")):
        read_json_file(config, f"the {name} configuration save_pretrained writes")
    import torch

    if not issubclass(klass, torch.nn.Module):
        return
    files = sorted(p for p in sub.iterdir() if p.is_file())
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise ModelFolderError(
            f"{pickles[0]}: pickle weights (loading them can run code); expected {name}/*.safetensors; {PICKLE_HINT}"
        )
    if not pickles:
        raise ModelFolderError(f"{sub}: no weights; expected a .safetensors file ({klass.__name__} weights)")


def check_intensity_mapping(value: Any, where: str) -> None:
    """``value`` is null or an intensity mapping medsd can rebuild (``IntensityMapping.to_dict()``)."""
    if value is None:
        return
    from medsd.data.intensity import mapping_from_dict

    example = '{"type": "window", "low": -1000, "high": 400}'
    if not isinstance(value, dict):
        raise ModelFolderError(f"{where}: expected null or an object like {example}, got {value!r}")
    try:
        mapping_from_dict(value)
    except (ValueError, TypeError) as e:
        raise ModelFolderError(f"{where}: {e}; expected an object like {example}") from None


def check_medsd_state(folder: Path, index: dict[str, Any]) -> None:
    """``intensity_mapping`` and ``medsd_metadata`` in ``model_index.json``."""
    index_path = folder / MODEL_INDEX
    check_intensity_mapping(index.get("intensity_mapping"), f"{index_path}: 'intensity_mapping'")
    meta = index.get("medsd_metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ModelFolderError(f"{index_path}: 'medsd_metadata' must be an object, got {meta!r}")


def check_pipeline_folder(
    folder: Path, pipeline_class: type, allow_pickle: bool = False, passed: Any = ()
) -> dict[str, Any]:
    """Refuse, in one line, a folder ``pipeline_class.from_pretrained`` must not open; returns its index.

    Checks that the folder is a pipeline folder of that class, that every component ``model_index.json``
    names comes from an allowed library and has its sub-folder, and that weights are safetensors (unless
    ``allow_pickle``). Components in ``passed`` (given to ``from_pretrained``, e.g. ``safety_checker=None``)
    are not read from the folder, so their sub-folders are not checked.
    """
    if not (folder / MODEL_INDEX).is_file():
        if (folder / LORA_WEIGHTS_FILE).is_file():
            raise ModelFolderError(
                f"{folder} is a LoRA folder ({LORA_WEIGHTS_FILE}), not a full {pipeline_class.__name__} folder "
                f"({MODEL_INDEX}); open it with MedPipeline.from_pretrained or `medsd generate`"
            )
        raise not_a_model_error(folder)
    index = read_model_index(folder)
    check_class_name(folder, index, pipeline_class)
    expected, _ = pipeline_class._get_signature_keys(pipeline_class)  # type: ignore[attr-defined]
    optional = set(getattr(pipeline_class, "_optional_components", []) or [])
    for key, entry in index.items():
        where = f"{folder / MODEL_INDEX}: '{key}'"
        if key.startswith("_") or key not in expected and not _looks_like_component(entry):
            continue
        if entry is None or entry == [None, None]:
            if key in optional or key not in expected:
                continue
            raise ModelFolderError(f"{where} is null; {pipeline_class.__name__} needs a {key}")
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ModelFolderError(f"{where}: expected [library, class name], got {entry!r}")
        klass = component_class(entry[0], entry[1], where)
        if key in expected and key not in passed:
            check_component_folder(folder, key, entry[0], klass, allow_pickle)
    missing = [k for k in expected if k not in index and k not in optional]
    if missing:
        raise ModelFolderError(
            f"{folder / MODEL_INDEX}: no '{missing[0]}' entry; expected [library, class name] for each of "
            f"{sorted(set(expected) - optional)}"
        )
    check_medsd_state(folder, index)
    return index


def check_class_name(folder: Path, index: dict[str, Any], pipeline_class: type) -> None:
    """The folder's ``_class_name`` is one ``pipeline_class`` opens."""
    raw = index.get("_class_name")
    if isinstance(raw, list) and raw[0] != SHIM_MODULE:
        raise ModelFolderError(
            f"{folder / MODEL_INDEX}: '_class_name' names custom code {raw[0]}.py; expected a pipeline class "
            f'name or ["{SHIM_MODULE}", class name] (medsd never runs code from a model folder)'
        )
    name = folder_class_name(index)
    accepted = {pipeline_class.__name__, *getattr(pipeline_class, "_folder_class_names", ())}
    accepted |= {c.__name__ for c in pipeline_class.__mro__[1:] if "_folder_class_names" in vars(c)}
    if name not in accepted:
        what = f"a {name} folder" if name else f"a {MODEL_INDEX} without '_class_name'"
        raise ModelFolderError(
            f"{folder / MODEL_INDEX}: {what}; expected a {pipeline_class.__name__} model "
            "(MedPipeline.from_pretrained opens any medsd model)"
        )


def _looks_like_component(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and any(isinstance(v, str) for v in entry)


def check_lora_folder(folder: Path) -> dict[str, Any]:
    """``medsd_lora.json`` of a LoRA folder ({} when absent), checked to be a JSON object with a valid mapping."""
    path = folder / LORA_INFO_FILE
    if not path.is_file():
        return {}
    info = read_json_file(path, "the JSON object medsd's LoRA training writes")
    if not isinstance(info, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got a JSON {type(info).__name__}")
    check_intensity_mapping(info.get("intensity_mapping"), f"{path}: 'intensity_mapping'")
    base = info.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ModelFolderError(f"{path}: 'base_model' must be a folder or Hub id, got {base!r}")
    return info


def check_shareable_folder(folder: Path, allow_pickle: bool = False) -> None:
    """What ``medsd push`` uploads is a finished model: a pipeline (with a readable ``model_index.json``) or a
    LoRA folder, not a checkpoint or an unfinished run, and without pickle-only weights (unless ``allow_pickle``)."""
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ModelFolderError(f"{folder} {what}; expected a finished model folder")
    if (folder / MODEL_INDEX).is_file():
        read_model_index(folder)
    elif (folder / LORA_WEIGHTS_FILE).is_file():
        check_lora_folder(folder)
    else:
        raise not_a_model_error(folder)
    if allow_pickle:
        return
    for sub in sorted(p for p in [folder, *folder.iterdir()] if p.is_dir()):
        if looks_like_checkpoint(sub):
            continue
        files = [p for p in sub.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not any(p.name.endswith(".safetensors") for p in files):
            raise ModelFolderError(
                f"{pickles[0]}: pickle weights (loading them can run code); expected .safetensors; {PICKLE_HINT}"
            )
