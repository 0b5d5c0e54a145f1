"""Memorisation / privacy audit: are generated images copies of training images?

For every generated image we find its nearest training images

- by normalised cross-correlation (NCC, = Pearson correlation of pixels) on images downsampled to ``size`` px
  (64 by default, which ignores noise and fine texture but keeps anatomy and layout), and
- by Euclidean distance in a (real-standardised) feature space, when features are given.

The baseline is the same search for held-out *real* images (``real_test``) against the training set: how similar
is a genuinely new image to its closest training image. A generated image is flagged as a copy when its NCC to
the nearest training image is at least ``threshold`` (default 0.97, see docs/evaluation.md for the reasoning; the
report also gives the fraction of real test images above it, i.e. the false-alarm rate of the threshold on real
data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_COPY_THRESHOLD = 0.97
DEFAULT_NCC_SIZE = 64


def _downsample(images01: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images01, dtype=np.float32))[:, None]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x[:, 0].numpy()


def _normalise_rows(images01: np.ndarray, size: int) -> np.ndarray:
    x = _downsample(images01, size).reshape(len(images01), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 1e-12, n, 1.0)


def ncc_matrix(query01: np.ndarray, reference01: np.ndarray, size: int = DEFAULT_NCC_SIZE) -> np.ndarray:
    """NCC between every query and every reference image, ``[Nq, Nr]`` in [-1, 1]."""
    return _normalise_rows(query01, size) @ _normalise_rows(reference01, size).T


def nearest_by_ncc(
    query01: np.ndarray,
    reference01: np.ndarray,
    size: int = DEFAULT_NCC_SIZE,
    top_k: int = 1,
    chunk: int = 512,
):
    """Top-k most correlated reference images for each query: ``(similarity [Nq, k], index [Nq, k])``."""
    ref = _normalise_rows(reference01, size)
    sims, idx = [], []
    for i in range(0, len(query01), chunk):
        s = _normalise_rows(query01[i : i + chunk], size) @ ref.T
        k = min(top_k, s.shape[1])
        order = np.argsort(-s, axis=1)[:, :k]
        idx.append(order)
        sims.append(np.take_along_axis(s, order, axis=1))
    return np.concatenate(sims), np.concatenate(idx)


def nearest_by_features(query_feats: np.ndarray, reference_feats: np.ndarray):
    """Nearest reference (Euclidean) for each query feature vector: ``(distance [Nq], index [Nq])``."""
    q = np.asarray(query_feats, np.float64)
    r = np.asarray(reference_feats, np.float64)
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2 * q @ r.T
    d = np.sqrt(np.maximum(d2, 0))
    i = d.argmin(axis=1)
    return d[np.arange(len(q)), i], i


def _quantiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [1, 5, 50, 95, 99])
    return {
        "min": float(x.min()),
        "p01": float(q[0]),
        "p05": float(q[1]),
        "median": float(q[2]),
        "p95": float(q[3]),
        "p99": float(q[4]),
        "max": float(x.max()),
        "mean": float(x.mean()),
    }


def memorisation_audit(
    generated01: np.ndarray,
    train01: np.ndarray,
    real_test01: np.ndarray | None = None,
    threshold: float = DEFAULT_COPY_THRESHOLD,
    size: int = DEFAULT_NCC_SIZE,
    generated_feats: np.ndarray | None = None,
    train_feats: np.ndarray | None = None,
    real_test_feats: np.ndarray | None = None,
    top_k: int = 3,
) -> dict:
    """Nearest-training-image search for generated (and, as baseline, real test) images.

    Returns a JSON-able dict; the arrays used by the figures are under the ``"_arrays"`` key (drop it before
    serialising, :func:`strip_arrays`).
    """
    g_sim, g_idx = nearest_by_ncc(generated01, train01, size=size, top_k=top_k)
    copies = g_sim[:, 0] >= threshold
    out = {
        "settings": {
            "method": "NCC (Pearson) on area-downsampled images",
            "size": size,
            "threshold": threshold,
            "top_k": top_k,
            "n_generated": int(len(generated01)),
            "n_train": int(len(train01)),
        },
        "generated_nn_ncc": _quantiles(g_sim[:, 0]),
        "n_copies": int(copies.sum()),
        "fraction_copies": float(copies.mean()) if len(copies) else 0.0,
        "copies": [
            {"generated_index": int(i), "train_index": int(g_idx[i, 0]), "ncc": float(g_sim[i, 0])}
            for i in np.flatnonzero(copies)
        ],
        "_arrays": {"gen_sim": g_sim, "gen_idx": g_idx},
    }
    if real_test01 is not None and len(real_test01):
        t_sim, t_idx = nearest_by_ncc(real_test01, train01, size=size, top_k=1)
        out["baseline_real_test_nn_ncc"] = _quantiles(t_sim[:, 0])
        out["baseline_fraction_above_threshold"] = float((t_sim[:, 0] >= threshold).mean())
        out["settings"]["n_real_test"] = int(len(real_test01))
        out["_arrays"]["test_sim"] = t_sim[:, 0]
    if generated_feats is not None and train_feats is not None:
        gd, gi = nearest_by_features(generated_feats, train_feats)
        out["generated_nn_feature_distance"] = _quantiles(gd)
        out["_arrays"]["gen_feat_dist"] = gd
        if real_test_feats is not None and len(real_test_feats):
            td, _ = nearest_by_features(real_test_feats, train_feats)
            out["baseline_real_test_nn_feature_distance"] = _quantiles(td)
            thr = float(np.percentile(td, 1))
            out["fraction_generated_closer_than_real_p01"] = float((gd < thr).mean())
            out["_arrays"]["test_feat_dist"] = td
    return out


def strip_arrays(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "_arrays"}


def plot_similarity_histogram(audit: dict, path: str | Path) -> str:
    """Histogram of nearest-training-image NCC: generated vs real-test baseline, with the copy threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = audit["_arrays"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(0.0, float(arr["gen_sim"][:, 0].min())), 1.0, 51)
    ax.hist(arr["gen_sim"][:, 0], bins=bins, alpha=0.6, label="generated -> train", density=True)
    if "test_sim" in arr:
        ax.hist(arr["test_sim"], bins=bins, alpha=0.6, label="real test -> train (baseline)", density=True)
    ax.axvline(audit["settings"]["threshold"], color="red", linestyle="--", label="copy threshold")
    ax.set_xlabel(f"NCC to nearest training image ({audit['settings']['size']} px)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_nn_gallery(
    generated01: np.ndarray, train01: np.ndarray, audit: dict, path: str | Path, n: int = 8
) -> str:
    """Gallery of the ``n`` generated images most similar to a training image (top row: generated, bottom row:
    their nearest training image), titled with the NCC values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim, idx = audit["_arrays"]["gen_sim"][:, 0], audit["_arrays"]["gen_idx"][:, 0]
    order = np.argsort(-sim)[: min(n, len(sim))]
    h, w = generated01.shape[1:]
    pad = 2
    cols = len(order)
    m = np.ones((2 * h + 3 * pad, cols * (w + pad) + pad), np.float32)
    for j, g in enumerate(order):
        x0 = pad + j * (w + pad)
        m[pad : pad + h, x0 : x0 + w] = generated01[g]
        m[2 * pad + h : 2 * pad + 2 * h, x0 : x0 + w] = train01[idx[g]]
    fig, ax = plt.subplots(figsize=(1.5 * cols + 0.5, 3.6))
    ax.imshow(m, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks(
        [pad + j * (w + pad) + w / 2 for j in range(cols)],
        [f"{sim[g]:.3f}\ngen {g}/train {idx[g]}" for g in order],
        fontsize=7,
    )
    ax.set_yticks([pad + h / 2, 2 * pad + 1.5 * h], ["generated", "nearest train"], fontsize=8)
    ax.set_title("closest generated/training pairs (NCC)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
