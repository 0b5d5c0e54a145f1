"""Seeded random, label- and patient-stratified subsampling of image sets (``--max_images`` / ``--num_images``).

Taking the first N files of a listing gives whatever order the folder or CSV has (e.g. 20 patients and 45 of 48
"No Finding"); :func:`stratified_subsample` instead keeps the label proportions of the whole set and spreads each
label's share over as many patients as possible, at random with a fixed seed.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _allocate(counts: dict, n: int) -> dict:
    """Split ``n`` over strata in proportion to ``counts`` (largest remainder), never more than a stratum has."""
    total = sum(counts.values())
    quota = {k: n * c / total for k, c in counts.items()}
    alloc = {k: min(int(np.floor(q)), counts[k]) for k, q in quota.items()}
    left = n - sum(alloc.values())
    for k in sorted(counts, key=lambda k: (-(quota[k] - np.floor(quota[k])), str(k))):
        if left <= 0:
            break
        if alloc[k] < counts[k]:
            alloc[k] += 1
            left -= 1
    while left > 0:  # strata that were full: give the rest to those with room
        room = [k for k in sorted(counts, key=str) if alloc[k] < counts[k]]
        if not room:
            break
        for k in room:
            if left <= 0:
                break
            alloc[k] += 1
            left -= 1
    return alloc


def stratified_subsample(
    n: int,
    max_images: int | None,
    labels: list | None = None,
    patient_ids: list | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices (sorted) of a seeded subsample of ``max_images`` out of ``n`` items.

    Each label keeps its share of the set (largest-remainder rounding); within a label, patients are visited
    in a random order taking one image each, then a second image each, and so on, so the subsample covers as
    many patients as it can. Items without a patient id count as their own patient. ``max_images`` of None or
    at least ``n`` keeps everything.
    """
    if max_images is None or max_images >= n:
        return list(range(n))
    if max_images <= 0:
        raise ValueError(f"max_images: expected a positive number, got {max_images}")
    labels = list(labels) if labels else [None] * n
    pids = list(patient_ids) if patient_ids else [None] * n
    if len(labels) != n or len(pids) != n:
        raise ValueError(f"labels/patient_ids: expected {n} entries, got {len(labels)}/{len(pids)}")
    rng = np.random.default_rng(seed)
    by_label: dict = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    alloc = _allocate({k: len(v) for k, v in by_label.items()}, max_images)
    picked: list[int] = []
    for lab in sorted(by_label, key=str):
        groups: dict = defaultdict(list)
        for i in by_label[lab]:
            groups[pids[i] if pids[i] not in (None, "") else f"__item{i}"].append(i)
        keys = list(groups)
        order = [keys[j] for j in rng.permutation(len(keys))]
        queues = [[groups[g][j] for j in rng.permutation(len(groups[g]))] for g in order]
        take, rnd = [], 0
        while len(take) < alloc[lab]:
            for q in queues:
                if rnd < len(q) and len(take) < alloc[lab]:
                    take.append(q[rnd])
            rnd += 1
        picked.extend(take)
    return sorted(picked)
