"""``medsd cddpm-eval``: the Med-cDiff table for a trained cDDPM (sr, denoise or inpaint) against baselines.

On a held-out split (patient-level when the data has patient ids) each test image gets a fixed, seeded
degradation; the cDDPM restores it (one sample, and the mean of ``--num_samples`` samples) and so do the
classical baselines. Per task/factor: PSNR, SSIM, edge sharpness (mean Sobel magnitude; not Med-cDiff's
"acutance"), LPIPS (when its weights are available) and a weight-free distribution distance (Fréchet distance on
robustly scaled radiomics features: medsd's own, not comparable to published FID), written as JSON, markdown and
a figure with rows condition | baselines | cDDPM sample | cDDPM mean | target | std map. ``--num_images N`` is a
seeded, label- and patient-stratified random subsample of the split (not its first N images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import add_allow_pickle, add_overwrite, check_out_dir, value_ranges

CDDPM_EVAL_RANGES = value_ranges(
    at_least={
        "phantom_count": 2,
        "resolution": 8,
        "num_images": 2,
        "num_samples": 1,
        "num_inference_steps": 1,
        "batch_size": 1,
        "figure_rows": 1,
    },
    seeds=("seed", "split_seed", "subsample_seed"),
)
RESULT_FILES = ("metrics.json", "metrics.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cddpm-eval",
        help="evaluate a trained cDDPM (super-resolution, denoising, inpainting) against classical baselines",
        description=(
            "Degrade held-out images with a fixed seed, restore them with the cDDPM (1 sample and the mean of "
            "--num_samples) and with baselines, and write metrics.json, metrics.md and figure_<task>[_x<factor>].png to --out."
        ),
    )
    p.add_argument("--model", required=True, help="MedCDDPMPipeline folder or Hub id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--data",
        default="phantom",
        help="'phantom', 'phantom-ct', an image folder, a metadata CSV or 'hf:NAME' (as for training)",
    )
    p.add_argument("--split", default="test", help="train, val, test or all (patient-level split)")
    p.add_argument(
        "--split_seed",
        type=int,
        default=None,
        help="seed of the patient-level split (default: the training seed saved with the model)",
    )
    p.add_argument("--image_column", default="filename")
    p.add_argument("--label_column", default=None)
    p.add_argument(
        "--patient_column", default=None, help="patient id column: no patient on two sides of the split"
    )
    p.add_argument(
        "--intensity",
        default=None,
        help="window, minmax or percentile (default: the intensity window saved with the model)",
    )
    p.add_argument("--phantom_count", type=int, default=512, help="phantoms in the source before the split")
    p.add_argument("--resolution", type=int, default=None, help="default: the training resolution")
    p.add_argument(
        "--task", default=None, choices=["sr", "denoise", "inpaint"], help="default: the model's task"
    )
    p.add_argument(
        "--factor",
        default=None,
        help="super-resolution factor(s), comma-separated, e.g. 2.828,4 (default: the training factor)",
    )
    p.add_argument("--mask_kind", default=None, help="inpainting masks: box, irregular, mixed or file")
    p.add_argument("--mask_file", default=None)
    p.add_argument(
        "--num_images",
        type=int,
        default=32,
        help="test images (at most): a seeded random subsample stratified by label and patient",
    )
    p.add_argument(
        "--subsample_seed",
        type=int,
        default=None,
        help="seed of the --num_images subsample (default: --seed)",
    )
    p.add_argument("--num_samples", type=int, default=8, help="cDDPM samples per image (mean and std maps)")
    p.add_argument(
        "--sampler",
        default=None,
        choices=["ddpm", "ddim", "dpm"],
        help="default: the saved sampler (full ancestral DDPM, as in the paper)",
    )
    p.add_argument("--num_inference_steps", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=8, help="test images per sampling batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the test degradations and of sampling")
    p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (it needs torchvision weights)")
    p.add_argument("--features", default="radiomics", help="feature extractor of the distribution distance")
    p.add_argument("--figure_rows", type=int, default=4)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_allow_pickle(p)
    add_overwrite(p, "metrics.json, metrics.md and the figures of an earlier run")
    p.set_defaults(func=run, value_ranges=CDDPM_EVAL_RANGES)


def parse_factors(factor: str | None) -> list[float] | None:
    """``--factor 2.828,4`` -> [2.828, 4.0] (each > 1), or None when not given."""
    if not factor:
        return None
    try:
        factors = [float(f) for f in str(factor).split(",")]
    except ValueError:
        factors = []
    if not factors or not all(f > 1 for f in factors):
        raise ValueError(f"--factor: expected numbers > 1, comma-separated (e.g. 2.828,4), got {factor!r}")
    return factors


def load_test_images(
    args: argparse.Namespace, resolution: int, seed: int, mapping: Any = None
) -> tuple[Any, list[str | None]]:
    """Clean test images ``[N, 1, H, W]`` in [-1, 1] and their patient ids.

    Without ``--intensity`` the test images are mapped with the model's saved (fitted) intensity window, so the
    model sees the intensity scale it was trained on.
    """
    import torch

    from medsd.data.build import HELD_OUT_PHANTOM_SEED, build_dataset, source_config

    window = None
    intensity = args.intensity
    if intensity is None:
        intensity = "window"
        if mapping is not None and getattr(mapping, "fitted", False):
            window = (float(mapping.low), float(mapping.high))

    cfg = source_config(
        args.data,
        image_column=args.image_column,
        label_column=args.label_column,
        patient_column=args.patient_column,
        split=args.split,
        seed=seed,
        resolution=resolution,
        intensity=intensity,
        window=window,
        phantom_count=args.phantom_count,
    )
    if cfg.source == "phantom":
        # phantom i depends only on (seed, i): test phantoms come from a seed no training run uses
        cfg.seed, cfg.split = seed + HELD_OUT_PHANTOM_SEED, "all"
    dataset, _ = build_dataset(cfg)
    sub_seed = getattr(args, "subsample_seed", None)
    idx = choose_test_indices(dataset, args.num_images, args.seed if sub_seed is None else sub_seed)
    if len(idx) < 2:
        raise ValueError(
            f"the {args.split} split of {args.data} has {len(dataset)} image(s); need at least 2"
        )
    items = [dataset[i] for i in idx]
    return torch.stack([it["pixel_values"] for it in items]).float(), [it.get("patient_id") for it in items]


def choose_test_indices(dataset: Any, num_images: int | None, seed: int) -> list[int]:
    """Indices of the ``num_images`` test images: :func:`medsd.metrics.subsample.stratified_subsample` of the split.

    Each label keeps its share and the images are spread over as many patients as possible, at random with
    ``seed`` (taking the first N would give whatever order the folder or CSV has).
    """
    from medsd.metrics.subsample import stratified_subsample

    n = len(dataset)
    labels = getattr(dataset, "labels", None)
    patient_ids = getattr(dataset, "patient_ids", None)
    return stratified_subsample(n, num_images, labels=labels, patient_ids=patient_ids, seed=seed)


def _to01(x: Any) -> Any:
    return ((x.float().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()


class _Lpips:
    """LPIPS tried once: after a missing-weights failure the note is reused instead of retrying."""

    def __init__(self, enabled: bool):
        self.note = None if enabled else "LPIPS skipped (--no_lpips)"

    def __call__(self, pred01: Any, target01: Any) -> float | None:
        if self.note:
            return None
        from medsd.metrics.features import MissingWeightsError
        from medsd.metrics.paired import lpips

        try:
            return lpips(pred01, target01)
        except MissingWeightsError as e:
            self.note = f"LPIPS not available: {e}"
            return None


def distance_label(extractor: Any) -> str:
    """How the distribution distance of ``extractor`` may be read (standard FID, or medsd's own distance)."""
    if getattr(extractor, "standard", False):
        return f"FID: standard Fréchet distance on raw {extractor.name} features"
    return (
        f"FD ({extractor.name}): Fréchet distance on {extractor.scaling}-scaled {extractor.name} features; "
        "not comparable to published FID"
    )


def evaluate_restorations(
    predictions: dict[str, Any], target: Any, lpips_fn: Any, features: str = "radiomics"
) -> dict[str, dict[str, Any]]:
    """Per method: PSNR, SSIM, edge sharpness, LPIPS and the Fréchet feature distance to the targets.

    ``predictions``: name -> ``[N, 1, H, W]`` in [-1, 1]; ``target`` the same shape. Features are scaled with
    the extractor's own scaling (``scale_features(..., scaling=extractor.scaling)``, as ``medsd eval`` does):
    robust for radiomics, raw for Inception.
    """
    from medsd.metrics import frechet_distance, scale_features
    from medsd.metrics.features import MissingWeightsError, get_extractor
    from medsd.metrics.paired import paired_metrics

    t01 = _to01(target)
    extractor = None
    feature_note = None
    try:
        extractor = get_extractor(features, size=t01.shape[-1])
        real_feats = extractor(t01)
    except (MissingWeightsError, KeyError) as e:
        feature_note = f"distribution distance not available: {e}"
    rows: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        p01 = _to01(pred)
        m = paired_metrics(p01, t01)
        row = {
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "edge_sharpness": m["edge_sharpness_pred"],
            "edge_sharpness_target": m["edge_sharpness_target"],
            "mae": m["mae"],
            "lpips": lpips_fn(p01, t01),
        }
        if extractor is not None:
            real_z, fake_z = scale_features(real_feats, extractor(p01), scaling=extractor.scaling)
            row[f"frechet_{extractor.name}"] = frechet_distance(real_z, fake_z)
            row["distance_note"] = distance_label(extractor)
        elif feature_note:
            row["distribution_note"] = feature_note
        rows[name] = row
    return rows


def markdown_table(title: str, rows: dict[str, dict[str, Any]], notes: list[str]) -> str:
    fd_key = next((k for r in rows.values() for k in r if k.startswith("frechet_")), None)
    fd_label = None
    if fd_key:
        note = next(iter(rows.values())).get("distance_note", "")
        fd_label = "FID ↓" if note.startswith("FID") else f"FD {fd_key[8:]}* ↓"
    head = ["method", "PSNR (dB) ↑", "SSIM ↑", "edge sharpness", "LPIPS ↓"] + ([fd_label] if fd_key else [])
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for name, r in rows.items():
        cells = [
            name,
            f(r["psnr"], ".2f"),
            f(r["ssim"], ".4f"),
            f(r["edge_sharpness"], ".4f"),
            f(r["lpips"], ".4f"),
        ]
        if fd_key:
            cells.append(f(r.get(fd_key), ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))
    lines += [
        "",
        f"Target edge sharpness (mean Sobel gradient magnitude; not Med-cDiff's acutance): "
        f"{first['edge_sharpness_target']:.4f}.",
    ]
    if fd_key and first.get("distance_note"):
        star = "" if fd_label.startswith("FID") else "*"
        lines.append(f"{star}{first['distance_note']}.")
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def save_figure(columns: dict[str, Any], path: Path, rows: int, std: Any = None) -> Path:
    """Rows = test images; columns = condition | baselines | cDDPM | target (| std map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    n = min(rows, next(iter(columns.values())).shape[0])
    ncol = len(names) + (1 if std is not None else 0)
    fig, axes = plt.subplots(n, ncol, figsize=(1.8 * ncol, 1.8 * n + 0.3), dpi=110, squeeze=False)
    for i in range(n):
        for j, name in enumerate(names):
            ax = axes[i, j]
            ax.imshow(_to01(columns[name][i : i + 1])[0], cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(name, fontsize=8)
        if std is not None:
            ax = axes[i, -1]
            ax.imshow(std[i], cmap="magma", vmin=0)
            if i == 0:
                ax.set_title("std map", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_setting(
    pipe: Any,
    clean: Any,
    degradation: Any,
    args: argparse.Namespace,
    lpips_fn: Any,
    out: Path,
    tag: str,
) -> dict[str, Any]:
    """One task/factor: degrade, restore (cDDPM and baselines), score, and draw the figure."""
    import numpy as np
    import torch

    from medsd.data.degradations import downsample
    from medsd.metrics.baselines import BASELINES, run_baseline

    task = degradation.task
    device = pipe.device
    n = clean.shape[0]
    degraded = degradation.fixed(clean, list(range(n)), seed=args.seed)
    cond_image = degraded.condition[:, :1]
    low = downsample(clean, degradation.factor, degradation.down_mode) if task == "sr" else None
    predictions: dict[str, Any] = {}
    for name in BASELINES[task]:
        predictions[name] = run_baseline(task, name, cond_image, low_res=low, mask=degraded.mask).clamp(-1, 1)

    singles, means, stds = [], [], []
    s = args.num_samples
    for start in range(0, n, args.batch_size):
        sl = slice(start, min(start + args.batch_size, n))
        generator = torch.Generator(device="cpu").manual_seed(args.seed * 1_000_003 + start)
        result = pipe(
            image=cond_image[sl].to(device),
            mask=degraded.mask[sl].to(device) if degraded.mask is not None else None,
            num_samples=s,
            num_inference_steps=args.num_inference_steps,
            generator=generator,
            output_type="pt",
            task=task,
            sampler=args.sampler,
            image_size=tuple(cond_image.shape[-2:]),
        )
        imgs = result.images.cpu().reshape(-1, s, *result.images.shape[1:])
        singles.append(imgs[:, 0])
        means.append(result.mean.cpu() if s > 1 else imgs[:, 0])
        stds.append((result.std.cpu()[:, 0] / 2).numpy() if s > 1 else None)
    predictions["cDDPM (1 sample)"] = torch.cat(singles)
    if s > 1:
        predictions[f"cDDPM (mean of {s})"] = torch.cat(means)
    std = None if s == 1 else np.concatenate(stds)

    rows = evaluate_restorations(predictions, clean, lpips_fn, args.features)
    fig_cols = {"condition": cond_image, **predictions, "target": clean}
    figure = save_figure(fig_cols, out / f"figure_{tag}.png", args.figure_rows, std)
    return {"setting": tag, "degradation": degradation.to_dict(), "metrics": rows, "figure": figure.name}


def run(args: argparse.Namespace) -> int:
    import torch

    from medsd.data.degradations import Degradation
    from medsd.pipelines.cddpm import MedCDDPMPipeline

    out = check_out_dir(args.out, RESULT_FILES, args.overwrite)
    given_factors = parse_factors(args.factor)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = MedCDDPMPipeline.from_pretrained(args.model, allow_pickle=args.allow_pickle).to(device)
    pipe.set_progress_bar_config(disable=True)
    meta = pipe.medsd_metadata or {}
    task = args.task or pipe.task
    if task is None:
        raise ValueError("the model saves no task; pass --task sr|denoise|inpaint")
    base = dict(meta.get("degradation") or {})
    base["task"] = task
    if args.mask_kind:
        base["mask_kind"] = args.mask_kind
    if args.mask_file:
        base["mask_file"] = args.mask_file
        base.setdefault("mask_kind", "file")
    if task == "sr":
        factors = given_factors or [float(base.get("factor", 4.0))]
    else:
        factors = [None]
    resolution = args.resolution or int(meta.get("resolution") or pipe.unet.config.sample_size)
    split_seed = args.split_seed if args.split_seed is not None else int(meta.get("data_seed", 0))
    # the saved (fitted) intensity window applies to the data the model was trained on
    same_source = str(meta.get("train_data")) == str(args.data)
    clean, patient_ids = load_test_images(
        args, resolution, split_seed, pipe.intensity_mapping if same_source else None
    )
    lpips_fn = _Lpips(not args.no_lpips)
    out.mkdir(parents=True, exist_ok=True)

    results = []
    md = [f"# cDDPM evaluation: {args.model}", ""]
    for factor in factors:
        cfg = dict(base, factor=factor) if factor is not None else base
        degradation = Degradation.from_dict(cfg)
        tag = f"{task}_x{factor:g}" if factor is not None else task
        res = evaluate_setting(pipe, clean, degradation, args, lpips_fn, out, tag)
        results.append(res)
        title = f"{degradation.describe()}: {len(clean)} {args.split} images, {args.num_samples} samples"
        notes = [lpips_fn.note] if lpips_fn.note else []
        if len(clean) < 100:
            notes.append(
                f"the Fréchet distance on {len(clean)} images is only indicative (feature covariances from fewer "
                "images than features are rank-deficient); use a few hundred test images for a stable value"
            )
        md.append(markdown_table(title, res["metrics"], notes))
        md.append(f"![{tag}]({res['figure']})\n")
        print(markdown_table(title, res["metrics"], notes))
    report = {
        "model": str(args.model),
        "task": task,
        "data": args.data,
        "split": args.split,
        "split_seed": split_seed,
        "num_images": int(len(clean)),
        "subsample": {
            "method": "medsd.metrics.subsample.stratified_subsample (label- and patient-stratified, seeded)",
            "seed": args.seed if args.subsample_seed is None else args.subsample_seed,
        },
        "num_patients": len({p for p in patient_ids if p is not None}) or None,
        "num_samples": args.num_samples,
        "sampler": args.sampler or type(pipe.scheduler).__name__,
        "num_inference_steps": args.num_inference_steps,
        "seed": args.seed,
        "lpips_note": lpips_fn.note,
        "results": results,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "metrics.md").write_text("\n".join(md))
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and figures to {out}")
    return 0
