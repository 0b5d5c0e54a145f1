"""What ``medsd generate`` draws and writes for one batch of images: the model (loaded once, sampler and
precision chosen by name), one pipeline call per batch with one ``torch.Generator`` per image, and each image
written under a temporary name then renamed, beside its sidecar."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .generate_io import GenerateError, file_sha256, read_condition, read_mask, weights_sha256

SIDECAR_VERSION = 1
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``--dtype`` values (and the torch names sidecars record, also accepted) -> torch dtype names."""


# -- what one image is -----------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageSpec:
    """Everything one image depends on besides the model and the shared settings."""

    index: int
    seed: int
    prompt: str | None = None
    condition: str | None = None
    mask: str | None = None
    label: str | None = None


@dataclasses.dataclass
class Settings:
    family: str
    scheduler: str
    num_inference_steps: int | None
    guidance_scale: float | None
    negative_prompt: str | None
    height: int | None
    width: int | None
    task: str | None
    keep_known_pixels: bool
    image_size: int | None
    format: str
    dtype: str


def family_of(pipe: Any) -> str:
    from medsd.pipelines.samplers import family_of_class

    family = family_of_class(type(pipe).__name__)
    if family is None:
        raise GenerateError(
            f"unsupported pipeline {type(pipe).__name__}; expected a medsd DDPM, cDDPM or text-to-X-ray model"
        )
    return family


# -- the model --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedModel:
    pipe: Any
    family: str
    record: dict[str, Any]
    """model id / path and weights hashes, as written to sidecars."""


def resolve_dtype(requested: str, device: str) -> str:
    """The torch dtype name (float32, bfloat16, float16) ``--dtype`` means on ``device``: ``auto`` is what
    training's ``--mixed_precision auto`` picks there (:func:`medsd.training.precision.auto_mixed_precision`)."""
    if requested != "auto":
        return DTYPE_NAMES.get(requested, requested)
    import torch

    from medsd.training.precision import auto_mixed_precision

    chosen = auto_mixed_precision(torch.device(device).type)
    return {"bf16": "bfloat16", "fp16": "float16"}.get(chosen, "float32")


def load_model(model: str, device: str, allow_pickle: bool = False) -> LoadedModel:
    """The pipeline of ``model`` on ``device`` with float32 weights (lower precision is autocast, see draw)."""
    from medsd.pipelines.auto import MedPipeline
    from medsd.pipelines.output import resolve_local_dir

    if not model:
        raise GenerateError("give a MODEL folder or Hub id (or --from_sidecar NAME.json)")
    is_local = Path(model).is_dir()
    folder = resolve_local_dir(model)
    pipe = MedPipeline.from_pretrained(folder, device=device, allow_pickle=allow_pickle)
    family = family_of(pipe)
    record: dict[str, Any] = {
        "model": str(Path(model).resolve()) if is_local else model,
        "weights_sha256": weights_sha256(folder),
    }
    base = getattr(pipe, "info", {}).get("base_model") if family == "text2xray" else None
    if base and not (folder / "model_index.json").is_file():  # a LoRA folder on a base model
        record["base_model"] = str(Path(base).resolve()) if Path(base).is_dir() else base
        if Path(base).is_dir():
            record["base_model_weights_sha256"] = weights_sha256(base)
    return LoadedModel(pipe, family, record)


def apply_scheduler(loaded: LoadedModel, name: str) -> None:
    """Swap the pipeline's sampler by name, built from the training scheduler's config."""
    if name == "default":
        return
    from medsd.pipelines.samplers import make_sampler

    pipe = loaded.pipe
    train_cfg = pipe.medsd_metadata.get("train_scheduler") or pipe.scheduler.config
    pipe.scheduler = make_sampler(name, train_cfg, pixel_space=not hasattr(pipe, "vae"))


def default_steps(loaded: LoadedModel) -> int:
    """The number of denoising steps the pipeline (with its sampler) uses by default (recorded in sidecars)."""
    return int(loaded.pipe.default_num_inference_steps())


# -- conditions (cDDPM) -----------------------------------------------------------------------------------
# -- drawing ---------------------------------------------------------------------------------------------------
def output_type_for(fmt: str, pipe: Any) -> str:
    if fmt == "png8":
        return "pil"
    if fmt == "png16":
        return "uint16"
    return "native" if getattr(pipe, "intensity_mapping", None) is not None else "np"


def use_channels_last(loaded: LoadedModel, dtype: str) -> None:
    """bf16 on a CPU: keep the U-Net's weights channels-last, so that oneDNN's bf16 convolutions run on their
    native layout instead of reordering every activation from NCHW and back (1.3x per image at 64 px, batch 8,
    docs/generate.md). fp32 and GPUs keep the default layout (no gain measured there); set on every call, since
    sidecars of one model may ask for either dtype and each must be drawn as it was."""
    import torch

    channels_last = dtype == "bfloat16" and loaded.pipe.device.type == "cpu"
    loaded.pipe.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _ddpm_inputs(loaded: LoadedModel, specs: list[ImageSpec], s: Settings) -> dict[str, Any]:
    return {"batch_size": len(specs)}


