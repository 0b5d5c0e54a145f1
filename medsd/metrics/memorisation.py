"""Memorisation / privacy audit: are generated images copies of training images, of how many patients, and
would the audit have caught a copy?

1. Search: every generated image's nearest training image by two detectors of different kinds
   (:mod:`medsd.metrics.copy_search`: registration-aware NCC and a DCT perceptual hash), each searched over the
   changes training and sampling make (flips, shifts, crops, rotations, intensity, noise, blur).
2. Calibration: the same search for held-out *real* images (patients the model never saw). Each detector
   flags a generated image whose distance is below the ``quantile`` of the held-out distances; an image is a
   copy when any detector flags it. The false-alarm rate on held-out images is reported in sample and
   leave-one-out (each image against thresholds from the others).
3. Patients: how many training patients have at least one copy.
4. Self-test: transformed copies of ``planted_per_kind`` training images per kind
   (:mod:`medsd.metrics.planting`) are searched like generated images; the recall per kind must reach
   ``min_recall`` or the audit is invalid. Planted images never enter the generated set, the copies or counts.
"""

from __future__ import annotations

import numpy as np

from .copy_search import PerceptualHash, RegisteredNCC, SearchResult
from .planting import PLANT_KINDS, plant_copies

DEFAULT_QUANTILE = 0.005
DEFAULT_PLANTED_PER_KIND = 20
DEFAULT_MIN_RECALL = 0.9
DEFAULT_NCC_SIZE = 64
AUDIT_VERSION = 2


def default_detectors(size: int = DEFAULT_NCC_SIZE) -> list:
    """Registered NCC at ``size`` px (blur and band-pass scaled from their 64 px values) and the DCT hash."""
    return [RegisteredNCC(size=size, blur=size / 64, highpass=5 * size / 64), PerceptualHash()]


def _normalise_rows(images01: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images01, dtype=np.float32))[:, None]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    x = x[:, 0].numpy().reshape(len(images01), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 1e-12, n, 1.0)


def ncc_matrix(query01: np.ndarray, reference01: np.ndarray, size: int = DEFAULT_NCC_SIZE) -> np.ndarray:
    """Plain NCC (no registration) between every query and every reference image, ``[Nq, Nr]`` in [-1, 1]."""
    return _normalise_rows(query01, size) @ _normalise_rows(reference01, size).T


def nearest_by_ncc(
    query01: np.ndarray, reference01: np.ndarray, size: int = DEFAULT_NCC_SIZE, top_k: int = 1
):
    """Top-k most correlated reference images by plain NCC: ``(similarity [Nq, k], index [Nq, k])``."""
    s = ncc_matrix(query01, reference01, size)
    order = np.argsort(-s, axis=1)[:, : min(top_k, s.shape[1])]
    return np.take_along_axis(s, order, axis=1), order


