"""Classifier two-sample test (C2ST): can a small CNN tell real images from synthetic ones?

Lopez-Paz & Oquab (2017): train a classifier to separate the two sets and read its accuracy on images it was
not trained on. 0.5 means the sets cannot be told apart; 1.0 means every image gives itself away. Unlike a
distance on hand-made features it needs no downloaded weights and sees whatever differs (anatomy, texture,
intensity), which is why ``medsd eval`` reports it first.

Protocol: both sets are cut to the same size ``n`` (seeded), split into ``folds`` stratified folds, the CNN of
:mod:`medsd.metrics.downstream` is trained on the other folds (no augmentation: an intensity shift must stay
visible) and predicts the held-out fold; accuracy and AUROC are computed on the pooled out-of-fold
predictions, with percentile-bootstrap 95% intervals and a one-sided binomial p-value against 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .downstream import evaluate_with_ci, predict_proba, train_classifier

C2ST_SIZE = 64
"""Input size of the classifier (px)."""


def _balanced(a: np.ndarray, b: np.ndarray, n: int | None, rng: np.random.Generator):
    n = min(len(a), len(b), n or len(a))
    return a[np.sort(rng.choice(len(a), n, replace=False))], b[np.sort(rng.choice(len(b), n, replace=False))]


def _fold_ids(n_per_class: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each image of ``[a..., b...]``: each class spread evenly over the folds (stratified)."""
    one = np.arange(n_per_class) % folds
    return np.concatenate([rng.permutation(one), rng.permutation(one)])


def classifier_two_sample_test(
    a: np.ndarray,
    b: np.ndarray,
    n: int | None = None,
    folds: int = 5,
    epochs: int = 12,
    seed: int = 0,
    n_boot: int = 200,
) -> dict[str, Any]:
    """C2ST between image sets ``a`` and ``b`` (``[N, H, W]`` in [0, 1]): held-out accuracy and AUROC with 95% CIs.

    ``n`` caps the images per set (both sets are cut to the same size). Deterministic for a given seed.
    """
    from scipy.stats import binomtest

    rng = np.random.default_rng(seed)
    a, b = _balanced(np.asarray(a, np.float32), np.asarray(b, np.float32), n, rng)
    n_per = len(a)
    folds = max(2, min(folds, n_per))
    if n_per < 4:
        raise ValueError(f"C2ST needs at least 4 images per set, got {n_per}")
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(n_per, int), np.ones(n_per, int)])
    fold = _fold_ids(n_per, folds, rng)
    probs = np.zeros((len(x), 2), np.float32)
    for k in range(folds):
        train, test = fold != k, fold == k
        model = train_classifier(
            x[train], y[train], 2, epochs=epochs, size=C2ST_SIZE, seed=seed + k, augment=False
        )
        probs[test] = predict_proba(model, x[test], size=C2ST_SIZE)
    result = evaluate_with_ci(probs, y, 2, n_boot=n_boot, seed=seed)
    correct = int((probs.argmax(1) == y).sum())
    result.update(
        p_value=float(binomtest(correct, len(y), 0.5, alternative="greater").pvalue),
        n_per_set=int(n_per),
        folds=int(folds),
        epochs=int(epochs),
    )
    return result


def c2st_floor(real: np.ndarray, n: int, draws: int = 3, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """C2ST of real against real at ``n`` images per side: two disjoint random subsets of ``real`` per draw.

    What "indistinguishable" reads at this sample size (about 0.5, with its spread). Needs ``2 n`` real images;
    with fewer, ``n`` shrinks to half of them and the result says so.
    """
    real = np.asarray(real, np.float32)
    n = min(n, len(real) // 2)
    if n < 4 or draws < 1:
        return {"skipped": f"too few real images for a real-vs-real C2ST ({len(real)})"}
    rng = np.random.default_rng(seed + 104729)
    rows = []
    for d in range(draws):
        perm = rng.permutation(len(real))
        a, b = real[perm[:n]], real[perm[n : 2 * n]]
        rows.append(classifier_two_sample_test(a, b, seed=seed + d, **kwargs))
    acc = [r["accuracy"] for r in rows]
    auc = [r["auroc"] for r in rows]
    return {
        "n_per_set": int(n),
        "draws": int(draws),
        "accuracy": {"mean": float(np.mean(acc)), "min": float(np.min(acc)), "max": float(np.max(acc))},
        "auroc": {"mean": float(np.mean(auc)), "min": float(np.min(auc)), "max": float(np.max(auc))},
        "rows": rows,
    }
