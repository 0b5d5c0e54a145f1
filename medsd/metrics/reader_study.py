"""Reader-study kit: blinded real-vs-synthetic sets for human readers, and scoring of their answers.

Designs:

- ``mixed``: real and synthetic images shuffled into ``cases/case_0001.png ...``; each reader
  fills ``answer_sheet.csv`` (``case_id,stratum,answer,findings``; answer ``real``, ``fake`` or ``unsure``,
  findings free text).
- ``all_synthetic``: every case is synthetic (the design of "Spot the fake lungs": e.g. 20 X-ray and 20 CT cases),
  readers do not know that; same sheet. Scoring counts per reader how many cases were rated real / fake / unsure.
- ``2afc``: pairs ``pairs/pair_0001_A.png`` / ``pair_0001_B.png``, one real, one synthetic, side randomised; the
  reader answers which one is real (``A``, ``B`` or ``unsure``).

Strata (e.g. modality: ``{"xray": images, "ct": images}``) are sampled separately (``n_each`` per stratum) and
shuffled together; every statistic is also given per stratum. ``key.csv`` (keep it away from the readers) holds
the truth, stratum and source of every case. Scoring: per-reader counts and accuracy, the joint-agreement table
(how many cases all readers rated real / fake / unsure, and each answer pattern), Cohen's kappa between every pair
of readers and Fleiss' kappa over all of them (hand-written: sklearn/statsmodels are not dependencies).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

DESIGNS = ("mixed", "all_synthetic", "2afc")
ANSWERS = ("real", "fake", "unsure")


def _save_png(image01: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.clip(np.rint(image01 * 255), 0, 255).astype(np.uint8), mode="L").save(path)


def _as_strata(x, sources, what: str) -> dict:
    """``array`` or ``{stratum: array}`` (sources likewise) -> ``{stratum: (array, sources)}``."""
    if x is None:
        return {}
    if not isinstance(x, dict):
        x = {"all": x}
        sources = {"all": sources} if sources is not None else None
    out = {}
    for k, arr in x.items():
        src = (sources or {}).get(k) if isinstance(sources, dict) else None
        arr = np.asarray(arr)
        out[str(k)] = (
            arr,
            list(src)
            if src
            else [f"{what}:{k}#{i}" if k != "all" else f"{what}#{i}" for i in range(len(arr))],
        )
    return out


CASE_INSTRUCTIONS = (
    "For each case write real, fake or unsure in the answer column, and anything you see (findings, "
    "artefacts, why you decided) in the findings column."
)
PAIR_INSTRUCTIONS = (
    "For each pair write A or B (the image you think is real) or unsure in the answer column, and "
    "anything you see in the findings column."
)


def _pick(rng: np.random.Generator, arr: Any, n: int) -> np.ndarray:
    return np.sort(rng.choice(len(arr), n, replace=False))


def _export_cases(
    fakes: dict, reals: dict, design: str, n_each: int | None, rng: np.random.Generator, out: Path
):
    """Single images shuffled into ``cases/`` (mixed or all synthetic): (key rows, counts, instructions)."""
    cases, key_rows, counts = [], [], {}
    for st in sorted(fakes):
        fa, fs = fakes[st]
        if design == "mixed":
            ra, rs = reals[st]
            n = min(len(ra), len(fa)) if n_each is None else min(n_each, len(ra), len(fa))
            cases += [(st, "real", ra[i], rs[i]) for i in _pick(rng, ra, n)]
            counts[st] = {"real": int(n), "fake": int(n)}
        else:
            n = len(fa) if n_each is None else min(n_each, len(fa))
            counts[st] = {"real": 0, "fake": int(n)}
        cases += [(st, "fake", fa[i], fs[i]) for i in _pick(rng, fa, n)]
    (out / "cases").mkdir(exist_ok=True)
    for k, j in enumerate(rng.permutation(len(cases)), 1):
        st, truth, img, src = cases[j]
        cid = f"case_{k:04d}"
        _save_png(img, out / "cases" / f"{cid}.png")
        key_rows.append({"case_id": cid, "stratum": st, "truth": truth, "source": src})
    return key_rows, counts, CASE_INSTRUCTIONS


def _export_pairs(
    fakes: dict, reals: dict, design: str, n_each: int | None, rng: np.random.Generator, out: Path
):
    """Real/fake pairs in ``pairs/`` (2afc), the real side drawn at random: like :func:`_export_cases`."""
    pairs, key_rows, counts = [], [], {}
    (out / "pairs").mkdir(exist_ok=True)
    for st in sorted(fakes):
        (fa, fs), (ra, rs) = fakes[st], reals[st]
        n = min(len(ra), len(fa)) if n_each is None else min(n_each, len(ra), len(fa))
        pairs += [
            (st, r, f) for r, f in zip(rng.permutation(_pick(rng, ra, n)), rng.permutation(_pick(rng, fa, n)))
        ]
        counts[st] = {"real": int(n), "fake": int(n)}
    for k, j in enumerate(rng.permutation(len(pairs)), 1):
        st, r, f = pairs[j]
        (fa, fs), (ra, rs) = fakes[st], reals[st]
        cid = f"pair_{k:04d}"
        real_side = "A" if rng.random() < 0.5 else "B"
        a, b = (ra[r], fa[f]) if real_side == "A" else (fa[f], ra[r])
        _save_png(a, out / "pairs" / f"{cid}_A.png")
        _save_png(b, out / "pairs" / f"{cid}_B.png")
        key_rows.append(
            {"case_id": cid, "stratum": st, "truth": real_side, "source": f"real={rs[r]};fake={fs[f]}"}
        )
    return key_rows, counts, PAIR_INSTRUCTIONS


def export_reader_study(
    real01,
    fake01,
    out_dir: str | Path,
    n_each: int | None = None,
    design: str = "mixed",
    seed: int = 0,
    real_sources=None,
    fake_sources=None,
) -> dict:
    """Write a blinded study to ``out_dir``; returns a summary dict. Images are written as 8-bit PNG.

    ``real01`` / ``fake01``: ``[N, H, W]`` arrays in [0, 1], or ``{stratum: array}`` for per-modality strata
    (``real01`` may be None for ``all_synthetic``). ``n_each``: cases per class and stratum (all by default).
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    fakes = _as_strata(fake01, fake_sources, "fake")
    reals = _as_strata(real01, real_sources, "real")
    if not fakes:
        raise ValueError("no synthetic images given")
    if design != "all_synthetic":
        missing = sorted(set(fakes) - set(reals))
        if missing:
            raise ValueError(f"design {design!r} needs real images for every stratum; missing: {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    export = _export_cases if design in ("mixed", "all_synthetic") else _export_pairs
    key_rows, counts, instructions = export(fakes, reals, design, n_each, rng, out)
    sheet_rows = [
        {"case_id": r["case_id"], "stratum": r["stratum"], "answer": "", "findings": ""} for r in key_rows
    ]
    _write_csv(out / "answer_sheet.csv", sheet_rows, ["case_id", "stratum", "answer", "findings"])
    _write_csv(out / "key.csv", key_rows, ["case_id", "stratum", "truth", "source"])
    info = {
        "design": design,
        "n_cases": len(key_rows),
        "n_real": int(sum(c["real"] for c in counts.values())),
        "n_fake": int(sum(c["fake"] for c in counts.values())),
        "strata": counts,
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


def read_answer_sheet(path: str | Path) -> dict[str, tuple[str, str]]:
    """An answer CSV (``case_id``, ``answer``, ``findings`` columns; others ignored) as ``{case_id: (answer,
    findings)}``, the form :func:`score_answer_sheets` takes."""
    with open(path, newline="") as f:
        return {
            r["case_id"]: ((r.get("answer") or "").strip().lower(), (r.get("findings") or "").strip())
            for r in csv.DictReader(f)
        }


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


def fleiss_kappa(ratings: list[list[str]]) -> float:
    """Fleiss' kappa for ``ratings[case][reader]`` (every case rated by the same number of readers, >= 2)."""
    if not ratings or len({len(r) for r in ratings}) != 1 or len(ratings[0]) < 2:
        raise ValueError("need at least one case, all rated by the same number (>= 2) of readers")
    cats = sorted({x for r in ratings for x in r})
    n = len(ratings[0])
    m = np.array([[r.count(c) for c in cats] for r in ratings], dtype=np.float64)  # [cases, categories]
    p_i = ((m * m).sum(1) - n) / (n * (n - 1))
    p_bar = p_i.mean()
    p_j = m.sum(0) / m.sum()
    pe = (p_j**2).sum()
    if pe >= 1.0:
        return 1.0 if p_bar >= 1.0 else 0.0
    return float((p_bar - pe) / (1.0 - pe))


def joint_agreement(answers: dict[str, list[str]]) -> dict:
    """How often the readers agree, case by case: unanimous counts per answer, and every answer pattern."""
    names = sorted(answers)
    per_case = list(zip(*(answers[n] for n in names)))
    unanimous = Counter(c[0] for c in per_case if len(set(c)) == 1)
    patterns = Counter("/".join(sorted(c)) for c in per_case)
    return {
        "readers": names,
        "n_cases": len(per_case),
        "all_agree": int(sum(unanimous.values())),
        "unanimous": {a: int(unanimous.get(a, 0)) for a in sorted(set(unanimous) | set(ANSWERS[:3]))},
        "no_consensus": int(len(per_case) - sum(unanimous.values())),
        "patterns": dict(sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _score_group(cases, key, answers, truth_kind) -> dict:
    readers = {}
    truth = [key[c] for c in cases]
    for name, ans_all in answers.items():
        ans = [ans_all[c] for c in cases]
        correct = np.array([x == t for x, t in zip(ans, truth)])
        decided = np.array([x != "unsure" for x in ans])
        r = {
            "n_cases": len(cases),
            "counts": dict(sorted(Counter(ans).items())),
            "accuracy": float(correct.mean()) if len(cases) else float("nan"),
            "n_unsure": int((~decided).sum()),
            "accuracy_decided": float(correct[decided].mean()) if decided.any() else float("nan"),
        }
        if truth_kind == "real_fake":
            fake = np.array([t == "fake" for t in truth])
            r["fake_detected"] = float(correct[fake].mean()) if fake.any() else float("nan")
            r["real_recognised"] = float(correct[~fake].mean()) if (~fake).any() else float("nan")
            r["synthetic_rated_real"] = int(sum(a == "real" for a, t in zip(ans, truth) if t == "fake"))
        readers[name] = r
    names = sorted(answers)
    per = {n: [answers[n][c] for c in cases] for n in names}
    out = {
        "readers": readers,
        "kappa": [
            {"reader_a": a, "reader_b": b, "kappa": cohen_kappa(per[a], per[b])}
            for a, b in combinations(names, 2)
        ]
        if cases
        else [],
        "fleiss_kappa": fleiss_kappa([list(x) for x in zip(*(per[n] for n in names))])
        if len(names) >= 2 and cases
        else None,
        "joint_agreement": joint_agreement(per) if cases else None,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in readers.values()]))
        if readers
        else float("nan"),
    }
    return out


def score_reader_study(key_csv: str | Path, answer_csvs: dict[str, str | Path] | list[str | Path]) -> dict:
    """Score filled answer sheets against ``key.csv``. ``answer_csvs``: ``{reader: path}`` or a list of paths
    (reader = file stem). Missing or empty answers count as ``unsure``.

    Returns per-reader counts/accuracy, pairwise Cohen's kappa, Fleiss' kappa, the joint-agreement table, the same
    per stratum (``strata``), and every non-empty free-text finding (``findings``).
    """
    if not isinstance(answer_csvs, dict):
        answer_csvs = {Path(p).stem: p for p in answer_csvs}
    sheets = {name: read_answer_sheet(path) for name, path in answer_csvs.items()}
    return score_answer_sheets(key_csv, sheets, {name: str(path) for name, path in answer_csvs.items()})


def score_answer_sheets(
    key_csv: str | Path,
    sheets: dict[str, dict[str, tuple[str, str]]],
    where: dict[str, str] | None = None,
) -> dict:
    """Score answers already read: ``sheets[reader][case_id] = (answer, findings)`` (answers case-insensitive).

    What :func:`score_reader_study` does after reading the CSVs, and what the reader-study web app's database is
    scored with, so both give the same numbers. ``where[reader]`` names the sheet in errors.
    """
    with open(key_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    key = {r["case_id"]: r["truth"].strip().lower() for r in rows}
    stratum = {r["case_id"]: (r.get("stratum") or "all") for r in rows}
    cases = sorted(key)
    answers, findings = {}, []
    for name, raw in sheets.items():
        path = (where or {}).get(name, f"reader {name}")
        sheet = {c: ((a or "").strip().lower(), (t or "").strip()) for c, (a, t) in raw.items()}
        unknown = sorted(set(sheet) - set(key))
        if unknown:
            raise ValueError(f"{path}: case ids not in the key: {unknown[:5]}")
        bad = sorted({a for a, _ in sheet.values() if a and a not in ANSWERS + ("a", "b")})
        if bad:
            raise ValueError(f"{path}: answers must be real, fake, unsure (or A/B for 2afc); got {bad}")
        answers[name] = {c: (sheet.get(c, ("", ""))[0] or "unsure") for c in cases}
        findings += [
            {
                "reader": name,
                "case_id": c,
                "stratum": stratum[c],
                "truth": key[c],
                "answer": answers[name][c],
                "findings": sheet[c][1],
            }
            for c in cases
            if c in sheet and sheet[c][1]
        ]
    kind = "real_fake" if set(key.values()) <= {"real", "fake"} else "2afc"
    out = _score_group(cases, key, answers, kind)
    out["design"] = (
        "all_synthetic" if set(key.values()) == {"fake"} else ("2afc" if kind == "2afc" else "mixed")
    )
    out["strata"] = {
        st: _score_group([c for c in cases if stratum[c] == st], key, answers, kind)
        for st in sorted(set(stratum.values()))
    }
    out["findings"] = findings
    return out


def render_scores_markdown(scores: dict) -> str:
    """The paper-style tables: per-reader counts per stratum, joint agreement, kappas."""
    lines = [f"# Reader study scores ({scores.get('design')})", ""]
    groups = [("all cases", scores)] + [(f"stratum {k}", v) for k, v in scores.get("strata", {}).items()]
    if len(scores.get("strata", {})) == 1:
        groups = groups[:1]
    for title, g in groups:
        lines += [
            f"## {title}",
            "",
            "| reader | cases | rated real | rated fake | unsure | accuracy |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in g["readers"].items():
            c = r["counts"]
            lines.append(
                f"| {name} | {r['n_cases']} | {c.get('real', 0)} | {c.get('fake', 0)} | {c.get('unsure', 0)} | "
                f"{r['accuracy']:.2f} |"
            )
        ja = g.get("joint_agreement")
        if ja:
            u = ja["unanimous"]
            lines += [
                "",
                f"Joint agreement ({len(ja['readers'])} readers, {ja['n_cases']} cases): all rated real "
                f"{u.get('real', 0)}, all rated fake {u.get('fake', 0)}, all unsure {u.get('unsure', 0)}, no "
                f"consensus {ja['no_consensus']}. Patterns: "
                + ", ".join(f"{p}: {n}" for p, n in ja["patterns"].items()),
            ]
        ks = ", ".join(f"{k['reader_a']}-{k['reader_b']} {k['kappa']:.2f}" for k in g["kappa"])
        fk = g.get("fleiss_kappa")
        lines += [
            "",
            f"Cohen's kappa: {ks or 'n/a'}; Fleiss' kappa: {'n/a' if fk is None else f'{fk:.2f}'}.",
            "",
        ]
    if scores.get("findings"):
        lines += [
            "## Findings (free text)",
            "",
            "| reader | case | stratum | truth | answer | findings |",
            "|---|---|---|---|---|---|",
        ]
        for f in scores["findings"]:
            text = f["findings"].replace("|", "/")
            lines.append(
                f"| {f['reader']} | {f['case_id']} | {f['stratum']} | {f['truth']} | {f['answer']} | {text} |"
            )
    return "\n".join(lines) + "\n"
