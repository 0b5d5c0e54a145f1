"""``medsd eval``: compare a synthetic image set with a real one (and audit memorisation of a training set).

Exit codes: 0 success, 2 usage/data/missing-weights error (message on stderr, no traceback), 3 copies of training
images found and ``--fail_on_copies`` given.
"""

from __future__ import annotations

import argparse
import sys

from medsd.data.splits import SPLIT_CHOICES

from .common import check_input_path, check_out_dir, standalone_main, value_ranges

HELP = "evaluate synthetic images against real ones (distribution, quality, diversity, memorisation)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group(
        "sources (folder, metadata CSV with a filename column, or hf:<dataset id>[:split])"
    )
    io.add_argument("--real", required=True, help="real images")
    io.add_argument("--fake", required=True, help="synthetic images")
    io.add_argument("--train", default=None, help="training images for the memorisation audit")
    io.add_argument("--out", required=True, help="output folder (report.json, report.md, figures/, cache/)")
    io.add_argument("--real_label", default=None, help="keep only these labels from --real (comma-separated)")
    io.add_argument("--fake_label", default=None, help="keep only these labels from --fake (comma-separated)")
    io.add_argument(
        "--train_label", default=None, help="keep only these labels from --train (comma-separated)"
    )
    io.add_argument("--label_column", default="label", help="CSV label column (default: label)")
    io.add_argument("--filename_column", default="filename", help="CSV file-name column (default: filename)")
    io.add_argument(
        "--patient_column",
        default="patient_id",
        help="patient id column, used when present (default: patient_id)",
    )
    io.add_argument(
        "--intensity",
        default=None,
        help="intensity mapping, as in training: auto (default: chosen from the data, e.g. 0..255 for 8-bit), "
        "window (see --window), minmax or percentile",
    )
    io.add_argument(
        "--window",
        default=None,
        metavar="LOW,HIGH",
        help="window of --intensity window in native units, e.g. the training window",
    )
    io.add_argument(
        "--max_images",
        type=int,
        default=None,
        help="subsample each set to at most N (seeded random; label-proportional and spread over patients for CSVs)",
    )
    io.add_argument(
        "--max_train_images",
        type=int,
        default=None,
        help="subsample --train to at most N (default: every training image is audited)",
    )
    for name in ("real", "fake", "train"):
        io.add_argument(
            f"--{name}_split",
            default="all",
            choices=SPLIT_CHOICES,
            help=f"part of --{name}'s patient-level split, as training splits it with the same --seed "
            "(heldout = val and test: patients a model trained on the train split never saw; default all)",
        )
    io.add_argument("--size", type=int, default=128, help="working resolution in px (default 128)")
    io.add_argument("--seed", type=int, default=0)
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--features",
        nargs="+",
        default=["radiomics"],
        help="feature extractors: radiomics (default, offline; medsd distance, not comparable to published FID), "
        "inception (standard FID/KID on raw features), clip:<arch>[:<tag>], clip:biomedclip, xrv",
    )
    m.add_argument(
        "--inception_weights",
        default=None,
        help="FID Inception weights file (pt_inception-2015-12-05-6726825d.pth); or MEDSD_INCEPTION_WEIGHTS",
    )
    m.add_argument(
        "--clip_checkpoint", default=None, help="local open_clip checkpoint; or MEDSD_CLIP_CHECKPOINT"
    )
    m.add_argument("--k", type=int, default=3, help="k for precision/recall k-NN manifolds (default 3)")
    m.add_argument("--kid_subsets", type=int, default=100)
    m.add_argument("--kid_subset_size", type=int, default=1000)
    m.add_argument(
        "--diversity_pairs", type=int, default=200, help="image pairs for the MS-SSIM diversity (default 200)"
    )
    m.add_argument(
        "--class_pairs", type=int, default=500, help="pairs per class for the class-set table (default 500)"
    )
    m.add_argument(
        "--paired", action="store_true", help="also compute paired metrics (fake/real matched by file name)"
    )
    m.add_argument(
        "--lpips", action="store_true", help="with --paired: LPIPS (needs torchvision backbone weights)"
    )
    m.add_argument(
        "--lpips_weights",
        default=None,
        help="torchvision AlexNet backbone file for LPIPS (alexnet-owt-7be5be79.pth); implies --lpips",
    )
    m.add_argument(
        "--reference_draws",
        type=int,
        default=10,
        help="random draws for the same-size real/real reference (default 10; 0 = none)",
    )
    m.add_argument(
        "--copy_quantile",
        type=float,
        default=0.005,
        help="memorisation audit: flag a generated image closer to a training image than this quantile of "
        "held-out real images are, per detector (default 0.005: about 1%% of new images flagged; needs at "
        "least 1/quantile held-out images)",
    )
    m.add_argument(
        "--planted_per_kind",
        type=int,
        default=20,
        help="memorisation self-test: transformed copies of training images planted per kind (default 20)",
    )
    m.add_argument(
        "--min_planted_recall",
        type=float,
        default=0.9,
        help="memorisation self-test: the audit is invalid when any kind's recall is below this (default 0.9)",
    )
    m.add_argument(
        "--copy_threshold",
        type=float,
        default=None,
        help="a fixed registered-NCC copy threshold instead of the calibrated one (default: calibrated)",
    )
    m.add_argument(
        "--ncc_size", type=int, default=64, help="resolution of the registered-NCC copy search (default 64)"
    )
    m.add_argument("--fail_on_copies", action="store_true", help="exit with code 3 when copies are found")
    m.add_argument(
        "--downstream",
        action="store_true",
        help="train small CNNs on synthetic / real / both (labels needed) and test on held-out real",
    )
    m.add_argument("--downstream_epochs", type=int, default=15)
    m.add_argument(
        "--no_c2st",
        action="store_true",
        help="skip the classifier two-sample test (a small CNN telling real from fake; on by default)",
    )
    m.add_argument("--c2st_folds", type=int, default=5, help="cross-validation folds of the C2ST (default 5)")
    m.add_argument("--c2st_epochs", type=int, default=12, help="C2ST classifier epochs (default 12)")
    m.add_argument(
        "--c2st_draws",
        type=int,
        default=3,
        help="random real-vs-real draws for the C2ST floor at the same size (default 3; 0 = none)",
    )
    m.add_argument(
        "--no_image_figures",
        action="store_true",
        help="write only plots, no figures showing images (sample grids, NN pairs)",
    )
    m.add_argument("--device", default="cpu", help="device for learned extractors (default cpu)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(value_ranges=EVAL_RANGES)


EVAL_RANGES = value_ranges(
    at_least={
        "max_images": 2,
        "max_train_images": 2,
        "c2st_folds": 2,
        "c2st_epochs": 1,
        "c2st_draws": 0,
        "size": 16,
        "k": 1,
        "kid_subsets": 1,
        "kid_subset_size": 2,
        "diversity_pairs": 1,
        "class_pairs": 1,
        "reference_draws": 0,
        "ncc_size": 16,
        "planted_per_kind": 1,
        "downstream_epochs": 1,
    },
    positive=("copy_quantile",),
    unit_interval=("copy_threshold", "copy_quantile", "min_planted_recall"),
)
REPORT_FILES = ("report.json", "report.md")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ".")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window: expected LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


