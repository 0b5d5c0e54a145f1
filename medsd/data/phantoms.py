"""Seeded procedural phantoms: frontal chest radiographs and axial chest CT slices, with optional findings.

Images are float32 in [0, 1] (0 = air / black). Radiological convention: the patient's right is on the image
left, so ``Finding(side="right")`` is drawn in the left half of the image. A phantom is a pure function of
``(size, seed, findings)``; adding a finding never changes the rest of the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import MedImageError
from .prompts import PromptTemplate

_KINDS = ("chest", "ct")
_ZONES = ("upper", "middle", "lower")
_SIDES = ("left", "right")


@dataclass(frozen=True)
class Finding:
    """A finding drawn into a phantom: a soft bright opacity inside one lung zone.

    ``side`` is the patient's side (right lung = image left); ``zone`` is the upper, middle or lower third of
    that lung's height in the image; ``radius_frac`` is the blob radius as a fraction of the image size.
    """

    kind: str = "opacity"
    side: str = "right"
    zone: str = "lower"
    radius_frac: float = 0.08
    strength: float = 0.3

    def __post_init__(self) -> None:
        if self.kind != "opacity":
            raise MedImageError(f"Finding.kind: expected 'opacity', got {self.kind!r}")
        if self.side not in _SIDES:
            raise MedImageError(f"Finding.side: expected one of {_SIDES}, got {self.side!r}")
        if self.zone not in _ZONES:
            raise MedImageError(f"Finding.zone: expected one of {_ZONES}, got {self.zone!r}")
        if not 0.0 < self.radius_frac <= 0.5:
            raise MedImageError(f"Finding.radius_frac: expected a value in (0, 0.5], got {self.radius_frac}")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return c[:, None], c[None, :]  # y (rows, down), x (columns, right); broadcast instead of full grids


def _ramp(v: np.ndarray, edge: float) -> np.ndarray:
    """Soft step: 0 for v << 0, 1 for v >> 0, linear over a width of ``edge``."""
    return np.clip(v / edge + 0.5, 0.0, 1.0)


def _ellipse(y, x, cy, cx, ry, rx, edge, power=2.0) -> np.ndarray:
    r = (np.abs((x - cx) / rx) ** power + np.abs((y - cy) / ry) ** power) ** (1.0 / power)
    return _ramp(1.0 - r, edge)


def _add_spots(img, y, x, cy, cx, ry, rx, amp, profile) -> None:
    """Add small spots in place, each evaluated only in its own bounding box (fast for many tiny spots)."""
    size = img.shape[0]
    for i in range(len(cy)):
        r0 = max(int((cy[i] - 2 * ry[i] + 1) * size / 2), 0)
        r1 = min(int((cy[i] + 2 * ry[i] + 1) * size / 2) + 2, size)
        c0 = max(int((cx[i] - 2 * rx[i] + 1) * size / 2), 0)
        c1 = min(int((cx[i] + 2 * rx[i] + 1) * size / 2) + 2, size)
        if r0 >= r1 or c0 >= c1:
            continue
        d2 = ((y[r0:r1] - cy[i]) / ry[i]) ** 2 + ((x[:, c0:c1] - cx[i]) / rx[i]) ** 2
        img[r0:r1, c0:c1] += amp[i] * profile(d2)


def _check(size: int, findings: Sequence[Finding]) -> tuple[Finding, ...]:
    if not isinstance(size, int | np.integer) or size < 16:
        raise MedImageError(f"phantom size: expected an integer >= 16, got {size!r}")
    findings = tuple(findings)
    for f in findings:
        if not isinstance(f, Finding):
            raise MedImageError(f"phantom findings: expected Finding objects, got {type(f).__name__}")
    return findings


def _draw_findings(img, y, x, lungs, findings, rng, size) -> np.ndarray:
    """Add each finding as a Gaussian blob centred in its lung zone; returns the boolean finding mask."""
    mask = np.zeros(img.shape, dtype=bool)
    for f in findings:
        lung = lungs[0 if f.side == "right" else 1]  # patient's right lung is on the image left
        inside = lung > 0.5
        rows = np.nonzero(inside.any(axis=1))[0]
        top, bottom = rows.min(), rows.max() + 1
        third = (bottom - top) / 3.0
        z = _ZONES.index(f.zone)
        band = np.zeros_like(inside)
        band[int(top + z * third) : int(np.ceil(top + (z + 1) * third)), :] = True
        rr, cc = np.nonzero(inside & band)
        if rr.size == 0:
            rr, cc = np.nonzero(inside)
        cy = (rr.mean() + 0.5) / size * 2 - 1 + rng.uniform(-0.03, 0.03)
        cx = (cc.mean() + 0.5) / size * 2 - 1 + rng.uniform(-0.03, 0.03)
        r = 2.0 * f.radius_frac  # image spans 2 units
        d2 = ((y - cy) ** 2 + (x - cx) ** 2) / (r * r)
        blob = np.exp(-d2 * np.log(2.0) * 2.0)  # half maximum at ~0.7 r: soft edge, bright core
        img += f.strength * blob * lung
        mask |= (d2 <= 1.0) & inside
    return mask


def _render_chest(size: int, seed, findings: Sequence[Finding]):
    findings = _check(size, findings)
    rng = np.random.default_rng(seed)
    y, x = _grid(size)
    u = rng.uniform
    tissue = u(0.36, 0.46)
    # body: wide ellipse that runs off the top and bottom; narrows towards the neck
    body = _ellipse(y, x, u(0.05, 0.15), 0.0, u(1.2, 1.35), u(0.8, 0.93), 0.04)
    img = 0.03 + body * tissue
    # lungs (index 0 = image left = patient right); the left hemidiaphragm sits a little lower
    lungs = []
    lung_level = u(0.1, 0.17)
    dome_k = u(1.6, 2.6)
    for i, s in enumerate((-1.0, 1.0)):
        cx = s * u(0.33, 0.41)
        cy = u(-0.14, -0.04)
        ry, rx = u(0.55, 0.66), u(0.22, 0.29)
        lung = _ellipse(y, x, cy, cx, ry, rx, 0.06, power=2.4)
        dome_top = cy + ry * u(0.5, 0.65) + (u(0.02, 0.07) if i == 1 else 0.0)
        dome = dome_top + dome_k * (x - cx) ** 2
        lung = lung * _ramp(dome - y, 0.04)
        lungs.append(lung)
    # heart (towards the patient's left = image right) and mediastinum are not aerated
    heart = _ellipse(y, x, u(0.18, 0.27), u(0.07, 0.15), u(0.2, 0.27), u(0.28, 0.36), 0.08)
    mediastinum = _ramp(u(0.09, 0.13) - np.abs(x - u(-0.02, 0.02)), 0.04) * _ramp(0.5 - y, 0.1)
    solid = np.maximum(heart, mediastinum)
    lungs = [lung * (1.0 - solid) for lung in lungs]
    lung_any = np.maximum(lungs[0], lungs[1])
    img = img - lung_any * (tissue - lung_level)
    img = img + heart * u(0.06, 0.12)
    # gas bubble in the stomach under the left hemidiaphragm
    img = img - 0.12 * _ellipse(y, x, u(0.62, 0.72), u(0.3, 0.45), 0.06, 0.1, 0.08) * body
    # spine: vertical band with vertebral modulation, seen through the mediastinum
    spine = _ramp(u(0.055, 0.075) - np.abs(x), 0.03) * body
    period = u(0.12, 0.15)
    img = img + spine * u(0.1, 0.16) * (0.75 + 0.25 * np.cos(2 * np.pi * (y - u(0, 1)) / period))
    # posterior ribs: curved bands, one periodic field per side (vectorised: no loop over ribs)
    ab = np.abs(x)
    for s in (-1.0, 1.0):
        side = _ramp(s * x - 0.07, 0.03)
        spacing = u(0.13, 0.155)
        y0 = u(-0.8, -0.72)
        t = ab - 0.07
        curve = y0 - 0.35 * t + u(0.7, 0.9) * t * t
        phase = (y - curve) / spacing
        ribs = np.clip((np.cos(2 * np.pi * phase) - 0.55) / 0.45, 0.0, 1.0) ** 1.5
        ribs = ribs * _ramp(phase + 0.5, 0.3) * _ramp(8.5 - phase, 0.3) * _ramp(0.8 - ab, 0.1)
        img = img + ribs * side * body * u(0.07, 0.12)
    # clavicles
    for s in (-1.0, 1.0):
        t = s * x - 0.06
        c = u(-0.74, -0.68) - 0.28 * t + 0.3 * (t - 0.3) ** 2
        band = np.exp(-(((y - c) / u(0.025, 0.035)) ** 2)) * _ramp(t, 0.04) * _ramp(0.6 - t, 0.08)
        img = img + band * u(0.13, 0.2) * body
    gain, gamma = u(0.9, 1.08), u(0.85, 1.15)
    noise = rng.normal(0.0, u(0.006, 0.014), size=(size, size)).astype(np.float32)
    finding_mask = _draw_findings(img, y, x, lungs, findings, rng, size)
    img = np.clip(img * gain, 0.0, 1.0) ** gamma + noise
    return np.clip(img, 0.0, 1.0).astype(np.float32), lung_any > 0.5, finding_mask


def _render_ct(size: int, seed, findings: Sequence[Finding]):
    findings = _check(size, findings)
    rng = np.random.default_rng(seed)
    y, x = _grid(size)
    u = rng.uniform
    by, bx, bcy = u(0.5, 0.6), u(0.78, 0.9), u(-0.05, 0.03)
    body = _ellipse(y, x, bcy, 0.0, by, bx, 0.03)
    inner = _ellipse(y, x, bcy + 0.01, 0.0, by * 0.9, bx * 0.92, 0.04)
    img = body * u(0.38, 0.44) + inner * u(0.1, 0.15)  # subcutaneous fat ring, then muscle / organs
    # sternum (anterior = top) and ribs around the inner wall
    img = img + 0.35 * _ellipse(y, x, bcy - by * 0.86, 0.0, 0.035, 0.06, 0.04)
    angles = np.deg2rad(np.concatenate([np.linspace(200, 330, 6), np.linspace(210, 340, 6) - 180]))
    angles = angles + rng.normal(0, 0.04, angles.size)
    ry = np.sin(angles) * by * 0.87 + bcy
    rx = np.cos(angles) * bx * 0.9
    n = angles.size
    _add_spots(
        img,
        y,
        x,
        ry,
        rx,
        np.full(n, 0.035),
        np.full(n, 0.03),
        np.full(n, 0.4),
        lambda d: np.clip(1.2 - d, 0, 1),
    )
    lungs = []
    for s in (-1.0, 1.0):
        lungs.append(
            _ellipse(y, x, bcy + u(-0.05, 0.03), s * u(0.36, 0.42), u(0.34, 0.42), u(0.25, 0.31), 0.05, 2.3)
        )
    heart = _ellipse(y, x, bcy - u(0.1, 0.2), u(0.04, 0.12), u(0.18, 0.23), u(0.22, 0.28), 0.05)
    aorta = _ellipse(y, x, bcy + u(0.2, 0.26), u(0.07, 0.12), 0.06, 0.06, 0.04)
    vert = _ellipse(y, x, bcy + by * 0.62, 0.0, 0.1, 0.1, 0.04)
    spinous = _ellipse(y, x, bcy + by * 0.9, 0.0, 0.08, 0.035, 0.05)
    solid = np.maximum.reduce([heart, aorta, vert, spinous])
    lungs = [lung * (1.0 - solid) for lung in lungs]
    lung_any = np.maximum(lungs[0], lungs[1])
    soft = img
    img = soft - lung_any * (soft - u(0.04, 0.08))
    # vessels: small bright dots inside the lungs
    n = 24
    vy = rng.uniform(bcy - 0.4, bcy + 0.4, n).astype(np.float32)
    vx = rng.uniform(-0.7, 0.7, n).astype(np.float32)
    vr = rng.uniform(0.012, 0.03, n).astype(np.float32)
    spots = np.zeros_like(img)
    _add_spots(spots, y, x, vy, vx, vr, vr, np.full(n, 0.3, np.float32), lambda d: np.exp(-d))
    img = img + np.minimum(spots, 0.3) * lung_any
    img = img + heart * u(0.05, 0.1) + aorta * u(0.08, 0.12)
    img = img + vert * u(0.3, 0.4) + spinous * u(0.25, 0.35)
    img = img - 0.25 * _ellipse(y, x, bcy + by * 0.76, 0.0, 0.035, 0.035, 0.03)  # spinal canal
    # patient table below the body
    ty = bcy + by + u(0.06, 0.12)
    img = img + u(0.35, 0.5) * np.exp(-(((y - ty) / 0.015) ** 2)) * _ramp(0.95 - np.abs(x), 0.05)
    noise = rng.normal(0.0, u(0.008, 0.018), size=(size, size)).astype(np.float32)
    finding_mask = _draw_findings(img, y, x, lungs, findings, rng, size)
    return np.clip(img + noise, 0.0, 1.0).astype(np.float32), lung_any > 0.5, finding_mask


def chest_phantom(
    size: int = 64, *, seed: int | Sequence[int], findings: Sequence[Finding] = ()
) -> np.ndarray:
    """A frontal (PA) chest radiograph phantom, float32 [size, size] in [0, 1]; deterministic for ``seed``."""
    return _render_chest(size, seed, findings)[0]


def ct_phantom(size: int = 64, *, seed: int | Sequence[int], findings: Sequence[Finding] = ()) -> np.ndarray:
    """An axial chest CT slice phantom (anterior up), float32 [size, size] in [0, 1]; deterministic for ``seed``."""
    return _render_ct(size, seed, findings)[0]


def phantom_mask(
    size: int = 64,
    *,
    seed: int | Sequence[int],
    findings: Sequence[Finding] = (),
    kind: str = "chest",
    region: str = "findings",
) -> np.ndarray:
    """Ground-truth boolean mask [size, size] of the phantom's ``"findings"`` or ``"lungs"``."""
    if kind not in _KINDS:
        raise MedImageError(f"phantom kind: expected one of {_KINDS}, got {kind!r}")
    if region not in ("findings", "lungs"):
        raise MedImageError(f"phantom_mask region: expected 'findings' or 'lungs', got {region!r}")
    _, lungs, found = (_render_chest if kind == "chest" else _render_ct)(size, seed, findings)
    return found if region == "findings" else lungs


