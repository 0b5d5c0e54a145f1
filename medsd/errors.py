"""The base class of every error medsd means a user to read (the CLI prints it as one line)."""

from __future__ import annotations


class MedsdError(Exception):
    """A user-facing error: bad input, a missing file or package, an incompatible install.

    The message is one line that names the culprit, what was expected and, where there is one, the fix.
    """


class MedsdConfigError(MedsdError, ValueError):
    """A bad argument, setting or model folder (also a ``ValueError``)."""
