"""``medsd sample --model DIR``: the older name of ``medsd generate DIR`` (kept as an alias).

It takes the model as ``--model`` and names files ``sample_00000.png``; everything else, sidecars included,
is ``medsd generate``'s.
"""

from __future__ import annotations

import argparse

from .generate import add_generate_arguments
from .generate import run as generate_run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="alias of `medsd generate` (model as --model)",
        description="Alias of `medsd generate MODEL` with the model given as --model; see `medsd generate --help`.",
    )
    p.add_argument("--model", required=True, help="model folder or Hub id")
    add_generate_arguments(p, model_positional=False)
    p.set_defaults(func=run, prefix="sample")


def run(args: argparse.Namespace) -> int:
    if args.prefix == "image":  # generate's default; keep sample's historical names
        args.prefix = "sample"
    return generate_run(args)
