"""Memorisation audit: planted copies are flagged, fresh samples are not."""

import numpy as np
import pytest

from medsd.metrics import memorisation_audit, nearest_by_ncc
from medsd.metrics.memorisation import plot_nn_gallery, plot_similarity_histogram, strip_arrays

phantoms = pytest.importorskip("medsd.data.phantoms")
S = 64


@pytest.fixture(scope="module")
def sets():
    train = np.stack([phantoms.chest_phantom(S, seed=i) for i in range(80)])
    test = np.stack([phantoms.chest_phantom(S, seed=1000 + i) for i in range(30)])
    fresh = np.stack([phantoms.chest_phantom(S, seed=2000 + i) for i in range(20)])
    rng = np.random.default_rng(0)
    exact = train[5]
    noised = np.clip(train[17] + rng.normal(0, 0.02, (S, S)), 0, 1).astype(np.float32)
    gen = np.concatenate([fresh, exact[None], noised[None]])
    return train, test, gen


def test_planted_copies_flagged(sets, tmp_path):
    train, test, gen = sets
    audit = memorisation_audit(gen, train, test, threshold=0.97)
    flagged = {c["generated_index"]: c["train_index"] for c in audit["copies"]}
    assert flagged == {20: 5, 21: 17}
    assert audit["n_copies"] == 2
    assert audit["baseline_fraction_above_threshold"] == 0.0
    assert audit["generated_nn_ncc"]["max"] == pytest.approx(1.0, abs=1e-6)
    h = plot_similarity_histogram(audit, tmp_path / "hist.png")
    g = plot_nn_gallery(gen, train, audit, tmp_path / "nn.png", n=4)
    assert (tmp_path / "hist.png").stat().st_size > 1000 and g.endswith("nn.png") and h.endswith("hist.png")
    import json

    json.dumps(strip_arrays(audit))  # serialisable without the arrays


def test_fresh_samples_not_flagged(sets):
    train, test, gen = sets
    audit = memorisation_audit(gen[:20], train, test)
    assert audit["n_copies"] == 0
    sim, idx = nearest_by_ncc(train[:3], train, top_k=2)
    assert idx[:, 0].tolist() == [0, 1, 2] and np.allclose(sim[:, 0], 1.0)


def test_feature_space_neighbours(sets):
    train, test, gen = sets
    rng = np.random.default_rng(0)
    ft = rng.normal(size=(len(train), 8))
    fg = rng.normal(size=(len(gen), 8))
    fg[20] = ft[5]
    fte = rng.normal(size=(len(test), 8))
    audit = memorisation_audit(gen, train, test, generated_feats=fg, train_feats=ft, real_test_feats=fte)
    assert audit["generated_nn_feature_distance"]["min"] == pytest.approx(0.0, abs=1e-6)
    assert audit["fraction_generated_closer_than_real_p01"] >= 1 / len(gen)
