"""The full evaluation run behind ``medsd eval``: load sets, compute every metric, write report.json/.md + figures."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .features import extract_features, get_extractor
from .io import ImageSet, load_subsampled
from .report_markdown import _ci, _f, render_markdown

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_COPIES = 3


@dataclass
class EvalConfig:
    real: str
    fake: str
    out: str
    train: str | None = None
    features: list[str] = field(default_factory=lambda: ["radiomics"])
    size: int = 128
    max_images: int | None = None
    """Cap on the real and fake sets (not on train: the audit checks every training image)."""
    max_train_images: int | None = None
    real_split: str = "all"
    """Part of the real source's patient-level split (train, val, test, heldout, all), as training splits it."""
    fake_split: str = "all"
    train_split: str = "all"
    real_label: str | None = None
    fake_label: str | None = None
    train_label: str | None = None
    label_column: str = "label"
    filename_column: str = "filename"
    patient_column: str = "patient_id"
    intensity: str | None = None
    """Intensity mapping of every set, as in training (window, minmax, percentile); None: training's default."""
    window: tuple[float, float] | None = None
    """(low, high) of the window mapping in native units; None: 0..255."""
    k: int = 3
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    copy_threshold: float | None = None
    """A fixed registered-NCC copy threshold instead of the calibrated one (None: calibrated)."""
    copy_quantile: float = 0.005
    planted_per_kind: int = 20
    min_planted_recall: float = 0.9
    ncc_size: int = 64
    diversity_pairs: int = 200
    class_pairs: int = 500
    paired: bool = False
    lpips: bool = False
    lpips_weights: str | None = None
    reference_draws: int = 10
    downstream: bool = False
    downstream_epochs: int = 15
    c2st: bool = True
    c2st_folds: int = 5
    c2st_epochs: int = 12
    c2st_draws: int = 3
    image_figures: bool = True
    seed: int = 0
    inception_weights: str | None = None
    clip_checkpoint: str | None = None
    device: str = "cpu"
    progress: bool = True


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _clean(o):
    """Replace NaN/inf by None (valid JSON)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _set_summary(s: ImageSet) -> dict:
    labels = {}
    for lab in s.labels:
        labels[str(lab)] = labels.get(str(lab), 0) + 1
    pids = [p for p in (s.patient_ids or []) if p]
    return {
        "source": s.source,
        "n_images": len(s),
        "labels": labels,
        "n_patients": len(set(pids)) if pids else None,
        "intensity_mapping": s.intensity,
    }


def mosaic(images01: list[np.ndarray] | np.ndarray, cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W] images into one array (white padding), row-major."""
    images01 = list(images01)
    h, w = images01[0].shape
    rows = int(np.ceil(len(images01) / cols))
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), np.float32)
    for k, im in enumerate(images01):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return out