def _quantiles(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {}
    q = np.percentile(x, [1, 5, 50, 95, 99])
    keys = ("p01", "p05", "median", "p95", "p99")
    return {
        "min": float(x.min()),
        **{k: float(v) for k, v in zip(keys, q, strict=True)},
        "max": float(x.max()),
    }


def calibrate(heldout: dict[str, SearchResult], quantile: float) -> dict:
    """Per-detector thresholds (the ``quantile`` of held-out distances; flag strictly below) and the
    false-alarm rate of the union on held-out images, in sample and leave-one-out (each image judged by
    thresholds from all the others: the rate for a new image)."""
    names = list(heldout)
    n = len(heldout[names[0]].dcr)
    thresholds = {d: float(np.quantile(heldout[d].dcr, quantile)) for d in names}
    flagged = np.any([heldout[d].dcr < thresholds[d] for d in names], axis=0)
    loo = np.zeros(n, bool)
    for d in names:
        x = heldout[d].dcr
        loo |= np.array([x[i] < np.quantile(np.delete(x, i), quantile) for i in range(n)]) if n > 1 else False
    return {
        "quantile": quantile,
        "thresholds": thresholds,
        "n_heldout": n,
        "false_alarm_rate": float(flagged.mean()),
        "false_alarm_rate_leave_one_out": float(loo.mean()),
        "per_detector_false_alarm_rate": {d: float((heldout[d].dcr < thresholds[d]).mean()) for d in names},
    }


def _flags(results: dict[str, SearchResult], thresholds: dict[str, float]):
    """Per query: flagged by any detector, the training index of the most confident flagging detector (lowest
    distance relative to its threshold; the NCC detector when none flags) and which detectors flagged."""
    names = list(results)
    rel = np.stack([results[d].dcr / max(thresholds[d], 1e-12) for d in names])
    hits = np.stack([results[d].dcr < thresholds[d] for d in names])
    pick = np.where(hits.any(0), np.argmin(np.where(hits, rel, np.inf), axis=0), 0)
    index = np.array([results[names[p]].index[i] for i, p in enumerate(pick)], dtype=int)
    by = [[names[j] for j in range(len(names)) if hits[j, i]] for i in range(hits.shape[1])]
    return hits.any(0), index, by


def _same_source(found: np.ndarray, source: np.ndarray, train_patients) -> np.ndarray:
    """The same training image, or another image of the same (known) patient."""
    if train_patients is None:
        return found == source
    same = [train_patients[f] not in (None, "") and train_patients[f] == train_patients[s]
            for f, s in zip(found, source, strict=True)]  # fmt: skip
    return (found == source) | np.array(same, bool)


def self_test(
    train01: np.ndarray,
    detectors: list,
    indexes: dict,
    thresholds: dict[str, float],
    train_patients=None,
    kinds=tuple(PLANT_KINDS),
    per_kind: int = DEFAULT_PLANTED_PER_KIND,
    min_recall: float = DEFAULT_MIN_RECALL,
    seed: int = 0,
) -> dict:
    """Plant ``per_kind`` transformed copies of training images per kind, search them like generated images
    and report the recall per kind (caught = flagged and matched to the source image's patient, or to the
    source image when there are no patient ids)."""
    planted, kind_of, source = plant_copies(train01, list(kinds), per_kind, seed=seed)
    results = {d.name: d.search(planted, indexes[d.name]) for d in detectors}
    flagged, index, _ = _flags(results, thresholds)
    caught = flagged & _same_source(index, source, train_patients)
    kind_of = np.asarray(kind_of)
    out = {}
    for k in kinds:
        m = kind_of == k
        per_det = {d: float(((results[d].dcr < thresholds[d]) & m).sum() / m.sum()) for d in results}
        out[k] = {
            "description": PLANT_KINDS[k],
            "n": int(m.sum()),
            "recall": float(caught[m].mean()),
            "recall_by_detector": per_det,
        }
    failed = [k for k, v in out.items() if v["recall"] < min_recall]
    return {
        "min_recall": min_recall,
        "per_kind": per_kind,
        "kinds": out,
        "passed": not failed,
        "failed": failed,
    }


def _patients_not_in_train(heldout_patients, train_patients) -> np.ndarray:
    if heldout_patients is None or train_patients is None:
        return np.ones(0 if heldout_patients is None else len(heldout_patients), bool)
    train_set = {str(p) for p in train_patients if p not in (None, "")}
    return np.array([str(p) not in train_set or p in (None, "") for p in heldout_patients], bool)


def memorisation_audit(
    generated01: np.ndarray,
    train01: np.ndarray,
    heldout01: np.ndarray | None,
    *,
    train_patients: list | None = None,
    heldout_patients: list | None = None,
    quantile: float = DEFAULT_QUANTILE,
    planted_per_kind: int = DEFAULT_PLANTED_PER_KIND,
    min_recall: float = DEFAULT_MIN_RECALL,
    kinds=tuple(PLANT_KINDS),
    size: int = DEFAULT_NCC_SIZE,
    ncc_threshold: float | None = None,
    detectors: list | None = None,
    seed: int = 0,
) -> dict:
    """Search, calibrate, count patients and self-test (see the module docstring).

    ``heldout01``: real images of patients outside training (the calibration reference); images whose patient
    is among ``train_patients`` are left out of it. ``ncc_threshold``: a fixed NCC (copy when the registered
    NCC is at least this) instead of the calibrated one for the NCC detector. Returns a JSON-able dict; the
    search results used by the figures are under ``"_arrays"`` (:func:`strip_arrays` drops them).
    """
    detectors = detectors or default_detectors(size)
    reasons: list[str] = []
    notes: list[str] = []
    indexes = {d.name: d.index(train01) for d in detectors}
    heldout01 = np.zeros((0, *train01.shape[1:]), np.float32) if heldout01 is None else heldout01
    new = _patients_not_in_train(heldout_patients, train_patients)
    if len(new) and not new.all():
        notes.append(f"{int((~new).sum())} held-out images share a patient with training (left out)")
        heldout01 = heldout01[new]
    held, cal = _calibrate_on_heldout(heldout01, detectors, indexes, quantile, reasons)
    if ncc_threshold is not None:
        cal["thresholds"][detectors[0].name] = 1.0 - ncc_threshold
        cal["fixed_ncc_threshold"] = ncc_threshold
    gen = {d.name: d.search(generated01, indexes[d.name]) for d in detectors}
    flagged, index, by = _flags(gen, cal["thresholds"])
    test = self_test(train01, detectors, indexes, cal["thresholds"], train_patients, kinds, planted_per_kind,
                     min_recall, seed)  # fmt: skip
    if not test["passed"]:
        reasons.append(f"self-test recall below {min_recall:g} for: {', '.join(test['failed'])}")
    copies = [_copy_entry(i, int(index[i]), by[i], gen, train_patients) for i in np.flatnonzero(flagged)]
    return {
        "version": AUDIT_VERSION,
        "valid": not reasons,
        "problems": reasons,
        "notes": notes,
        "settings": {
            "method": "registered NCC and DCT perceptual hash, thresholds calibrated on held-out real images",
            "detectors": {d.name: d.invariant_to for d in detectors},
            "size": size,
            "quantile": quantile,
            "n_generated": int(len(generated01)),
            "n_train": int(len(train01)),
            "n_heldout": int(len(heldout01)),
        },
        "calibration": cal,
        "self_test": test,
        **_patient_counts(copies, train_patients, len(generated01)),
        "dcr": {
            "generated": {d: _quantiles(r.dcr) for d, r in gen.items()},
            "heldout": {d: _quantiles(r.dcr) for d, r in held.items()},
        },
        "nndr": {
            "generated": {d: _quantiles(r.nndr) for d, r in gen.items()},
            "heldout": {d: _quantiles(r.nndr) for d, r in held.items()},
        },
        "copies": copies,
        "_arrays": {"generated": gen, "heldout": held},
    }


def _calibrate_on_heldout(
    heldout01: np.ndarray, detectors: list, indexes: dict, quantile: float, reasons: list[str]
) -> tuple[dict, dict]:
    """(held-out search results, calibration); appends to ``reasons`` when there are too few images."""
    need = int(np.ceil(1 / quantile))
    if len(heldout01) < max(need, 2):
        reasons.append(
            f"{len(heldout01)} held-out images are too few to calibrate the {quantile:g} quantile (need {need})"
        )
    if len(heldout01) < 2:
        return {}, {"quantile": quantile, "thresholds": {d.name: 0.0 for d in detectors}, "n_heldout": 0}
    held = {d.name: d.search(heldout01, indexes[d.name]) for d in detectors}
    return held, calibrate(held, quantile)


def _copy_entry(i: int, train_index: int, by: list[str], gen: dict, train_patients) -> dict:
    return {
        "generated_index": int(i),
        "train_index": train_index,
        "train_patient": None if train_patients is None else train_patients[train_index],
        "flagged_by": by,
        "distance": {d: float(r.dcr[i]) for d, r in gen.items()},
        "match": {d: r.transform[i] for d, r in gen.items() if r.transform},
    }


def _patient_counts(copies: list[dict], train_patients, n_generated: int) -> dict:
    patients = {str(c["train_patient"]) for c in copies if c["train_patient"] not in (None, "")}
    known = train_patients is not None and any(p not in (None, "") for p in train_patients)
    return {
        "n_copies": len(copies),
        "fraction_copies": len(copies) / n_generated if n_generated else 0.0,
        "n_train_images_copied": len({c["train_index"] for c in copies}),
        "n_train_patients": len({str(p) for p in train_patients if p not in (None, "")}) if known else None,
        "n_train_patients_with_copy": len(patients) if known else None,
    }


def strip_arrays(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "_arrays"}
