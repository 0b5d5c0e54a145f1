"""Metrics that mean what they say: standard FID/KID on raw features, robust medsd distances, degenerate images
counted apart, precision/recall for collapsed samplers, the same-size real/real reference, stratified subsampling
and the size-aware degenerate rule. Every expected value is computed independently in the test or known by
construction."""

import csv
import json

import numpy as np
import pytest
from scipy import linalg

import medsd.data.phantoms as phantoms
from medsd.metrics import distribution_metrics, get_extractor
from medsd.metrics.distribution import real_reference, robust_scale, standardise
from medsd.metrics.diversity import degenerate_mask, neighbour_corr_threshold, to_uint8
from medsd.metrics.io import load_subsampled
from medsd.metrics.subsample import stratified_subsample


def _fid_reference(a, b):
    """FID written out independently: eigenvalues of S_a S_b instead of a matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def _fid_scipy(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean.real))


def _kid_reference(a, b):
    """Unbiased MMD² with k(x, y) = (x·y/d + 1)³, written as explicit sums over distinct pairs."""
    d = a.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
        - 2 * kab.mean()
    )


def _unequal_scales(seed=0, n=120):
    rng = np.random.default_rng(seed)
    scales = np.array([1000.0, 100.0, 10.0, 1.0, 0.1, 0.01])
    real = rng.normal(size=(n, 6)) * scales
    fake = (rng.normal(size=(n, 6)) * 1.3 + np.array([0.2, 0.5, 1.0, 0.5, 0.2, 0.1])) * scales
    return real, fake


def test_standard_fid_kid_match_independent_reference():
    real, fake = _unequal_scales()
    d = distribution_metrics(real, fake, scaling="raw", standard=True, reference_draws=0)
    ref = _fid_reference(real, fake)
    assert ref > 1e4  # dominated by the large-scale features: a z-scored FD would be far smaller
    assert d["frechet_distance"] == pytest.approx(ref, rel=1e-6)
    assert d["frechet_distance"] == pytest.approx(_fid_scipy(real, fake), rel=1e-6)
    assert d["kid"] == pytest.approx(_kid_reference(real, fake), rel=1e-9)
    assert d["comparable_to_published"] is True
    # the old behaviour (z-scored by the real set) gives a different, much smaller number
    zr, zf = standardise(real, fake)
    assert _fid_reference(zr, zf) < 0.01 * ref


class _ToyStandardExtractor:
    """Stands in for Inception (whose weights cannot be downloaded here): a standard, raw-feature extractor
    whose features have very unequal scales."""

    name = "inception"
    standard = True
    scaling = "raw"
    config = {"toy": 1}

    def __call__(self, images, progress=False, batch_size=64):
        x = np.asarray(images, np.float64)
        h = x.shape[1] // 2
        return np.stack(
            [
                1000 * x.mean((1, 2)),
                100 * x.std((1, 2)),
                10 * x[:, :h].mean((1, 2)),
                x[:, h:].mean((1, 2)),
                0.1 * np.abs(np.diff(x, axis=2)).mean((1, 2)),
            ],
            axis=1,
        )


def test_eval_inception_reports_raw_feature_fid(tmp_path, monkeypatch):
    from PIL import Image

    from medsd.commands import eval as eval_cmd
    from medsd.metrics import features

    monkeypatch.setitem(features._REGISTRY, "inception", lambda arg="", **_: _ToyStandardExtractor())
    for name, seeds, gain in (("real", range(0, 30), 1.0), ("fake", range(100, 130), 0.8)):
        (tmp_path / name).mkdir()
        for s in seeds:
            x = np.clip(phantoms.chest_phantom(48, seed=s) * gain, 0, 1)
            Image.fromarray(to_uint8(x)).save(tmp_path / name / f"{s:03d}.png")
    out = tmp_path / "ev"
    argv = ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--out", str(out)]
    argv += [
        "--size",
        "48",
        "--features",
        "inception",
        "--quiet",
        "--no_image_figures",
        "--reference_draws",
        "2",
    ]
    assert eval_cmd.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    d = rep["distribution"]["inception"]
    from medsd.metrics import load_image_set

    ext = _ToyStandardExtractor()
    fr = ext(load_image_set(str(tmp_path / "real"), size=48).images)
    ff = ext(load_image_set(str(tmp_path / "fake"), size=48).images)
    assert d["frechet_distance"] == pytest.approx(_fid_reference(fr, ff), rel=1e-6)
    assert d["names"]["fd"] == "FID" and d["settings"]["scaling"] == "raw"
    zr, zf = standardise(fr, ff)
    assert abs(d["frechet_distance"] - _fid_reference(zr, zf)) > 0.5 * d["frechet_distance"]
    md = (out / "report.md").read_text()
    assert "| inception | 5 | FID |" in md and "not comparable to published FID" in md


def _chest(seeds, size=64):
    return np.stack([phantoms.chest_phantom(size, seed=s) for s in seeds]).astype(np.float32)


def _collapsed(n, size=64, seed=0):
    """Collapsed samples as broken samplers make them: black, saturated, flat grey, noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            x = np.full((size, size), 0.02) + 0.01 * rng.random((size, size))
        elif kind == 1:
            x = np.full((size, size), 0.99)
        elif kind == 2:
            x = np.full((size, size), 0.5) + 0.02 * rng.random((size, size))
        else:
            x = rng.random((size, size))
        out.append(x)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def radiomics_sets():
    ext = get_extractor("radiomics", size=64)
    real, good, bad = _chest(range(0, 80)), _chest(range(500, 564)), _collapsed(10)
    return {
        "ext": ext,
        "real": real,
        "good": good,
        "bad": bad,
        "f_real": ext(real),
        "f_good": ext(good),
        "f_bad": ext(bad),
    }


