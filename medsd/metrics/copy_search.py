"""Nearest-training-image search that survives what training and sampling do to a copy.

Two detectors of different kinds, both on intensity-normalised images (each image's pixels replaced by their
rank, i.e. histogram-equalised, which any monotone intensity change (gamma, contrast, window) leaves unchanged):

- :class:`RegisteredNCC`: normalised cross-correlation after registration. Coarse to fine: a 16 px blurred
  embedding of the central 80% of every training image is compared with views of each query (4 flips x 2
  zooms x 9 shifts of 5%; one matrix product per chunk of the training set) to pick ``top_k`` candidates; each
  candidate is then matched exactly on band-passed images (1 px minus 5 px Gaussian at 64 px: the anatomy
  every chest image shares is removed, the detail that tells two patients apart kept), the query searched
  over flips x rotations x zoom-outs (undoing crops) and, by sliding a central template, translations.
  Distance = 1 - best NCC.
- :class:`PerceptualHash`: a DCT perceptual hash (low-frequency 8 x 8 DCT coefficients of the equalised 32 px
  image, above/below their median = 63 bits) of the four flips of each query against every training hash.
  Distance = Hamming distance / 63. It is invariant to flips (searched), monotone intensity changes, noise and
  blur, and tolerant of shifts, crops and rotations of a few percent / degrees.

Both return, per query, the distances to the nearest and the second-nearest training image (DCR and NNDR) and
the index of the nearest. Hand-written: no library offers registration-aware copy search; the pieces are
torch's ``affine_grid``/``grid_sample``/``conv2d`` and scipy's ``rankdata``/``dctn``/``gaussian_filter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLIPS = ((), (-1,), (-2,), (-2, -1))
FLIP_NAMES = ("none", "hflip", "vflip", "hvflip")


def equalise(images01: np.ndarray, size: int, blur: float = 0.0) -> np.ndarray:
    """Area-resize to ``size``, optionally Gaussian-blur (sigma in px), then replace pixels by their rank in
    [0, 1] (per image): invariant to any monotone intensity change."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter
    from scipy.stats import rankdata

    x = torch.from_numpy(np.asarray(images01, dtype=np.float32))[:, None]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    a = x[:, 0].numpy().astype(np.float64)
    if blur > 0:
        a = gaussian_filter(a, sigma=(0, blur, blur))
    r = rankdata(a.reshape(len(a), -1), axis=1, method="average")
    return ((r - 1) / max(size * size - 1, 1)).reshape(a.shape).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 1e-8, n, 1.0)


def _flips(x: np.ndarray) -> np.ndarray:
    """``[N, 4, H, W]``: every image under the four flips of :data:`FLIPS`."""
    return np.stack([np.flip(x, axis=ax) if ax else x for ax in FLIPS], axis=1)


@dataclass
class SearchResult:
    """Per query: distance to the nearest and second-nearest training image, index of the nearest, and how the
    query was matched (e.g. ``hflip rot -5 zoom 0.92 shift (3, -2) px``)."""

    dcr: np.ndarray
    second: np.ndarray
    index: np.ndarray
    transform: list[str] = field(default_factory=list)

    @property
    def nndr(self) -> np.ndarray:
        """Nearest-neighbour distance ratio: nearest / second-nearest distance (small = one training image
        stands out)."""
        return self.dcr / np.maximum(self.second, 1e-9)


def _top_k_merge(best_s, best_i, s, offset, k):
    """Keep the k largest similarities seen so far (running top-k over chunks of the training set)."""
    cand_s = np.concatenate([best_s, s], axis=1)
    cand_i = np.concatenate([best_i, np.arange(s.shape[1])[None, :].repeat(len(s), 0) + offset], axis=1)
    order = np.argsort(-cand_s, axis=1)[:, :k]
    return np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)


