"""``medsd sample``: generate images from any saved medsd pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate images with a trained DDPM pipeline",
        description="Sample images from a saved MedDDPMPipeline folder or Hub id and write them to --out.",
    )
    p.add_argument("--model", required=True, help="pipeline folder or Hub id")
    p.add_argument("--out", required=True, help="output folder (must not already contain images)")
    p.add_argument("--num_images", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: 25 (fast sampler)")
    p.add_argument(
        "--scheduler",
        default="default",
        choices=["default", "ddpm", "ddim", "dpm"],
        help="default: the pipeline's saved sampler (DPM-Solver++ with thresholding)",
    )
    p.add_argument(
        "--format",
        default="png8",
        choices=["png8", "png16", "dicom"],
        help="png8: 8-bit; png16: the model's intensity window at 16 bits; dicom: original units (e.g. HU) through the saved intensity mapping",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder that has images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from medsd.data import io
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = MedDDPMPipeline.from_pretrained(args.model).to(device)
    train_cfg = pipe.medsd_metadata.get("train_scheduler") or pipe.scheduler.config
    if args.scheduler != "default":
        from diffusers import DDIMScheduler, DDPMScheduler

        pipe.scheduler = {
            "ddpm": lambda c: DDPMScheduler.from_config(c),
            "ddim": lambda c: DDIMScheduler.from_config(c, clip_sample=True),
            "dpm": fast_scheduler,
        }[args.scheduler](train_cfg)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    written = 0
    with tqdm(total=args.num_images, desc="sampling") as bar:
        while written < args.num_images:
            n = min(args.batch_size, args.num_images - written)
            kind = "pil" if args.format == "png8" else ("native" if pipe.intensity_mapping else "np")
            images = pipe(
                batch_size=n,
                num_inference_steps=args.num_inference_steps,
                generator=generator,
                output_type=kind,
            ).images
            for img in images:
                path = out / f"sample_{written:05d}"
                if args.format == "png8":
                    img.save(path.with_suffix(".png"))
                elif args.format == "png16":
                    x = pipe.intensity_mapping.forward(img) if pipe.intensity_mapping else img * 2 - 1
                    io.write_png16(path.with_suffix(".png"), (x + 1) / 2)
                else:
                    io.write_dicom_secondary_capture(path.with_suffix(".dcm"), img)
                written += 1
            bar.update(n)
    print(f"wrote {written} images to {out}")
    return 0
