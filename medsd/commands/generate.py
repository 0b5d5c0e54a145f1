"""``medsd generate MODEL --out DIR``: a synthetic dataset from any medsd model (DDPM, cDDPM, text-to-X-ray):
images, a sidecar ``NAME.json`` per image that regenerates it bit for bit (``--from_sidecar NAME.json``),
``metadata.jsonl`` (a Hugging Face imagefolder dataset), ``manifest.json`` and a dataset card ``README.md``.

Image ``i`` of a run is drawn from its own ``torch.Generator`` seeded ``seed + i``. Images are grouped into
fixed batches by index and the batches are dealt to the processes of ``accelerate launch`` / ``torchrun``, so
the files do not depend on the number of processes. Batched network math rounds differently from unbatched
math (up to 2e-6 in [-1, 1] on a CPU): with ``--batch_invariant true`` every image is drawn in its own
pipeline call and the files are the same whatever ``--batch_size``; with ``false`` ``--batch_size`` images
are drawn per call (faster on GPUs, and on CPUs in bf16) and each sidecar records its batch. ``auto``
(default): batched, except fp32 on a CPU, where batching brings no speed (docs/generate.md). A stopped run
continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError

from .common import add_allow_pickle, default_device, value_ranges
from .generate_draw import (
    DTYPE_NAMES,
    SIDECAR_VERSION,
    ImageSpec,
    LoadedModel,
    Settings,
    apply_scheduler,
    default_steps,
    draw,
    load_model,
    resolve_dtype,
)
from .generate_io import (
    CONDITION_COLUMNS,
    GenerateError,
    check_family_flags,
    check_out,
    file_sha256,
    folder_family,
    list_conditions,
    parse_labels,
    prompts_of,
    read_condition,
    read_label_table,
    read_mask,
)

FORMATS = ("png8", "png16", "dicom", "npy")
SCHEDULERS = ("default", "ddpm", "ddim", "dpm", "unipc")  # medsd.pipelines.samplers.SAMPLER_NAMES
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_NUM_IMAGES = {"ddpm": 16, "cddpm": 1, "text2xray": 4}


def add_generate_arguments(p: argparse.ArgumentParser, model_positional: bool = True) -> None:
    """Every ``medsd generate`` flag (``medsd sample`` reuses them with ``--model``)."""
    _add_run_arguments(p, model_positional)
    _add_output_arguments(p)
    _add_text_to_xray_arguments(p.add_argument_group("text-to-X-ray"))
    _add_cddpm_arguments(p.add_argument_group("cDDPM"))
    p.add_argument(
        "--ignore_weights_hash", action="store_true", help="--from_sidecar: accept changed weights"
    )
    add_allow_pickle(p)
    p.set_defaults(value_ranges=GENERATE_RANGES)


def _add_run_arguments(p: argparse.ArgumentParser, model_positional: bool) -> None:
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
        "--batch_size",
        type=int,
        default=8,
        help="images per batch: batch k is images [k*B, (k+1)*B), drawn by process k mod N",
    )
    p.add_argument(
        "--batch_invariant",
        default="auto",
        choices=["auto", "true", "false"],
        help="true: each image in its own pipeline call, bit-identical whatever --batch_size; false: a batch "
        "per call (faster; last bits depend on the batch); auto (default): false, but true for fp32 on a CPU",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (the same command continues it too; this flag insists there is one)",
    )
    p.add_argument("--seed", type=int, default=0, help="image k is drawn with seed + k")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    p.add_argument(
        "--scheduler",
        default="default",
        choices=SCHEDULERS,
        help="default: the saved sampler; ddpm (ancestral), ddim, dpm (DPM-Solver++), unipc (UniPC)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=[*DTYPES, *DTYPE_NAMES.values()],
        help="precision of the network math (autocast; weights stay float32). auto (default): bf16 on CPUs "
        "with native bf16 (avx512_bf16/amx_bf16) and on GPUs that have it, fp16 on other GPUs, else fp32",
    )


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--license",
        default="other",
        help="the dataset card's license (a Hub license id, e.g. cc-by-4.0; default: other)",
    )


def _add_text_to_xray_arguments(t: argparse._ArgumentGroup) -> None:
    t.add_argument("--prompt", action="append", default=None, help="a prompt (repeat the flag for several)")
    t.add_argument("--prompt_file", default=None, help="a text file with one prompt per line")
    t.add_argument(
        "--label",
        action="append",
        default=None,
        metavar='"NAME"=COUNT',
        help="COUNT images of label NAME, prompted through the model's prompt template (repeat for a "
        'class-balanced set: --label "No Finding"=5000 --label Pneumonia=5000)',
    )
    t.add_argument(
        "--labels_csv",
        default=None,
        metavar="FILE",
        help="a class-balanced set from a table: a 'count' column and a 'label' column (prompted through the "
        "model's template) and/or a 'prompt' column (used as given)",
    )
    t.add_argument("--negative_prompt", default=None, help="one negative prompt for every image")
    t.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's (4)")
    t.add_argument("--height", type=int, default=None, help="default: the training resolution")
    t.add_argument("--width", type=int, default=None)


def _add_cddpm_arguments(c: argparse._ArgumentGroup) -> None:
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


# -- the two entry points: new images, or images from sidecars -------------------------------------------------
def _device(requested: str | None) -> str:
    return default_device(requested)


def image_specs(args: argparse.Namespace, loaded: LoadedModel) -> list[ImageSpec]:
    """The run's job table: image ``i`` with seed ``--seed + i`` and what else it depends on."""
    fam = loaded.family
    n = args.num_images or DEFAULT_NUM_IMAGES[fam]
    specs: list[ImageSpec] = []

    def add(**what: Any) -> None:
        specs.append(ImageSpec(len(specs), args.seed + len(specs), **what))

    if fam == "ddpm":
        for _ in range(n):
            add()
    elif fam == "text2xray":
        for label, prompt, count in label_table(args) or [(None, p, n) for p in prompts_of(args)]:
            for _ in range(count):
                add(label=label, prompt=prompt or loaded.pipe.prompt_for(label))
    else:
        mapping = getattr(loaded.pipe, "intensity_mapping", None)
        for cond, mask in list_conditions(args.condition, args.mask, args.condition_column):
            read_condition(cond, mapping)  # read every input once before writing anything
            if mask:
                read_mask(mask)
            for _ in range(n):
                add(condition=cond, mask=mask)
    return specs


