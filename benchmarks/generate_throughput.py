"""Images per second: ``medsd generate`` against the diffusers docs' multi-process recipe, same model, batch,
steps and number of processes.

    OMP_NUM_THREADS=1 python benchmarks/generate_throughput.py --num_images 64 --batch_size 8 --steps 25 --rounds 3
    python benchmarks/generate_throughput.py --device cuda --processes 1 --num_images 512 --batch_size 32 --resolution 256  # GPU line

The recipe is the one of diffusers' "Distributed inference" page: ``PartialState().split_between_processes``
over the work list, one pipeline call per batch, each process saving its images (no per-image seeds, no
resume, no manifest), in the pipeline's default precision (float32). On a CPU the recipe passes
``PartialState(cpu=True)``: the page's bare ``PartialState()`` does not see a ``torchrun`` launch there (accelerate
only detects a multi-CPU run when asked for the CPU), so every process would draw every image. medsd runs ``python -m medsd generate``
with its defaults (``--dtype auto``: bf16 autocast on CPUs with native bf16; ``--batch_invariant auto``:
batched there), writing sidecars, manifest parts, ``metadata.jsonl`` and the card. Both are
started with ``torch.distributed.run --nproc_per_node N`` (gloo on CPU), and timed from start to exit
(imports and model loading included, the same for both), the two arms alternating ``--rounds`` times on a
shared machine; the ratio reported is the median of the per-round ratios. The model is a light-ct U-Net with random weights
(the time does not depend on them) saved as a medsd DDPM folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """
import sys
import torch
from accelerate import PartialState
from medsd.pipelines.ddpm import MedDDPMPipeline

model, out, n, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
state = PartialState(cpu=not torch.cuda.is_available())  # on a CPU, PartialState() alone does not split
pipe = MedDDPMPipeline.from_pretrained(model).to(state.device)
pipe.set_progress_bar_config(disable=True)
with state.split_between_processes(list(range(n))) as indices:
    for start in range(0, len(indices), batch):
        chunk = indices[start : start + batch]
        images = pipe(batch_size=len(chunk), num_inference_steps=steps).images
        for i, image in zip(chunk, images):
            image.save(f"{out}/{i:05d}.png")
"""


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - start


def _round(launch: list[str], tmp: str, model: Path, recipe: Path, args: argparse.Namespace, env) -> dict:
    """One timed run of each arm (the recipe first), into fresh output folders."""
    import shutil

    n, b, s = str(args.num_images), str(args.batch_size), str(args.steps)
    for d in ("recipe_out", "medsd_out"):
        shutil.rmtree(f"{tmp}/{d}", ignore_errors=True)
    Path(f"{tmp}/recipe_out").mkdir()
    t_recipe = _timed([*launch, str(recipe), str(model), f"{tmp}/recipe_out", n, b, s], env)
    medsd = ["-m", "medsd", "generate", str(model), "--out", f"{tmp}/medsd_out", "--num_images", n]
    medsd += ["--batch_size", b, "--num_inference_steps", s, "--dtype", args.medsd_dtype]
    t_medsd = _timed([*launch, *medsd], env)
    return {"recipe_s": t_recipe, "medsd_s": t_medsd, "ratio": t_recipe / t_medsd}


def main(argv: list[str] | None = None) -> int:
    import json
    import statistics

    import torch
    from diffusers import DDPMScheduler

    from medsd.models.presets import build_unet
    from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_images", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternate the two arms this many times")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--medsd_dtype",
        default="auto",
        help="medsd generate's --dtype (auto: its default; float32: the recipe's precision, to see medsd's "
        "bookkeeping cost alone)",
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    unet = build_unet("light-ct", sample_size=args.resolution)
    pipe = MedDDPMPipeline(
        unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=1000).config)
    )
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes)]
    with tempfile.TemporaryDirectory() as tmp:
        model, recipe = Path(tmp) / "model", Path(tmp) / "recipe.py"
        pipe.save_pretrained(model)
        recipe.write_text(RECIPE)
        rounds = []
        for r in range(args.rounds):
            rounds.append(_round(launch, tmp, model, recipe, args, env))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
    workload = (
        f"light-ct {args.resolution} px, {args.num_images} images, batch {args.batch_size}, {args.steps} steps, "
        f"{args.processes} {args.device} processes (torch.distributed.run), medsd --dtype {args.medsd_dtype}"
    )
    t_recipe = statistics.median(r["recipe_s"] for r in rounds)
    t_medsd = statistics.median(r["medsd_s"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(workload + f"; medians of {args.rounds} alternating rounds")
    print("| | images/s | time |\n| --- | --- | --- |")
    print(
        f"| diffusers docs recipe (split_between_processes) | {args.num_images / t_recipe:.2f} | {t_recipe:.1f} s |"
    )
    print(f"| medsd generate | {args.num_images / t_medsd:.2f} | {t_medsd:.1f} s |")
    print(f"medsd / recipe (median of per-round ratios): {ratio:.2f}x")
    if args.json:
        result = {"workload": workload, "args": vars(args), "rounds": rounds, "median_ratio": ratio}
        result.update(
            recipe_images_per_s=args.num_images / t_recipe, medsd_images_per_s=args.num_images / t_medsd
        )
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
