"""Reader-study kit: blinded real-vs-synthetic sets for human readers, and scoring of their answers.

Two designs:

- ``single``: real and synthetic images shuffled into ``cases/case_0001.png ...``; each reader fills
  ``answer_sheet.csv`` (``case_id,answer`` with answer ``real``, ``fake`` or ``unsure``).
- ``2afc``: pairs ``pairs/pair_0001_A.png`` / ``pair_0001_B.png``, one real, one synthetic, side randomised; the
  reader answers which one is real (``A``, ``B`` or ``unsure``).

``key.csv`` (keep it away from the readers) holds the truth and the source of every case. Scoring gives per-reader
accuracy (unsure counted as wrong; accuracy on decided cases separately) and Cohen's kappa between every pair of
readers on the raw answers (hand-written: sklearn is not a dependency).
"""

from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path

import numpy as np


def _save_png(image01: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.clip(np.rint(image01 * 255), 0, 255).astype(np.uint8), mode="L").save(path)


def export_reader_study(
    real01: np.ndarray,
    fake01: np.ndarray,
    out_dir: str | Path,
    n_each: int | None = None,
    design: str = "single",
    seed: int = 0,
    real_sources: list[str] | None = None,
    fake_sources: list[str] | None = None,
) -> dict:
    """Write a blinded study to ``out_dir``; returns a summary dict. Images are written as 8-bit PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = min(len(real01), len(fake01)) if n_each is None else min(n_each, len(real01), len(fake01))
    ri = np.sort(rng.choice(len(real01), n, replace=False))
    fi = np.sort(rng.choice(len(fake01), n, replace=False))
    rs = real_sources or [f"real#{i}" for i in range(len(real01))]
    fs = fake_sources or [f"fake#{i}" for i in range(len(fake01))]
    if design == "single":
        cases = [("real", i) for i in ri] + [("fake", i) for i in fi]
        order = rng.permutation(len(cases))
        (out / "cases").mkdir(exist_ok=True)
        key_rows, sheet_rows = [], []
        for k, j in enumerate(order, 1):
            truth, i = cases[j]
            cid = f"case_{k:04d}"
            _save_png((real01 if truth == "real" else fake01)[i], out / "cases" / f"{cid}.png")
            key_rows.append({"case_id": cid, "truth": truth, "source": (rs if truth == "real" else fs)[i]})
            sheet_rows.append({"case_id": cid, "answer": ""})
        instructions = "For each case write real, fake or unsure in the answer column."
    elif design == "2afc":
        (out / "pairs").mkdir(exist_ok=True)
        key_rows, sheet_rows = [], []
        for k, (r, f) in enumerate(zip(rng.permutation(ri), rng.permutation(fi)), 1):
            cid = f"pair_{k:04d}"
            real_side = "A" if rng.random() < 0.5 else "B"
            a, b = (real01[r], fake01[f]) if real_side == "A" else (fake01[f], real01[r])
            _save_png(a, out / "pairs" / f"{cid}_A.png")
            _save_png(b, out / "pairs" / f"{cid}_B.png")
            key_rows.append({"case_id": cid, "truth": real_side, "source": f"real={rs[r]};fake={fs[f]}"})
            sheet_rows.append({"case_id": cid, "answer": ""})
        instructions = (
            "For each pair write A or B (the image you think is real) or unsure in the answer column."
        )
    else:
        raise ValueError(f"design must be 'single' or '2afc', got {design!r}")
    _write_csv(out / "answer_sheet.csv", sheet_rows, ["case_id", "answer"])
    _write_csv(out / "key.csv", key_rows, ["case_id", "truth", "source"])
    info = {
        "design": design,
        "n_cases": len(key_rows),
        "n_real": int(n),
        "n_fake": int(n),
        "seed": seed,
        "instructions": instructions,
    }
    (out / "study.json").write_text(json.dumps(info, indent=2))
    (out / "README.txt").write_text(
        f"Reader study ({design}). {instructions}\nGive readers the images and answer_sheet.csv only; "
        "key.csv holds the truth.\n"
    )
    return info


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _read_answers(path: str | Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {r["case_id"]: (r.get("answer") or "").strip().lower() for r in csv.DictReader(f)}


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa between two raters' categorical answers (hand-written; 1.0 when both are constant and equal)."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError("need two equally long, non-empty answer lists")
    cats = sorted(set(a) | set(b))
    idx = {c: i for i, c in enumerate(cats)}
    m = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        m[idx[x], idx[y]] += 1
    n = m.sum()
    po = np.trace(m) / n
    pe = (m.sum(1) * m.sum(0)).sum() / n**2
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else 0.0
    return float((po - pe) / (1.0 - pe))


def score_reader_study(key_csv: str | Path, answer_csvs: dict[str, str | Path] | list[str | Path]) -> dict:
    """Per-reader accuracy and pairwise Cohen's kappa. ``answer_csvs``: ``{reader: path}`` or a list of paths
    (reader = file stem). Missing or empty answers count as ``unsure``."""
    with open(key_csv, newline="") as f:
        key = {r["case_id"]: r["truth"].strip().lower() for r in csv.DictReader(f)}
    if not isinstance(answer_csvs, dict):
        answer_csvs = {Path(p).stem: p for p in answer_csvs}
    cases = sorted(key)
    answers = {}
    readers = {}
    for name, path in answer_csvs.items():
        raw = _read_answers(path)
        ans = [raw.get(c, "") or "unsure" for c in cases]
        answers[name] = ans
        truth = [key[c] for c in cases]
        correct = np.array([x == t for x, t in zip(ans, truth)])
        decided = np.array([x != "unsure" for x in ans])
        r = {
            "n_cases": len(cases),
            "accuracy": float(correct.mean()),
            "n_unsure": int((~decided).sum()),
            "accuracy_decided": float(correct[decided].mean()) if decided.any() else float("nan"),
        }
        if set(truth) <= {"real", "fake"}:  # single-image design: sensitivity for spotting fakes
            fake = np.array([t == "fake" for t in truth])
            real = ~fake
            r["fake_detected"] = float(correct[fake].mean()) if fake.any() else float("nan")
            r["real_recognised"] = float(correct[real].mean()) if real.any() else float("nan")
        readers[name] = r
    kappas = [
        {"reader_a": a, "reader_b": b, "kappa": cohen_kappa(answers[a], answers[b])}
        for a, b in combinations(sorted(answers), 2)
    ]
    return {
        "readers": readers,
        "kappa": kappas,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in readers.values()]))
        if readers
        else float("nan"),
    }
