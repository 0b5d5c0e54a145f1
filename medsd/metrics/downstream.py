"""Downstream utility: does a classifier trained on synthetic images work on real ones?

A small CNN (pure torch, CPU-fast, 64 px input) is trained on synthetic labelled images, on real ones, and on
both, and tested on held-out real images. Accuracy and AUROC (torchmetrics; macro one-vs-rest for more than two
classes) are reported with percentile-bootstrap 95% confidence intervals over the test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _make_cnn(num_classes: int):
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(1, 16),
        block(16, 32),
        block(32, 64),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64, num_classes),
    )


def _prep(images01: np.ndarray, size: int):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images01, dtype=np.float32))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x * 2.0 - 1.0


def train_classifier(
    images01: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 2e-3,
    size: int = 64,
    seed: int = 0,
    augment: bool = True,
    num_threads: int | None = None,
):
    """Train the small CNN; returns the model in eval mode. Deterministic for a given seed (CPU).

    ``num_threads`` temporarily sets torch's intra-op threads (1 is often fastest for this tiny net on a busy CPU).
    """
    import torch

    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train(images01, labels, num_classes, epochs, batch_size, lr, size, seed, augment)
    finally:
        torch.set_num_threads(old_threads)


def _train(images01, labels, num_classes, epochs, batch_size, lr, size, seed, augment):
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _make_cnn(num_classes)
    x = _prep(images01, size)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, (len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            if len(b) < 2:
                continue
            xb = x[b]
            if augment:  # small random shifts (+-4 px) and brightness jitter
                dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
                xb = xb + 0.1 * (torch.rand(len(b), 1, 1, 1, generator=g) - 0.5)
            opt.zero_grad()
            loss = loss_fn(model(xb), y[b])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def predict_proba(model, images01: np.ndarray, size: int = 64) -> np.ndarray:
    import torch

    x = _prep(images01, size)
    with torch.no_grad():
        p = torch.cat([torch.softmax(model(x[i : i + 256]), dim=1) for i in range(0, len(x), 256)])
    return p.numpy()


def _auroc(probs: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    import torch
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    if len(np.unique(y)) < 2:
        return float("nan")
    p, t = torch.from_numpy(probs).float(), torch.from_numpy(y).long()
    if num_classes == 2:
        return float(binary_auroc(p[:, 1], t))
    return float(multiclass_auroc(p, t, num_classes=num_classes, average="macro"))


def evaluate_with_ci(
    probs: np.ndarray, y: np.ndarray, num_classes: int, n_boot: int = 200, seed: int = 0
) -> dict:
    """Accuracy and AUROC with percentile-bootstrap 95% CIs (test images resampled with replacement)."""
    y = np.asarray(y)
    acc = float((probs.argmax(1) == y).mean())
    auc = _auroc(probs, y, num_classes)
    rng = np.random.default_rng(seed)
    accs, aucs = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        accs.append((probs[i].argmax(1) == y[i]).mean())
        a = _auroc(probs[i], y[i], num_classes)
        if np.isfinite(a):
            aucs.append(a)
    return {
        "accuracy": acc,
        "accuracy_ci95": [float(np.percentile(accs, 2.5)), float(np.percentile(accs, 97.5))],
        "auroc": auc,
        "auroc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if aucs else None,
        "n_test": int(len(y)),
    }


def downstream_utility(
    train_sets: dict[str, tuple[np.ndarray, list]],
    test: tuple[np.ndarray, list],
    epochs: int = 15,
    size: int = 64,
    n_boot: int = 200,
    seed: int = 0,
    num_threads: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
) -> dict:
    """Train one classifier per named training set (e.g. ``{"synthetic": (x, labels), "real": ..., "both": ...}``)
    and test each on the held-out real ``test`` set. Labels may be any hashable; classes are taken from the test
    set (training images with other labels are dropped)."""
    test_x, test_labels = test
    classes = sorted({str(v) for v in test_labels})
    if len(classes) < 2:
        raise ValueError("downstream utility needs at least two classes in the test set")
    cmap = {c: i for i, c in enumerate(classes)}
    yt = np.array([cmap[str(v)] for v in test_labels])
    results = {}
    for name, (x, labels) in train_sets.items():
        keep = np.array([str(v) in cmap for v in labels], dtype=bool)
        x = np.asarray(x)[keep]
        y = np.array([cmap[str(v)] for v, k in zip(labels, keep) if k])
        if len(np.unique(y)) < 2:
            results[name] = {"skipped": "fewer than two classes in the training set"}
            continue
        model = train_classifier(
            x,
            y,
            len(classes),
            epochs=epochs,
            size=size,
            seed=seed,
            num_threads=num_threads,
            batch_size=batch_size,
            lr=lr,
        )
        r = evaluate_with_ci(
            predict_proba(model, test_x, size=size), yt, len(classes), n_boot=n_boot, seed=seed
        )
        r["n_train"] = int(len(y))
        results[name] = r
    return {
        "classes": classes,
        "results": results,
        "settings": {
            "model": "4-block CNN (16-32-64-64, GroupNorm), AdamW + one-cycle",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "input_size": size,
            "bootstrap": n_boot,
            "seed": seed,
            "chance_accuracy": float(np.bincount(yt).max() / len(yt)),
        },
    }


def results_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of :func:`downstream_utility` results: accuracy and AUROC with their 95% CIs."""

    def f(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{x:.3f}"

    lines = ["| trained on | n train | accuracy [95% CI] | AUROC [95% CI] |", "|---|---|---|---|"]
    for name, v in results.items():
        if "skipped" in v:
            lines.append(f"| {name} | - | skipped: {v['skipped']} | |")
            continue
        ac, au = v["accuracy_ci95"], v["auroc_ci95"] or [None, None]
        lines.append(
            f"| {name} | {v['n_train']} | {f(v['accuracy'])} [{f(ac[0])}, {f(ac[1])}] | "
            f"{f(v['auroc'])} [{f(au[0])}, {f(au[1])}] |"
        )
    return lines
