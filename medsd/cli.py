"""The ``medsd`` command: ``medsd <command> --help`` explains each one."""

from __future__ import annotations

import argparse
import importlib
import sys

from medsd.errors import MedsdError

# Each module in medsd/commands registers its sub-command(s); imports inside them are deferred.
COMMAND_MODULES = [
    "quickstart",
    "train",
    "generate",
    "sample",
    "push",
    "eval",
    "ablation",
    "xray_table",
    "cddpm_eval",
    "reader_study",
    "tstr",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsd",
        description="Synthetic chest X-ray and CT images with diffusers: train, sample and evaluate.",
        epilog="Start with `medsd quickstart` (CPU, a few minutes, no download).",
    )
    parser.add_argument("--version", action="version", version=f"medsd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"medsd.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"medsd.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from medsd import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user-facing errors become one line; bugs keep their traceback
        # MedsdError is medsd's own; the built-in ones are what bad paths and arguments raise in libraries
        expected = (
            MedsdError,
            ValueError,
            FileNotFoundError,
            FileExistsError,
            ImportError,
            OSError,
            KeyError,
        )
        if getattr(args, "debug", False) or not isinstance(e, expected):
            raise
        print(f"medsd {args.command}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # e.g. 143 after a SIGTERM checkpoint


if __name__ == "__main__":
    sys.exit(main())
