"""``medsd push OUTPUT_DIR --repo_id NAME/REPO``: upload a finished model to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from .common import add_allow_pickle


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a trained model folder to the Hugging Face Hub (private by default)",
        description="Upload a finished medsd output folder (model, card; no checkpoints or logs) to the Hub. "
        "Refused when the memorisation audit of a `medsd eval --train` report (OUTPUT_DIR/eval/report.json or "
        "--eval_report) found copies of training images (unless --allow_memorised), or is missing or invalid "
        "(unless --skip_audit); the card then says which flag let it through.",
    )
    p.add_argument("output_dir", help="a finished training output folder (or a `medsd generate` dataset)")
    p.add_argument("--repo_id", required=True, help="NAME/REPO on the Hub")
    p.add_argument(
        "--token",
        default=None,
        help="Hub token (default: HF_TOKEN or `huggingface-cli login`); never printed",
    )
    p.add_argument("--public", action="store_true", help="make the repo public (default: private)")
    p.add_argument("--eval_report", default=None, help="a `medsd eval` report.json for the card and the gate")
    p.add_argument(
        "--allow_memorised",
        action="store_true",
        help="push even if the audit found copies (the card says so)",
    )
    p.add_argument(
        "--skip_audit",
        action="store_true",
        help="push without a valid memorisation audit (missing or invalid; the card says so)",
    )
    p.add_argument(
        "--repo_type",
        default="model",
        choices=["model", "dataset"],
        help="dataset: OUTPUT_DIR is a `medsd generate` output folder, uploaded with its dataset card",
    )
    add_allow_pickle(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medsd.pipelines.folder import check_shareable_folder
    from medsd.training.hub import push_folder

    options = dict(
        token=args.token,
        private=not args.public,
        allow_memorised=args.allow_memorised,
        skip_audit=args.skip_audit,
        eval_report=args.eval_report,
    )
    if getattr(args, "repo_type", "model") == "dataset":
        from .push_dataset import push_dataset_folder

        push_dataset_folder(args.output_dir, args.repo_id, **options)
        return 0
    # a checkpoint, an unfinished run or pickle-only weights are refused before any network call
    check_shareable_folder(Path(args.output_dir), allow_pickle=args.allow_pickle)
    push_folder(args.output_dir, args.repo_id, **options)
    return 0
