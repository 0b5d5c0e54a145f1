"""``medsd tstr``: train on synthetic, test on real (RoentGen / "Stable Diffusion for Medical Imaging" protocol).

For each class (default: No Finding and Pneumonia) a DDPM is trained on that class's real training images only
(``medsd.training.ddpm`` with ``train_labels``), which makes the pair a class-conditional generator; each samples
as many images as its class has real training images (or ``--num_synthetic``). A small CNN is then trained on the
real training images, on the synthetic ones, and on both, and tested on real images of held-out patients
(patient-level split of the source): accuracy and AUROC with percentile-bootstrap 95% confidence intervals.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from medsd.metrics.figures import labelled_rows_figure

from .common import value_ranges
from .experiments import short_ddpm_run_fields

TSTR_RANGES = value_ranges(
    at_least={
        "resolution": 8,
        "max_train_steps": 1,
        "train_batch_size": 1,
        "num_synthetic": 2,
        "num_inference_steps": 1,
        "max_real_train": 2,
        "classifier_epochs": 1,
        "bootstrap": 1,
    },
    positive=("learning_rate",),
)
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
HELP = "train-on-synthetic, test-on-real: class-wise DDPMs, then classifiers on real / synthetic / both"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tstr", help=HELP, description=__doc__)
    p.add_argument(
        "--train_data", required=True, help="metadata CSV, folder (labels from sub-folders) or hf:ID"
    )
    p.add_argument(
        "--classes", default="No Finding,Pneumonia", help="comma-separated labels (default: %(default)s)"
    )
    p.add_argument("--label_column", default="label")
    p.add_argument("--patient_column", default="patient_id", help="patient id column (patient-level split)")
    p.add_argument("--image_column", default=None)
    p.add_argument("--out", default="outputs/tstr", help="output folder")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--model", default="light-tiny", help="light U-Net preset of the per-class DDPMs")
    p.add_argument("--max_train_steps", type=int, default=2000, help="DDPM training steps per class")
    p.add_argument("--train_batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument(
        "--num_synthetic", type=int, default=None, help="synthetic images per class (default: as real)"
    )
    p.add_argument("--num_inference_steps", type=int, default=25, help="steps of medsd's fast sampler")
    p.add_argument(
        "--max_real_train", type=int, default=None, help="cap on real training images (stratified)"
    )
    p.add_argument("--classifier_epochs", type=int, default=15)
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--mixed_precision", default="auto", choices=MIXED_PRECISIONS)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the DDPMs, sampling and classifiers"
    )
    p.add_argument("--overwrite_output_dir", action="store_true")
    p.set_defaults(func=run, value_ranges=TSTR_RANGES)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "class"


def _images01(dataset):
    """The dataset's images as ``[N, H, W]`` float arrays in [0, 1] (its training preprocessing)."""
    import numpy as np

    return np.stack([(dataset[i]["pixel_values"][0].numpy() + 1.0) / 2.0 for i in range(len(dataset))]).clip(
        0, 1
    )


