"""Intensity mappings between native image units (HU, raw 8/16-bit values) and the model range [-1, 1].

All mappings are linear on a ``[low, high]`` interval: ``forward`` maps it onto [-1, 1] and clips,
``inverse`` maps back (exact inside the interval up to float32 rounding). They accept numpy arrays and
torch tensors alike and return the same kind (float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MedImageError


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, list | tuple):
        return np.concatenate([_to_numpy(v).ravel() for v in x])
    if _is_torch(x):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _finite_values(x: Any, where: str) -> np.ndarray:
    """The finite values of ``x`` (flattened); fitting never sees NaN or infinity."""
    a = _to_numpy(x).ravel()
    finite = np.isfinite(a)
    if not finite.all():
        a = a[finite]
    if a.size == 0:
        raise MedImageError(f"{where}: no finite values to fit; expected images with finite pixels")
    return a


class IntensityMapping:
    """Base class: a linear map of ``[low, high]`` (native units) onto [-1, 1]."""

    kind = "base"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        for name, v in (("low", self.low), ("high", self.high)):
            if v is not None and not np.isfinite(v):
                raise MedImageError(f"{type(self).__name__}: expected a finite {name}, got {v}")
        if self.low is not None and self.high is not None and not self.high > self.low:
            raise MedImageError(f"{type(self).__name__}: expected high > low, got low={low}, high={high}")

    @property
    def fitted(self) -> bool:
        return self.low is not None and self.high is not None

    def fit(self, x: Any) -> IntensityMapping:
        """Fit data-dependent parameters on ``x`` (an array, tensor or list of them); no-op for fixed ones."""
        return self

    def _bounds(self) -> tuple[float, float]:
        if not self.fitted:
            raise MedImageError(f"{type(self).__name__}: not fitted; call fit(data) before forward/inverse")
        return self.low, self.high  # type: ignore[return-value]

    def forward(self, x: Any) -> Any:
        """Native units -> float32 in [-1, 1] (values outside ``[low, high]`` are clipped)."""
        low, high = self._bounds()
        scale = 2.0 / (high - low)
        if _is_torch(x):
            return ((x.float() - low) * scale - 1.0).clamp_(-1.0, 1.0)
        y = (np.asarray(x, dtype=np.float64) - low) * scale - 1.0
        return np.clip(y, -1.0, 1.0).astype(np.float32)

    def inverse(self, y: Any) -> Any:
        """[-1, 1] -> float32 native units (inputs are clipped to [-1, 1] first)."""
        low, high = self._bounds()
        half = (high - low) / 2.0
        if _is_torch(y):
            return (y.float().clamp(-1.0, 1.0) + 1.0) * half + low
        y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
        return ((y + 1.0) * half + low).astype(np.float32)

    __call__ = forward

    def to_dict(self) -> dict:
        """JSON-serialisable parameters; ``mapping_from_dict`` rebuilds the mapping."""
        return {"type": self.kind, "low": self.low, "high": self.high}

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` as JSON (e.g. ``intensity_mapping.json`` next to a model)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> IntensityMapping:
        """Read a mapping written by ``save``."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MedImageError(f"{path}: cannot read intensity mapping JSON ({e})") from None
        return mapping_from_dict(d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntensityMapping) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


class WindowMapping(IntensityMapping):
    """Fixed window ``[low, high]``, e.g. ``WindowMapping(0, 255)`` for 8-bit images."""

    kind = "window"

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)

    @classmethod
    def from_width_level(cls, width: float, level: float) -> WindowMapping:
        """CT-style window, e.g. lung ``from_width_level(1500, -600)`` = [-1350, 150] HU."""
        if not width > 0:
            raise MedImageError(f"WindowMapping.from_width_level: expected width > 0, got {width}")
        return cls(level - width / 2.0, level + width / 2.0)

    def to_dict(self) -> dict:
        return {"type": self.kind, "low": self.low, "high": self.high}


class MinMaxMapping(IntensityMapping):
    """Data-fitted window: the global minimum and maximum of the data given to ``fit``."""

    kind = "minmax"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        super().__init__(low, high)

    def fit(self, x: Any) -> MinMaxMapping:
        a = _finite_values(x, "MinMaxMapping.fit")
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            raise MedImageError(f"MinMaxMapping.fit: data is constant ({lo}); expected a range of values")
        self.low, self.high = lo, hi
        return self