def _prompt_inputs(loaded: LoadedModel, specs: list[ImageSpec], s: Settings) -> dict[str, Any]:
    return {
        "prompt": [sp.prompt for sp in specs],
        "negative_prompt": s.negative_prompt,
        "guidance_scale": s.guidance_scale,
    }


def _condition_inputs(loaded: LoadedModel, specs: list[ImageSpec], s: Settings) -> dict[str, Any]:
    import numpy as np
    import torch

    mapping = getattr(loaded.pipe, "intensity_mapping", None)
    mask = None
    if any(sp.mask for sp in specs):
        if not all(sp.mask for sp in specs):
            raise GenerateError("inpainting: every condition image needs a mask (--mask)")
        mask = np.stack([read_mask(sp.mask) for sp in specs])
    return {
        "image": torch.cat([read_condition(sp.condition, mapping) for sp in specs]),
        "mask": mask,
        "task": s.task,
        "keep_known_pixels": s.keep_known_pixels,
        "image_size": s.image_size,
    }


FAMILY_INPUTS = {"ddpm": _ddpm_inputs, "text2xray": _prompt_inputs, "cddpm": _condition_inputs}
"""What a family's pipeline is conditioned on, per batch: nothing, prompts, or condition images."""


def draw(loaded: LoadedModel, specs: list[ImageSpec], s: Settings) -> list[Any]:
    """One pipeline call for ``specs`` (one generator per image); returns one output image per spec. Every
    pipeline takes diffusers' arguments (steps, generators, ``height``/``width``) and ``autocast_dtype``."""
    import torch

    pipe = loaded.pipe
    use_channels_last(loaded, s.dtype)
    out = pipe(
        **FAMILY_INPUTS[loaded.family](loaded, specs, s),
        num_inference_steps=s.num_inference_steps,
        generator=[torch.Generator(device="cpu").manual_seed(sp.seed) for sp in specs],
        output_type=output_type_for(s.format, pipe),
        height=s.height,
        width=s.width,
        autocast_dtype=None if s.dtype == "float32" else getattr(torch, s.dtype),
    )
    return list(out.images)


SUFFIXES = {"png8": ".png", "png16": ".png", "dicom": ".dcm", "npy": ".npy"}


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, same folder, same suffix)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def replace_atomically(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` (a reader sees the old file or the whole new one)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, written under a temporary name and renamed."""
    tmp = temporary_name(path)
    tmp.write_text(json.dumps(obj, indent=1))
    replace_atomically(tmp, path)


def write_image(img: Any, path_stem: Path, fmt: str) -> Path:
    """Write ``img`` as ``path_stem`` + the format's suffix, under a temporary name then renamed."""
    import numpy as np

    from medsd.data import writers

    path = path_stem.with_name(path_stem.name + SUFFIXES[fmt])
    tmp = temporary_name(path)
    if fmt == "png8":
        img.save(tmp, format="PNG")
    elif fmt == "png16":
        writers.write_png16(tmp, np.asarray(img))
    elif fmt == "dicom":
        writers.write_dicom_secondary_capture(tmp, np.asarray(img), description="synthetic image (medsd)")
    else:
        np.save(tmp, np.asarray(img, dtype=np.float32))
    replace_atomically(tmp, path)
    return path


def sidecar(
    loaded: LoadedModel, spec: ImageSpec, s: Settings, image_file: str, batch: list[ImageSpec] | None
) -> dict:
    import medsd

    d: dict[str, Any] = {
        "medsd_sidecar_version": SIDECAR_VERSION,
        "image": image_file,
        **loaded.record,
        "family": loaded.family,
        "index": spec.index,
        "seed": spec.seed,
        "scheduler": s.scheduler,
        "scheduler_class": type(loaded.pipe.scheduler).__name__,
        "num_inference_steps": s.num_inference_steps,
        "format": s.format,
        "dtype": s.dtype,
        "device": loaded.pipe.device.type,
        "medsd_version": medsd.__version__,
    }
    if loaded.family == "text2xray":
        d.update(
            label=spec.label,
            prompt=spec.prompt,
            negative_prompt=s.negative_prompt,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
        )
    if loaded.family == "cddpm":
        d.update(
            condition=spec.condition,
            condition_sha256=file_sha256(spec.condition) if spec.condition else None,
            mask=spec.mask,
            mask_sha256=file_sha256(spec.mask) if spec.mask else None,
            task=s.task or getattr(loaded.pipe, "task", None),
            keep_known_pixels=s.keep_known_pixels,
            image_size=s.image_size,
        )
    d["batch_invariant"] = batch is None
    if batch is not None:  # drawn together with others: regeneration redraws the batch
        d["batch"] = {
            "position": batch.index(spec),
            "images": [dataclasses.asdict(b) for b in batch],
        }
    return d
