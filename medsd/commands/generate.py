"""``medsd generate MODEL --out DIR``: images from any medsd model (DDPM, cDDPM, text-to-X-ray), each with a
sidecar ``NAME.json`` that regenerates it bit for bit (``medsd generate --from_sidecar NAME.json``).

Image ``k`` of a run is drawn from its own ``torch.Generator`` seeded ``seed + k`` (on the CPU), so it depends
on its seed only. Batched network math rounds differently from unbatched math (measured up to 2e-6 in [-1, 1]
on a CPU), so by default (``--batch_invariant true``) every image is drawn in its own pipeline call and the
result is the same bit for bit whatever ``--batch_size`` is; ``--batch_invariant false`` draws
``--batch_size`` images per call (faster on a GPU), and each sidecar then records its batch so that
``--from_sidecar`` redraws the batch and still regenerates the image bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError

from .common import add_allow_pickle, default_device, value_ranges
from .generate_io import (
    CONDITION_COLUMNS,
    GenerateError,
    check_family_flags,
    check_out,
    file_sha256,
    folder_family,
    list_conditions,
    prompts_of,
    read_condition,
    read_mask,
    weights_sha256,
)

SIDECAR_VERSION = 1
FORMATS = ("png8", "png16", "dicom", "npy")
SCHEDULERS = ("default", "ddpm", "ddim", "dpm")
DTYPES = ("auto", "fp32", "bf16", "fp16")
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""``--dtype`` values (and the torch names sidecars record, also accepted) -> torch dtype names."""
DEFAULT_NUM_IMAGES = {"ddpm": 16, "cddpm": 1, "text2xray": 4}


def add_generate_arguments(p: argparse.ArgumentParser, model_positional: bool = True) -> None:
    if model_positional:
        p.add_argument("model", nargs="?", default=None, help="model folder or Hub id (any medsd family)")
    p.add_argument("--out", required=True, help="output folder (must not already contain images)")
    p.add_argument(
        "--from_sidecar",
        nargs="+",
        default=None,
        metavar="NAME.json",
        help="regenerate the image(s) these sidecars describe (model, seed, settings) into --out",
    )
    p.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="DDPM: images in all (default 16); text-to-X-ray: images per prompt (default 4); "
        "cDDPM: samples per condition image (default 1)",
    )
    p.add_argument(
        "--batch_size", type=int, default=8, help="images per pipeline call with --batch_invariant false"
    )
    p.add_argument(
        "--batch_invariant",
        default="true",
        choices=["true", "false"],
        help="true (default): each image in its own pipeline call, bit-identical whatever --batch_size; "
        "false: --batch_size images per call (faster on a GPU; last bits depend on the batch)",
    )
    p.add_argument("--seed", type=int, default=0, help="image k is drawn with seed + k")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    p.add_argument(
        "--scheduler",
        default="default",
        choices=SCHEDULERS,
        help="default: the saved sampler; ddpm (ancestral), ddim, dpm (DPM-Solver++)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=[*DTYPES, *DTYPE_NAMES.values()],
        help="precision of the network math (autocast; weights stay float32). auto (default): bf16 on CPUs "
        "with native bf16 (avx512_bf16/amx_bf16) and on GPUs that have it, fp16 on other GPUs, else fp32",
    )
    p.add_argument(
        "--format",
        default="png8",
        choices=FORMATS,
        help="png8: 8-bit; png16: 16 bits of the model's intensity window; dicom: original units (e.g. HU) "
        "through the saved intensity mapping; npy: float32 in original units (in [0, 1] without a mapping)",
    )
    p.add_argument(
        "--prefix", default="image", help="file names are PREFIX_00000.png, PREFIX_00000.json, ..."
    )
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that has images")
    t = p.add_argument_group("text-to-X-ray")
    t.add_argument("--prompt", action="append", default=None, help="a prompt (repeat the flag for several)")
    t.add_argument("--prompt_file", default=None, help="a text file with one prompt per line")
    t.add_argument("--negative_prompt", default=None, help="one negative prompt for every image")
    t.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's (4)")
    t.add_argument("--height", type=int, default=None, help="default: the training resolution")
    t.add_argument("--width", type=int, default=None)
    c = p.add_argument_group("cDDPM")
    c.add_argument(
        "--condition", default=None, help="degraded image(s): an image, a folder of images, or a CSV"
    )
    c.add_argument(
        "--condition_column", default=None, help=f"CSV column of image paths (default: {CONDITION_COLUMNS})"
    )
    c.add_argument("--mask", default=None, help="inpainting mask (1/white = missing): one image, or a folder "
                   "with a mask of the same name per condition image; in a CSV, a 'mask' column")  # fmt: skip
    c.add_argument(
        "--task", default=None, choices=["sr", "denoise", "inpaint"], help="default: the saved task"
    )
    c.add_argument("--keep_known_pixels", default="true", choices=["true", "false"], help="inpainting")
    c.add_argument("--image_size", type=int, default=None, help="super-resolution output size")
    p.add_argument(
        "--ignore_weights_hash", action="store_true", help="--from_sidecar: accept changed weights"
    )
    add_allow_pickle(p)
    p.set_defaults(value_ranges=GENERATE_RANGES)


