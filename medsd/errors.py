"""The base class of every error medsd means a user to read (the CLI prints it as one line), and the two
checks that produce them for flags: :func:`check_values` (numeric ranges) and :class:`OneLineArgumentParser`
(usage errors)."""

from __future__ import annotations

import argparse
import typing
from typing import Any


class MedsdError(Exception):
    """A user-facing error: bad input, a missing file or package, an incompatible install.

    The message is one line that names the culprit, what was expected and, where there is one, the fix.
    """


class MedsdConfigError(MedsdError, ValueError):
    """A bad argument, setting or model folder (also a ``ValueError``)."""


def check_values(
    values: Any,
    at_least: dict[str, float] | None = None,
    positive: tuple[str, ...] = (),
    unit_interval: tuple[str, ...] = (),
    at_most: dict[str, float] | None = None,
    one_of: dict[str, typing.Sequence[Any]] | None = None,
) -> None:
    """Refuse, in one line naming the flag (``--name: expected a number >= 1, got 0``), a value out of range
    or (``one_of``) not among the choices.

    ``values`` is a config dataclass or an ``argparse.Namespace``; a value of None (an optional flag not given)
    passes. Used by :func:`check_ranges` for training and by every ``medsd`` command for its numeric flags
    (``value_ranges`` in the command's parser defaults).
    """

    def bad(name: str, expected: str) -> MedsdConfigError:
        return MedsdConfigError(f"--{name}: expected {expected}, got {getattr(values, name)!r}")

    def given(name: str) -> bool:
        return getattr(values, name, None) is not None

    for name, low in (at_least or {}).items():
        if given(name) and not getattr(values, name) >= low:
            raise bad(name, f"a number >= {low}")
    for name, high in (at_most or {}).items():
        if given(name) and not getattr(values, name) <= high:
            raise bad(name, f"a number <= {high}")
    for name in positive:
        if given(name) and not getattr(values, name) > 0:
            raise bad(name, "a number > 0")
    for name in unit_interval:
        if given(name) and not 0 <= getattr(values, name) <= 1:
            raise bad(name, "a number in [0, 1]")
    for name, choices in (one_of or {}).items():
        if given(name) and getattr(values, name) not in choices:
            raise bad(name, "one of " + " / ".join(map(str, choices)))


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``PROG: error: MESSAGE (see PROG --help)``)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")