def test_64_good_plus_10_collapsed_within_factor_two(radiomics_sets, tmp_path):
    from medsd.metrics import EvalConfig, evaluate

    s = radiomics_sets
    both = np.concatenate([s["good"], s["bad"]])
    common = dict(size=64, kid_subsets=5, diversity_pairs=10, image_figures=False, progress=False)
    r_good, _ = evaluate(
        EvalConfig(real=s["real"], fake=s["good"], out=str(tmp_path / "g"), **common), log=print
    )
    r_both, _ = evaluate(EvalConfig(real=s["real"], fake=both, out=str(tmp_path / "b"), **common), log=print)
    fd_good = r_good["distribution"]["radiomics"]["frechet_distance"]
    fd_both = r_both["distribution"]["radiomics"]["frechet_distance"]
    assert r_both["degenerate"]["fake"] == 10 and r_good["degenerate"]["fake"] == 0
    assert r_both["degenerate"]["fake_indices"] == list(range(64, 74))
    assert r_both["distribution"]["radiomics"]["n_degenerate_fake"] == 10
    assert 0.5 < fd_both / fd_good < 2.0
    # over all 74 images (reported apart) the robust-scaled FD moves, but far less than the z-scored one
    fd_all = r_both["distribution"]["radiomics"]["frechet_distance_all"]
    f_both = np.concatenate([s["f_good"], s["f_bad"]])
    fd_all_z = distribution_metrics(s["f_real"], f_both, scaling="standard", kid_subsets=2, reference_draws=0)
    assert fd_good < fd_all < 0.1 * fd_all_z["frechet_distance"]


def test_robust_scaling_bounds_one_outlier(radiomics_sets):
    s = radiomics_sets
    # one collapsed-but-not-flagged image: a smooth phantom with one saturated pixel block (huge kurtosis)
    spike = s["good"][:1].copy()
    spike[0] *= 0.3
    spike[0, 30:32, 30:32] = 1.0
    f_spike = s["ext"](spike)
    f_with = np.concatenate([s["f_good"], f_spike])

    def fd(scaling, fake):
        return distribution_metrics(s["f_real"], fake, scaling=scaling, kid_subsets=2, reference_draws=0)[
            "frechet_distance"
        ]

    z_ratio = fd("standard", f_with) / fd("standard", s["f_good"])
    r_ratio = fd("robust", f_with) / fd("robust", s["f_good"])
    assert r_ratio < 3.0  # one image out of 65 cannot move the robust FD much
    assert z_ratio > 2 * r_ratio  # ... while the z-scored one moves a lot more
    r_s, f_s = robust_scale(s["f_real"], f_spike)
    assert np.abs(f_s).max() <= 5.0 and np.abs(r_s).max() <= 5.0


def test_precision_recall_fall_for_collapsed_sampler(radiomics_sets):
    s = radiomics_sets
    good = distribution_metrics(s["f_real"], s["f_good"], kid_subsets=2, reference_draws=0)
    # a collapsed sampler: 54 degenerate images and 10 good ones
    fake = np.concatenate([s["f_good"][:10], np.repeat(s["f_bad"], 6, axis=0)[:54]])
    flags = np.r_[np.zeros(10, bool), np.ones(54, bool)]
    col = distribution_metrics(s["f_real"], fake, fake_degenerate=flags, kid_subsets=2, reference_draws=0)
    assert good["precision"] > 0.7 and good["recall"] > 0.5
    assert col["precision"] <= 10 / 64 + 1e-9 and col["recall"] < good["recall"]
    # a mode-collapsed sampler (one phantom, tiny jitter) also loses recall
    rng = np.random.default_rng(0)
    mode = np.repeat(s["good"][:1], 64, axis=0) + 0.002 * rng.standard_normal((64, 64, 64)).astype(np.float32)
    mc = distribution_metrics(s["f_real"], s["ext"](np.clip(mode, 0, 1)), kid_subsets=2, reference_draws=0)
    assert mc["recall"] < 0.2 < good["recall"]


