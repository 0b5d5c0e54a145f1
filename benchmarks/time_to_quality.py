"""Time to quality: medsd's CPU chest recipe against diffusers' own ``train_unconditional.py``, scored alike.

Both sides train on the NIH development images of the training patients (medsd's patient-level split of
``../shared/data/nih_cxr14/metadata.csv``, seed 0), at 64 px, for the same wall-clock minutes on this machine; both
keep checkpoints as they go. Each checkpoint is then sampled the side's own way (medsd: its 25-step default sampler;
stock: ``DDPMPipeline``, the sampler its script uses, with the step count its ``--ddpm_num_inference_steps`` flag
sets) and every sample set is scored by the same ``medsd eval`` against the *held-out* patients (val and test parts of
the same split, never trained on): C2ST accuracy with its 95% interval, radiomics FD with its real-vs-real floor at the
same n, precision and recall.

    python benchmarks/time_to_quality.py prepare --out outputs/ttq
    medsd train ddpm --config recipes/configs/ddpm_cxr64_cpu.yaml --output_dir outputs/ttq/medsd
    python benchmarks/time_to_quality.py stock --out outputs/ttq --script PATH/TO/train_unconditional.py --minutes 35
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
import signal
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
        "--save_images_epochs=1000",  # its in-training preview (epoch 0 only) draws with the flag below
        f"--ddpm_num_inference_steps={args.ddpm_steps}",
        "--logger=tensorboard",
        f"--cache_dir={out / 'hf_cache'}",
    ]
    start = time.time()
    (out / "stock_start.json").write_text(json.dumps({"start": start, "command": cmd}))
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    print(f"stock run stopped after {(time.time() - start) / 60:.1f} min")


def _checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _minutes(path: Path, start: float) -> float:
    return (path.stat().st_mtime - start) / 60


def sample_stock(run: Path, out: Path, n: int, steps: int) -> None:
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    for ckpt in _checkpoints(run):
        dest = out / ckpt.name
        if dest.is_dir() and len(list(dest.glob("*.png"))) >= n:
            continue
        unet = UNet2DModel.from_pretrained(ckpt / "unet_ema")
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            batch_size=n, generator=torch.Generator().manual_seed(0), num_inference_steps=steps
        ).images
        _save(images, dest)
        print(f"stock {ckpt.name}: {n} images", flush=True)


def sample_medsd(run: Path, out: Path, n: int) -> None:
    import torch

    from medsd.pipelines.ddpm import MedDDPMPipeline
    from medsd.training.checkpoints import load_checkpoint_weights

    pipe = MedDDPMPipeline.from_pretrained(run)
    pipe.set_progress_bar_config(disable=True)
    for ckpt in _checkpoints(run):
        dest = out / ckpt.name
        if dest.is_dir() and len(list(dest.glob("*.png"))) >= n:
            continue
        load_checkpoint_weights(ckpt, pipe.unet)
        images = pipe(batch_size=n, generator=torch.Generator().manual_seed(0)).images
        _save(images, dest)
        print(f"medsd {ckpt.name}: {n} images", flush=True)


def _save(images: list[Any], dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, im in enumerate(images):
        im.convert("L").save(tmp / f"{i:04d}.png")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if (out / "medsd").is_dir():
        sample_medsd(out / "medsd", out / "samples" / "medsd", args.n)
    if (out / "stock").is_dir():
        sample_stock(out / "stock", out / "samples" / "stock", args.n, args.ddpm_steps)


def score(args: argparse.Namespace) -> None:
    """``medsd eval`` of every sample folder against the held-out patients; one JSON row per checkpoint."""
    from medsd.metrics.evaluate import EvalConfig, evaluate

    out = Path(args.out)
    rows = json.loads((out / "scores.json").read_text()) if (out / "scores.json").exists() else []
    done = {(r["side"], r["checkpoint"]) for r in rows}
    starts = {"medsd": _medsd_start(out / "medsd"), "stock": _stock_start(out)}
    for side in ("medsd", "stock"):
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
            rows.append(_row(side, folder.name, _minutes(run / folder.name, starts[side]), report))
            (out / "scores.json").write_text(json.dumps(rows, indent=1))
            print(_format_row(rows[-1]), flush=True)


def _medsd_start(run: Path) -> float:
    """Launch time of a medsd run: its lock file is the first thing it writes."""
    lock = run / ".tmp-medsd.lock"
    return (lock if lock.exists() else run / "training_config.yaml").stat().st_mtime


def _stock_start(out: Path) -> float:
    path = out / "stock_start.json"
    return json.loads(path.read_text())["start"] if path.exists() else 0.0


def _row(side: str, checkpoint: str, minutes: float, report: dict) -> dict:
    c2 = report["c2st"]["real_vs_fake"]
    floor = report["c2st"]["real_vs_real"]
    ref = report["distribution"]["radiomics"]["real_reference"]
    return {
        "side": side,
        "checkpoint": checkpoint,
        "step": int(checkpoint.split("-")[1]),
        "minutes": round(minutes, 1),
        "c2st_accuracy": c2["accuracy"],
        "c2st_ci95": c2["accuracy_ci95"],
        "c2st_floor": floor.get("accuracy", {}).get("mean"),
        "fd": ref["fake_vs_real"]["frechet_distance"]["mean"],
        "fd_floor": ref["real_vs_real"]["frechet_distance"]["mean"],
        "fd_floor_std": ref["real_vs_real"]["frechet_distance"]["std"],
        "precision": ref["fake_vs_real"]["precision"]["mean"],
        "recall": ref["fake_vs_real"]["recall"]["mean"],
        "recall_floor": ref["real_vs_real"]["recall"]["mean"],
        "n": ref["n_b"],
    }


def _format_row(r: dict) -> str:
    lo, hi = r["c2st_ci95"]
    return (
        f"| {r['side']} | {r['minutes']:.1f} | {r['step']} | {r['c2st_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
        f"(floor {r['c2st_floor']:.3f}) | {r['fd']:.1f} (floor {r['fd_floor']:.1f} ± {r['fd_floor_std']:.1f}) | "
        f"{r['precision']:.3f} | {r['recall']:.3f} (floor {r['recall_floor']:.3f}) |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for name, fn in (("prepare", prepare), ("stock", stock), ("sample", sample), ("score", score)):
        s = sub.add_parser(name, help=fn.__doc__)
        s.add_argument("--out", required=True, help="work folder (medsd run in OUT/medsd, stock in OUT/stock)")
        s.add_argument("--data", default=None, help=f"metadata CSV (default {NIH_CSV})")
        s.add_argument("--script", default=None, help="diffusers' train_unconditional.py")
        s.add_argument("--minutes", type=float, default=35.0, help="stock training budget (wall minutes)")
        s.add_argument("--num_epochs", type=int, default=20, help="stock epochs (its cosine schedule's length)")
        s.add_argument("--checkpointing_steps", type=int, default=200)
        s.add_argument("--ddpm_steps", type=int, default=100, help="stock DDPMPipeline steps")
        s.add_argument("--n", type=int, default=128, help="images sampled per checkpoint")
        s.set_defaults(func=fn)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
