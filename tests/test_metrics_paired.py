"""Paired metrics, class-set table, diversity and the degenerate-image rule."""

import numpy as np
import pytest
from scipy import ndimage

from medsd.metrics import (
    MissingWeightsError,
    acutance,
    class_set_table,
    count_degenerate,
    degenerate_mask,
    lpips,
    mean_pairwise_ms_ssim,
    ms_ssim,
    paired_metrics,
    psnr,
    ssim,
)
from medsd.metrics.paired import ms_ssim_config


def _smooth(seed, size=64):
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((size, size)), 3)
    return ((x - x.min()) / (x.max() - x.min()) * 0.8 + 0.1).astype(np.float32)


def test_psnr_of_known_mse():
    t = np.full((2, 64, 64), 0.5, np.float32)
    p = t + 0.1  # MSE 0.01 -> PSNR 20 dB at data range 1
    assert psnr(p, t) == pytest.approx(20.0, abs=1e-3)
    m = paired_metrics(p, t)
    assert m["mse"] == pytest.approx(0.01, rel=1e-4)
    assert m["mae"] == pytest.approx(0.1, rel=1e-4)


def test_identical_images_ssim_one():
    x = np.stack([_smooth(i) for i in range(3)])
    m = paired_metrics(x, x)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["acutance_ratio"] == pytest.approx(1.0)
    y = np.clip(x + np.random.default_rng(0).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    assert ssim(y, x) < 0.9 and ms_ssim(y, x) < 1.0


def test_ms_ssim_small_images():
    cfg = ms_ssim_config(64)
    assert abs(sum(cfg["betas"]) - 1) < 1e-9 and len(cfg["betas"]) >= 3
    x = np.stack([_smooth(i, 32) for i in range(2)])
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-5)


def test_acutance_blur_lowers_it():
    x = _smooth(0)
    x = (x > 0.5).astype(np.float32) * 0.6 + 0.2
    assert acutance(ndimage.gaussian_filter(x, 2)) < acutance(x)
    assert acutance(np.full((16, 16), 0.3)) == 0.0


def test_lpips_offline_is_clear():
    x = np.stack([_smooth(i) for i in range(2)])
    try:
        v = lpips(x, x)
    except MissingWeightsError as e:
        assert "weights" in str(e)
        m = paired_metrics(x, x, with_lpips=True)
        assert m["lpips"] is None and "weights" in m["lpips_note"]
    else:  # weights happen to be cached
        assert v == pytest.approx(0.0, abs=1e-4)


def test_class_set_table():
    real = np.stack([_smooth(i) for i in range(4)])
    fake = real.copy()
    t = class_set_table(fake, ["a", "a", "b", "b"], real, ["a", "a", "b", "b"])
    assert [r["class"] for r in t] == ["a", "b"]
    assert all(r["n_pairs"] == 4 for r in t)
    # fake == real: the fake-real pairs include the identical ones, so MSE is half the real-real MSE
    assert t[0]["fake_vs_real_mse"] == pytest.approx(0.5 * t[0]["real_vs_real_mse"], rel=1e-6)
    assert t[0]["fake_vs_real_ssim"] > t[0]["real_vs_real_ssim"]


def test_degenerate_rule():
    rng = np.random.default_rng(0)
    good = (_smooth(1) * 255).astype(np.uint8)
    black = np.full((64, 64), 10, np.uint8) + (good // 40)  # mean < 25
    white = np.clip(good.astype(int) // 8 + 235, 0, 255).astype(np.uint8)  # mean > 230
    flat = (good // 40 + 120).astype(np.uint8)  # std < 10
    noise = rng.integers(0, 256, (64, 64)).astype(np.uint8)  # neighbour correlation ~ 0
    const = np.full((64, 64), 128, np.uint8)
    imgs = np.stack([good, black, white, flat, noise, const])
    mask = degenerate_mask(imgs)
    assert mask.tolist() == [False, True, True, True, True, True]
    assert count_degenerate(imgs) == 5


def test_degenerate_rule_boundaries():
    # horizontal ramps: neighbour correlation ~1, std ~11.8 (>= 10); mean exactly 25 is fine, 24 is degenerate
    at = np.tile(np.arange(5, 46), (41, 1)).astype(np.uint8)
    below = at - 1
    assert at.mean() == 25 and at.std() >= 10
    assert degenerate_mask(np.stack([at, below])).tolist() == [False, True]
    high = at + 205  # mean exactly 230: fine; 231: degenerate
    assert degenerate_mask(np.stack([high, high + 1])).tolist() == [False, True]


def test_diversity_ms_ssim():
    same = np.stack([_smooth(0)] * 5)
    varied = np.stack([_smooth(i) for i in range(5)])
    assert mean_pairwise_ms_ssim(same)["mean"] == pytest.approx(1.0, abs=1e-5)
    assert mean_pairwise_ms_ssim(varied)["mean"] < 0.9
    assert mean_pairwise_ms_ssim(varied, max_pairs=4)["n_pairs"] == 4