def _synthetic_class(
    cls: str, ci: int, base: dict, args: argparse.Namespace, out: Path, n_real: int
) -> tuple[Any, dict[str, Any]]:
    """Train a DDPM on the real training images of ``cls`` and sample from it: (images [N, H, W] in [0, 1],
    the class's row of the report)."""
    import numpy as np
    import torch

    from medsd.metrics import degenerate_mask
    from medsd.metrics.diversity import to_uint8
    from medsd.pipelines.ddpm import MedDDPMPipeline
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    n = args.num_synthetic or n_real
    cfg = DDPMTrainConfig(**base, train_labels=cls, output_dir=str(out / f"ddpm_{_slug(cls)}"))
    print(f"== DDPM for '{cls}' ({n_real} real training images) -> {n} samples")
    result = train_ddpm(cfg)
    pipe = MedDDPMPipeline.from_pretrained(result.output_dir).to(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(args.seed + 1000 + ci)
    imgs = [
        pipe(
            batch_size=min(64, n - start),
            num_inference_steps=args.num_inference_steps,
            generator=gen,
            output_type="np",
        ).images
        for start in range(0, n, 64)
    ]
    x = np.concatenate(imgs)
    x = x[..., 0] if x.ndim == 4 else x
    deg = degenerate_mask(to_uint8(x), size=args.resolution)
    return x, {
        "real_train": int(n_real),
        "real_test": 0,
        "synthetic": int(n),
        "synthetic_degenerate": int(deg.sum()),
        "ddpm_steps": int(result.global_step),
        "ddpm_train_seconds": float(result.seconds),
        "final_train_loss": result.loss_history[-1][1] if result.loss_history else None,
    }


def _write_report(report: dict, out: Path, grids: dict) -> None:
    (out / "tstr.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "tstr.md").write_text(render_table(report))
    labelled_rows_figure({f"synthetic {k}": v for k, v in grids.items()}, out / "tstr_synthetic_samples.png")
    print(render_table(report))
    print(f"table: {out / 'tstr.md'}  samples: {out / 'tstr_synthetic_samples.png'}")


def _classes_and_out(args: argparse.Namespace) -> tuple[list[str], Path]:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2:
        raise ValueError(f"--classes: expected at least two labels, got {classes}")
    out = Path(args.out)
    if (out / "tstr.json").exists() and not args.overwrite_output_dir:
        raise ValueError(f"{out} already holds a tstr run; pass --overwrite_output_dir to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return classes, out


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from medsd.data import build_dataset
    from medsd.metrics.downstream import downstream_utility
    from medsd.metrics.subsample import stratified_subsample
    from medsd.training.data_args import data_config, select_labels
    from medsd.training.ddpm import DDPMTrainConfig

    t_start = time.perf_counter()
    classes, out = _classes_and_out(args)
    torch.manual_seed(args.seed)
    base = short_ddpm_run_fields(args, ema_decay=0.995, max_warmup_steps=100, image_column=args.image_column)
    # the same patient-level split (same seed) that train_ddpm uses for its training images
    split_cfg = DDPMTrainConfig(**base, output_dir=str(out / "split"))
    sets = {}
    for split in ("train", "test"):
        ds, _ = build_dataset(data_config(split_cfg, seed=args.seed, split=split))
        sets[split] = select_labels(ds, ",".join(classes))
    canon = {c.lower(): c for c in classes}
    train_labels = [canon[str(lab).lower()] for lab in sets["train"].labels]
    test_labels = [canon[str(lab).lower()] for lab in sets["test"].labels]
    train_pids = set(getattr(sets["train"], "patient_ids", []) or []) - {None}
    test_pids = set(getattr(sets["test"], "patient_ids", []) or []) - {None}
    overlap = train_pids & test_pids
    if overlap:
        raise ValueError(f"train and test splits share {len(overlap)} patients (check --patient_column)")
    keep = stratified_subsample(
        len(train_labels),
        args.max_real_train,
        train_labels,
        list(getattr(sets["train"], "patient_ids", []) or []) or None,
        seed=args.seed,
    )
    real_train_ds = sets["train"].select(keep)
    train_labels = [train_labels[i] for i in keep]
    print(
        f"real: {len(real_train_ds)} training images ({len(train_pids)} patients), {len(sets['test'])} test "
        f"images ({len(test_pids)} held-out patients)"
    )
    x_train, x_test = _images01(real_train_ds), _images01(sets["test"])

    synth_x, synth_y, per_class, grids = [], [], {}, {}
    for ci, cls in enumerate(classes):
        x, per_class[cls] = _synthetic_class(cls, ci, base, args, out, train_labels.count(cls))
        per_class[cls]["real_test"] = int(test_labels.count(cls))
        synth_x.append(x)
        synth_y += [cls] * len(x)
        grids[cls] = x[:8]
    synth_x = np.concatenate(synth_x)
    d = downstream_utility(
        {
            "real": (x_train, train_labels),
            "synthetic": (synth_x, synth_y),
            "real+synthetic": (np.concatenate([x_train, synth_x]), train_labels + synth_y),
        },
        (x_test, test_labels),
        epochs=args.classifier_epochs,
        size=args.resolution,
        n_boot=args.bootstrap,
        seed=args.seed,
        num_threads=1,
    )
    report = {
        "command": "medsd tstr " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "tstr"
        else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "value_ranges")},
        "classes": classes,
        "per_class": per_class,
        "patients": {"train": len(train_pids), "test": len(test_pids), "shared": 0},
        "downstream": d,
        "runtime_minutes": (time.perf_counter() - t_start) / 60,
    }
    _write_report(report, out, grids)
    return 0


def render_table(report: dict) -> str:
    from medsd.metrics.downstream import results_table

    s, d = report["settings"], report["downstream"]
    lines = [
        "# Train on synthetic, test on real",
        "",
        f"Source `{s['train_data']}`, classes {', '.join(report['classes'])}, {s['resolution']} px; one "
        f"`{s['model']}` DDPM per class ({s['max_train_steps']} steps, batch {s['train_batch_size']}, lr "
        f"{s['learning_rate']}), sampled with {s['num_inference_steps']} fast-sampler steps; classifier: "
        f"{d['settings']['model']}, {d['settings']['epochs']} epochs; test: real images of "
        f"{report['patients']['test']} held-out patients (none shared with the {report['patients']['train']} "
        f"training patients); 95% CIs: percentile bootstrap over the test set ({d['settings']['bootstrap']} "
        f"resamples). Chance accuracy {d['settings']['chance_accuracy']:.3f}.",
        "",
        "| class | real train | synthetic (degenerate) | real test |",
        "| --- | --- | --- | --- |",
    ]
    for cls, c in report["per_class"].items():
        lines.append(
            f"| {cls} | {c['real_train']} | {c['synthetic']} ({c['synthetic_degenerate']}) | {c['real_test']} |"
        )
    lines += ["", *results_table(d["results"])]
    if report.get("command"):
        lines += ["", f"Command: `{report['command']}`"]
    lines += ["", f"Runtime {report['runtime_minutes']:.1f} min."]
    return "\n".join(lines) + "\n"
