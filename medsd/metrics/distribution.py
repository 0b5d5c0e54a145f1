"""Distribution metrics on arbitrary feature vectors: Fréchet distance, KID, improved precision/recall.

torchmetrics' FID/KID classes take *images* and run their own network; we need the same statistics on any
features (radiomics, CLIP, ...), so the formulas are written here by hand (numpy/scipy), following
Heusel et al. 2017 (FID), Bińkowski et al. 2018 (KID: unbiased MMD², cubic polynomial kernel) and
Kynkäänniemi et al. 2019 (k-NN manifold precision/recall).
"""

from __future__ import annotations

import numpy as np


def standardise(real: np.ndarray, *others: np.ndarray, eps: float = 1e-8):
    """Z-score all feature sets with the *real* set's per-feature mean/std (as the Fréchet Radiomics Distance does).

    Features that are constant in the real set are only centred. Returns ``(real_z, *others_z)``.
    """
    real = np.asarray(real, dtype=np.float64)
    mu = real.mean(axis=0)
    sd = real.std(axis=0)
    sd = np.where(sd > eps, sd, 1.0)
    out = [(real - mu) / sd] + [(np.asarray(o, dtype=np.float64) - mu) / sd for o in others]
    return tuple(out)


ROBUST_CLIP = 5.0


def robust_scale(real: np.ndarray, *others: np.ndarray, clip: float | None = ROBUST_CLIP, eps: float = 1e-8):
    """Scale all feature sets by the *real* set's per-feature median and IQR/1.349 (a robust std), then clip.

    One collapsed image whose kurtosis is 10,000 real-std out can no longer dominate a Fréchet distance: after
    scaling every value is clipped to ``[-clip, clip]`` (``None``: no clipping). Features with zero IQR in the
    real set fall back to the std, then to 1. Returns ``(real_s, *others_s)``.
    """
    real = np.asarray(real, dtype=np.float64)
    med = np.median(real, axis=0)
    q75, q25 = np.percentile(real, [75, 25], axis=0)
    sd = (q75 - q25) / 1.349
    std = real.std(axis=0)
    sd = np.where(sd > eps, sd, np.where(std > eps, std, 1.0))
    out = [(real - med) / sd] + [(np.asarray(o, dtype=np.float64) - med) / sd for o in others]
    if clip is not None:
        out = [np.clip(o, -clip, clip) for o in out]
    return tuple(out)


SCALINGS = ("raw", "standard", "robust")


