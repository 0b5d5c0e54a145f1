"""The full evaluation run behind ``medsd eval``: load sets, compute every metric, write report.json/.md + figures.

The run is a list of sections (:data:`SECTIONS`): each is a small function of the loaded :class:`EvalInputs`
that returns a :class:`SectionResult` (its ``report.json`` entries, the figures it drew, the exit code it asks
for); ``report.md`` renders the same entries, section by section (:mod:`medsd.metrics.report_markdown`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsd.data.splits import SPLIT_CHOICES
from medsd.flags import SEED_MAX, Alias, flag, to_bool

from .dataset_fd import in_memory_cap, is_generated_dataset, whole_set_fd_section
from .features import extract_features, get_extractor
from .figures import feature_plots, sample_grid
from .io import ImageSet, load_subsampled
from .report_markdown import _ci, _f, render_markdown

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_COPIES = 3


def _negated(name: str):
    """An alias converter: ``--no_X`` / ``--quiet`` set the field they negate."""
    return lambda value: not to_bool(name)(value)


_SPLIT_HELP = (
    "part of the source's patient-level split, as training splits it with the same --seed (heldout = val and "
    "test: patients a model trained on the train split never saw)"
)


@dataclass
class EvalConfig:
    """What ``medsd eval`` compares and how; every field is a flag of the same name."""

    real: str = flag(
        help="real images: a folder, metadata CSV with a filename column, or hf:<dataset id>[:split]"
    )
    fake: str = flag(help="synthetic images (a source as for --real)")
    out: str = flag(help="output folder (report.json, report.md, figures/, cache/)")
    train: str | None = flag(None, help="training images for the memorisation audit")
    features: list[str] = flag(
        ["radiomics"],
        nargs="+",
        help="feature extractors: radiomics (offline; medsd distance, not comparable to published FID), "
        "inception (standard FID/KID on raw features), clip:<arch>[:<tag>], clip:biomedclip, xrv",
    )
    size: int = flag(128, min=16, help="working resolution in px")
    max_images: int | None = flag(
        None,
        min=2,
        help="subsample the real and fake sets to at most N (seeded random; label-proportional and spread over "
        "patients for CSVs; not --train: the audit checks every training image)",
    )
    max_train_images: int | None = flag(
        None, min=2, help="subsample --train to at most N (none: every training image is audited)"
    )
    real_split: str = flag("all", choices=SPLIT_CHOICES, help=f"--real: {_SPLIT_HELP}")
    fake_split: str = flag("all", choices=SPLIT_CHOICES, help=f"--fake: {_SPLIT_HELP}")
    train_split: str = flag("all", choices=SPLIT_CHOICES, help=f"--train: {_SPLIT_HELP}")
    real_label: str | None = flag(None, help="keep only these labels from --real (comma-separated)")
    fake_label: str | None = flag(None, help="keep only these labels from --fake (comma-separated)")
    train_label: str | None = flag(None, help="keep only these labels from --train (comma-separated)")
    label_column: str = flag("label", help="CSV label column")
    filename_column: str = flag("filename", help="CSV file-name column")
    patient_column: str = flag("patient_id", help="patient id column, used when present")
    intensity: str | None = flag(
        None,
        help="intensity mapping, as in training: auto (default: chosen from the data, e.g. 0..255 for 8-bit), "
        "window (see --window), minmax or percentile",
    )
    window: tuple[float, float] | None = flag(
        None,
        metavar="LOW,HIGH",
        help="window of --intensity window in native units, e.g. the training window",
    )
    k: int = flag(3, min=1, help="k for precision/recall k-NN manifolds")
    kid_subsets: int = flag(100, min=1)
    kid_subset_size: int = flag(1000, min=2)
    copy_threshold: float | None = flag(
        None,
        min=0,
        max=1,
        help="a fixed registered-NCC copy threshold instead of the calibrated one (none: calibrated)",
    )
    copy_quantile: float = flag(
        0.005,
        positive=True,
        min=0,
        max=1,
        help="memorisation audit: flag a generated image closer to a training image than this quantile of "
        "held-out real images are, per detector (0.005: about 1%% of new images flagged; needs at least "
        "1/quantile held-out images)",
    )
    planted_per_kind: int = flag(
        20, min=1, help="memorisation self-test: transformed copies of training images planted per kind"
    )
    min_planted_recall: float = flag(
        0.9,
        min=0,
        max=1,
        help="memorisation self-test: the audit is invalid when any kind's recall is below this",
    )
    ncc_size: int = flag(64, min=16, help="resolution of the registered-NCC copy search")
    diversity_pairs: int = flag(200, min=1, help="image pairs for the MS-SSIM diversity")
    class_pairs: int = flag(500, min=1, help="pairs per class for the class-set table")
    paired: bool = flag(False, help="also compute paired metrics (fake/real matched by file name)")
    lpips: bool = flag(False, help="with --paired: LPIPS (needs torchvision backbone weights)")
    lpips_weights: str | None = flag(
        None, help="torchvision AlexNet backbone file for LPIPS (alexnet-owt-7be5be79.pth); implies --lpips"
    )
    reference_draws: int = flag(
        10, min=0, help="random draws for the same-size real/real reference (0 = none)"
    )
    downstream: bool = flag(
        False, help="train small CNNs on synthetic / real / both (labels needed) and test on held-out real"
    )
    downstream_epochs: int = flag(15, min=1)
    c2st: bool = flag(
        True,
        aliases=(Alias("no_c2st", convert=_negated("no_c2st")),),
        help="the classifier two-sample test (a small CNN telling real from fake); --no_c2st skips it",
    )
    c2st_folds: int = flag(5, min=2, help="cross-validation folds of the C2ST")
    c2st_epochs: int = flag(12, min=1, help="C2ST classifier epochs")
    c2st_draws: int = flag(
        3, min=0, help="random real-vs-real draws for the C2ST floor at the same size (0 = none)"
    )
    image_figures: bool = flag(
        True,
        aliases=(Alias("no_image_figures", convert=_negated("no_image_figures")),),
        help="figures showing images (sample grids, NN pairs); --no_image_figures writes only plots",
    )
    seed: int = flag(0, min=0, max=SEED_MAX)
    inception_weights: str | None = flag(
        None,
        help="FID Inception weights file (pt_inception-2015-12-05-6726825d.pth); or MEDSD_INCEPTION_WEIGHTS",
    )
    clip_checkpoint: str | None = flag(None, help="local open_clip checkpoint; or MEDSD_CLIP_CHECKPOINT")
    device: str = flag("cpu", help="device for learned extractors")
    progress: bool = flag(
        True, aliases=(Alias("quiet", convert=_negated("quiet")),), help="progress bars (--quiet: none)"
    )

    def __post_init__(self) -> None:
        self.lpips = self.lpips or bool(self.lpips_weights)

    def read_options(self) -> dict[str, Any]:
        """How every set is read (columns, intensity mapping, seed): the same for in-memory and streamed sets."""
        return dict(
            label_column=self.label_column,
            patient_column=self.patient_column,
            intensity=self.intensity,
            window=self.window,
            seed=self.seed,
        )


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


@dataclass
class EvalInputs:
    """What every section reads: the settings, the loaded sets, the feature extractors and where to write."""

    cfg: EvalConfig
    log: Callable[[str], Any]
    out: Path
    extractors: dict[str, Any]
    real: ImageSet
    fake: ImageSet
    train: ImageSet | None
    fake_degenerate: np.ndarray | None = None
    """Set by the degenerate-image section; medsd's own distances leave these fake images out."""

    @property
    def fig_dir(self) -> Path:
        return self.out / "figures"

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"

    def figure(self, path: str | Path) -> str:
        """A figure's path as ``report.json`` records it (relative to the report)."""
        return os.path.relpath(path, self.out)


