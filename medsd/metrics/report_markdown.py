"""``report.md`` of ``medsd eval``: the headline table first, then every section of ``report.json``."""

from __future__ import annotations

import json


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def _f(x, nd=4):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def headline_lines(r: dict) -> list[str]:
    """The headline table: C2ST and, per extractor, FD with its real-vs-real floor at the same n, P and R."""
    lines = [
        "## Headline",
        "",
        "Each metric beside what real images of other patients score at the same sample size (the floor).",
        "",
        "| metric | real vs fake | real vs real (floor) |",
        "|---|---|---|",
    ]
    c = r.get("c2st") or {}
    if "real_vs_fake" in c:
        f, fl = c["real_vs_fake"], c["real_vs_real"]
        band = (
            f"{_f(fl['accuracy']['mean'], 3)} ({_f(fl['accuracy']['min'], 3)}-{_f(fl['accuracy']['max'], 3)}, "
            f"{fl['draws']} draws)"
            if "accuracy" in fl
            else fl.get("skipped", "n/a")
        )
        lines.append(
            f"| C2ST accuracy (n={f['n_per_set']} per set; 0.5 = indistinguishable) | "
            f"**{_f(f['accuracy'], 3)}** {_ci(f['accuracy_ci95'])} | {band} |"
        )
        auc_band = f"{_f(fl['auroc']['mean'], 3)}" if "auroc" in fl else "n/a"
        lines.append(f"| C2ST AUROC | {_f(f['auroc'], 3)} {_ci(f['auroc_ci95'])} | {auc_band} |")
    for name, d in r.get("distribution", {}).items():
        ref = d.get("real_reference") or {}
        if "real_vs_real" in ref:
            rr, fr = ref["real_vs_real"], ref["fake_vs_real"]
            n = f"n={ref['n_b']} vs {ref['n_a_real']}"
            for key, label in (("frechet_distance", "FD"), ("precision", "precision"), ("recall", "recall")):
                lines.append(
                    f"| {label} ({name}, {n}) | **{_f(fr[key]['mean'], 3)}** ± {_f(fr[key]['std'], 3)} | "
                    f"{_f(rr[key]['mean'], 3)} ± {_f(rr[key]['std'], 3)} |"
                )
    return [*lines, ""]


def header_lines(r: dict) -> list[str]:
    """The sets compared, the preprocessing, the seed and the subsampling."""
    s, sets = r["settings"], r["sets"]
    lines = ["# medsd evaluation report", ""]
    for name in ("real", "fake"):
        label = s.get(f"{name}_label")
        lines.append(
            f"- {name}: `{s[name]}`"
            + (f" (label {label})" if label else "")
            + f", {sets[name]['n_images']} images"
        )
    if "train" in sets:
        lines.append(f"- train: `{s['train']}`, {sets['train']['n_images']} images")
    lines += [
        f"- preprocessing: {r['preprocessing']}",
        f"- seed {s['seed']}, max_images {s['max_images']}",
        "",
    ]
    if r.get("subsampling") and r["subsampling"] != "none":
        lines += [f"- subsampling: {r['subsampling']}", ""]
    return lines


_DISTRIBUTION_NOTE = (
    "FID/KID (standard extractors, e.g. inception): raw features, all images, comparable to published FID. "
    "FD/KD of medsd's own features (radiomics, CLIP, ...): features scaled with the real set (radiomics: "
    "median/IQR, clipped at ±5), degenerate fake images left out (counted below); **not comparable to "
    "published FID**. KID = unbiased MMD² (cubic polynomial kernel). Precision counts degenerate images as "
    "outside the real manifold; recall uses the non-degenerate ones. The reference rows compare real with "
    "real, and fake with real, at the same sample sizes (random draws; mean ± std)."
)


def _ms(x, nd=3):
    return f"{_f(x.get('mean'), nd)} ± {_f(x.get('std'), nd)}" if x else "n/a"


def _reference_row(name: str, ref: dict) -> str:
    if "skipped" in ref or not ref:
        return f"| {name} | {ref.get('skipped', 'n/a')} | | | | | |"
    rr, fr = ref["real_vs_real"], ref["fake_vs_real"]
    return (
        f"| {name} | {ref['n_a_real']} / {ref['n_b']} | {ref['draws']} | {_ms(rr['frechet_distance'])} | "
        f"{_ms(fr['frechet_distance'])} | {_ms(rr['kid'], 4)} | {_ms(fr['kid'], 4)} |"
    )


