"""The ``medsd`` command: ``medsd <command> --help`` explains each one."""

from __future__ import annotations

import argparse
import importlib
import sys

from medsd.errors import MedsdError, OneLineArgumentParser

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
    """The ``medsd`` parser: usage errors are one line, and every command takes ``--debug``."""
    parser = OneLineArgumentParser(
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
    for command in sub.choices.values():
        _add_debug(command)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every (sub-)command that parses its own flags (train's families get it as an extra)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        for child in subs[0].choices.values():
            _add_debug(child)
        return
    if "--debug" not in parser._option_string_actions and parser.add_help:
        parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _version() -> str:
    from medsd import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if "--debug" in extra:  # medsd train FAMILY ... --debug: the family parser has no such flag
        extra = [a for a in extra if a != "--debug"]
        args.debug = True
    args.extra_args = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from medsd.commands.common import check_args

        check_args(args)
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
        message = " ".join(str(e).split())  # one line, whatever the library's message looked like
        print(f"medsd {args.command}: error: {message}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # e.g. 143 after a SIGTERM checkpoint


if __name__ == "__main__":
    sys.exit(main())
