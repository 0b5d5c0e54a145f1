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
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
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


def distribution_metrics(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    standardize: bool = True,
) -> dict:
    """Fréchet distance, KID (mean/std) and precision/recall between two feature sets (real-standardised)."""
    if standardize:
        real_feats, fake_feats = standardise(real_feats, fake_feats)
    kid, kid_std = kernel_inception_distance(
        real_feats, fake_feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    pr = precision_recall(real_feats, fake_feats, k=k)
    # reference: the same metrics between two random halves of the real set (what "no difference" looks like at
    # this sample size; note both halves have half the samples, so the finite-sample bias of FD is larger)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(real_feats))
    h1, h2 = real_feats[perm[: len(perm) // 2]], real_feats[perm[len(perm) // 2 :]]
    baseline = {}
    if len(h1) > k + 1:
        baseline = {
            "frechet_distance": frechet_distance(h1, h2),
            "kid": kernel_inception_distance(
                h1, h2, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
            )[0],
            "n_each": int(len(h1)),
        }
    return {
        "frechet_distance": frechet_distance(real_feats, fake_feats),
        "real_split_half_baseline": baseline,
        "kid": kid,
        "kid_std": kid_std,
        "precision": pr["precision"],
        "recall": pr["recall"],
        "settings": {
            "standardised_with": "real mean/std" if standardize else None,
            "k": k,
            "kid_subsets": 1 if len(real_feats) == len(fake_feats) <= kid_subset_size else kid_subsets,
            "kid_subset_size": int(min(kid_subset_size, len(real_feats), len(fake_feats))),
            "kid_kernel": "(x.y/d + 1)^3",
            "n_real": int(len(real_feats)),
            "n_fake": int(len(fake_feats)),
            "dim": int(np.asarray(real_feats).shape[1]),
            "seed": seed,
        },
    }