@dataclass
class RegisteredNCC:
    """NCC after registration over flips, rotations, crops (zoom-outs) and translations (see module docs)."""

    size: int = 64
    coarse_size: int = 16
    coarse_crop: float = 0.8
    coarse_blur: float = 1.0
    coarse_shift: float = 0.05
    coarse_zooms: tuple[float, ...] = (1.0, 0.9)
    top_k: int = 30
    rotations: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    zooms: tuple[float, ...] = (1.0, 0.92, 0.85)
    max_shift: float = 0.12
    template: float = 0.6
    blur: float = 1.0
    highpass: float = 5.0
    chunk: int = 8192
    batch: int = 16
    name: str = "registered_ncc"
    invariant_to: str = (
        "flips (searched); rotations up to 10 deg (5 deg grid); crops to 85% (zoom-outs 1, 0.92, 0.85); "
        "translations up to 12% of the side; monotone intensity changes (rank equalisation); noise and blur "
        "(band-pass from 1 to 5 px before matching)"
    )

    def index(self, train01: np.ndarray) -> dict:
        """Precompute what the search needs from the training set (chunked)."""
        fine, coarse = [], []
        for i in range(0, len(train01), self.chunk):
            eq = equalise(train01[i : i + self.chunk], self.size, self.blur)
            fine.append(self._detail(eq).astype(np.float16))  # half the memory: 0.8 GB for 100k at 64 px
            coarse.append(self._coarse(eq))
        return {"fine": np.concatenate(fine), "coarse": np.concatenate(coarse)}

    def _detail(self, eq: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        if self.highpass <= 0:
            return eq
        return (eq - gaussian_filter(eq, sigma=(0, self.highpass, self.highpass))).astype(np.float32)

    def _coarse(self, eq: np.ndarray, zoom: float = 1.0, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Unit-norm low-res embedding of the central ``coarse_crop / zoom`` of each (equalised) image, its
        window moved by ``shift`` px."""
        side = eq.shape[-1]
        c = min(int(round(self.coarse_crop / zoom * side)), side)
        lo_y = min(max((side - c) // 2 + shift[0], 0), side - c)
        lo_x = min(max((side - c) // 2 + shift[1], 0), side - c)
        crop = eq[:, lo_y : lo_y + c, lo_x : lo_x + c]
        return _unit_rows(equalise(crop, self.coarse_size, self.coarse_blur))

    def _views(self, query_eq: np.ndarray) -> np.ndarray:
        """``[N, views, D]`` coarse embeddings of each query under every flip, coarse zoom and coarse shift."""
        step = int(round(self.coarse_shift * query_eq.shape[-1]))
        shifts = [(dy, dx) for dy in (-step, 0, step) for dx in (-step, 0, step)] if step else [(0, 0)]
        flips = _flips(query_eq).transpose(1, 0, 2, 3)
        views = [self._coarse(f, z, sh) for z in self.coarse_zooms for sh in shifts for f in flips]
        return np.stack(views, axis=1)

    def candidates(self, query_eq: np.ndarray, index: dict) -> np.ndarray:
        """Top-k training indices per query by the coarse embedding (best over the query's views)."""
        views = self._views(query_eq)
        n_views = views.shape[1]
        views = views.reshape(len(query_eq) * n_views, -1)
        k = min(self.top_k, len(index["coarse"]))
        best_s = np.full((len(query_eq), 0), -np.inf, np.float32)
        best_i = np.zeros((len(query_eq), 0), int)
        for off in range(0, len(index["coarse"]), self.chunk):
            s = (views @ index["coarse"][off : off + self.chunk].T).reshape(len(query_eq), n_views, -1).max(1)
            best_s, best_i = _top_k_merge(best_s, best_i, s, off, k)
        return best_i

    def _warps(self):
        import torch

        thetas, names = [], []
        for f, fname in zip(FLIPS, FLIP_NAMES, strict=True):
            sx, sy = (-1.0 if -1 in f else 1.0), (-1.0 if -2 in f else 1.0)
            for r in self.rotations:
                c, s = np.cos(np.deg2rad(r)), np.sin(np.deg2rad(r))
                for z in self.zooms:
                    # sampling grid: output pixel p reads input at A p; A = flip * rotation / zoom-out
                    a = np.array([[c * sx, -s * sx], [s * sy, c * sy]]) / z
                    thetas.append(np.hstack([a, np.zeros((2, 1))]))
                    names.append(f"{fname} rot {r:+g} zoom {z:g}")
        return torch.tensor(np.array(thetas), dtype=torch.float32), names

    def match(self, query_eq: np.ndarray, cand_eq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best NCC of each query ``[B, s, s]`` against each of its candidates ``[B, k, s, s]`` over every
        warp and shift: ``(ncc [B, k], best transform id [B, k])`` (id = warp * shifts + shift)."""
        import torch
        import torch.nn.functional as F

        theta, _ = self._warps()
        b, k, s = cand_eq.shape[0], cand_eq.shape[1], self.size
        w = len(theta)
        q = torch.from_numpy(query_eq)[:, None]
        grid = F.affine_grid(theta.repeat(b, 1, 1), (b * w, 1, s, s), align_corners=False)
        warped = F.grid_sample(q.repeat_interleave(w, 0), grid, align_corners=False, padding_mode="zeros")
        c = int(round(self.template * s))
        d = int(round(self.max_shift * s))
        lo = (s - c) // 2
        t = warped[:, 0, lo : lo + c, lo : lo + c].reshape(b * w, -1)
        t = t - t.mean(1, keepdim=True)
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)
        x = torch.from_numpy(cand_eq)[:, :, max(lo - d, 0) : lo + c + d, max(lo - d, 0) : lo + c + d]
        num = F.conv2d(x.permute(1, 0, 2, 3), t.reshape(b * w, 1, c, c), groups=b)  # [k, b*w, P, P]
        ones = torch.ones(1, 1, c, c)
        xx = x.reshape(b * k, 1, *x.shape[-2:])
        s1 = F.conv2d(xx, ones)
        s2 = F.conv2d(xx * xx, ones)
        den = (s2 - s1 * s1 / (c * c)).clamp_min(1e-6).sqrt().reshape(b, k, 1, *s1.shape[-2:])
        ncc = num.reshape(k, b, w, *num.shape[-2:]).permute(1, 0, 2, 3, 4) / den
        flat = ncc.reshape(b, k, -1)
        best, arg = flat.max(dim=2)
        return best.numpy().astype(np.float64), arg.numpy()

    def _describe(self, arg: int, names: list[str], n_side: int) -> str:
        warp, rest = divmod(int(arg), n_side * n_side)
        dy, dx = divmod(rest, n_side)
        half = n_side // 2
        return f"{names[warp]} shift ({dx - half:+d}, {dy - half:+d}) px"

    def search(self, query01: np.ndarray, index: dict) -> SearchResult:
        """Distances ``1 - NCC`` to the best and second-best matching training image, per query."""
        _, names = self._warps()
        n_side = 2 * int(round(self.max_shift * self.size)) + 1
        dcr, second, idx, how = [], [], [], []
        for i in range(0, len(query01), self.batch):
            q = equalise(query01[i : i + self.batch], self.size, self.blur)
            cand = self.candidates(q, index)
            ncc, arg = self.match(self._detail(q), index["fine"][cand].astype(np.float32))
            order = np.argsort(-ncc, axis=1)
            top = np.take_along_axis(ncc, order, 1)
            dcr.append(1 - top[:, 0])
            second.append(1 - top[:, 1] if top.shape[1] > 1 else np.full(len(q), np.nan))
            idx.append(cand[np.arange(len(q)), order[:, 0]])
            how += [self._describe(arg[j, order[j, 0]], names, n_side) for j in range(len(q))]
        return SearchResult(np.concatenate(dcr), np.concatenate(second), np.concatenate(idx), how)


@dataclass
class PerceptualHash:
    """DCT perceptual hash searched over flips (see module docs); distance = Hamming / 63."""

    hash_size: int = 8
    image_size: int = 32
    chunk: int = 65536
    name: str = "dct_phash"
    invariant_to: str = (
        "flips (searched); monotone intensity changes (rank equalisation, sign bits); noise and blur "
        "(low frequencies only); tolerant of shifts, crops and rotations of a few percent / degrees"
    )

    @property
    def bits(self) -> int:
        return self.hash_size * self.hash_size - 1

    def codes(self, images01: np.ndarray) -> np.ndarray:
        """One ``uint64`` hash per image."""
        from scipy.fft import dctn

        eq = equalise(images01, self.image_size, 0.0)
        low = dctn(eq, type=2, axes=(1, 2), norm="ortho")[:, : self.hash_size, : self.hash_size]
        low = low.reshape(len(eq), -1)[:, 1:]  # the DC term says nothing after equalisation
        bits = low > np.median(low, axis=1, keepdims=True)
        weights = np.left_shift(np.uint64(1), np.arange(self.bits, dtype=np.uint64))
        return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)

    def index(self, train01: np.ndarray) -> dict:
        return {
            "codes": np.concatenate(
                [self.codes(train01[i : i + self.chunk]) for i in range(0, len(train01), self.chunk)]
            )
        }

    def search(self, query01: np.ndarray, index: dict) -> SearchResult:
        """Hamming distance / 63 to the nearest and second-nearest training hash over the query's four flips."""
        train = index["codes"]
        qf = self.codes(_flips(np.asarray(query01, np.float32)).reshape(-1, *query01.shape[1:]))
        qf = qf.reshape(len(query01), len(FLIPS))
        dcr, second, idx, how = [], [], [], []
        for q in qf:
            d = np.bitwise_count(np.bitwise_xor(q[:, None], train[None, :])).astype(np.int32)
            best_flip = d.argmin(axis=0)
            d = d.min(axis=0)
            two = np.argsort(d, kind="stable")[:2]
            dcr.append(d[two[0]] / self.bits)
            second.append(d[two[1]] / self.bits if len(two) > 1 else np.nan)
            idx.append(two[0])
            how.append(FLIP_NAMES[best_flip[two[0]]])
        return SearchResult(np.array(dcr), np.array(second), np.array(idx, int), how)
