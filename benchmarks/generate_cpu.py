"""Per-image time of ``medsd generate``'s drawing on a CPU: batch 1 against batch 32, fp32 against bf16.

    OMP_NUM_THREADS=1 python benchmarks/generate_cpu.py --resolution 128 --steps 3 --rounds 3

A light-ct U-Net (random weights: the time does not depend on them) at ``--resolution`` is saved as a medsd
DDPM folder and drawn through the same code ``medsd generate`` runs (``load_model`` + ``draw``), with one
torch thread. Reported: milliseconds per image per denoising step (best of ``--rounds``), and the time of a
25-step image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _draw_time(loaded, settings, batch: int, rounds: int) -> float:
    from medsd.commands.generate import ImageSpec, draw

    specs = [ImageSpec(k, k) for k in range(batch)]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        draw(loaded, specs, settings)
        best = min(best, time.perf_counter() - start)
    return best / batch


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import DDPMScheduler

    from medsd.commands.generate import Settings, load_model
    from medsd.models.presets import build_unet
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = build_unet("light-ct", sample_size=args.resolution)
    pipe = MedDDPMPipeline(
        unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=1000).config)
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(Path(tmp) / "model")
        loaded = load_model(str(Path(tmp) / "model"), "cpu")
    loaded.pipe.set_progress_bar_config(disable=True)
    print(
        f"light-ct {args.resolution} px, {args.steps} steps, 1 thread; ms per image per step (25-step image)"
    )
    print("| dtype | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
    print("| --- |" + " --- |" * len(args.batch_sizes))
    for dtype in args.dtypes:
        s = Settings("ddpm", "default", args.steps, None, None, None, None, None, True, None, "npy", dtype)
        _draw_time(loaded, s, 1, 1)  # warm-up (oneDNN builds its kernels on first use)
        cells = []
        for b in args.batch_sizes:
            per_step = _draw_time(loaded, s, b, args.rounds) / args.steps * 1000
            cells.append(f"{per_step:.0f} ms ({per_step * 25 / 1000:.1f} s)")
        print(f"| {dtype} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