class PercentileMapping(IntensityMapping):
    """Data-fitted window between the ``lower`` and ``upper`` percentiles (robust to outliers)."""

    kind = "percentile"

    def __init__(
        self, lower: float = 0.5, upper: float = 99.5, low: float | None = None, high: float | None = None
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise MedImageError(
                f"PercentileMapping: expected 0 <= lower < upper <= 100, got {lower}, {upper}"
            )
        self.lower, self.upper = float(lower), float(upper)
        super().__init__(low, high)

    def fit(self, x: Any) -> PercentileMapping:
        a = _finite_values(x, "PercentileMapping.fit")
        lo, hi = (float(v) for v in np.percentile(a, [self.lower, self.upper]))
        if not hi > lo:
            raise MedImageError(
                f"PercentileMapping.fit: percentiles {self.lower}/{self.upper} are equal ({lo}); "
                "expected a range of values"
            )
        self.low, self.high = lo, hi
        return self

    def to_dict(self) -> dict:
        return {
            "type": self.kind,
            "lower": self.lower,
            "upper": self.upper,
            "low": self.low,
            "high": self.high,
        }


_TYPES: dict[str, type[IntensityMapping]] = {
    "window": WindowMapping,
    "minmax": MinMaxMapping,
    "percentile": PercentileMapping,
}


def mapping_from_dict(d: dict) -> IntensityMapping:
    """Rebuild a mapping from ``to_dict()`` output."""
    if not isinstance(d, dict) or d.get("type") not in _TYPES:
        got = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise MedImageError(f"intensity mapping: expected 'type' in {sorted(_TYPES)}, got {got!r}")
    params = {k: v for k, v in d.items() if k != "type"}
    try:
        return _TYPES[d["type"]](**params)
    except TypeError as e:
        raise MedImageError(f"intensity mapping {d['type']!r}: bad parameters {params} ({e})") from None


CT_WINDOW = (-1000.0, 1000.0)
"""Default HU window of CT DICOM: air (-1000) to dense bone (+1000), the same for every CT source."""
_CHOICES = (
    "set the intensity mapping yourself: --intensity window with --window LOW,HIGH, "
    "--intensity minmax or --intensity percentile"
)


def _sample_kind(array: np.ndarray, meta: dict) -> str:
    fmt, depth = meta.get("format"), meta.get("bit_depth")
    if fmt == "DICOM":
        return "CT DICOM (HU)" if str(meta.get("modality") or "").upper() == "CT" else "DICOM"
    if fmt == "NIFTI":
        return "NIfTI"
    if depth == 8:
        return "8-bit"
    if depth == 16:
        return "16-bit"
    a = np.asarray(array)
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        return "float in [0, 1]"
    if finite.size and np.array_equal(finite, np.round(finite)):
        return "32-bit integer"
    return "float"


def default_mapping(samples: list[tuple[np.ndarray, dict]], where: str) -> tuple[IntensityMapping, str]:
    """The intensity mapping chosen from the data when none is set, fitted on ``samples`` ((array, meta)
    pairs as ``read_image`` gives), and a short description of the choice.

    8-bit images: window 0..255. 16-bit and 32-bit integer images: the range of the samples (``minmax``).
    CT DICOM: the HU window ``CT_WINDOW``. Other DICOM (MR, DX, ...): the span of the stored windows
    (WindowCenter/WindowWidth) when every sample has one, else the 0.5/99.5 percentiles. NIfTI: the
    percentiles. Floats in [0, 1]: window 0..1. Other floats, or samples of different kinds (e.g. 8- and
    16-bit files together), raise ``MedImageError`` naming an example file and the ``--intensity`` choices.
    """
    try:
        return _default_mapping(samples, where)
    except MedImageError as e:
        msg = str(e)
        raise MedImageError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _default_mapping(samples: list[tuple[np.ndarray, dict]], where: str) -> tuple[IntensityMapping, str]:
    if not samples:
        raise MedImageError(f"{where}: no images to choose the intensity mapping from")
    kinds: dict[str, list[tuple[np.ndarray, dict]]] = {}
    for a, meta in samples:
        kinds.setdefault(_sample_kind(a, meta), []).append((a, meta))
    if len(kinds) > 1:
        examples = "; ".join(f"{k}: {v[0][1].get('path')}" for k, v in kinds.items())
        raise MedImageError(
            f"{where}: images of different kinds ({examples}) have no common default intensity mapping; "
            + _CHOICES
        )
    ((kind, items),) = kinds.items()
    arrays = [a for a, _ in items]
    if kind == "8-bit":
        return WindowMapping(0.0, 255.0), "8-bit images: window 0..255"
    if kind == "float in [0, 1]":
        return WindowMapping(0.0, 1.0), "floating-point images in [0, 1]: window 0..1"
    if kind == "CT DICOM (HU)":
        return WindowMapping(*CT_WINDOW), f"CT DICOM: HU window {CT_WINDOW[0]:g}..{CT_WINDOW[1]:g}"
    if kind in ("16-bit", "32-bit integer"):
        return MinMaxMapping().fit(arrays), f"{kind} images: their range (minmax)"
    windows = [m.get("window") for _, m in items]
    if kind == "DICOM" and all(w is not None for w in windows):
        low = min(c - w / 2.0 for c, w in windows)
        high = max(c + w / 2.0 for c, w in windows)
        return WindowMapping(low, high), "DICOM: the stored window (WindowCenter/WindowWidth)"
    if kind in ("DICOM", "NIfTI"):
        return PercentileMapping().fit(arrays), f"{kind} images: percentiles 0.5..99.5"
    lo = min(float(np.nanmin(a)) for a in arrays)
    hi = max(float(np.nanmax(a)) for a in arrays)
    raise MedImageError(
        f"{where}: floating-point pixel values {lo:g}..{hi:g} (e.g. {items[0][1].get('path')}) are not in "
        f"[0, 1], so no default intensity mapping applies; " + _CHOICES
    )
