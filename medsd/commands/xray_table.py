"""``medsd xray-table``: MSE and SSIM between synthetic class sets and real class sets (Abeywardane et al.)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_allow_pickle, add_overwrite, check_out_dir, value_ranges

XRAY_TABLE_RANGES = value_ranges(
    at_least={"size": 8, "num_images": 2, "max_pairs": 1, "num_inference_steps": 1}
)
RESULT_FILES = ("xray_table.json", "xray_table.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "xray-table",
        help="MSE/SSIM between synthetic and real images of each class (X-ray synthesizer paper, Table 1)",
        description=(
            "For every synthetic set (a trained pipeline, sampled here, or a folder of images) and every real "
            "class, the mean MSE and SSIM over image pairs, as in Abeywardane et al. Table 1 (synthetic "
            "pneumonia vs real pneumonia and vs real normal). Real-vs-real rows give the baseline."
        ),
    )
    p.add_argument(
        "--fake",
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="synthetic set: NAME=pipeline folder (sampled) or NAME=image folder; repeatable",
    )
    p.add_argument("--real", required=True, help="real images: metadata CSV, folder or datasets id")
    p.add_argument(
        "--classes", required=True, help="comma-separated real class labels, e.g. 'No Finding,Pneumonia'"
    )
    p.add_argument("--label_column", default="label")
    p.add_argument("--size", type=int, default=128, help="images are compared at this size")
    p.add_argument("--num_images", type=int, default=64, help="images per set")
    p.add_argument("--max_pairs", type=int, default=500)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--out", default="outputs/xray_table")
    p.add_argument("--seed", type=int, default=0)
    add_allow_pickle(p)
    add_overwrite(p, "xray_table.json and xray_table.md")
    p.set_defaults(func=run, value_ranges=XRAY_TABLE_RANGES)


def _fake_set(source: str, args: argparse.Namespace):
    import numpy as np
    import torch

    from medsd.metrics.io import load_subsampled, preprocess

    path = Path(source)
    if (path / "model_index.json").is_file():
        from medsd.pipelines.ddpm import MedDDPMPipeline

        pipe = MedDDPMPipeline.from_pretrained(path, allow_pickle=args.allow_pickle)
        pipe.to("cuda" if torch.cuda.is_available() else "cpu")
        images = pipe(
            batch_size=args.num_images,
            num_inference_steps=args.num_inference_steps,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
        ).images
        return np.stack([preprocess(x, args.size) for x in images])
    return load_subsampled(source, size=args.size, max_images=args.num_images, seed=args.seed).images


def _mean_pairs(a, b, max_pairs: int, seed: int, same: bool = False) -> tuple[float, float]:
    import numpy as np

    from medsd.metrics.paired import ssim_per_image

    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), max_pairs)
    ib = rng.integers(0, len(b), max_pairs)
    if same:  # real-vs-real baseline: distinct images only
        keep = ia != ib
        ia, ib = ia[keep], ib[keep]
    pa, pb = a[ia][:, None], b[ib][:, None]
    mse = float(((pa.astype(np.float64) - pb) ** 2).mean())
    return mse, float(ssim_per_image(pa, pb).mean())


def run(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out, RESULT_FILES, args.overwrite)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise ValueError(f"--classes: expected comma-separated class labels, got {args.classes!r}")
    for spec in args.fake:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--fake {spec!r}: expected NAME=SOURCE")
        if not Path(source).exists() and not source.startswith("hf:"):
            raise FileNotFoundError(f"--fake {spec}: {source} does not exist")
    from medsd.metrics.io import load_subsampled

    real = {
        c: load_subsampled(
            args.real,
            size=args.size,
            label=c,
            label_column=args.label_column,
            max_images=args.num_images,
            seed=args.seed,
        ).images
        for c in classes
    }
    for c, imgs in real.items():
        if len(imgs) < 2:
            raise ValueError(f"--real {args.real}: fewer than 2 images with {args.label_column} = {c!r}")
    fakes = {}
    for spec in args.fake:
        name, sep, source = spec.partition("=")
        if not sep:
            raise ValueError(f"--fake {spec!r}: expected NAME=SOURCE")
        fakes[f"synthetic {name}"] = _fake_set(source, args)
    rows = []
    for set_name, images in [*fakes.items(), *((f"real {c}", v) for c, v in real.items())]:
        for c in classes:
            same = set_name == f"real {c}"
            mse, ssim = _mean_pairs(images, real[c], args.max_pairs, args.seed, same=same)
            rows.append({"set": set_name, "versus": f"real {c}", "mse": mse, "ssim": ssim, "n": len(images)})
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "value_ranges")},
        "rows": rows,
    }
    (out / "xray_table.json").write_text(json.dumps(report, indent=1))
    lines = ["| images | compared with | MSE ↓ | SSIM ↑ |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['set']} (n={r['n']}) | {r['versus']} | {r['mse']:.4f} | {r['ssim']:.4f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    (out / "xray_table.md").write_text(
        f"# Synthetic vs real class sets (mean over up to {args.max_pairs} random pairs, {args.size} px)\n\n"
        f"Real sets: at most {args.num_images} images per class, seeded random and spread over patients.\n\n{table}\n"
        "Reading it as the paper's Table 1 does: there MSE does not separate the classes (synthetic pneumonia vs "
        "real pneumonia 104.94, vs real normal 105.65) and SSIM does; compare each row with the real-vs-real rows.\n"
    )
    print(table)
    print(f"written to {out / 'xray_table.md'}")
    return 0