GENERATE_RANGES = value_ranges(
    at_least={
        "num_images": 1,
        "batch_size": 1,
        "num_inference_steps": 1,
        "guidance_scale": 0,
        "height": 8,
        "width": 8,
        "image_size": 8,
    }
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images with any trained model (DDPM, cDDPM, text-to-X-ray), with sidecars",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generate_arguments(p)
    p.set_defaults(func=run)


# -- what one image is -----------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageSpec:
    """Everything one image depends on besides the model and the shared settings."""

    index: int
    seed: int
    prompt: str | None = None
    condition: str | None = None
    mask: str | None = None


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
    name = type(pipe).__name__
    if name == "MedDDPMPipeline":
        return "ddpm"
    if name == "MedCDDPMPipeline":
        return "cddpm"
    if name == "TextToXRayPipeline":
        return "text2xray"
    raise GenerateError(f"unsupported pipeline {name}; expected a medsd DDPM, cDDPM or text-to-X-ray model")


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
    """Swap the pipeline's sampler by name (cDDPM takes it per call as ``sampler=``)."""
    if name == "default" or loaded.family == "cddpm":
        return
    pipe = loaded.pipe
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if loaded.family == "ddpm":
        from medsd.pipelines.ddpm import fast_scheduler

        train_cfg = pipe.medsd_metadata.get("train_scheduler") or pipe.scheduler.config
        pipe.scheduler = {
            "ddpm": lambda c: DDPMScheduler.from_config(c),
            "ddim": lambda c: DDIMScheduler.from_config(c, clip_sample=True),
            "dpm": fast_scheduler,
        }[name](train_cfg)
    else:
        cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}[name]
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def default_steps(loaded: LoadedModel, settings: Settings) -> int:
    """The number of denoising steps the pipeline would use by default (recorded explicitly in sidecars)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    pipe = loaded.pipe
    if loaded.family == "ddpm":
        from medsd.pipelines.ddpm import DEFAULT_FAST_STEPS

        s = pipe.scheduler
        return s.config.num_train_timesteps if isinstance(s, DDPMScheduler) else DEFAULT_FAST_STEPS
    if loaded.family == "cddpm":
        from medsd.pipelines.cddpm import DEFAULT_FAST_STEPS

        name = settings.scheduler
        if name == "ddpm" or (name == "default" and isinstance(pipe.scheduler, DDPMScheduler)):
            return pipe.scheduler.config.num_train_timesteps
        ddim = name == "ddim" or (name == "default" and isinstance(pipe.scheduler, DDIMScheduler))
        return DEFAULT_FAST_STEPS["ddim" if ddim else "dpm"]
    from medsd.pipelines.text2xray import DEFAULT_NUM_INFERENCE_STEPS

    return int(pipe.info.get("default_num_inference_steps") or DEFAULT_NUM_INFERENCE_STEPS)


# -- conditions (cDDPM) -----------------------------------------------------------------------------------
# -- drawing ---------------------------------------------------------------------------------------------------
def output_type_for(fmt: str, pipe: Any) -> str:
    if fmt == "png8":
        return "pil"
    if fmt == "png16":
        return "uint16"
    return "native" if getattr(pipe, "intensity_mapping", None) is not None else "np"


def draw(loaded: LoadedModel, specs: list[ImageSpec], s: Settings) -> list[Any]:
    """One pipeline call for ``specs`` (one generator per image); returns one output image per spec."""
    import torch

    pipe = loaded.pipe
    generators = [torch.Generator(device="cpu").manual_seed(sp.seed) for sp in specs]
    kind = output_type_for(s.format, pipe)
    common = dict(num_inference_steps=s.num_inference_steps, generator=generators, output_type=kind)
    autocast = None if s.dtype == "float32" else getattr(torch, s.dtype)
    if loaded.family == "ddpm":
        out = pipe(batch_size=len(specs), autocast_dtype=autocast, **common)
    elif loaded.family == "text2xray":
        kw: dict[str, Any] = {}
        if s.guidance_scale is not None:
            kw["guidance_scale"] = s.guidance_scale
        with torch.autocast(pipe.device.type, dtype=autocast, enabled=autocast is not None):
            out = pipe(
                [sp.prompt for sp in specs],
                negative_prompt=s.negative_prompt,
                height=s.height,
                width=s.width,
                **common,
                **kw,
            )
    else:
        mapping = getattr(pipe, "intensity_mapping", None)
        image = torch.cat([read_condition(sp.condition, mapping) for sp in specs])
        mask = None
        if any(sp.mask for sp in specs):
            import numpy as np

            if not all(sp.mask for sp in specs):
                raise GenerateError("inpainting: every condition image needs a mask (--mask)")
            mask = np.stack([read_mask(sp.mask) for sp in specs])
        out = pipe(
            image=image,
            mask=mask,
            task=s.task,
            sampler=None if s.scheduler == "default" else s.scheduler,
            keep_known_pixels=s.keep_known_pixels,
            image_size=s.image_size,
            autocast_dtype=autocast,
            **common,
        )
    return list(out.images)


def write_image(img: Any, path_stem: Path, fmt: str) -> Path:
    import numpy as np

    from medsd.data import io

    if fmt == "png8":
        path = path_stem.with_suffix(".png")
        img.save(path)
    elif fmt == "png16":
        path = io.write_png16(path_stem.with_suffix(".png"), np.asarray(img))
    elif fmt == "dicom":
        path = io.write_dicom_secondary_capture(
            path_stem.with_suffix(".dcm"), np.asarray(img), description="synthetic image (medsd)"
        )
    else:
        path = path_stem.with_suffix(".npy")
        np.save(path, np.asarray(img, dtype=np.float32))
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
        "scheduler_class": None if loaded.family == "cddpm" else type(loaded.pipe.scheduler).__name__,
        "num_inference_steps": s.num_inference_steps,
        "format": s.format,
        "dtype": s.dtype,
        "device": str(loaded.pipe.device),
        "medsd_version": medsd.__version__,
    }
    if loaded.family == "text2xray":
        d.update(
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


def generate(
    loaded: LoadedModel,
    specs: list[ImageSpec],
    s: Settings,
    out: Path,
    prefix: str,
    batch_size: int,
    batch_invariant: bool,
    names: dict[int, str] | None = None,
    keep: set[int] | None = None,
) -> list[Path]:
    """Draw ``specs`` and write each image with its sidecar; returns the image paths."""
    from tqdm.auto import tqdm

    loaded.pipe.set_progress_bar_config(leave=False, desc="denoising")
    step = 1 if batch_invariant else max(1, batch_size)
    written: list[Path] = []
    todo = keep if keep is not None else {sp.index for sp in specs}
    with tqdm(total=len(todo), desc="generating", unit="image") as bar:
        for start in range(0, len(specs), step):
            batch = specs[start : start + step]
            images = draw(loaded, batch, s)
            for spec, img in zip(batch, images):
                if spec.index not in todo:
                    continue
                stem = out / (names or {}).get(spec.index, f"{prefix}_{spec.index:05d}")
                path = write_image(img, stem, s.format)
                meta = sidecar(loaded, spec, s, path.name, None if batch_invariant else batch)
                with open(stem.with_suffix(".json"), "w") as f:
                    json.dump(meta, f, indent=1)
                written.append(path)
                bar.update(1)
    return written


# -- the two entry points: new images, or images from sidecars -------------------------------------------------
def _device(requested: str | None) -> str:
    return default_device(requested)


def run(args: argparse.Namespace) -> int:
    if args.from_sidecar:
        return run_from_sidecars(args)
    out = Path(args.out)
    check_out(out, args.overwrite)
    check_family_flags(args, folder_family(args.model))  # before the (slow) load where the folder tells
    device = _device(args.device)
    loaded = load_model(args.model, device, args.allow_pickle)
    fam = loaded.family
    check_family_flags(args, fam)
    apply_scheduler(loaded, args.scheduler)
    n = args.num_images or DEFAULT_NUM_IMAGES[fam]
    specs: list[ImageSpec] = []
    if fam == "ddpm":
        specs = [ImageSpec(k, args.seed + k) for k in range(n)]
    elif fam == "text2xray":
        for prompt in prompts_of(args):
            for _ in range(n):
                k = len(specs)
                specs.append(ImageSpec(k, args.seed + k, prompt=prompt))
    else:
        pairs = list_conditions(args.condition, args.mask, args.condition_column)
        mapping = getattr(loaded.pipe, "intensity_mapping", None)
        for cond, mask in pairs:  # read every input once before writing anything: no partial output
            read_condition(cond, mapping)
            if mask:
                read_mask(mask)
            for _ in range(n):
                k = len(specs)
                specs.append(ImageSpec(k, args.seed + k, condition=cond, mask=mask))
    s = Settings(
        family=fam,
        scheduler=args.scheduler,
        num_inference_steps=None,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        task=args.task,
        keep_known_pixels=args.keep_known_pixels == "true",
        image_size=args.image_size,
        format=args.format,
        dtype=resolve_dtype(args.dtype, device),
    )
    s.num_inference_steps = args.num_inference_steps or default_steps(loaded, s)
    out.mkdir(parents=True, exist_ok=True)
    if fam == "text2xray" and s.guidance_scale is None:
        from medsd.pipelines.text2xray import DEFAULT_GUIDANCE_SCALE

        s.guidance_scale = float(loaded.pipe.info.get("default_guidance_scale") or DEFAULT_GUIDANCE_SCALE)
    written = generate(loaded, specs, s, out, args.prefix, args.batch_size, args.batch_invariant == "true")
    print(f"wrote {len(written)} {fam} images (and a NAME.json sidecar for each) to {out}")
    return 0


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise GenerateError(f"--from_sidecar {p} does not exist")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise GenerateError(f"--from_sidecar {p}: not JSON ({e})") from None
    missing = [k for k in ("model", "family", "seed", "index", "format") if k not in d]
    if not isinstance(d, dict) or d.get("medsd_sidecar_version") != SIDECAR_VERSION or missing:
        raise GenerateError(
            f"--from_sidecar {p}: not a medsd sidecar (missing {missing or 'medsd_sidecar_version'})"
        )
    return d


def _check_hashes(loaded: LoadedModel, d: dict[str, Any], path: str, ignore: bool) -> None:
    for key in ("weights_sha256", "base_model_weights_sha256"):
        if d.get(key) and loaded.record.get(key) != d[key] and not ignore:
            raise GenerateError(
                f"{path}: the weights of {d['model']} changed since the image was made ({key} "
                f"{d[key][:12]}... now {str(loaded.record.get(key))[:12]}...); pass --ignore_weights_hash to regenerate anyway"
            )
    for key in ("condition", "mask"):
        if d.get(key):
            if not Path(d[key]).is_file():
                raise GenerateError(f"{path}: the {key} image {d[key]} is gone")
            if file_sha256(d[key]) != d.get(f"{key}_sha256") and not ignore:
                raise GenerateError(f"{path}: the {key} image {d[key]} changed since the image was made")


def run_from_sidecars(args: argparse.Namespace) -> int:
    """Regenerate the images of ``--from_sidecar`` files (same names, new sidecars) into ``--out``."""
    out = Path(args.out)
    check_out(out, args.overwrite)
    docs = [(p, read_sidecar(p)) for p in args.from_sidecar]
    cache: dict[tuple, LoadedModel] = {}
    device = _device(args.device) if args.device else None
    total = 0
    for path, d in docs:
        dev = device or d.get("device") or _device(None)
        if device is None:
            try:
                _device(dev)
            except MedsdError as e:
                raise GenerateError(
                    f"{path}: the image was drawn on {dev} ({e}); pass --device to choose"
                ) from None
        key = (d["model"], dev, d.get("scheduler", "default"))
        if key not in cache:
            loaded = load_model(d["model"], dev, args.allow_pickle)
            apply_scheduler(loaded, d.get("scheduler", "default"))
            if loaded.family != d["family"]:
                raise GenerateError(f"{path}: {d['model']} is now a {loaded.family} model, not {d['family']}")
            cache[key] = loaded
        loaded = cache[key]
        _check_hashes(loaded, d, str(path), args.ignore_weights_hash)
        out.mkdir(parents=True, exist_ok=True)
        s = Settings(
            family=d["family"],
            scheduler=d.get("scheduler", "default"),
            num_inference_steps=d.get("num_inference_steps"),
            guidance_scale=d.get("guidance_scale"),
            negative_prompt=d.get("negative_prompt"),
            height=d.get("height"),
            width=d.get("width"),
            task=d.get("task"),
            keep_known_pixels=d.get("keep_known_pixels", True),
            image_size=d.get("image_size"),
            format=d["format"],
            dtype=resolve_dtype(d.get("dtype", "float32"), dev),
        )
        if d.get("batch"):
            specs = [ImageSpec(**b) for b in d["batch"]["images"]]
            spec = specs[d["batch"]["position"]]
        else:
            spec = ImageSpec(d["index"], d["seed"], d.get("prompt"), d.get("condition"), d.get("mask"))
            specs = [spec]
        name = Path(d.get("image") or f"image_{spec.index:05d}").stem
        total += len(
            generate(
                loaded,
                specs,
                s,
                out,
                "image",
                batch_size=len(specs),
                batch_invariant=not d.get("batch"),
                names={spec.index: name},
                keep={spec.index},
            )
        )
    print(f"regenerated {total} image(s) from sidecars into {out}")
    return 0
