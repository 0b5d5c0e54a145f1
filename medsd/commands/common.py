"""What every ``medsd`` command checks before it starts work: devices, output folders, model-loading flags.

Numeric flags are range-checked by :func:`medsd.errors.check_values` (the mechanism training's
``check_ranges`` uses) from the ``value_ranges`` a command sets as a parser default; ``medsd.cli.main`` runs it,
and :func:`check_device` for a ``--device`` flag, right after parsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsd.errors import MedsdConfigError
from medsd.flags import SEED_MAX


def value_ranges(
    at_least: dict[str, float] | None = None,
    positive: tuple[str, ...] = (),
    unit_interval: tuple[str, ...] = (),
    seeds: tuple[str, ...] = ("seed",),
) -> dict[str, Any]:
    """The ``value_ranges`` parser default of a command (seed flags: 0 .. 2**32 - 1)."""
    low = dict(at_least or {})
    low.update(dict.fromkeys(seeds, 0))
    return {
        "at_least": low,
        "positive": positive,
        "unit_interval": unit_interval,
        "at_most": dict.fromkeys(seeds, SEED_MAX),
    }


def check_args(args: argparse.Namespace) -> None:
    """The checks every command gets after parsing: numeric ranges, then ``--device``."""
    ranges = getattr(args, "value_ranges", None)
    if ranges:
        from medsd.errors import check_values

        check_values(args, **ranges)
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def standalone_main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """``python -m medsd.commands.X``: parse, run :func:`check_args` (a refusal is one line, exit 2), then ``run``."""
    from medsd.errors import MedsdError, OneLineArgumentParser

    parser = OneLineArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except MedsdError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return run(args)


def check_device(name: str) -> str:
    """``name`` when it is a device this machine has, else a one-line error naming ``--device``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MedsdConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsdConfigError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MedsdConfigError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ..)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise MedsdConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise MedsdConfigError(f"--device {name!r}: expected cpu, cuda, cuda:N or mps")
    return name


def default_device(requested: str | None) -> str:
    """``--device`` when given (checked), else cuda when available, else cpu."""
    import torch

    if requested:
        return check_device(requested)
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_out_dir(
    out: str | Path,
    results: tuple[str, ...],
    overwrite: bool,
    flag: str = "--out",
    overwrite_flag: str = "--overwrite",
) -> Path:
    """Refuse an output folder that is a file, or that holds ``results`` of an earlier run (unless ``overwrite``).

    Nothing is created here: a command makes the folder once its inputs have been checked, so a refused
    run leaves no partial output.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedsdConfigError(f"{flag} {out} is a file; expected a folder")
    present = [name for name in results if (out / name).exists()]
    if present and not overwrite:
        raise MedsdConfigError(
            f"{flag} {out} already holds {present[0]} from an earlier run; pass {overwrite_flag} to replace it"
        )
    return out


def check_out_file(path: str | Path | None, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to replace an existing output file (unless ``overwrite``)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise MedsdConfigError(f"{flag} {p} is a folder; expected a file name")
    if p.exists() and not overwrite:
        raise MedsdConfigError(f"{flag} {p} already exists; pass --overwrite to replace it")


def check_input_path(path: str | Path | None, flag: str, kind: str = "file") -> None:
    """A path given as a flag exists (and is a ``kind``: "file", "folder" or "any")."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise MedsdConfigError(f"{flag} {p} does not exist")
    if kind == "file" and not p.is_file():
        raise MedsdConfigError(f"{flag} {p} is a folder; expected a file")
    if kind == "folder" and not p.is_dir():
        raise MedsdConfigError(f"{flag} {p} is a file; expected a folder")


def add_allow_pickle(p: argparse.ArgumentParser) -> None:
    """The ``--allow_pickle`` flag of every command that loads a model."""
    p.add_argument(
        "--allow_pickle",
        action="store_true",
        help="also load pickle weights (.bin, .pt, .ckpt), which can run code when loaded; "
        "by default only .safetensors weights load",
    )


def add_overwrite(p: argparse.ArgumentParser, what: str = "the results of an earlier run") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} in the output folder")
