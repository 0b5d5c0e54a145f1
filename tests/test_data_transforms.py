import numpy as np
import pytest
import torch

from medsd.data.errors import MedImageError
from medsd.data.transforms import (
    ImageTransform,
    center_crop,
    hflip,
    random_affine,
    random_crop,
    resize_short_side,
)


def test_resize_and_center_crop_shapes():
    x = torch.rand(1, 100, 80)
    y = resize_short_side(x, 40)
    assert y.shape == (1, 50, 40)
    assert resize_short_side(torch.rand(2, 1, 30, 60), 60).shape == (2, 1, 60, 120)
    c = center_crop(torch.arange(36.0).reshape(1, 6, 6), 2)
    assert c.tolist() == [[[14.0, 15.0], [20.0, 21.0]]]


def test_crop_too_small_names_file():
    with pytest.raises(MedImageError, match=r"scan.png: image is 20x30, smaller than the crop size 32x32"):
        center_crop(torch.rand(1, 20, 30), 32, path="scan.png")
    with pytest.raises(MedImageError, match="a.dcm"):
        ImageTransform(64, upscale=False)(torch.rand(1, 50, 80), path="a.dcm")


def test_random_crop_reproducible_with_generator():
    x = torch.rand(4, 1, 20, 20)
    a = random_crop(x, 8, torch.Generator().manual_seed(0))
    b = random_crop(x, 8, torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    # each crop is a true sub-window of its source image
    for i in range(4):
        windows = x[i, 0].unfold(0, 8, 1).unfold(1, 8, 1)
        assert (windows == a[i, 0]).all(-1).all(-1).any()


def test_random_affine_small_jitter_on_batches():
    x = torch.zeros(3, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0
    y = random_affine(x, degrees=5, translate=0.05, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert 0 < (y - x).abs().mean() < 0.2  # moved, but only a little
    assert not torch.allclose(y[0], y[1])  # per-item parameters
    same = random_affine(x, degrees=0, translate=0, scale=(1, 1))
    assert torch.allclose(same, x, atol=1e-5)


def test_hflip_and_image_transform():
    x = torch.arange(6.0).reshape(1, 2, 3)
    assert hflip(x).tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    t = ImageTransform(16)
    out = t(np.random.default_rng(0).random((40, 60)).astype(np.float32))
    assert out.shape == (1, 16, 16) and out.dtype == torch.float32
    # no flip by default: left/right anatomy is kept
    img = torch.zeros(1, 16, 16)
    img[..., :4] = 1.0
    assert all(torch.equal(t(img), img) for _ in range(5))
    flips = ImageTransform(16, hflip=True, generator=torch.Generator().manual_seed(0))
    results = {bool(flips(img)[0, 0, -1] == 1.0) for _ in range(20)}
    assert results == {True, False}
    with pytest.raises(MedImageError, match="crop"):
        ImageTransform(16, crop="corner")


def test_random_hflip_mirrors_about_half_and_takes_given_mirror_images():
    from medsd.data.transforms import augment_batch, random_hflip

    x = torch.arange(64 * 3, dtype=torch.float32).reshape(64, 1, 1, 3)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    mirrored = (out == x.flip(-1)).all(dim=(1, 2, 3))
    assert ((out == x).all(dim=(1, 2, 3)) | mirrored).all() and 10 < int(mirrored.sum()) < 54
    other = -x
    picked = random_hflip(x, torch.Generator().manual_seed(0), mirrored=other)
    assert torch.equal((picked == other).all(dim=(1, 2, 3)), mirrored)
    assert random_hflip(x[0], torch.Generator().manual_seed(1)).shape == (1, 1, 3)
    assert torch.equal(augment_batch(x, affine=False, flip=False), x)