def scale_features(real: np.ndarray, *others: np.ndarray, scaling: str = "robust"):
    """Apply one of :data:`SCALINGS`: ``raw`` (as is: standard FID/KID), ``standard`` (real z-score), ``robust``."""
    if scaling == "raw":
        return tuple(np.asarray(x, dtype=np.float64) for x in (real, *others))
    if scaling == "standard":
        return standardise(real, *others)
    if scaling == "robust":
        return robust_scale(real, *others)
    raise ValueError(f"scaling: expected one of {SCALINGS}, got {scaling!r}")


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (hand-written: works on any features).

    ``||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½)``; a small ``eps`` is added to the diagonals when the
    product is singular (as in the reference FID code).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature shapes differ: {a.shape} vs {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples per set")
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
    return frechet_distance_from_moments(a.mean(0), s1, b.mean(0), s2, eps)


def frechet_distance_from_moments(
    mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6
) -> float:
    """The Fréchet distance between N(mu1, s1) and N(mu2, s2) (see :func:`frechet_distance`)."""
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0)) if fd > -1e-6 * max(1.0, abs(np.trace(s1))) else float(fd)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef: float) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance on any features: unbiased MMD² with ``k(x,y) = (x·y/d + 1)³``.

    Averaged over ``subsets`` random subsets of ``min(subset_size, N_a, N_b)`` samples drawn without replacement
    (deterministic ``seed``). Returns ``(mean, std)``; unbiased, so it can be slightly negative for equal
    distributions. (Hand-written because torchmetrics' KID only accepts images.)
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("need at least 2 samples per set")
    rng = np.random.default_rng(seed)
    if m == len(a) and m == len(b):
        subsets = 1  # every subset would be the whole of both sets
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = _poly_kernel(x, x, degree, gamma, coef)
        kyy = _poly_kernel(y, y, degree, gamma, coef)
        kxy = _poly_kernel(x, y, degree, gamma, coef)
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        mmd += (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmd -= 2.0 * kxy.mean()
        vals.append(mmd)
    vals = np.asarray(vals)
    return float(vals.mean()), float(vals.std())


def _pairwise_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.maximum(d2, 0.0))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise_dist(x, x)
    # the k-th nearest neighbour excluding the point itself is column k of the sorted row (column 0 is self)
    return np.sort(d, axis=1)[:, min(k, len(x) - 1)]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019), hand-written k-NN manifold estimate.

    precision = fraction of fake samples inside the real manifold (union of balls around each real sample with
    radius = distance to its k-th nearest real neighbour); recall = fraction of real samples inside the fake
    manifold. Use standardised features.
    """
    r = np.asarray(real, dtype=np.float64)
    f = np.asarray(fake, dtype=np.float64)
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"need more than k={k} samples per set")
    rr = _knn_radii(r, k)
    fr = _knn_radii(f, k)
    d_fr = _pairwise_dist(f, r)  # [Nf, Nr]
    precision = float((d_fr <= rr[None, :]).any(axis=1).mean())
    recall = float((d_fr.T <= fr[None, :]).any(axis=1).mean())
    return {"precision": precision, "recall": recall, "k": k}


def _kid_mean(a, b, subsets, subset_size, seed) -> float:
    return kernel_inception_distance(a, b, subsets=subsets, subset_size=subset_size, seed=seed)[0]


def _pr_or_none(real, fake, k) -> dict:
    if len(real) <= k or len(fake) <= k:
        return {"precision": None, "recall": None}
    return precision_recall(real, fake, k=k)


def _mean_std(vals) -> dict:
    v = np.asarray([x for x in vals if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def real_reference(
    real: np.ndarray,
    fake: np.ndarray,
    draws: int = 10,
    k: int = 3,
    kid_subsets: int = 10,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """What "no difference" looks like at the comparison's own sample size, with its spread over ``draws``.

    Each draw splits the (already scaled) real set at random into ``A`` (``n_real - n_b`` images) and ``B``
    (``n_b = min(n_fake, n_real // 2)``) and computes the metrics for real ``A`` vs real ``B`` *and* for real
    ``A`` vs ``n_b`` fake images drawn at random: the two rows have identical sample sizes, so they can be
    compared directly (FD has a finite-sample bias that depends on the sizes). Returns mean and std per metric.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    n_b = min(len(fake), len(real) // 2)
    n_a = len(real) - n_b
    if n_b < 2 or n_a < 2:
        return {"skipped": f"too few images for a same-size reference (real {len(real)}, fake {len(fake)})"}
    rng = np.random.default_rng(seed + 7919)
    rows: dict[str, dict[str, list]] = {
        "real_vs_real": {"frechet_distance": [], "kid": [], "precision": [], "recall": []},
        "fake_vs_real": {"frechet_distance": [], "kid": [], "precision": [], "recall": []},
    }
    for d in range(draws):
        perm = rng.permutation(len(real))
        a, b = real[perm[n_b:]], real[perm[:n_b]]
        f = fake[np.sort(rng.choice(len(fake), n_b, replace=False))]
        for key, other in (("real_vs_real", b), ("fake_vs_real", f)):
            r = rows[key]
            r["frechet_distance"].append(frechet_distance(a, other))
            r["kid"].append(_kid_mean(a, other, kid_subsets, kid_subset_size, seed + d))
            pr = _pr_or_none(a, other, k)
            r["precision"].append(pr["precision"])
            r["recall"].append(pr["recall"])
    out = {key: {m: _mean_std(v) for m, v in r.items()} for key, r in rows.items()}
    out.update({"n_a_real": int(n_a), "n_b": int(n_b), "draws": int(draws)})
    return out


def _fd_kid(r: np.ndarray, f: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple:
    """(Fréchet distance, KID, KID std) of two feature sets; Nones when ``f`` has fewer than 2 rows."""
    if len(f) < 2:
        return None, None, None
    kid, kid_std = kernel_inception_distance(r, f, subsets=subsets, subset_size=subset_size, seed=seed)
    return frechet_distance(r, f), kid, kid_std


def distribution_metrics(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    scaling: str = "robust",
    fake_degenerate: np.ndarray | None = None,
    standard: bool = False,
    reference_draws: int = 10,
) -> dict:
    """Fréchet distance, KID (mean/std), precision/recall and a same-size real/real reference.

    ``scaling`` (:data:`SCALINGS`): ``raw`` for the standard FID/KID on raw features (Inception), ``robust``
    (default) or ``standard`` for medsd's own feature sets. ``fake_degenerate`` (bool per fake image) marks
    degenerate images: they are counted apart, left out of the medsd distances (the headline FD/KID are those of
    the non-degenerate images, ``*_all`` of all), and count as *outside* the real manifold for ``precision``
    (``recall`` uses the non-degenerate ones, so scattered outliers cannot cover the real set). With
    ``standard=True`` the headline numbers are those of all images (the published FID protocol).
    """
    real_raw, fake_raw = np.asarray(real_feats, dtype=np.float64), np.asarray(fake_feats, dtype=np.float64)
    deg = np.zeros(len(fake_raw), bool) if fake_degenerate is None else np.asarray(fake_degenerate, bool)
    if deg.shape != (len(fake_raw),):
        raise ValueError(f"fake_degenerate: expected {len(fake_raw)} flags, got shape {deg.shape}")
    real, fake = scale_features(real_raw, fake_raw, scaling=scaling)
    ok = fake[~deg]
    n_ok = len(ok)

    kid_opts = dict(subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    fd_all, kid_all, kid_std_all = everything = _fd_kid(real, fake, **kid_opts)
    fd_ok, kid_ok, kid_std_ok = _fd_kid(real, ok, **kid_opts) if deg.any() else everything
    pr = _pr_or_none(real, ok, k)
    precision = None if pr["precision"] is None else pr["precision"] * n_ok / max(len(fake), 1)
    head_fd, head_kid, head_kid_std = (
        (fd_all, kid_all, kid_std_all) if standard else (fd_ok, kid_ok, kid_std_ok)
    )
    reference = (
        real_reference(
            real,
            fake if standard else ok,
            draws=reference_draws,
            k=k,
            kid_subset_size=kid_subset_size,
            seed=seed,
        )
        if reference_draws > 0
        else {"skipped": "reference_draws=0"}
    )
    m = min(kid_subset_size, len(real), max(len(fake) if standard else n_ok, 0))
    return {
        "frechet_distance": head_fd,
        "kid": head_kid,
        "kid_std": head_kid_std,
        "precision": precision,
        "recall": pr["recall"],
        "precision_non_degenerate": pr["precision"],
        "frechet_distance_all": fd_all,
        "kid_all": kid_all,
        "frechet_distance_non_degenerate": fd_ok,
        "kid_non_degenerate": kid_ok,
        "n_degenerate_fake": int(deg.sum()),
        "real_reference": reference,
        "comparable_to_published": bool(standard and scaling == "raw"),
        "settings": {
            "scaling": scaling,
            "robust_clip": ROBUST_CLIP if scaling == "robust" else None,
            "standard": bool(standard),
            "headline_uses": "all fake images" if standard else "non-degenerate fake images",
            "k": k,
            "kid_subsets": 1 if m == len(real) and m == (len(fake) if standard else n_ok) else kid_subsets,
            "kid_subset_size": int(m),
            "kid_kernel": "(x.y/d + 1)^3",
            "n_real": int(len(real)),
            "n_fake": int(len(fake)),
            "n_fake_non_degenerate": int(n_ok),
            "dim": int(real.shape[1]),
            "seed": seed,
        },
    }
