"""LoRA fine-tuning at full Stable Diffusion v1.5 size: step time, peak memory and NaN check.

Builds a randomly initialised pipeline with SD v1.5's architecture (no download; see
``medsd.pipelines.random_sd``), then runs ``medsd``'s SD-LoRA recipe on generated chest phantoms once
per (mixed precision, caching) setting, each in a fresh process so peak memory is its own. Caching means
``--cache_latents --cache_text_embeddings`` (each step then runs the U-Net only).

    python benchmarks/sd_lora_full_size.py --steps 300 --out outputs/bench-sd-lora    # on a GPU
    python benchmarks/sd_lora_full_size.py --steps 6 --num_images 4 --out outputs/bench-sd-lora-cpu

Step time is the median of per-step wall times after ``--warmup`` steps (every step logs its loss, which
synchronises the GPU); peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak
resident memory on CPU. Every run must end with all losses finite. Writes ``results.json`` and
``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for results.json, results.md and the runs")
    p.add_argument("--size", default="sd-v1.5", help="random pipeline size: sd-v1.5 or tiny")
    p.add_argument("--base_dir", default=None, help="where the random base pipeline is built (reused)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=300, help="training steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the step-time median")
    p.add_argument("--train_batch_size", type=int, default=1)
    p.add_argument("--num_images", type=int, default=64, help="phantom chest X-rays in the training set")
    p.add_argument("--precisions", default="fp16,bf16", help="comma-separated mixed precisions")
    p.add_argument("--caching", default="off,on", help="comma-separated: off, on")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run_worker(args: argparse.Namespace) -> None:
    """One training run in this process; writes its measurements to the JSON file ``args.worker``."""
    import torch

    from medsd.training.core import train
    from medsd.training.sd_lora import SDLoRATask, SDLoRATrainConfig

    precision, caching = args.precisions, args.caching == "on"
    out = Path(args.out) / f"run-{args.size}-{precision}-cache-{args.caching}"
    config = SDLoRATrainConfig(
        pretrained_model_name_or_path=args.base_dir,
        train_data_dir="phantom",
        phantom_count=args.num_images,
        resolution=args.resolution,
        train_batch_size=args.train_batch_size,
        max_train_steps=args.steps,
        learning_rate=1e-4,
        rank=args.rank,
        mixed_precision=precision,
        cache_latents=caching,
        cache_text_embeddings=caching,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=1,
        report_to="none",
        progress_bar=False,
        overwrite_output_dir=True,
        output_dir=str(out),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(SDLoRATask(config), config)
    wall = time.perf_counter() - t0
    times = [t for _, t in result.log_times]
    step_times = [b - a for a, b in zip(times, times[1:])][max(args.warmup - 1, 0) :]
    losses = [loss for _, loss in result.loss_history]
    record = {
        "size": args.size,
        "resolution": args.resolution,
        "precision": precision,
        "caching": caching,
        "steps": result.global_step,
        "train_batch_size": args.train_batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "step_seconds_median": statistics.median(step_times) if step_times else float("nan"),
        "setup_seconds": wall - result.seconds,
        "peak_memory_gib": peak_memory_bytes() / 2**30,
        "all_losses_finite": all(math.isfinite(v) for v in losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    Path(args.worker).write_text(json.dumps(record, indent=1))


def markdown(records: list[dict]) -> str:
    rows = [
        "| precision | caching | steps | s/step (median) | setup s | peak memory GiB | losses finite | "
        "first → last loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['precision']} | {r['caching']} | failed: {r['error']} | | | | | |")
            continue
        rows.append(
            f"| {r['precision']} | {'on' if r['caching'] else 'off'} | {r['steps']} | "
            f"{r['step_seconds_median']:.3f} | {r['setup_seconds']:.1f} | {r['peak_memory_gib']:.2f} | "
            f"{'yes' if r['all_losses_finite'] else 'NO'} | {r['first_loss']:.4f} → {r['last_loss']:.4f} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.base_dir is None:
        args.base_dir = str(out / f"random-{args.size}")
    if args.worker:
        run_worker(args)
        return
    from medsd.pipelines.random_sd import save_random_sd_pipeline

    out.mkdir(parents=True, exist_ok=True)
    print(f"building a random {args.size} pipeline in {args.base_dir} ...", flush=True)
    save_random_sd_pipeline(args.base_dir, size=args.size)
    records = []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        for caching in [c.strip() for c in args.caching.split(",") if c.strip()]:
            result_file = out / f"result-{precision}-cache-{caching}.json"
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            cmd += ["--precisions", precision, "--caching", caching, "--base_dir", args.base_dir]
            cmd += ["--worker", str(result_file)]
            print(f"== {precision}, caching {caching}", flush=True)
            proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(proc.stderr[-4000:], file=sys.stderr)
                records.append({"precision": precision, "caching": caching == "on", "error": last})
                continue
            record = json.loads(result_file.read_text())
            print(json.dumps(record), flush=True)
            records.append(record)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    table = markdown(records)
    (out / "results.md").write_text(table)
    print(table)
    if any("error" in r or not r["all_losses_finite"] for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