def distribution_lines(r: dict) -> list[str]:
    """FD, KID, precision and recall per extractor, the same-size reference, the largest feature shifts."""
    dist = r["distribution"]
    lines = [
        "## Distribution metrics",
        "",
        _DISTRIBUTION_NOTE,
        "",
        "| extractor | dim | distance | FD | KID (± std) | precision | recall | degenerate fake | FD all images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in dist.items():
        nm = d.get("names", {"fd": "FD"})
        lines.append(
            f"| {name} | {d['settings']['dim']} | {nm['fd']} | {_f(d['frechet_distance'], 3)} | "
            f"{_f(d['kid'])} ± {_f(d['kid_std']) if d['settings']['kid_subsets'] > 1 else 'n/a (1 subset)'} | "
            f"{_f(d['precision'], 3)} | {_f(d['recall'], 3)} | {d['n_degenerate_fake']} | "
            f"{_f(d['frechet_distance_all'], 3)} |"
        )
    lines += [
        "",
        "Same-size reference (real set split at random into A and B, B as large as the fake set or half the real "
        "set; fake drawn to B's size):",
        "",
        "| extractor | n A / n B | draws | FD real A vs real B | FD real A vs fake | KID real/real | KID fake/real |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_reference_row(name, d.get("real_reference") or {}) for name, d in dist.items()]
    for name, d in dist.items():
        shifts = ", ".join(
            f"{x['feature']} ({x['fake_minus_real_in_real_std']:+.2f})"
            for x in d["largest_feature_shifts"][:6]
        )
        lines += ["", f"Largest feature shifts ({name}, fake − real, in scaled real units): {shifts}"]
    return lines


def quality_lines(r: dict) -> list[str]:
    """Degenerate images, diversity (MS-SSIM) and edge sharpness of each set."""
    dg, dv, sharp = r["degenerate"], r["diversity_ms_ssim"], r["edge_sharpness"]
    return [
        "",
        "## Image quality and diversity",
        "",
        "| | real | fake |",
        "|---|---|---|",
        f"| degenerate images ({dg['rule']}) | {dg['real']} ({100 * dg['real_fraction']:.1f}%) | "
        f"{dg['fake']} ({100 * dg['fake_fraction']:.1f}%) |",
        f"| mean pairwise MS-SSIM (lower = more diverse) | {_f(dv['real']['mean'])} | {_f(dv['fake']['mean'])} |",
        f"| edge sharpness (mean Sobel magnitude; not Med-cDiff's acutance) | {_f(sharp['real'])} | "
        f"{_f(sharp['fake'])} |",
    ]


def class_table_lines(r: dict) -> list[str]:
    """Per-class synthetic vs real MSE and SSIM."""
    if not r.get("class_set_table"):
        return []
    lines = [
        "",
        "## Per-class synthetic vs real (MSE, SSIM)",
        "",
        "| class | n fake | n real | pairs | MSE fake-real | SSIM fake-real | MSE real-real | SSIM real-real |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["class_set_table"]:
        lines.append(
            f"| {row['class']} | {row['n_fake']} | {row['n_real']} | {row['n_pairs']} | "
            f"{_f(row.get('fake_vs_real_mse'))} | {_f(row.get('fake_vs_real_ssim'))} | "
            f"{_f(row.get('real_vs_real_mse'))} | {_f(row.get('real_vs_real_ssim'))} |"
        )
    return lines


def paired_lines(r: dict) -> list[str]:
    return ["", "## Paired metrics", "", "```", json.dumps(r["paired"], indent=1), "```"]


def memorisation_lines(r: dict) -> list[str]:
    from .audit_report import memorisation_markdown

    return memorisation_markdown(r["memorisation"])


def downstream_lines(r: dict) -> list[str]:
    """Accuracy of a classifier trained on synthetic, real or both, tested on held-out real images."""
    from .downstream import results_table

    d = r["downstream"]
    lines = ["", "## Downstream utility (train on X, test on held-out real)", ""]
    if "skipped" in d:
        return [*lines, f"skipped: {d['skipped']}"]
    chance = _f(d["settings"]["chance_accuracy"], 3)
    return [
        *lines,
        f"classes: {', '.join(d['classes'])}; chance accuracy {chance}",
        "",
        *results_table(d["results"]),
    ]


def whole_set_fd_lines(r: dict) -> list[str]:
    w = r["whole_set_fd"]
    lines = ["", "## Whole-set Fréchet distance", "", w["note"] + ".", ""]
    lines += ["| extractor | FD | real images | generated images |", "|---|---|---|---|"]
    for name, d in w.items():
        if isinstance(d, dict):
            lines.append(f"| {name} | {d['frechet_distance']:.4g} | {d['n_real']} | {d['n_fake']} |")
    return lines


SECTION_MARKDOWN = {
    "distribution": distribution_lines,
    "whole_set_fd": whole_set_fd_lines,
    "degenerate": quality_lines,
    "class_set_table": class_table_lines,
    "paired": paired_lines,
    "memorisation": memorisation_lines,
    "downstream": downstream_lines,
}
"""Each section's part of ``report.md``, in the report's order, by the ``report.json`` entry it renders."""


def section_markdown(entries: dict) -> list[str]:
    """The Markdown of one section's ``report.json`` entries."""
    return [line for key, render in SECTION_MARKDOWN.items() if key in entries for line in render(entries)]


def render_markdown(r: dict) -> str:
    """``report.md`` of a ``report.json``: the sets, the headline, then each section, figures and runtime."""
    lines = header_lines(r) + headline_lines(r) + section_markdown(r)
    if r["figures"]:
        lines += ["", "## Figures", ""] + [f"- {k}: `{v}`" for k, v in r["figures"].items()]
    lines += ["", f"Runtime {r['runtime_s']} s. Full numbers and settings: `report.json`.", ""]
    return "\n".join(lines)
