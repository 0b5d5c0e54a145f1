"""Errors raised by the data layer."""

from __future__ import annotations

import re

from medsd.errors import MedsdError

# torch's ExceptionWrapper.reraise builds ``exc_type("Caught X in DataLoader worker process N.\nOriginal
# Traceback ...\nmodule.X: <message>")``: the one-line message is the last line naming the class.
_WORKER_PREFIX = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+|[\w ]+)\.\nOriginal ")


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line (whitespace runs collapsed), cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _unwrap_worker_message(msg: object) -> object:
    if not isinstance(msg, str):
        return msg
    m = _WORKER_PREFIX.match(msg)
    if m is None:
        return one_line(msg, limit=2000) if "\n" in msg else msg
    name = m.group(1)
    for line in reversed(msg.splitlines()):
        head, sep, rest = line.partition(": ")
        if sep and (head == name or head.endswith("." + name)):
            return rest.strip()
    return one_line(msg.splitlines()[-1] if msg.strip() else msg, limit=2000)


class MedImageError(MedsdError, ValueError):
    """A bad input file, field or setting; the message is one line naming the culprit and what was expected.

    The message stays one line even when the error crossed a DataLoader worker: torch re-raises worker errors
    as ``type(e)(traceback_text)``, and this class keeps only the original message of that text.
    """

    def __init__(self, *args: object) -> None:
        if args:
            args = (_unwrap_worker_message(args[0]), *args[1:])
        super().__init__(*args)


class MissingPackageError(MedImageError, ImportError):
    """An optional package needed for a file type is not installed (also an ``ImportError``)."""


def require_package(module: str, extra: str):
    """Import ``module`` or raise ``MissingPackageError`` naming the ``medsd[extra]`` install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(
            f'{module} is required for this file type: pip install "medsd[{extra}]"'
        ) from None
