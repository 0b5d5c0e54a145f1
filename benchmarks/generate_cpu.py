"""Per-image time of ``medsd generate``'s drawing on a CPU: batch 1 against batch 8 or 32, fp32 against bf16,
and bf16 with the U-Net in the default (NCHW) layout against channels-last (what ``generate`` uses in bf16).

    OMP_NUM_THREADS=1 python benchmarks/generate_cpu.py --resolution 64 --steps 10 --rounds 3 --batch_sizes 1 8

A light-ct U-Net (random weights: the time does not depend on them) at ``--resolution`` is saved as a medsd
DDPM folder and drawn through the same code ``medsd generate`` runs (``load_model`` + ``draw``), with one
torch thread. Reported: milliseconds per image per denoising step (median of ``--rounds`` rounds, every
configuration once per round), and the time of a 25-step image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _draw_time(loaded, settings, batch: int) -> float:
    """Seconds per image of one ``draw`` call of ``batch`` images."""
    from medsd.commands.generate import ImageSpec, draw

    specs = [ImageSpec(k, k) for k in range(batch)]
    start = time.perf_counter()
    draw(loaded, specs, settings)
    return (time.perf_counter() - start) / batch


def _configure(loaded, dtype: str, layout: str, channels_last):
    """Settings for one row; the U-Net back in NCHW unless the row is channels-last (as draw() makes bf16)."""
    import torch

    from medsd.commands import generate_draw
    from medsd.commands.generate import Settings

    generate_draw.use_channels_last = channels_last if layout == "channels-last" else (lambda *a: None)
    loaded.pipe.unet.to(memory_format=torch.contiguous_format)
    return Settings("ddpm", "default", 0, None, None, None, None, None, True, None, "npy", dtype)


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import DDPMScheduler

    from medsd.commands.generate import load_model
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
    print("| dtype | layout | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |")
    print("| --- | --- |" + " --- |" * len(args.batch_sizes))
    from medsd.commands import generate_draw

    channels_last = generate_draw.use_channels_last
    rows = [(d, "NCHW") for d in args.dtypes] + [("bfloat16", "channels-last")] * ("bfloat16" in args.dtypes)
    times: dict = {(row, b): [] for row in rows for b in args.batch_sizes}
    for r in range(args.rounds + 1):  # round 0 warms up (oneDNN builds its kernels on first use)
        for row, b in times:  # every configuration once per round: a slower period slows them all
            s = _configure(loaded, *row, channels_last)
            s.num_inference_steps = args.steps
            seconds = _draw_time(loaded, s, b)
            if r:
                times[row, b].append(seconds)
    generate_draw.use_channels_last = channels_last
    for row in rows:
        per_step = [statistics.median(times[row, b]) / args.steps * 1000 for b in args.batch_sizes]
        cells = [f"{ms:.0f} ms ({ms * 25 / 1000:.1f} s)" for ms in per_step]
        print(f"| {row[0]} | {row[1]} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