def test_same_size_reference_matches_same_distribution():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 8))
    same = rng.normal(size=(60, 8))
    shifted = rng.normal(size=(60, 8)) + 0.8
    r_same = real_reference(real, same, draws=20, kid_subsets=3)
    r_shift = real_reference(real, shifted, draws=20, kid_subsets=3)
    assert r_same["n_b"] == 60 and r_same["n_a_real"] == 240
    rr, ff = r_same["real_vs_real"]["frechet_distance"], r_same["fake_vs_real"]["frechet_distance"]
    # same distribution: the fake row matches the real row within the real row's spread
    assert abs(ff["mean"] - rr["mean"]) < 3 * rr["std"] + 0.1 * rr["mean"]
    assert rr["std"] > 0
    assert r_shift["fake_vs_real"]["frechet_distance"]["mean"] > 5 * rr["mean"]
    # the old split-half reference (150 vs 150) is not the right size for a 60-image comparison
    assert r_same["n_b"] != len(real) // 2


def test_stratified_subsample_labels_and_patients():
    # 200 items in "file order": 150 A then 50 B, four images per patient
    labels = ["A"] * 150 + ["B"] * 50
    pids = [f"p{i // 4}" for i in range(200)]
    idx = stratified_subsample(200, 40, labels, pids, seed=0)
    assert len(idx) == 40 and idx == sorted(set(idx))
    assert sum(labels[i] == "A" for i in idx) == 30
    assert len({pids[i] for i in idx}) == 40  # one image per patient while patients last
    assert idx != list(range(40))  # not the first N
    assert idx == stratified_subsample(200, 40, labels, pids, seed=0)
    assert idx != stratified_subsample(200, 40, labels, pids, seed=1)
    # more than one image per patient only once every patient has one
    idx2 = stratified_subsample(200, 120, labels, pids, seed=0)
    assert len({pids[i] for i in idx2}) == 50
    assert stratified_subsample(10, None) == list(range(10))


def test_load_subsampled_reads_only_the_chosen_rows(tmp_path, monkeypatch):
    from PIL import Image

    rows = []
    for i in range(24):
        fn = f"img_{i:02d}.png"
        Image.fromarray(to_uint8(phantoms.chest_phantom(32, seed=i))).save(tmp_path / fn)
        rows.append({"filename": fn, "label": "N" if i < 18 else "P", "patient_id": f"pt{i // 3}"})
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    s = load_subsampled(str(tmp_path), size=32, max_images=8, seed=0)
    assert len(s) == 8 and s.labels.count("P") == 2
    assert len(set(s.patient_ids)) == 8
    assert s.source == str(tmp_path)
    p = load_subsampled(str(tmp_path / "metadata.csv"), size=32, max_images=4, seed=0, label="P")
    assert p.labels == ["P"] * 4
    # a relative CSV path (as `--real ../shared/data/x/metadata.csv`) works too
    monkeypatch.chdir(tmp_path.parent)
    rel = load_subsampled(f"{tmp_path.name}/metadata.csv", size=32, max_images=5, seed=0)
    assert len(rel) == 5


def test_degenerate_rule_is_size_aware():
    assert neighbour_corr_threshold(128) == 0.8 and neighbour_corr_threshold(512) == 0.8
    assert neighbour_corr_threshold(32) < neighbour_corr_threshold(64) < 0.8
    # the quickstart's held-out phantoms (32 px, its seed offset): at most 5% flagged (was 98%)
    held = phantoms.PhantomDataset(64, size=32, kind="chest", seed=10_000)
    x = np.stack([held.read_native(i) for i in range(len(held))])
    assert degenerate_mask(to_uint8(x)).mean() <= 0.05
    # noise and flat images are still flagged at every size
    rng = np.random.default_rng(0)
    for size in (16, 32, 64, 128):
        noise = rng.integers(0, 256, (8, size, size)).astype(np.uint8)
        assert degenerate_mask(noise).all()
        assert degenerate_mask(np.full((2, size, size), 128, np.uint8)).all()


def test_lpips_runs_with_a_user_weights_file(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from medsd.metrics import MissingWeightsError, paired_metrics
    from medsd.metrics.paired import lpips

    # a backbone file of the right architecture (random weights here; a user gives the pretrained one)
    torch.manual_seed(0)
    path = tmp_path / "alexnet-backbone.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    a = _chest(range(2), size=64)
    b = _chest(range(10, 12), size=64)
    same = lpips(a, a, weights=str(path))
    diff = lpips(a, b, weights=str(path))
    assert same == pytest.approx(0.0, abs=1e-6) and diff > same
    assert paired_metrics(a, b, with_lpips=True, lpips_weights=str(path))["lpips"] == pytest.approx(diff)
    with pytest.raises(MissingWeightsError, match="not found"):
        lpips(a, b, weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(MissingWeightsError, match="lpips_weights"):
        lpips(a, b, weights=str(bad))
