"""``medsd quickstart``: train the light DDPM on generated chest phantoms, sample, evaluate. CPU, no download."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import value_ranges

QUICKSTART_RANGES = value_ranges(
    at_least={
        "max_train_steps": 1,
        "resolution": 8,
        "num_images": 2,
        "num_samples": 4,
        "train_batch_size": 1,
        "num_inference_steps": 1,
    }
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="train a small DDPM on chest phantoms, sample a grid and evaluate it (CPU, ~5 min)",
        description=(
            "The whole medsd loop on an embedded default: generates chest-radiograph phantoms, trains the "
            "lightweight U-Net DDPM on them, samples a grid with the fast sampler, and evaluates the samples "
            "against held-out phantoms with the offline metrics. No download and no GPU needed."
        ),
    )
    p.add_argument("--output_dir", default="outputs/quickstart", help="where everything is written")
    p.add_argument("--max_train_steps", type=int, default=1200, help="training steps (default: 1200)")
    p.add_argument("--resolution", type=int, default=32, help="phantom size in pixels (default: 32)")
    p.add_argument("--num_images", type=int, default=1024, help="training phantoms (default: 1024)")
    p.add_argument("--num_samples", type=int, default=64, help="images to sample and evaluate (default: 64)")
    p.add_argument("--train_batch_size", type=int, default=32)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite_output_dir", action="store_true", help="replace an earlier quickstart run")
    p.set_defaults(func=run, value_ranges=QUICKSTART_RANGES)


def run(args: argparse.Namespace) -> int:
    import torch

    from medsd.metrics.figures import save_image_grid
    from medsd.pipelines.ddpm import MedDDPMPipeline
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    if args.num_images < args.train_batch_size:
        from medsd.errors import MedsdConfigError

        raise MedsdConfigError(
            f"--num_images {args.num_images}: expected at least --train_batch_size ({args.train_batch_size}) "
            "training phantoms"
        )
    out = Path(args.output_dir)
    t0 = time.perf_counter()
    steps = args.max_train_steps
    config = DDPMTrainConfig(
        output_dir=str(out / "pipeline"),
        overwrite_output_dir=args.overwrite_output_dir,
        train_data="phantom",
        phantom_count=args.num_images,
        split="all",
        resolution=args.resolution,
        model="light-tiny",
        train_batch_size=args.train_batch_size,
        max_train_steps=steps,
        learning_rate=2e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=min(100, steps // 10),
        use_ema=True,
        ema_decay=0.995,
        checkpointing_steps=max(steps // 2, 1),
        checkpoints_total_limit=1,
        validation_steps=0,
        logging_steps=max(min(50, steps // 10), 1),
        seed=args.seed,
        report_to="tensorboard",
    )
    print(f"[1/3] training the light U-Net DDPM on {args.num_images} chest phantoms at {args.resolution} px")
    result = train_ddpm(config)

    print(
        f"[2/3] sampling {args.num_samples} images with the fast sampler ({args.num_inference_steps} steps)"
    )
    pipe = MedDDPMPipeline.from_pretrained(result.output_dir)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    images = pipe(
        batch_size=args.num_samples, num_inference_steps=args.num_inference_steps, generator=generator
    ).images
    samples_dir, real_dir = out / "samples", out / "heldout_phantoms"
    for d in (samples_dir, real_dir):
        d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(samples_dir / f"sample_{i:04d}.png")
    grid = save_image_grid(images[:64], out / "samples_grid.png", cols=8)

    print(
        f"[3/3] evaluating the samples against {args.num_samples} held-out phantoms (offline radiomics features)"
    )
    report = _evaluate_against_held_out(args, out, samples_dir, real_dir)
    _print_summary(report, out, result.output_dir, grid, (time.perf_counter() - t0) / 60)
    return 0


def _print_summary(report: dict, out: Path, pipeline_dir: Path, grid: Path, minutes: float) -> None:
    """Where the quickstart's outputs are, and what the evaluation says in two lines."""
    dist = report.get("distribution", {}).get("radiomics", {})
    degenerate = report.get("degenerate", {})
    print()
    print(f"done in {minutes:.1f} min")
    print(f"  pipeline     {pipeline_dir}   (MedDDPMPipeline.from_pretrained)")
    print(f"  sample grid  {grid}")
    print(f"  loss curve   {pipeline_dir / 'loss_curve.png'}")
    print(f"  metrics      {out / 'eval' / 'report.md'}")
    if dist:
        ref = dist.get("real_reference", {}).get("real_vs_real", {}).get("frechet_distance", {})
        ref_txt = (
            f" (real vs real phantoms at the same sample size: {ref['mean']:.2f} ± {ref['std']:.2f})"
            if ref.get("mean") is not None
            else ""
        )
        fd = dist.get("frechet_distance")
        fd_txt = f"{fd:.2f}" if fd is not None else "n/a (every sample is degenerate)"
        print(
            f"  radiomics Fréchet distance to held-out phantoms: {fd_txt}"
            f"{ref_txt}; a medsd distance, not comparable to published FID"
        )
    if degenerate:
        print(
            f"  degenerate images (collapsed, blank or noise; left out of the distance): samples "
            f"{degenerate['fake']} of {report['sets']['fake']['n_images']} ({degenerate['fake_fraction']:.1%}), "
            f"held-out real phantoms {degenerate['real_fraction']:.1%}"
        )


def _evaluate_against_held_out(
    args: argparse.Namespace, out: Path, samples_dir: Path, real_dir: Path
) -> dict:
    """``medsd eval`` of the samples against as many fresh phantoms, written as PNGs into ``real_dir``."""
    import numpy as np
    from PIL import Image

    from medsd.data import held_out
    from medsd.metrics import EvalConfig, evaluate

    for i, x in enumerate(held_out("phantom", args.num_samples, args.seed, resolution=args.resolution)):
        Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).save(
            real_dir / f"phantom_{i:04d}.png"
        )
    config = EvalConfig(
        real=str(real_dir),
        fake=str(samples_dir),
        out=str(out / "eval"),
        size=args.resolution,
        kid_subset_size=min(1000, args.num_samples // 2),
        diversity_pairs=100,
    )
    return evaluate(config, log=lambda *a, **k: None)[0]
