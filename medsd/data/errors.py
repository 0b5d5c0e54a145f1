"""Errors raised by the data layer."""

from __future__ import annotations

from medsd.errors import MedsdError


class MedImageError(MedsdError, ValueError):
    """A bad input file, field or setting; the message is one line naming the culprit and what was expected."""
