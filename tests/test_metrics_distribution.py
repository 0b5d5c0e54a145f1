"""Distribution metrics: Fréchet distance, KID, precision/recall, radiomics features (offline, CPU)."""

import numpy as np
import pytest
from scipy import ndimage

import medsd.data.phantoms as phantoms
from medsd.metrics import (
    MissingWeightsError,
    distribution_metrics,
    extract_features,
    frechet_distance,
    get_extractor,
    kernel_inception_distance,
    precision_recall,
)

N, S = 60, 64


@pytest.fixture(scope="module")
def feats():
    ext = get_extractor("radiomics", size=S)
    a = np.stack([phantoms.chest_phantom(S, seed=i) for i in range(N)])
    b = np.stack([phantoms.chest_phantom(S, seed=500 + i) for i in range(N)])
    blur = np.stack([ndimage.gaussian_filter(x, 0.7) for x in b]).astype(np.float32)
    contrast = np.clip((b - b.mean()) * 0.8 + b.mean(), 0, 1).astype(np.float32)
    ct = np.stack([phantoms.ct_phantom(S, seed=900 + i) for i in range(N)])
    return {k: ext(v) for k, v in dict(a=a, b=b, blur=blur, contrast=contrast, ct=ct).items()}


def test_identical_sets_distance_zero(feats):
    d = distribution_metrics(feats["a"], feats["a"], kid_subsets=10)
    assert d["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    # unbiased KID of a set with itself is slightly negative (the cross term includes k(x, x)); ~0 on this scale
    assert (
        d["kid"] <= 0.0 and abs(d["kid"]) < 0.01 * distribution_metrics(feats["a"], feats["contrast"])["kid"]
    )
    assert d["precision"] == 1.0 and d["recall"] == 1.0


def test_order_same_contrast_blur_other_modality(feats):
    fd = {
        k: distribution_metrics(feats["a"], feats[k], kid_subsets=10) for k in ("b", "contrast", "blur", "ct")
    }
    f = {k: v["frechet_distance"] for k, v in fd.items()}
    kid = {k: v["kid"] for k, v in fd.items()}
    assert 5 * f["b"] < f["contrast"] < f["blur"] < f["ct"]
    assert kid["b"] < kid["contrast"] < kid["blur"] < kid["ct"]
    # same distribution: KID ~ 0 (unbiased, may be slightly negative), far below any change
    assert abs(kid["b"]) < 0.01 * kid["contrast"]
    assert fd["b"]["precision"] > 0.8 and fd["ct"]["precision"] == 0.0 and fd["ct"]["recall"] == 0.0


def test_frechet_known_value_and_kid_unbiased():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 5))
    shift = np.array([1.0, 2.0, 0.0, 0.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)  # same covariance: ||mu shift||^2
    kids = [
        kernel_inception_distance(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)), subsets=5, seed=s)[0]
        for s in range(5)
    ]
    assert abs(np.mean(kids)) < 0.01
    assert kernel_inception_distance(a, a + 3.0, subsets=5)[0] > 1.0


def test_precision_recall_partial_overlap():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 2))
    fake = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 20])  # half off-manifold
    pr = precision_recall(real, fake, k=3)
    assert 0.35 < pr["precision"] < 0.6
    assert pr["recall"] > 0.8


def test_feature_cache(tmp_path):
    ext = get_extractor("radiomics", size=32)
    x = np.stack([phantoms.chest_phantom(32, seed=i) for i in range(4)])
    f1 = extract_features(x, ext, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features_radiomics_*.npy"))) == 1
    f2 = extract_features(x, ext, cache_dir=tmp_path)
    np.testing.assert_array_equal(f1, f2)
    assert f1.shape == (4, len(ext.feature_names()))


def test_inception_offline_clear_message(monkeypatch):
    monkeypatch.delenv("MEDSD_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="inception_weights"):
        get_extractor("inception")
    with pytest.raises(MissingWeightsError, match="not found"):
        get_extractor("inception", inception_weights="/nonexistent/pt_inception.pth")


def test_inception_bad_weights_file_clear_message(tmp_path):
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="torch-fidelity|Inception"):
        get_extractor("inception", inception_weights=str(bad))


def test_clip_without_weights_clear_message(monkeypatch):
    monkeypatch.delenv("MEDSD_CLIP_CHECKPOINT", raising=False)
    with pytest.raises(MissingWeightsError, match="clip_checkpoint"):
        get_extractor("clip:ViT-B-32")
    with pytest.raises(MissingWeightsError, match="not found"):
        get_extractor("clip:ViT-B-32", clip_checkpoint="/nonexistent.pt")


def test_unknown_extractor():
    with pytest.raises(KeyError, match="radiomics"):
        get_extractor("nope")


def test_xrv_without_package_or_weights_clear_message():
    try:
        import torchxrayvision  # noqa: F401
    except ImportError:
        with pytest.raises(MissingWeightsError, match="torchxrayvision"):
            get_extractor("xrv")
    else:  # pragma: no cover - only where torchxrayvision is installed
        pytest.skip("torchxrayvision installed; weights may be cached")
