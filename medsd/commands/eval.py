"""``medsd eval``: compare a synthetic image set with a real one (and audit memorisation of a training set).

Exit codes: 0 success, 2 usage/data/missing-weights error (message on stderr, no traceback), 3 copies of training
images found and ``--fail_on_copies`` given.
"""

from __future__ import annotations

import argparse
import sys

from .common import check_input_path, check_out_dir, standalone_main

HELP = "evaluate synthetic images against real ones (distribution, quality, diversity, memorisation)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per ``EvalConfig`` field (help, range and aliases from the field), and ``--fail_on_copies``."""
    from medsd.flags import add_dataclass_arguments
    from medsd.metrics.evaluate import EvalConfig

    add_dataclass_arguments(p, EvalConfig, config_file=False)
    p.add_argument("--fail_on_copies", action="store_true", help="exit with code 3 when copies are found")


REPORT_FILES = ("report.json", "report.md")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ".")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    """The ``EvalConfig`` of the parsed flags, its values checked against each field's range and choices."""
    from medsd.flags import check_field_values, config_from_args
    from medsd.metrics.evaluate import EvalConfig

    config = config_from_args(EvalConfig, args)
    check_field_values(config)
    return config


def check_inputs(config) -> None:
    """Weight files given as flags exist; --out is a folder. An earlier report there is replaced, and said so:
    re-running into the same folder is how its feature cache (OUT/cache) is reused."""
    for flag in ("inception_weights", "clip_checkpoint", "lpips_weights"):
        check_input_path(getattr(config, flag), f"--{flag}")
    out = check_out_dir(config.out, (), overwrite=True)
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
        config = config_from_args(args)
        check_inputs(config)
        report, code = evaluate(config, log=lambda s: print(s, file=sys.stderr))
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
    print(f"wrote {config.out}/report.md and report.json")
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
