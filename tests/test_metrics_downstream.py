"""Downstream utility: a classifier trained on separable synthetic classes beats chance on held-out images."""

import numpy as np

import medsd.data.phantoms as phantoms
from medsd.metrics import downstream_utility
from medsd.metrics.downstream import evaluate_with_ci


def _make(n, offset, size=32):
    big = (phantoms.Finding(side="right", zone="middle", radius_frac=0.15, strength=0.5),)
    xs, ys = [], []
    for i in range(n):
        lab = i % 2
        xs.append(phantoms.chest_phantom(size, seed=offset + i, findings=big if lab else ()))
        ys.append("opacity" if lab else "no finding")
    return np.stack(xs), ys


def test_separable_classes_beat_chance():
    train, test = _make(96, 0), _make(60, 5000)
    r = downstream_utility(
        {"synthetic": train}, test, epochs=12, size=32, n_boot=50, num_threads=1, batch_size=16, lr=5e-3
    )
    res = r["results"]["synthetic"]
    assert r["classes"] == ["no finding", "opacity"]
    assert res["accuracy"] > 0.8 and res["auroc"] > 0.9
    lo, hi = res["accuracy_ci95"]
    assert lo <= res["accuracy"] <= hi


def test_bootstrap_ci_perfect_and_single_class_skip():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]] * 10)
    y = np.array([0, 1] * 10)
    r = evaluate_with_ci(probs, y, 2, n_boot=20)
    assert r["accuracy"] == 1.0 and r["auroc"] == 1.0 and r["accuracy_ci95"] == [1.0, 1.0]
    x = np.zeros((4, 32, 32), np.float32)
    out = downstream_utility({"one_class": (x, ["a"] * 4)}, (x, ["a", "b", "a", "b"]), epochs=1, size=32)
    assert "skipped" in out["results"]["one_class"]
