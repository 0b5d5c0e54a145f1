"""Seeded random, label- and patient-stratified subsampling of image sets (``--max_images`` / ``--num_images``).

Taking the first N files of a listing gives whatever order the folder or CSV has (e.g. 20 patients and 45 of 48
"No Finding"); :func:`stratified_subsample` instead keeps the label proportions of the whole set and spreads each
label's share over as many patients as possible, at random with a fixed seed.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections import defaultdict
from pathlib import Path

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


def _csv_of(spec: str, filename_column: str) -> Path | None:
    p = Path(spec)
    csv_path = p / "metadata.csv" if p.is_dir() else p
    if not (csv_path.is_file() and csv_path.suffix.lower() == ".csv"):
        return None
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), [])
    return csv_path if filename_column in header else None


def load_subsampled(
    spec,
    size: int = 128,
    label=None,
    label_column: str = "label",
    filename_column: str = "filename",
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """:func:`medsd.metrics.io.load_image_set` with :func:`stratified_subsample` for CSV-listed sources.

    For a metadata CSV (or a folder with one) the listing is read first, the subsample is chosen by label and
    patient, and only those images are decoded (through ``load_image_set`` on a temporary CSV of the chosen
    rows). Other sources (plain folders, ``hf:`` datasets, arrays) have no patient ids in their listing: they use
    ``load_image_set``'s own seeded random subsample.
    """
    from .io import ImageSet, load_image_set

    kw = dict(size=size, label_column=label_column, filename_column=filename_column, progress=progress)
    if max_images is None or isinstance(spec, (ImageSet, np.ndarray)):
        return load_image_set(spec, label=label, max_images=max_images, seed=seed, **kw)
    csv_path = _csv_of(str(spec), filename_column)
    if csv_path is None:
        return load_image_set(spec, label=label, max_images=max_images, seed=seed, **kw)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if label is not None and label != "":
        keep = {str(x) for x in label} if isinstance(label, (list, tuple, set)) else None
        keep = keep or {x.strip() for x in str(label).split(",") if x.strip()}
        rows = [r for r in rows if r.get(label_column) in keep]
    if not rows:  # let load_image_set give its usual error
        return load_image_set(spec, label=label, seed=seed, **kw)
    idx = stratified_subsample(
        len(rows),
        max_images,
        labels=[r.get(label_column) for r in rows],
        patient_ids=[r.get("patient_id") for r in rows],
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="medsd_subsample_") as tmp:
        sub = Path(tmp) / "metadata.csv"
        with open(sub, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for i in idx:
                r = dict(rows[i])
                p = Path(r[filename_column])
                r[filename_column] = os.path.abspath(p if p.is_absolute() else csv_path.parent / p)
                w.writerow(r)
        out = load_image_set(str(sub), **kw)
    out.source = str(spec)
    return out
