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


class IntensityMapping:
    """Base class: a linear map of ``[low, high]`` (native units) onto [-1, 1]."""

    kind = "base"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
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
        a = _to_numpy(x)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
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
        a = _to_numpy(x).ravel()
        lo, hi = (float(v) for v in np.nanpercentile(a, [self.lower, self.upper]))
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
