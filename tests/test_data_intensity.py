import numpy as np
import pytest
import torch

from medsd.data.errors import MedImageError
from medsd.data.intensity import (
    IntensityMapping,
    MinMaxMapping,
    PercentileMapping,
    WindowMapping,
    mapping_from_dict,
)


def test_window_forward_inverse_numpy_and_torch():
    m = WindowMapping.from_width_level(1500, -600)
    assert (m.low, m.high) == (-1350.0, 150.0)
    hu = np.linspace(-1350, 150, 1001, dtype=np.float32)
    y = m.forward(hu)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(m.inverse(y), hu, atol=1e-3)
    yt = m.forward(torch.from_numpy(hu))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(m.inverse(yt).numpy(), hu, atol=1e-3)
    # outside the window is clipped
    assert m.forward(np.array([-3000.0, 3000.0])).tolist() == [-1.0, 1.0]


def test_8bit_window_exact():
    m = WindowMapping(0, 255)
    v = np.arange(256, dtype=np.float32)
    assert np.array_equal(np.round(m.inverse(m.forward(v))), v)
    assert m.forward(np.array([0.0, 255.0])).tolist() == [-1.0, 1.0]


def test_minmax_and_percentile_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, 10000).astype(np.float32)
    x[0] = 1e6  # outlier
    mm = MinMaxMapping().fit(x)
    assert mm.low == pytest.approx(x.min()) and mm.high == pytest.approx(1e6)
    pm = PercentileMapping(1, 99).fit([x[:5000], torch.from_numpy(x[5000:])])
    assert pm.low == pytest.approx(np.percentile(x, 1), rel=1e-4)
    assert pm.high == pytest.approx(np.percentile(x, 99), rel=1e-4) and pm.high < 1000
    inside = x[(x > pm.low) & (x < pm.high)]
    np.testing.assert_allclose(pm.inverse(pm.forward(inside)), inside, rtol=1e-5, atol=1e-4)


def test_unfitted_and_bad_parameters():
    with pytest.raises(MedImageError, match="fit"):
        MinMaxMapping().forward(np.zeros(3))
    with pytest.raises(MedImageError, match="constant"):
        MinMaxMapping().fit(np.ones(5))
    with pytest.raises(MedImageError, match="high > low"):
        WindowMapping(5, 5)
    with pytest.raises(MedImageError, match="type"):
        mapping_from_dict({"type": "gamma"})


@pytest.mark.parametrize(
    "m",
    [
        WindowMapping(-1024, 3071),
        MinMaxMapping().fit(np.array([3.0, 9.0])),
        PercentileMapping(2, 98, 0.0, 10.0),
    ],
)
def test_save_load_roundtrip(m, tmp_path):
    m.save(tmp_path / "intensity_mapping.json")
    m2 = IntensityMapping.load(tmp_path / "intensity_mapping.json")
    assert type(m2) is type(m) and m2 == m
    assert mapping_from_dict(m.to_dict()).to_dict() == m.to_dict()
    v = np.array([m.low, (m.low + m.high) / 2, m.high])
    np.testing.assert_allclose(m2.inverse(m.forward(v)), v, rtol=1e-6)
