"""Time to quality: medsd's CPU chest recipe against diffusers' own ``train_unconditional.py``, scored alike.

Both sides train on the NIH development images of the training patients (medsd's patient-level split of
``../shared/data/nih_cxr14/metadata.csv``, seed 0), at 64 px, for the same wall-clock minutes on this machine; both
keep checkpoints as they go. Each checkpoint is then sampled the side's own way (medsd: its 25-step default sampler;
stock: ``DDPMPipeline``, the sampler its script uses, with the step count its ``--ddpm_num_inference_steps`` flag
sets) and every sample set is scored by the same ``medsd eval`` against the *held-out* patients (val and test parts of
the same split, never trained on): C2ST accuracy with its 95% interval, radiomics FD with its real-vs-real floor at the
same n, precision and recall.

    python benchmarks/time_to_quality.py prepare --out outputs/ttq
    python benchmarks/time_to_quality.py medsd --out outputs/ttq --config recipes/configs/ddpm_cxr64_cpu.yaml &
    python benchmarks/time_to_quality.py stock --out outputs/ttq --script PATH/TO/train_unconditional.py --minutes 45
    python benchmarks/time_to_quality.py sample --out outputs/ttq --n 128
    python benchmarks/time_to_quality.py score --out outputs/ttq

``train_unconditional.py`` is not shipped with diffusers' wheel: take it from a diffusers checkout
(``examples/unconditional_image_generation/train_unconditional.py``; no network is needed to run it here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NIH_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih_cxr14" / "metadata.csv"
RESOLUTION = 64
STOCK_MODEL = "diffusers-small"
"""The stock side's U-Net (through the script's own --model_config_name_or_path): the script's default 113.7 M
U-Net takes about 30 s per batch-16 step on one CPU thread (70 steps in 35 minutes) and 2 h for 16 DDPM-1000
samples, so it cannot be run to any quality here."""


def _csv(args: argparse.Namespace) -> Path:
    csv = Path(args.data or NIH_CSV)
    if not csv.is_file():
        raise SystemExit(f"time_to_quality: {csv} not found; pass --data METADATA_CSV")
    return csv


def prepare(args: argparse.Namespace) -> None:
    """The stock side's image folder (links to the training patients' files) and its U-Net config."""
    from medsd.data import DataConfig
    from medsd.data.build import build_dataset
    from medsd.models import build_unet

    out = Path(args.out)
    cfg = DataConfig(source="csv", path=str(_csv(args)), patient_column="patient_id", split="train")
    ds, _ = build_dataset(cfg)
    folder = out / "stock_train_images"
    folder.mkdir(parents=True, exist_ok=True)
    for record in ds.records:
        link = folder / Path(record["path"]).name
        if not link.exists():
            link.symlink_to(Path(record["path"]).resolve())
    unet = build_unet(STOCK_MODEL, sample_size=RESOLUTION, in_channels=3, out_channels=3)
    unet.save_config(out / "stock_unet")
    print(f"{len(ds)} training images linked in {folder}; stock U-Net config in {out / 'stock_unet'}")


def medsd(args: argparse.Namespace) -> None:
    """Run ``medsd train ddpm --config CONFIG`` into OUT/medsd, recording its launch time as the stock side does."""
    out = Path(args.out)
    cmd = [
        sys.executable,
        "-m",
        "medsd",
        "train",
        "ddpm",
        "--config",
        args.config,
        "--output_dir",
        str(out / "medsd"),
    ]
    (out / "medsd_start.json").write_text(json.dumps({"start": time.time(), "command": cmd}))
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)


def stock(args: argparse.Namespace) -> None:
    """Run train_unconditional.py (its defaults but the U-Net) for ``--minutes``; record checkpoint times."""
    out = Path(args.out)
    run = out / "stock"
    cmd = [
        sys.executable,
        args.script,
        f"--train_data_dir={out / 'stock_train_images'}",
        f"--output_dir={run}",
        f"--model_config_name_or_path={out / 'stock_unet'}",
        f"--resolution={RESOLUTION}",
        "--train_batch_size=16",
        f"--num_epochs={args.num_epochs}",
        "--use_ema",
        f"--checkpointing_steps={args.checkpointing_steps}",
        "--save_images_epochs=1000",  # its in-training preview (epoch 0 only): few steps, not to eat its minutes
        f"--ddpm_num_inference_steps={args.preview_steps}",
        "--logger=tensorboard",
        f"--cache_dir={out / 'hf_cache'}",
    ]
    start = time.time()
    (out / "stock_start.json").write_text(json.dumps({"start": start, "command": cmd}))
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script has no time budget; its checkpoints are the scored points
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"stock run stopped after {(time.time() - start) / 60:.1f} min")


def _checkpoints(run: Path, only: str | None = None) -> list[Path]:
    found = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    wanted = {int(x) for x in only.split(",")} if only else None
    return [p for p in found if wanted is None or int(p.name.split("-")[1]) in wanted]


def _minutes(path: Path, start: float) -> float:
    return (path.stat().st_mtime - start) / 60


def sample_stock(run: Path, out: Path, n: int, steps: int, only: str | None) -> None:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    for ckpt in _checkpoints(run, only):
        dest = out / ckpt.name
        if dest.is_dir() and len(list(dest.glob("*.png"))) >= n:
            continue
        unet = UNet2DModel.from_pretrained(ckpt / "unet_ema")
        pipe = DDPMPipeline(
            unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        )
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            batch_size=n, generator=torch.Generator().manual_seed(0), num_inference_steps=steps
        ).images
        _save(images, dest)
        print(f"stock {ckpt.name}: {n} images", flush=True)


def sample_medsd(run: Path, out: Path, n: int, only: str | None) -> None:
    import torch

    from medsd.pipelines.ddpm import MedDDPMPipeline
    from medsd.training.checkpoints import load_checkpoint_weights
    from medsd.training.precision import cpu_has_native_bf16

    dtype = torch.bfloat16 if cpu_has_native_bf16() else None  # as training and medsd generate do on a CPU
    pipe = MedDDPMPipeline.from_pretrained(run)
    pipe.set_progress_bar_config(disable=True)
    for ckpt in _checkpoints(run, only):
        dest = out / ckpt.name
        if dest.is_dir() and len(list(dest.glob("*.png"))) >= n:
            continue
        load_checkpoint_weights(ckpt, pipe.unet)
        images = pipe(batch_size=n, generator=torch.Generator().manual_seed(0), autocast_dtype=dtype).images
        _save(images, dest)
        print(f"medsd {ckpt.name}: {n} images", flush=True)
    final = out / f"checkpoint-{_final_step(run)}"
    if not (run / final.name).is_dir() and not final.is_dir() and only is None:
        pipe = MedDDPMPipeline.from_pretrained(run)  # the finished (EMA) model, where the time budget stopped
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        _save(pipe(batch_size=n, generator=generator, autocast_dtype=dtype).images, final)
        print(f"medsd final model (step {_final_step(run)}): {n} images", flush=True)


def _final_step(run: Path) -> int:
    return int(json.loads((run / "train_summary.json").read_text())["steps"])


def _point_time(run: Path, name: str) -> Path:
    """The file whose time stamps a scored point: its checkpoint, or the finished run's summary."""
    return run / name if (run / name).exists() else run / "train_summary.json"


