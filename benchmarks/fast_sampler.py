"""Is fast sampling sound? Degenerate-image rate and distribution distance of three samplers, one model.

    python benchmarks/fast_sampler.py --model outputs/quickstart/pipeline --real phantom --num_images 256

Samplers: DDPM with all training steps (the reference), the stock diffusers swap
``DPMSolverMultistepScheduler.from_config(ddpm.config)`` at 25 steps, and medsd's default
``fast_scheduler`` at 25 steps. Degenerate rule (per image, 0..255): mean < 25 or > 230, std < 10, or
horizontal neighbour-pixel correlation < 0.8. The distance is the radiomics Fréchet distance to real
images, reported also as a ratio to the DDPM reference measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from medsd.metrics import (
        count_degenerate,
        distribution_metrics,
        extract_features,
        get_extractor,
        load_image_set,
    )
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="MedDDPMPipeline folder")
    p.add_argument("--real", default="phantom", help="'phantom' or a folder / CSV of real images")
    p.add_argument("--num_images", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--fast_steps", type=int, default=25)
    p.add_argument("--ddpm_steps", type=int, default=None, help="default: all training steps")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = MedDDPMPipeline.from_pretrained(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    train_cfg = pipe.medsd_metadata.get("train_scheduler") or pipe.scheduler.config
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    if args.real == "phantom":
        from medsd.data import held_out

        real = held_out("phantom", args.num_images, args.seed, resolution=size)
    else:
        real = load_image_set(args.real, size=size, max_images=args.num_images, seed=args.seed).images
    extractor = get_extractor("radiomics", size=size)
    real_feats = extract_features(real, extractor)

    samplers = {
        "ddpm_full": (
            DDPMScheduler.from_config(train_cfg),
            args.ddpm_steps or train_cfg["num_train_timesteps"],
        ),
        "dpm_stock_swap": (DPMSolverMultistepScheduler.from_config(train_cfg), args.fast_steps),
        "medsd_fast": (fast_scheduler(train_cfg), args.fast_steps),
    }
    results = {}
    for name, (scheduler, steps) in samplers.items():
        pipe.scheduler = scheduler
        generator = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        chunks = []
        for start in range(0, args.num_images, args.batch_size):
            n = min(args.batch_size, args.num_images - start)
            chunks.append(
                pipe(batch_size=n, num_inference_steps=steps, generator=generator, output_type="np").images
            )
        images = np.concatenate(chunks)
        seconds = time.perf_counter() - t0
        fd = distribution_metrics(
            real_feats, extract_features(images, extractor), kid_subset_size=min(100, len(images) // 2)
        )
        results[name] = {
            "steps": steps,
            "degenerate": int(count_degenerate(np.round(images * 255).astype(np.uint8))),
            "num_images": len(images),
            "radiomics_fd": fd["frechet_distance"],
            "seconds": seconds,
        }
    ref = results["ddpm_full"]["radiomics_fd"]
    for r in results.values():
        r["fd_ratio_to_ddpm"] = r["radiomics_fd"] / ref if ref else float("nan")
    print("| sampler | steps | degenerate | radiomics FD | FD / DDPM | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['steps']} | {r['degenerate']}/{r['num_images']} ({r['degenerate'] / r['num_images']:.1%}) "
            f"| {r['radiomics_fd']:.2f} | {r['fd_ratio_to_ddpm']:.2f} | {r['seconds']:.1f} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