def label_table(args: argparse.Namespace) -> list[tuple[str | None, str | None, int]]:
    """(label, prompt, count) rows of a class-balanced run: ``--label NAME=COUNT`` or ``--labels_csv``."""
    table_flags = [f for f in ("label", "labels_csv") if getattr(args, f, None)]
    if not table_flags:
        return []
    if len(table_flags) > 1:
        raise GenerateError("give --label NAME=COUNT or --labels_csv FILE, not both")
    if args.prompt or args.prompt_file or args.num_images:
        raise GenerateError(
            f"--{table_flags[0]} sets prompts and counts; drop --prompt/--prompt_file/--num_images"
        )
    if args.label:
        return [(label, None, count) for label, count in parse_labels(args.label)]
    return read_label_table(args.labels_csv)


def settings_of(args: argparse.Namespace, loaded: LoadedModel, device: str) -> Settings:
    s = Settings(
        family=loaded.family,
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
    s.num_inference_steps = args.num_inference_steps or default_steps(loaded)
    if s.guidance_scale is None and hasattr(loaded.pipe, "default_guidance_scale"):
        s.guidance_scale = loaded.pipe.default_guidance_scale()
    return s


def batch_invariant(requested: str, device_type: str, dtype: str) -> bool:
    """Whether each image is drawn in its own pipeline call. ``auto``: batched, except fp32 on a CPU, where a
    batch is no faster than one image (docs/generate.md, Speed on a CPU)."""
    if requested != "auto":
        return requested == "true"
    return device_type == "cpu" and dtype == "float32"


def run(args: argparse.Namespace) -> int:
    if args.from_sidecar:
        return run_from_sidecars(args)
    from . import generate_jobs as jobs
    from . import generate_store as store

    out = Path(args.out)
    if args.resume and not store.is_resumable(out):
        raise GenerateError(f"--resume: {out} holds no medsd generate run to continue")
    if not store.is_resumable(out):
        check_out(out, args.overwrite)
    check_family_flags(args, folder_family(args.model))  # before the (slow) load where the folder tells
    label_table(args)  # a bad label table is refused before the load too
    world = jobs.start_world()
    device = jobs.process_device(_device(args.device), world)
    loaded = load_model(args.model, device, args.allow_pickle)
    check_family_flags(args, loaded.family)
    apply_scheduler(loaded, args.scheduler)
    specs = image_specs(args, loaded)
    s = settings_of(args, loaded, device)
    invariant = batch_invariant(args.batch_invariant, loaded.pipe.device.type, s.dtype)
    batching = "invariant" if invariant else f"batch_size={args.batch_size}"
    identity = jobs.identity(loaded, s, specs, args.seed, args.prefix, batching)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        store.open_run(out, identity, args.overwrite, is_main=True)
    world.barrier()
    if not world.is_main:
        store.open_run(out, identity, args.overwrite, is_main=False)
    from .dataset_card import write_dataset_card

    return jobs.run_share(
        loaded,
        specs,
        s,
        out,
        args.prefix,
        args.batch_size,
        invariant,
        args.seed,
        world,
        finish=lambda folder, prov: write_dataset_card(folder, prov, args.license),
    )


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
    from .generate_jobs import write_item

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
            keys = ("prompt", "condition", "mask", "label")
            spec = ImageSpec(d["index"], d["seed"], **{k: d.get(k) for k in keys})
            specs = [spec]
        name = Path(d.get("image") or f"image_{spec.index:05d}").stem
        image = draw(loaded, specs, s)[specs.index(spec)]
        write_item(loaded, spec, image, s, out / name, specs if d.get("batch") else None)
        total += 1
    print(f"regenerated {total} image(s) from sidecars into {out}")
    return 0