def _save(images: list[Any], dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, im in enumerate(images):
        im.convert("L").save(tmp / f"{i:04d}.png")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def sample(args: argparse.Namespace) -> None:
    """Sample every checkpoint (or ``--only`` steps) of each side its own way into OUT/samples/SIDE/."""
    out = Path(args.out)
    if (out / "medsd").is_dir() and args.side in (None, "medsd"):
        sample_medsd(out / "medsd", out / "samples" / "medsd", args.n, args.only)
    if (out / "stock").is_dir() and args.side in (None, "stock"):
        sample_stock(out / "stock", out / "samples" / "stock", args.n, args.ddpm_steps, args.only)


def score(args: argparse.Namespace) -> None:
    """``medsd eval`` of every sample folder against the held-out patients; one JSON row per checkpoint."""
    from medsd.metrics.evaluate import EvalConfig, evaluate

    out = Path(args.out)
    rows = json.loads((out / "scores.json").read_text()) if (out / "scores.json").exists() else []
    done = {(r["side"], r["checkpoint"]) for r in rows}
    for side in ("medsd", "stock") if args.side is None else (args.side,):
        run = out / side
        for folder in sorted((out / "samples" / side).glob("checkpoint-*"), key=lambda p: int(p.name[11:])):
            if (side, folder.name) in done:
                continue
            cfg = EvalConfig(
                real=str(_csv(args)),
                real_split="heldout",
                fake=str(folder),
                out=str(out / "eval" / side / folder.name),
                size=RESOLUTION,
                progress=False,
            )
            report, _ = evaluate(cfg, log=lambda s: None)
            minutes = _minutes(_point_time(run, folder.name), _start(out, side))
            rows.append(_row(side, folder.name, minutes, report))
            (out / "scores.json").write_text(json.dumps(rows, indent=1))
            print(_format_row(rows[-1]), flush=True)


def _start(out: Path, side: str) -> float:
    path = out / f"{side}_start.json"
    if not path.exists():
        raise SystemExit(f"time_to_quality: {path} is missing; launch the {side} run with this script")
    return json.loads(path.read_text())["start"]


def _row(side: str, checkpoint: str, minutes: float, report: dict) -> dict:
    c2 = report["c2st"]["real_vs_fake"]
    ref = report["distribution"]["radiomics"]["real_reference"]
    row = {
        "side": side,
        "checkpoint": checkpoint,
        "step": int(checkpoint.split("-")[1]),
        "minutes": round(minutes, 1),
        "c2st_accuracy": c2["accuracy"],
        "c2st_ci95": c2["accuracy_ci95"],
        "c2st_floor": report["c2st"]["real_vs_real"].get("accuracy", {}).get("mean"),
        "n": ref.get("n_b"),
        "degenerate": report["distribution"]["radiomics"]["n_degenerate_fake"],
    }
    for key, metric in (("fd", "frechet_distance"), ("precision", "precision"), ("recall", "recall")):
        # no same-size reference when too few non-degenerate samples remain: the row says so with None
        row[key] = ref["fake_vs_real"][metric]["mean"] if "fake_vs_real" in ref else None
        row[f"{key}_floor"] = ref["real_vs_real"][metric]["mean"] if "real_vs_real" in ref else None
        row[f"{key}_floor_std"] = ref["real_vs_real"][metric]["std"] if "real_vs_real" in ref else None
    return row


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _format_row(r: dict) -> str:
    lo, hi = r["c2st_ci95"]
    return (
        f"| {r['side']} | {r['minutes']:.1f} | {r['step']} | {r['c2st_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
        f"{_num(r['c2st_floor'], '.3f')} | {_num(r['fd'], '.1f')} | {_num(r['fd_floor'], '.1f')} ± "
        f"{_num(r['fd_floor_std'], '.1f')} | {_num(r['precision'], '.3f')} | {_num(r['recall'], '.3f')} | "
        f"{_num(r['recall_floor'], '.3f')} |"
    )


def figure(args: argparse.Namespace) -> None:
    """Three grids side by side: medsd's last checkpoint | real held-out patients | stock's last checkpoint."""
    import numpy as np
    from PIL import Image

    from medsd.metrics.io import load_image_set

    out = Path(args.out)
    panels = []
    real = load_image_set(_csv(args), RESOLUTION, split="heldout", max_images=16, seed=1).images
    for title, folder in (
        ("medsd", _last(out / "samples" / "medsd")),
        ("real, held-out patients", None),
        ("stock train_unconditional.py", _last(out / "samples" / "stock")),
    ):
        images = real if folder is None else load_image_set(folder, RESOLUTION, max_images=16, seed=1).images
        label = title if folder is None else f"{title}, {folder.name}"
        panels.append(_grid(images[:16], label))
    gap = np.full((panels[0].shape[0], 8), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    path = Path(args.figure or out / "ttq_grids.png")
    Image.fromarray(row).save(path)
    print(f"wrote {path}")


def _last(folder: Path) -> Path:
    runs = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not runs:
        raise SystemExit(f"time_to_quality: no sample folders in {folder}; run the sample step first")
    return runs[-1]


def _grid(images, title: str):
    import numpy as np
    from PIL import Image, ImageDraw

    n, h, w = len(images), images.shape[1], images.shape[2]
    cols = 4
    canvas = np.full((18 + (n // cols) * (h + 2), cols * (w + 2)), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas[18 + r * (h + 2) : 18 + r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = np.rint(im * 255)
    pic = Image.fromarray(canvas)
    ImageDraw.Draw(pic).text((2, 3), title, fill=0)
    return np.asarray(pic)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    actions = (
        ("prepare", prepare),
        ("medsd", medsd),
        ("stock", stock),
        ("sample", sample),
        ("score", score),
        ("figure", figure),
    )
    for name, fn in actions:
        s = sub.add_parser(name, help=fn.__doc__)
        s.add_argument(
            "--out", required=True, help="work folder (medsd run in OUT/medsd, stock in OUT/stock)"
        )
        s.add_argument("--data", default=None, help=f"metadata CSV (default {NIH_CSV})")
        s.add_argument("--script", default=None, help="diffusers' train_unconditional.py")
        s.add_argument(
            "--config", default="recipes/configs/ddpm_cxr64_cpu.yaml", help="medsd's training config"
        )
        s.add_argument("--minutes", type=float, default=45.0, help="stock training budget (wall minutes)")
        s.add_argument(
            "--num_epochs", type=int, default=25, help="stock epochs (its cosine schedule's length)"
        )
        s.add_argument("--checkpointing_steps", type=int, default=200)
        s.add_argument("--ddpm_steps", type=int, default=100, help="stock DDPMPipeline steps when sampling")
        s.add_argument("--preview_steps", type=int, default=10, help="stock in-training preview steps")
        s.add_argument("--n", type=int, default=96, help="images sampled per checkpoint")
        s.add_argument("--side", choices=("medsd", "stock"), default=None, help="sample/score one side only")
        s.add_argument("--only", default=None, help="sample: comma-separated checkpoint steps (default all)")
        s.add_argument("--figure", default=None, help="figure: output PNG (default OUT/ttq_grids.png)")
        s.set_defaults(func=fn)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
