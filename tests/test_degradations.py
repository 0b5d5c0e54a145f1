"""Degradation operators of the cDDPM: shapes, exact factors, seeded determinism, fixed test masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsd.data.degradations import (
    Degradation,
    add_gaussian_noise,
    add_salt_and_pepper,
    box_mask,
    degrade_sr,
    downsample,
    fixed_masks,
    irregular_mask,
    load_mask,
    low_res_size,
    masked_condition,
    random_masks,
)


def _images(b=4, size=32, seed=0):
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(
    "factor, low", [(2 * math.sqrt(2), 45), (4, 32), (4 * math.sqrt(2), 23), (8, 16), (3.3, 39)]
)
@pytest.mark.parametrize("down", ["area", "bicubic"])
def test_sr_factors_give_round_h_over_f_and_full_size_output(factor, low, down):
    x = _images(2, 128)
    assert low_res_size(128, factor) == low
    assert downsample(x, factor, down).shape == (2, 1, low, low)
    for up in ("bicubic", "bilinear", "nearest"):
        y = degrade_sr(x, factor, down, up)
        assert y.shape == x.shape
        assert y.min() >= -1 and y.max() <= 1


def test_area_downsampling_is_the_block_mean_for_integer_factors():
    x = _images(2, 32)
    assert torch.allclose(downsample(x, 4, "area"), F.avg_pool2d(x, 4), atol=1e-6)
    # a constant image survives any factor and interpolation unchanged
    c = torch.full((1, 1, 40, 40), 0.25)
    assert torch.allclose(degrade_sr(c, 2 * math.sqrt(2)), c, atol=1e-5)


def test_sr_removes_detail():
    x = _images(2, 64)
    err2 = (degrade_sr(x, 2) - x).abs().mean()
    err8 = (degrade_sr(x, 8) - x).abs().mean()
    assert 0 < err2 < err8


@pytest.mark.parametrize("task", ["denoise", "inpaint"])
def test_same_seed_same_degradation_other_seed_differs(task):
    x = _images()
    d = Degradation(task)
    a, b, c = d(x, 5), d(x, 5), d(x, 6)
    assert torch.equal(a.condition, b.condition)
    assert not torch.equal(a.condition, c.condition)
    g = d(x, torch.Generator().manual_seed(5))
    assert torch.equal(a.condition, g.condition)  # an int seed and a generator seeded with it agree
    assert a.condition.shape == (4, d.cond_channels, 32, 32)


def test_gaussian_sigma_and_salt_and_pepper_amount():
    x = torch.zeros(8, 1, 64, 64)
    y = add_gaussian_noise(x, (0.1, 0.1), 0)
    assert abs(float(y.std()) - 0.2) < 0.01  # sigma in [0, 1] units is doubled in [-1, 1]
    z = add_salt_and_pepper(x, (0.1, 0.1), 0)
    hit = (z.abs() == 1).float().mean()
    assert abs(float(hit) - 0.1) < 0.01
    assert abs(float((z == 1).float().mean() - (z == -1).float().mean())) < 0.01
    assert torch.equal(add_salt_and_pepper(x, 0.0, 0), x)


def test_denoise_condition_in_range_and_one_channel():
    x = _images()
    d = Degradation("denoise", noise_sigma=(0.05, 0.2), sp_amount=(0.0, 0.05))
    y = d(x, 1).condition
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 0.02


def test_box_and_irregular_masks():
    m = box_mask(16, 64, 0, frac=(0.25, 0.5))
    assert m.shape == (16, 1, 64, 64)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    frac = m.mean(dim=(1, 2, 3))
    assert (frac >= 0.25**2 - 1e-6).all() and (frac <= 0.5**2 + 1e-6).all()
    r = irregular_mask(8, 32, 0)
    assert r.shape == (8, 1, 32, 32) and (r.sum(dim=(1, 2, 3)) > 0).all()
    assert torch.equal(r, irregular_mask(8, 32, 0))
    assert not torch.equal(r, irregular_mask(8, 32, 1))
    assert not torch.equal(r[0], r[1])


def test_fixed_masks_are_the_same_on_every_call_and_batch():
    a = fixed_masks([0, 1, 2, 3], 32, "mixed", seed=3)
    b = fixed_masks([2, 3], 32, "mixed", seed=3)
    assert torch.equal(a[2:], b)  # mask of index i depends on (seed, i) only
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, fixed_masks([0, 1, 2, 3], 32, "mixed", seed=4))
    x = _images(4, 32)
    d = Degradation("inpaint")
    f1, f2 = d.fixed(x, [0, 1, 2, 3], seed=3), d.fixed(x[2:], [2, 3], seed=3)
    assert torch.equal(f1.mask[2:], f2.mask)
    assert torch.equal(f1.mask, a)


def test_inpaint_condition_is_masked_image_plus_mask():
    x = _images(3, 32)
    d = Degradation("inpaint", mask_kind="box")(x, 0)
    assert d.condition.shape == (3, 2, 32, 32)
    m = d.mask.bool()
    assert torch.equal(d.condition[:, 1:], d.mask)
    assert torch.equal(d.condition[:, :1][~m], x[~m])
    assert (d.condition[:, :1][m] == 0).all()
    fixed = masked_condition(x, d.mask[:1], fill=-1.0)
    assert (fixed[:, :1][d.mask[:1].expand(3, -1, -1, -1).bool()] == -1).all()


def test_mask_from_file(tmp_path):
    from PIL import Image

    arr = np.zeros((20, 20), dtype=np.uint8)
    arr[5:10, 2:8] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(arr).save(path)
    m = load_mask(path)
    assert m.shape == (1, 1, 20, 20) and float(m.sum()) == 30
    assert float(load_mask(path, invert=True).sum()) == 400 - 30
    assert load_mask(path, size=40).shape == (1, 1, 40, 40)
    r = random_masks(3, 20, "file", 0, mask_file=str(path))
    assert r.shape == (3, 1, 20, 20) and torch.equal(r[2, 0], m[0, 0])
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "missing.png")


def test_degradation_dict_round_trip_and_validation():
    d = Degradation("sr", factor=2 * math.sqrt(2), up_mode="bilinear")
    assert Degradation.from_dict(d.to_dict()) == d
    assert d.to_dict()["cond_channels"] == 1 and Degradation("inpaint").cond_channels == 2
    with pytest.raises(ValueError):
        Degradation("deblur")
    with pytest.raises(ValueError):
        Degradation("sr", factor=0.5)