def sample_grid(images01: np.ndarray, path: str | Path, title: str, n: int = 16, seed: int = 0) -> str:
    """A grid of ``n`` randomly chosen images (seeded) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images01), min(n, len(images01)), replace=False))
    cols = int(np.ceil(np.sqrt(len(idx))))
    m = mosaic(images01[idx], cols)
    fig, ax = plt.subplots(figsize=(6, 6 * m.shape[0] / m.shape[1] + 0.3))
    ax.imshow(m, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def feature_plots(
    real_z: np.ndarray, fake_z: np.ndarray, names: list[str] | None, path: str | Path, title: str
) -> str:
    """PCA scatter (fitted on real) + the features with the largest standardised mean difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mu = real_z.mean(0)
    _, _, vt = np.linalg.svd(real_z - mu, full_matrices=False)
    pr, pf = (real_z - mu) @ vt[:2].T, (fake_z - mu) @ vt[:2].T
    smd = fake_z.mean(0) - real_z.mean(0)
    top = np.argsort(-np.abs(smd))[:12]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.6, label="real")
    a.scatter(pf[:, 0], pf[:, 1], s=6, alpha=0.6, label="fake")
    a.set_xlabel("PC1 (real)")
    a.set_ylabel("PC2 (real)")
    a.legend(fontsize=8)
    a.set_title(title, fontsize=9)
    labels = [names[i] if names and i < len(names) else f"f{i}" for i in top]
    b.barh(range(len(top))[::-1], smd[top])
    b.set_yticks(range(len(top))[::-1], labels, fontsize=7)
    b.set_xlabel("fake mean - real mean (real std units)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _split_real_for_downstream(real: ImageSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half of the real patients for training, half for testing (by patient id when known)."""
    rng = np.random.default_rng(seed)
    groups = np.array([p if p else f"__img{i}" for i, p in enumerate(real.patient_ids or [None] * len(real))])
    uniq = np.unique(groups)
    test_groups = set(rng.choice(uniq, len(uniq) // 2, replace=False))
    test = np.array([g in test_groups for g in groups])
    return np.flatnonzero(~test), np.flatnonzero(test)


def c2st_section(real: np.ndarray, fake: np.ndarray, cfg: EvalConfig, log=print) -> dict:
    """Classifier two-sample test real vs fake, and real vs real at the same size (the floor)."""
    from .c2st import c2st_floor, classifier_two_sample_test

    floor_n = min(len(fake), len(real) // 2)  # the floor needs two disjoint real sets of this size
    if floor_n < 4:
        return {
            "skipped": f"too few images for a C2ST beside its floor (real {len(real)}, fake {len(fake)}; "
            "needs at least 8 real and 4 fake)"
        }
    opts = dict(folds=cfg.c2st_folds, epochs=cfg.c2st_epochs)
    result = classifier_two_sample_test(real, fake, n=floor_n, seed=cfg.seed, **opts)
    floor = c2st_floor(real, floor_n, draws=cfg.c2st_draws, seed=cfg.seed, **opts)
    log(
        f"[c2st] real vs fake accuracy {result['accuracy']:.3f} {_ci(result['accuracy_ci95'])}, "
        f"AUROC {result['auroc']:.3f} (n={result['n_per_set']} per set); real vs real "
        + (f"{floor['accuracy']['mean']:.3f}" if "accuracy" in floor else "n/a")
    )
    return {
        "note": "a small CNN trained to tell real from fake; held-out accuracy over stratified folds "
        "(0.5 = indistinguishable); real vs real: disjoint random real subsets of the same size",
        "real_vs_fake": result,
        "real_vs_real": floor,
    }


def evaluate(cfg: EvalConfig, log=print) -> tuple[dict, int]:
    """Run every metric; write ``report.json``, ``report.md`` and figures into ``cfg.out``.

    Returns ``(report, exit_code)``; exit code 3 when copies of training images were found (the caller decides
    whether that fails the run). Raises :class:`MissingWeightsError` before any heavy work when an extractor
    lacks weights.
    """
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    cache_dir = out / "cache"

    # 1. extractors first: fail fast and clearly when weights are missing
    extractors = {
        name: get_extractor(
            name,
            size=cfg.size,
            inception_weights=cfg.inception_weights,
            clip_checkpoint=cfg.clip_checkpoint,
            device=cfg.device,
        )
        for name in cfg.features
    }

    # 2. images
    load = dict(
        size=cfg.size,
        label_column=cfg.label_column,
        filename_column=cfg.filename_column,
        patient_column=cfg.patient_column,
        intensity=cfg.intensity,
        window=cfg.window,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    real = load_subsampled(
        cfg.real, label=cfg.real_label, split=cfg.real_split, max_images=cfg.max_images, **load
    )
    from .dataset_fd import in_memory_cap

    fake_cap = in_memory_cap(cfg.fake, cfg.max_images)  # a generated dataset: capped; its FD streams all
    fake = load_subsampled(cfg.fake, label=cfg.fake_label, split=cfg.fake_split, max_images=fake_cap, **load)
    train = (
        load_subsampled(
            cfg.train, label=cfg.train_label, split=cfg.train_split, max_images=cfg.max_train_images, **load
        )
        if cfg.train
        else None
    )
    log(f"loaded real={len(real)} fake={len(fake)}" + (f" train={len(train)}" if train else ""))
    report: dict = {
        "medsd_eval_version": 1,
        "settings": _clean(
            {
                k: (
                    v
                    if v is None or isinstance(v, (str, int, float, bool, list))
                    else f"<{type(v).__name__}>"
                )
                for k, v in asdict(cfg).items()
            }
        ),
        "preprocessing": "read as training reads (medsd.data.build_dataset): grayscale; each set's intensity "
        f"mapping (sets.*.intensity_mapping) to [0, 1]; short side resized (bilinear, antialiased) to {cfg.size} "
        "and centre-cropped square",
        "subsampling": "none"
        if cfg.max_images is None and cfg.max_train_images is None
        else f"real and fake at most {cfg.max_images} each, train at most {cfg.max_train_images}, seeded (seed {cfg.seed}), label-proportional and spread over "
        "patients when the source is a metadata CSV (medsd.metrics.subsample)",
        "sets": {"real": _set_summary(real), "fake": _set_summary(fake)},
        "figures": {},
    }
    if train is not None:
        report["sets"]["train"] = _set_summary(train)

    # 3. degenerate images first: they are counted apart and left out of medsd's own distances
    from .diversity import degenerate_mask, degenerate_rule

    real_deg = degenerate_mask(real.to_uint8(), size=cfg.size)
    fake_deg = degenerate_mask(fake.to_uint8(), size=cfg.size)
    report["degenerate"] = {
        "rule": degenerate_rule(cfg.size),
        "real": int(real_deg.sum()),
        "fake": int(fake_deg.sum()),
        "real_fraction": float(real_deg.mean()) if len(real) else 0.0,
        "fake_fraction": float(fake_deg.mean()) if len(fake) else 0.0,
        "fake_indices": np.flatnonzero(fake_deg).tolist(),
    }

    # 4. can a classifier tell them apart?
    if cfg.c2st:
        report["c2st"] = c2st_section(real.images, fake.images, cfg, log)

    # 5. distribution metrics per extractor
    from .distribution import distribution_metrics, scale_features, standardise

    report["distribution"] = {}
    for name, ext in extractors.items():
        fr = extract_features(real.images, ext, cache_dir, real.fingerprint(), progress=cfg.progress)
        ff = extract_features(fake.images, ext, cache_dir, fake.fingerprint(), progress=cfg.progress)
        standard = bool(getattr(ext, "standard", False))
        scaling = getattr(ext, "scaling", "standard")
        d = distribution_metrics(
            fr,
            ff,
            k=cfg.k,
            kid_subsets=cfg.kid_subsets,
            kid_subset_size=cfg.kid_subset_size,
            seed=cfg.seed,
            scaling=scaling,
            standard=standard,
            fake_degenerate=fake_deg,
            reference_draws=cfg.reference_draws,
        )
        d["extractor"] = {"name": name, "config": ext.config}
        d["names"] = (
            {"fd": "FID", "kid": "KID", "note": "standard FID/KID on raw features, all images"}
            if standard
            else {
                "fd": f"FD ({name})",
                "kid": f"KD ({name})",
                "note": f"medsd distance on {scaling}-scaled {name} features, degenerate images left out; "
                "not comparable to published FID",
            }
        )
        rz, fz = standardise(fr, ff) if scaling == "raw" else scale_features(fr, ff, scaling=scaling)
        names = ext.feature_names() if hasattr(ext, "feature_names") else None
        smd = fz.mean(0) - rz.mean(0)
        top = np.argsort(-np.abs(smd))[:10]
        d["largest_feature_shifts"] = [
            {"feature": names[i] if names else f"f{i}", "fake_minus_real_in_real_std": float(smd[i])}
            for i in top
        ]
        safe = name.replace(":", "_").replace("/", "_")
        report["figures"][f"features_{safe}"] = os.path.relpath(
            feature_plots(
                rz, fz, names, fig_dir / f"features_{safe}.png", f"{name} features (scaled by real)"
            ),
            out,
        )
        report["distribution"][name] = d
        log(
            f"[{name}] {d['names']['fd']}={_f(d['frechet_distance'], 3)} {d['names']['kid']}={_f(d['kid'])} "
            f"P={_f(d['precision'], 3)} R={_f(d['recall'], 3)} (degenerate fake images: {d['n_degenerate_fake']})"
        )
    from .dataset_fd import is_generated_dataset, whole_set_fd_section

    if is_generated_dataset(cfg.fake):  # a medsd generate dataset: FD of every image, streamed in chunks
        report["whole_set_fd"] = whole_set_fd_section(cfg, extractors, log)

    # 5. diversity
    from .diversity import mean_pairwise_ms_ssim

    report["diversity_ms_ssim"] = {
        "note": "mean pairwise MS-SSIM within the set; lower = more diverse; compare fake with real",
        "real": mean_pairwise_ms_ssim(real.images, cfg.diversity_pairs, cfg.seed),
        "fake": mean_pairwise_ms_ssim(fake.images, cfg.diversity_pairs, cfg.seed),
    }

    # 6. class-set table (synthetic vs real, per common label)
    from .paired import class_set_table, edge_sharpness, paired_metrics

    report["edge_sharpness"] = {
        "note": "mean Sobel gradient magnitude on [0, 1] images (not Med-cDiff's acutance)",
        "real": edge_sharpness(real.images),
        "fake": edge_sharpness(fake.images),
    }
    if any(lab is not None for lab in real.labels) and any(lab is not None for lab in fake.labels):
        report["class_set_table"] = class_set_table(
            fake.images, fake.labels, real.images, real.labels, max_pairs=cfg.class_pairs, seed=cfg.seed
        )

    # 6. paired metrics (fake and real matched by file name)
    if cfg.paired:
        rmap = {Path(p).stem: i for i, p in enumerate(real.paths)}
        pairs = [(i, rmap[Path(p).stem]) for i, p in enumerate(fake.paths) if Path(p).stem in rmap]
        if not pairs:
            report["paired"] = {"skipped": "no fake/real images with the same file name"}
        else:
            fi, ri = np.array(pairs).T
            pm = paired_metrics(
                fake.images[fi], real.images[ri], with_lpips=cfg.lpips, lpips_weights=cfg.lpips_weights
            )
            pm["n_pairs"] = len(pairs)
            report["paired"] = pm

    # 7. memorisation audit
    exit_code = EXIT_OK
    if train is not None:
        from .audit_report import memorisation_section

        report["memorisation"], figures = memorisation_section(fake, train, real, cfg, fig_dir, out, log)
        report["figures"].update(figures)
        exit_code = EXIT_COPIES if report["memorisation"]["n_copies"] > 0 else EXIT_OK

    # 8. downstream utility
    if cfg.downstream:
        from .downstream import downstream_utility

        tr_idx, te_idx = _split_real_for_downstream(real, cfg.seed)
        rtr, rte = real.subset(tr_idx), real.subset(te_idx)
        both_x = np.concatenate([fake.images, rtr.images])
        try:
            report["downstream"] = downstream_utility(
                {
                    "synthetic": (fake.images, fake.labels),
                    "real": (rtr.images, rtr.labels),
                    "both": (both_x, list(fake.labels) + list(rtr.labels)),
                },
                (rte.images, rte.labels),
                epochs=cfg.downstream_epochs,
                seed=cfg.seed,
            )
        except ValueError as e:
            report["downstream"] = {"skipped": str(e)}

    # 9. image figures
    if cfg.image_figures:
        report["figures"]["samples_real"] = os.path.relpath(
            sample_grid(real.images, fig_dir / "samples_real.png", "real", seed=cfg.seed), out
        )
        report["figures"]["samples_fake"] = os.path.relpath(
            sample_grid(fake.images, fig_dir / "samples_fake.png", "fake", seed=cfg.seed), out
        )

    report["runtime_s"] = round(time.time() - t0, 1)
    report["environment"] = {"python": platform.python_version(), "numpy": np.__version__}
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(render_markdown(report))
    return report, exit_code