def config_from_args(args):
    """The ``EvalConfig`` of the parsed flags: every flag named like a field sets it."""
    import dataclasses

    from medsd.metrics.evaluate import EvalConfig

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(
        features=list(args.features),
        window=_window(args.window),
        lpips=args.lpips or bool(args.lpips_weights),
        image_figures=not args.no_image_figures,
        c2st=not args.no_c2st,
        progress=not args.quiet,
    )
    return EvalConfig(**values)


def check_inputs(args) -> None:
    """Weight files given as flags exist; --out is a folder. An earlier report there is replaced, and said so:
    re-running into the same folder is how its feature cache (OUT/cache) is reused."""
    for flag in ("inception_weights", "clip_checkpoint", "lpips_weights"):
        check_input_path(getattr(args, flag), f"--{flag}")
    out = check_out_dir(args.out, (), overwrite=True)
    if (out / REPORT_FILES[0]).exists():
        print(
            f"medsd eval: replacing the report in {out} (cached features in {out / 'cache'} are reused)",
            file=sys.stderr,
        )


def run(args) -> int:
    from medsd.metrics.evaluate import EXIT_COPIES, EXIT_ERROR, EXIT_OK, evaluate
    from medsd.metrics.features import MissingWeightsError

    debug = getattr(args, "debug", False)
    try:
        check_inputs(args)
        report, code = evaluate(config_from_args(args), log=lambda s: print(s, file=sys.stderr))
    except MissingWeightsError as e:
        if debug:
            raise
        print(f"medsd eval: missing weights: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        if debug:
            raise
        print(f"medsd eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {args.out}/report.md and report.json")
    if code == EXIT_COPIES and args.fail_on_copies:
        n = report["memorisation"]["n_copies"]
        print(
            f"medsd eval: {n} generated image(s) copy training images (see the memorisation section of report.md)",
            file=sys.stderr,
        )
        return EXIT_COPIES
    return EXIT_OK


def main(argv=None) -> int:
    return standalone_main("medsd eval", HELP + ".", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