_DEFAULT_TEMPLATES = {"chest": "a chest x-ray, {label}", "ct": "an axial chest ct slice, {label}"}


class PhantomDataset(Dataset):
    """``num_images`` seeded phantoms as dataset items (``pixel_values`` [1, size, size] in [-1, 1]).

    Item ``i`` is rendered from seed ``(seed, i)``; about ``finding_probability`` of the items carry one
    opacity (label ``"opacity"``), the others are labelled ``"no finding"``. ``findings[i]`` holds the
    ground truth of item ``i``; ``mask(i)`` its finding mask. The intensity mapping is ``WindowMapping(0, 1)``.
    ``transform`` (e.g. an ``ImageTransform`` with ``affine=True``) is applied to ``pixel_values``.
    """

    def __init__(
        self,
        num_images: int,
        size: int = 64,
        kind: str = "chest",
        finding_probability: float = 0.5,
        seed: int = 0,
        prompt_template: str | None = None,
        transform: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if kind not in _KINDS:
            raise MedImageError(f"PhantomDataset kind: expected one of {_KINDS}, got {kind!r}")
        if not 0.0 <= finding_probability <= 1.0:
            raise MedImageError(f"finding_probability: expected a value in [0, 1], got {finding_probability}")
        if num_images < 0:
            raise MedImageError(f"PhantomDataset num_images: expected >= 0, got {num_images}")
        _check(size, ())
        self.size, self.kind, self.seed, self.transform = size, kind, seed, transform
        self.template = PromptTemplate(prompt_template or _DEFAULT_TEMPLATES[kind])
        rng = np.random.default_rng([seed, 7919])
        has = rng.random(num_images) < finding_probability
        sides = rng.integers(0, 2, num_images)
        zones = rng.integers(0, 3, num_images)
        radii = rng.uniform(0.05, 0.1, num_images)
        self.indices: list[int] = list(range(num_images))
        self.all_findings: list[tuple[Finding, ...]] = [
            (Finding("opacity", _SIDES[sides[i]], _ZONES[zones[i]], float(radii[i])),) if has[i] else ()
            for i in range(num_images)
        ]
        self.skipped: list[tuple[str, str]] = []

    @property
    def findings(self) -> list[tuple[Finding, ...]]:
        """Ground-truth findings of each item, in item order."""
        return [self.all_findings[i] for i in self.indices]

    @property
    def labels(self) -> list[str]:
        return ["opacity" if f else "no finding" for f in self.findings]

    @property
    def patient_ids(self) -> list[str]:
        return [str(i) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _render(self, i: int):
        g = self.indices[i]
        fn = _render_chest if self.kind == "chest" else _render_ct
        return fn(self.size, [self.seed, g], self.all_findings[g])

    def read_native(self, i: int) -> np.ndarray:
        """The phantom of item ``i`` in its native units ([0, 1])."""
        return self._render(i)[0]

    def mask(self, i: int) -> np.ndarray:
        """Boolean ground-truth finding mask of item ``i`` (all False without a finding)."""
        return self._render(i)[2]

    def select(self, indices: Sequence[int]) -> PhantomDataset:
        """A view of this dataset restricted to ``indices`` (paths and patient ids are kept)."""
        out = object.__new__(PhantomDataset)
        out.__dict__.update(self.__dict__)
        out.indices = [self.indices[int(i)] for i in indices]
        out.skipped = []
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"PhantomDataset index {i} out of range for {len(self)} items")
        i = i % len(self)
        g = self.indices[i]
        img = self._render(i)[0]
        label = "opacity" if self.all_findings[g] else "no finding"
        x = torch.from_numpy(img * 2.0 - 1.0)[None]
        if self.transform is not None:
            x = self.transform(x, path=f"phantom://{self.kind}/{g}")
        return {
            "pixel_values": x,
            "label": label,
            "prompt": self.template.format(label=label),
            "path": f"phantom://{self.kind}/{g}",
            "patient_id": str(g),
        }
