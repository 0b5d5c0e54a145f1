"""Does the memorisation audit catch transformed copies without flagging new patients, and what does it cost?

On a metadata CSV with patient ids (patient-level split as training splits it): training images = the train
split, held-out reference = val + test (patients never trained on). Planted copies: ``--per_kind`` training
images per kind of change (medsd.metrics.planting). Recall per kind at the audit's calibrated thresholds;
false-alarm rate of new held-out images leave-one-out (each judged by thresholds from the others). Cost (CPU
seconds, one thread): per 1,000 queries against this training set, and the coarse stage against
``--index_size`` random training embeddings (the only stage that grows with the training set).

    python benchmarks/memorisation_audit.py --data ../shared/data/nih_cxr14/metadata.csv --size 64 \\
        --per_kind 50 --out outputs/memorisation_audit.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from medsd.metrics.io import load_image_set
from medsd.metrics.memorisation import DEFAULT_QUANTILE, calibrate, default_detectors
from medsd.metrics.planting import PLANT_KINDS, plant_copies


def coarse_cost(detector, n_index: int, n_queries: int = 32, seed: int = 0) -> float:
    """Seconds per 1,000 queries for the coarse stage against ``n_index`` random unit embeddings."""
    rng = np.random.default_rng(seed)
    dim = detector.coarse_size**2
    index = {"coarse": rng.normal(size=(n_index, dim)).astype(np.float32)}
    index["coarse"] /= np.linalg.norm(index["coarse"], axis=1, keepdims=True)
    queries = rng.random((n_queries, detector.size, detector.size)).astype(np.float32)
    t = time.process_time()
    for i in range(0, n_queries, detector.batch):
        detector.candidates(queries[i : i + detector.batch], index)
    return 1000 * (time.process_time() - t) / n_queries


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="metadata CSV with filename and patient_id columns")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per_kind", type=int, default=50)
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE)
    p.add_argument("--index_size", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    train = load_image_set(args.data, size=args.size, split="train", seed=args.seed)
    held = load_image_set(args.data, size=args.size, split="heldout", seed=args.seed)
    assert not set(train.patient_ids) & set(held.patient_ids), "held-out patients must not be in training"
    planted, kinds, source = plant_copies(train.images, list(PLANT_KINDS), args.per_kind, seed=args.seed + 1)
    detectors = default_detectors(args.size)
    res_held, res_planted, seconds, index_seconds = {}, {}, {}, {}
    for d in detectors:
        t = time.process_time()
        index = d.index(train.images)
        index_seconds[d.name] = 1000 * (time.process_time() - t) / len(train)
        res_held[d.name] = d.search(held.images, index)
        t = time.process_time()
        res_planted[d.name] = d.search(planted, index)
        seconds[d.name] = 1000 * (time.process_time() - t) / len(planted)
    cal = calibrate(res_held, args.quantile)
    pid = np.asarray(train.patient_ids)
    caught = np.zeros(len(planted), bool)
    for name, r in res_planted.items():
        caught |= (r.dcr < cal["thresholds"][name]) & (pid[r.index] == pid[source])
    kinds = np.asarray(kinds)
    out = {
        "data": args.data,
        "size": args.size,
        "n_train": len(train),
        "n_train_patients": len(set(train.patient_ids)),
        "n_heldout": len(held),
        "n_heldout_patients": len(set(held.patient_ids)),
        "calibration": cal,
        "recall": {k: float(caught[kinds == k].mean()) for k in PLANT_KINDS},
        "recall_by_detector": {
            name: {k: float((r.dcr < cal["thresholds"][name])[kinds == k].mean()) for k in PLANT_KINDS}
            for name, r in res_planted.items()
        },
        "per_kind": args.per_kind,
        "cpu_seconds_per_1000_queries": seconds,
        "cpu_seconds_per_1000_training_images_indexed": index_seconds,
        f"coarse_cpu_seconds_per_1000_queries_at_{args.index_size}": coarse_cost(
            detectors[0], args.index_size
        ),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return out


if __name__ == "__main__":
    main()
