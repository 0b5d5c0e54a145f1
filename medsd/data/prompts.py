"""Prompts for text-conditioned training: ``PromptTemplate`` and ``normalize_label``."""

from __future__ import annotations

import math
import string
from typing import Any

from .errors import MedImageError


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def normalize_label(label: Any) -> str | None:
    """Lower-case a label for prompts: ``"No_Finding"`` -> ``"no finding"``, ``"A|B"`` -> ``"a, b"``."""
    if _missing(label):
        return None
    parts = [p.strip().replace("_", " ").lower() for p in str(label).split("|")]
    return ", ".join(p for p in parts if p) or None


class PromptTemplate:
    """Format prompts such as ``"a chest x-ray, {view} view, {label}"`` from labels and metadata fields.

    The template is split at commas; a comma-separated part whose fields are missing (absent, None, empty,
    NaN) is dropped, so ``format(label="Pneumonia")`` gives ``"a chest x-ray, pneumonia"``. Labels are
    lower-cased (see ``normalize_label``); other fields are inserted as they are.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.parts: list[tuple[str, list[str]]] = []
        try:
            for part in template.split(","):
                names = [f for _, f, _, _ in string.Formatter().parse(part) if f is not None]
                self.parts.append((part.strip(), names))
        except ValueError as e:
            raise MedImageError(f"prompt template {template!r}: {e}") from None
        for _, names in self.parts:
            for n in names:
                if not n.isidentifier():
                    raise MedImageError(
                        f"prompt template {template!r}: expected {{name}} fields, got {{{n}}}"
                    )

    def format(self, label: Any = None, **fields: Any) -> str | None:
        """The prompt, or None when every part was dropped."""
        values = {k: v for k, v in fields.items() if not _missing(v)}
        if not _missing(label):
            values["label"] = normalize_label(label)
        elif "label" in values:
            values["label"] = normalize_label(values["label"])
        out = []
        for text, names in self.parts:
            if all(n in values for n in names):
                piece = text.format(**{n: values[n] for n in names}).strip()
                if piece:
                    out.append(piece)
        return ", ".join(out) or None

    __call__ = format

    def __repr__(self) -> str:
        return f"PromptTemplate({self.template!r})"


def _as_template(t: str | PromptTemplate | None) -> PromptTemplate | None:
    return PromptTemplate(t) if isinstance(t, str) else t