@dataclass
class SectionResult:
    """One section of the report: its ``report.json`` entries, its figures and the exit code it asks for."""

    entries: dict[str, Any]
    figures: dict[str, str] = field(default_factory=dict)
    exit_code: int = EXIT_OK

    def markdown(self) -> list[str]:
        """This section's part of ``report.md`` (the headline and the set list are the report's own)."""
        from .report_markdown import section_markdown

        return section_markdown(self.entries)


Section = Callable[[EvalInputs], "SectionResult | None"]


def _split_real_for_downstream(real: ImageSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half of the real patients for training, half for testing (by patient id when known)."""
    rng = np.random.default_rng(seed)
    groups = np.array([p if p else f"__img{i}" for i, p in enumerate(real.patient_ids or [None] * len(real))])
    uniq = np.unique(groups)
    test_groups = set(rng.choice(uniq, len(uniq) // 2, replace=False))
    test = np.array([g in test_groups for g in groups])
    return np.flatnonzero(~test), np.flatnonzero(test)


def quality_section(inp: EvalInputs) -> SectionResult:
    """Degenerate images (counted apart and left out of medsd's own distances, so this section runs first),
    diversity (mean pairwise MS-SSIM within each set) and edge sharpness."""
    from .diversity import degenerate_mask, degenerate_rule, mean_pairwise_ms_ssim
    from .paired import edge_sharpness

    cfg, real, fake = inp.cfg, inp.real, inp.fake
    real_deg = degenerate_mask(real.to_uint8(), size=cfg.size)
    inp.fake_degenerate = fake_deg = degenerate_mask(fake.to_uint8(), size=cfg.size)
    degenerate = {
        "rule": degenerate_rule(cfg.size),
        "real": int(real_deg.sum()),
        "fake": int(fake_deg.sum()),
        "real_fraction": float(real_deg.mean()) if len(real) else 0.0,
        "fake_fraction": float(fake_deg.mean()) if len(fake) else 0.0,
        "fake_indices": np.flatnonzero(fake_deg).tolist(),
    }
    diversity = {
        "note": "mean pairwise MS-SSIM within the set; lower = more diverse; compare fake with real",
        "real": mean_pairwise_ms_ssim(real.images, cfg.diversity_pairs, cfg.seed),
        "fake": mean_pairwise_ms_ssim(fake.images, cfg.diversity_pairs, cfg.seed),
    }
    sharpness = {
        "note": "mean Sobel gradient magnitude on [0, 1] images (not Med-cDiff's acutance)",
        "real": edge_sharpness(real.images),
        "fake": edge_sharpness(fake.images),
    }
    return SectionResult(
        {"degenerate": degenerate, "diversity_ms_ssim": diversity, "edge_sharpness": sharpness}
    )


def c2st_section(inp: EvalInputs) -> SectionResult | None:
    """Classifier two-sample test real vs fake, and real vs real at the same size (the floor)."""
    from .c2st import c2st_floor, classifier_two_sample_test

    cfg, real, fake = inp.cfg, inp.real.images, inp.fake.images
    if not cfg.c2st:
        return None
    floor_n = min(len(fake), len(real) // 2)  # the floor needs two disjoint real sets of this size
    if floor_n < 4:
        skipped = (
            f"too few images for a C2ST beside its floor (real {len(real)}, fake {len(fake)}; "
            "needs at least 8 real and 4 fake)"
        )
        return SectionResult({"c2st": {"skipped": skipped}})
    opts = dict(folds=cfg.c2st_folds, epochs=cfg.c2st_epochs)
    result = classifier_two_sample_test(real, fake, n=floor_n, seed=cfg.seed, **opts)
    floor = c2st_floor(real, floor_n, draws=cfg.c2st_draws, seed=cfg.seed, **opts)
    inp.log(
        f"[c2st] real vs fake accuracy {result['accuracy']:.3f} {_ci(result['accuracy_ci95'])}, "
        f"AUROC {result['auroc']:.3f} (n={result['n_per_set']} per set); real vs real "
        + (f"{floor['accuracy']['mean']:.3f}" if "accuracy" in floor else "n/a")
    )
    note = (
        "a small CNN trained to tell real from fake; held-out accuracy over stratified folds "
        "(0.5 = indistinguishable); real vs real: disjoint random real subsets of the same size"
    )
    return SectionResult({"c2st": {"note": note, "real_vs_fake": result, "real_vs_real": floor}})


def _distance_names(name: str, standard: bool, scaling: str) -> dict[str, str]:
    if standard:
        return {"fd": "FID", "kid": "KID", "note": "standard FID/KID on raw features, all images"}
    return {
        "fd": f"FD ({name})",
        "kid": f"KD ({name})",
        "note": f"medsd distance on {scaling}-scaled {name} features, degenerate images left out; "
        "not comparable to published FID",
    }


def _extractor_distances(inp: EvalInputs, name: str, ext: Any) -> tuple[dict, str]:
    """(the distribution entry of one extractor, its feature figure)."""
    from .distribution import distribution_metrics, scale_features, standardise

    cfg = inp.cfg
    fr = extract_features(inp.real.images, ext, inp.cache_dir, inp.real.fingerprint(), progress=cfg.progress)
    ff = extract_features(inp.fake.images, ext, inp.cache_dir, inp.fake.fingerprint(), progress=cfg.progress)
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
        fake_degenerate=inp.fake_degenerate,
        reference_draws=cfg.reference_draws,
    )
    d["extractor"] = {"name": name, "config": ext.config}
    d["names"] = _distance_names(name, standard, scaling)
    rz, fz = standardise(fr, ff) if scaling == "raw" else scale_features(fr, ff, scaling=scaling)
    names = ext.feature_names() if hasattr(ext, "feature_names") else None
    smd = fz.mean(0) - rz.mean(0)
    d["largest_feature_shifts"] = [
        {"feature": names[i] if names else f"f{i}", "fake_minus_real_in_real_std": float(smd[i])}
        for i in np.argsort(-np.abs(smd))[:10]
    ]
    safe = name.replace(":", "_").replace("/", "_")
    title = f"{name} features (scaled by real)"
    return d, feature_plots(rz, fz, names, inp.fig_dir / f"features_{safe}.png", title)


def distribution_section(inp: EvalInputs) -> SectionResult:
    """Fréchet distance, KID, precision and recall per feature extractor, each with a same-size reference."""
    result = SectionResult({"distribution": {}})
    for name, ext in inp.extractors.items():
        d, figure = _extractor_distances(inp, name, ext)
        safe = name.replace(":", "_").replace("/", "_")
        result.figures[f"features_{safe}"] = inp.figure(figure)
        result.entries["distribution"][name] = d
        inp.log(
            f"[{name}] {d['names']['fd']}={_f(d['frechet_distance'], 3)} {d['names']['kid']}={_f(d['kid'])} "
            f"P={_f(d['precision'], 3)} R={_f(d['recall'], 3)} (degenerate fake images: {d['n_degenerate_fake']})"
        )
    return result


def whole_set_fd(inp: EvalInputs) -> SectionResult | None:
    """For a ``medsd generate`` dataset: the FD of every image, streamed in chunks (merged statistics)."""
    if not is_generated_dataset(inp.cfg.fake):
        return None
    return SectionResult({"whole_set_fd": whole_set_fd_section(inp.cfg, inp.extractors, inp.log)})


def class_table_section(inp: EvalInputs) -> SectionResult | None:
    """Synthetic vs real per common label (MSE, SSIM), when both sets have labels."""
    from .paired import class_set_table

    real, fake, cfg = inp.real, inp.fake, inp.cfg
    if not (any(lab is not None for lab in real.labels) and any(lab is not None for lab in fake.labels)):
        return None
    table = class_set_table(
        fake.images, fake.labels, real.images, real.labels, max_pairs=cfg.class_pairs, seed=cfg.seed
    )
    return SectionResult({"class_set_table": table})


def paired_section(inp: EvalInputs) -> SectionResult | None:
    """Image-to-image metrics of fake and real images matched by file name (``--paired``)."""
    from .paired import paired_metrics

    if not inp.cfg.paired:
        return None
    real, fake = inp.real, inp.fake
    rmap = {Path(p).stem: i for i, p in enumerate(real.paths)}
    pairs = [(i, rmap[Path(p).stem]) for i, p in enumerate(fake.paths) if Path(p).stem in rmap]
    if not pairs:
        return SectionResult({"paired": {"skipped": "no fake/real images with the same file name"}})
    fi, ri = np.array(pairs).T
    pm = paired_metrics(
        fake.images[fi], real.images[ri], with_lpips=inp.cfg.lpips, lpips_weights=inp.cfg.lpips_weights
    )
    pm["n_pairs"] = len(pairs)
    return SectionResult({"paired": pm})


def memorisation_section(inp: EvalInputs) -> SectionResult | None:
    """The memorisation audit against the training set (``--train``); exit code 3 when it finds copies."""
    from .audit_report import memorisation_section as audit

    if inp.train is None:
        return None
    mem, figures = audit(inp.fake, inp.train, inp.real, inp.cfg, inp.fig_dir, inp.out, inp.log)
    return SectionResult({"memorisation": mem}, figures, EXIT_COPIES if mem["n_copies"] > 0 else EXIT_OK)


def downstream_section(inp: EvalInputs) -> SectionResult | None:
    """A classifier trained on synthetic, real or both, tested on held-out real patients (``--downstream``)."""
    from .downstream import downstream_utility

    cfg, real, fake = inp.cfg, inp.real, inp.fake
    if not cfg.downstream:
        return None
    tr_idx, te_idx = _split_real_for_downstream(real, cfg.seed)
    rtr, rte = real.subset(tr_idx), real.subset(te_idx)
    train_sets = {
        "synthetic": (fake.images, fake.labels),
        "real": (rtr.images, rtr.labels),
        "both": (np.concatenate([fake.images, rtr.images]), list(fake.labels) + list(rtr.labels)),
    }
    try:
        result = downstream_utility(
            train_sets, (rte.images, rte.labels), epochs=cfg.downstream_epochs, seed=cfg.seed
        )
    except ValueError as e:
        result = {"skipped": str(e)}
    return SectionResult({"downstream": result})


def image_figures_section(inp: EvalInputs) -> SectionResult | None:
    """A seeded grid of real and of fake images."""
    if not inp.cfg.image_figures:
        return None
    figures = {}
    for name, images in (("real", inp.real.images), ("fake", inp.fake.images)):
        path = sample_grid(images, inp.fig_dir / f"samples_{name}.png", name, seed=inp.cfg.seed)
        figures[f"samples_{name}"] = inp.figure(path)
    return SectionResult({}, figures)


SECTIONS: list[Section] = [
    quality_section,
    c2st_section,
    distribution_section,
    whole_set_fd,
    class_table_section,
    paired_section,
    memorisation_section,
    downstream_section,
    image_figures_section,
]
"""The report's sections, in the order they run and appear in ``report.json``."""


def load_inputs(cfg: EvalConfig, log: Callable[[str], Any] = print) -> EvalInputs:
    """Extractors first (missing weights fail before any heavy work), then the real, fake and train sets."""
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
    load = dict(
        size=cfg.size, filename_column=cfg.filename_column, progress=cfg.progress, **cfg.read_options()
    )
    real = load_subsampled(
        cfg.real, label=cfg.real_label, split=cfg.real_split, max_images=cfg.max_images, **load
    )
    fake_cap = in_memory_cap(cfg.fake, cfg.max_images)  # a generated dataset: capped; its FD streams all
    fake = load_subsampled(cfg.fake, label=cfg.fake_label, split=cfg.fake_split, max_images=fake_cap, **load)
    train = None
    if cfg.train:
        train = load_subsampled(
            cfg.train, label=cfg.train_label, split=cfg.train_split, max_images=cfg.max_train_images, **load
        )
    log(f"loaded real={len(real)} fake={len(fake)}" + (f" train={len(train)}" if train else ""))
    return EvalInputs(cfg, log, Path(cfg.out), extractors, real, fake, train)


def report_header(inp: EvalInputs) -> dict:
    """The report's first entries: settings, preprocessing, subsampling and the sets."""
    cfg = inp.cfg
    settings = {
        k: v if v is None or isinstance(v, (str, int, float, bool, list)) else f"<{type(v).__name__}>"
        for k, v in asdict(cfg).items()
    }
    subsampling = (
        "none"
        if cfg.max_images is None and cfg.max_train_images is None
        else f"real and fake at most {cfg.max_images} each, train at most {cfg.max_train_images}, seeded "
        f"(seed {cfg.seed}), label-proportional and spread over patients when the source is a metadata CSV "
        "(medsd.metrics.subsample)"
    )
    sets = {"real": _set_summary(inp.real), "fake": _set_summary(inp.fake)}
    if inp.train is not None:
        sets["train"] = _set_summary(inp.train)
    return {
        "medsd_eval_version": 1,
        "settings": _clean(settings),
        "preprocessing": "read as training reads (medsd.data.build_dataset): grayscale; each set's intensity "
        f"mapping (sets.*.intensity_mapping) to [0, 1]; short side resized (bilinear, antialiased) to {cfg.size} "
        "and centre-cropped square",
        "subsampling": subsampling,
        "sets": sets,
        "figures": {},
    }


def evaluate(cfg: EvalConfig, log=print, sections: list[Section] | None = None) -> tuple[dict, int]:
    """Run every section (``sections``, default :data:`SECTIONS`); write ``report.json``, ``report.md`` and
    figures into ``cfg.out``.

    Returns ``(report, exit_code)``; exit code 3 when copies of training images were found (the caller decides
    whether that fails the run). Raises :class:`MissingWeightsError` before any heavy work when an extractor
    lacks weights.
    """
    t0 = time.time()
    out = Path(cfg.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    inp = load_inputs(cfg, log)
    report = report_header(inp)
    exit_code = EXIT_OK
    for section in SECTIONS if sections is None else sections:
        result = section(inp)
        if result is not None:
            report.update(result.entries)
            report["figures"].update(result.figures)
            exit_code = max(exit_code, result.exit_code)
    report["runtime_s"] = round(time.time() - t0, 1)
    report["environment"] = {"python": platform.python_version(), "numpy": np.__version__}
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(render_markdown(report))
    return report, exit_code
