"""The memorisation section of ``medsd eval``: run the audit on loaded sets, name files and patients, draw the
figures (distance histograms, montage of the closest generated/training pairs) and render its markdown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .io import ImageSet
from .memorisation import memorisation_audit, strip_arrays


def heldout_reference(real: ImageSet, train: ImageSet) -> ImageSet:
    """The real images that are not training files (the audit also leaves out training patients)."""
    if not real.paths:
        return real
    train_paths = {os.path.realpath(p) for p in train.paths}
    return real.subset([i for i, p in enumerate(real.paths) if os.path.realpath(p) not in train_paths])


def _name(paths: list[str], i: int) -> str | None:
    return paths[i] if paths else None


def top_pairs(audit: dict, fake: ImageSet, train: ImageSet, n: int = 8) -> list[dict]:
    """The ``n`` generated images closest to a training image by the first detector, with their match."""
    gen = audit["_arrays"]["generated"]
    first = next(iter(gen))
    flagged = {c["generated_index"] for c in audit["copies"]}
    order = np.argsort(gen[first].dcr)[: min(n, len(fake))]
    return [
        {
            "generated_index": int(g),
            "generated_path": _name(fake.paths, int(g)),
            "train_index": int(gen[first].index[g]),
            "train_path": _name(train.paths, int(gen[first].index[g])),
            "train_patient": train.patient_ids[gen[first].index[g]] if train.patient_ids else None,
            "detector": first,
            "distance": float(gen[first].dcr[g]),
            "match": gen[first].transform[g] if gen[first].transform else None,
            "flagged": int(g) in flagged,
        }
        for g in order
    ]


def plot_pair_montage(pairs: list[dict], fake01: np.ndarray, train01: np.ndarray, path: str | Path) -> str:
    """Rows of (generated | training) for the closest pairs, titled with file names, detector and distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 2, figsize=(5.2, 2.3 * len(pairs)), squeeze=False)
    for row, p in zip(axes, pairs, strict=True):
        for ax, img, label in (
            (
                row[0],
                fake01[p["generated_index"]],
                p["generated_path"] or f"generated {p['generated_index']}",
            ),
            (row[1], train01[p["train_index"]], p["train_path"] or f"train {p['train_index']}"),
        ):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(Path(str(label)).name[:28], fontsize=7)
        flag = "COPY" if p["flagged"] else "not flagged"
        row[0].set_ylabel(f"{p['detector']}\nd={p['distance']:.4f}\n{flag}", fontsize=7)
    fig.suptitle("closest generated | training pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def plot_distance_histograms(audit: dict, path: str | Path) -> str:
    """Per detector: distance to the nearest training image, generated vs held-out, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen, held = audit["_arrays"]["generated"], audit["_arrays"]["heldout"]
    fig, axes = plt.subplots(1, len(gen), figsize=(4.5 * len(gen), 3.2), squeeze=False)
    for ax, name in zip(axes[0], gen, strict=True):
        values = [gen[name].dcr] + ([held[name].dcr] if name in held else [])
        bins = np.linspace(0, max(float(np.max(np.concatenate(values))), 1e-3), 41)
        ax.hist(gen[name].dcr, bins=bins, alpha=0.6, density=True, label="generated -> train")
        if name in held:
            ax.hist(held[name].dcr, bins=bins, alpha=0.6, density=True, label="held-out real -> train")
        ax.axvline(audit["calibration"]["thresholds"][name], color="red", linestyle="--", label="threshold")
        ax.set_xlabel(f"{name} distance to nearest training image")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def memorisation_section(
    fake: ImageSet, train: ImageSet, real: ImageSet, cfg: Any, fig_dir: Path, out: Path, log=print
) -> tuple[dict, dict]:
    """Run the audit for ``medsd eval``: ``(report["memorisation"], figures)``."""
    held = heldout_reference(real, train)
    audit = memorisation_audit(
        fake.images,
        train.images,
        held.images,
        train_patients=[p if p else None for p in train.patient_ids] if train.patient_ids else None,
        heldout_patients=[p if p else None for p in held.patient_ids] if held.patient_ids else None,
        quantile=cfg.copy_quantile,
        planted_per_kind=cfg.planted_per_kind,
        min_recall=cfg.min_planted_recall,
        size=cfg.ncc_size,
        ncc_threshold=cfg.copy_threshold,
        seed=cfg.seed,
    )
    figures = {}
    if audit["_arrays"]["generated"]:
        hist = plot_distance_histograms(audit, fig_dir / "nn_distance_histograms.png")
        figures["nn_distance_histograms"] = os.path.relpath(hist, out)
    mem = strip_arrays(audit)
    mem["top_pairs"] = top_pairs(audit, fake, train)
    if cfg.image_figures and mem["top_pairs"]:
        montage = plot_pair_montage(mem["top_pairs"], fake.images, train.images, fig_dir / "nn_pairs.png")
        figures["nn_pairs"] = os.path.relpath(montage, out)
    for c in mem["copies"]:
        c["generated_path"] = _name(fake.paths, c["generated_index"])
        c["train_path"] = _name(train.paths, c["train_index"])
    log(
        f"memorisation: {mem['n_copies']} / {len(fake)} generated images are copies"
        + (f" of {mem['n_train_patients_with_copy']} training patients" if mem["n_train_patients"] else "")
        + ("" if mem["valid"] else f"; AUDIT INVALID: {'; '.join(mem['problems'])}")
    )
    return mem, figures


def _f(x, nd=4) -> str:
    return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def memorisation_markdown(m: dict) -> list[str]:
    """The report.md section of an audit."""
    cal, st = m["calibration"], m["self_test"]
    lines = ["", "## Memorisation audit", ""]
    if not m["valid"]:
        lines += [f"**AUDIT INVALID: {'; '.join(m['problems'])}.**", ""]
    lines += [f"Notes: {'; '.join(m['notes'])}.", ""] if m.get("notes") else []
    pts = m.get("n_train_patients")
    lines += [
        f"**{m['n_copies']} of {m['settings']['n_generated']} generated images flagged as copies**"
        + (f", of **{m['n_train_patients_with_copy']} of {pts} training patients**" if pts else "")
        + f". Thresholds: the {cal['quantile']:g} quantile of held-out real → train distances "
        f"({cal['n_heldout']} held-out images); held-out false-alarm rate {_f(cal.get('false_alarm_rate'), 3)} "
        f"(leave-one-out {_f(cal.get('false_alarm_rate_leave_one_out'), 3)}).",
        "",
        "| detector | invariant to | threshold | generated DCR median / min | held-out DCR median / min "
        "| NNDR median generated / held-out |",
        "|---|---|---|---|---|---|",
    ]
    for name, inv in m["settings"]["detectors"].items():
        g, h = m["dcr"]["generated"].get(name, {}), m["dcr"]["heldout"].get(name, {})
        ng, nh = m["nndr"]["generated"].get(name, {}), m["nndr"]["heldout"].get(name, {})
        lines.append(
            f"| {name} | {inv} | {_f(cal['thresholds'][name])} | {_f(g.get('median'))} / {_f(g.get('min'))} | "
            f"{_f(h.get('median'))} / {_f(h.get('min'))} | {_f(ng.get('median'), 3)} / {_f(nh.get('median'), 3)} |"
        )
    lines += [
        "",
        f"Self-test ({st['per_kind']} planted copies per kind, target recall {st['min_recall']}):",
        "",
    ]
    lines += ["| kind | change | recall | " + " | ".join(m["settings"]["detectors"]) + " |"]
    lines += ["|---|---|---|" + "---|" * len(m["settings"]["detectors"])]
    for kind, v in st["kinds"].items():
        per = " | ".join(_f(v["recall_by_detector"].get(d), 2) for d in m["settings"]["detectors"])
        lines.append(f"| {kind} | {v['description']} | {_f(v['recall'], 2)} | {per} |")
    if m["copies"]:
        lines += ["", "| generated | training | patient | flagged by | match |", "|---|---|---|---|---|"]
        for c in m["copies"][:50]:
            lines.append(
                f"| {c.get('generated_path') or c['generated_index']} | {c.get('train_path') or c['train_index']} "
                f"| {c['train_patient']} | {', '.join(c['flagged_by'])} | {next(iter(c['match'].values()), '')} |"
            )
        if len(m["copies"]) > 50:
            lines.append(f"| ... {len(m['copies']) - 50} more in report.json | | | | |")
    return lines
