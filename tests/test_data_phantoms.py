import time

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from medsd.data.errors import MedImageError
from medsd.data.phantoms import Finding, PhantomDataset, chest_phantom, ct_phantom, phantom_mask
from medsd.data.transforms import ImageTransform


@pytest.mark.parametrize("fn", [chest_phantom, ct_phantom])
def test_phantom_deterministic_and_seed_dependent(fn):
    a, b, c = fn(64, seed=3), fn(64, seed=3), fn(64, seed=4)
    assert a.dtype == np.float32 and a.shape == (64, 64)
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_chest_phantom_anatomy():
    img = chest_phantom(128, seed=0)
    lungs = phantom_mask(128, seed=0, region="lungs")
    assert 0.1 < lungs.mean() < 0.5
    # lungs are darker than the surrounding body, and the left and right lung fields are separated
    assert img[lungs].mean() < img[~lungs][img[~lungs] > 0.2].mean() - 0.1
    assert lungs[:, :60].any() and lungs[:, 68:].any() and not lungs[:, 62:66].any()
    # spine column (centre) is brighter than the lungs; outside the body (corners) is dark
    assert img[100:120, 62:66].mean() > img[lungs].mean() + 0.2
    assert img[:6, :6].mean() < 0.1


@pytest.mark.parametrize("kind", ["chest", "ct"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_finding_changes_image_inside_lung_only(kind, side):
    fn = chest_phantom if kind == "chest" else ct_phantom
    f = Finding(side=side, zone="middle", radius_frac=0.08)
    base, with_f = fn(96, seed=5), fn(96, seed=5, findings=[f])
    lungs = phantom_mask(96, seed=5, kind=kind, region="lungs")
    mask = phantom_mask(96, seed=5, kind=kind, findings=[f])
    assert mask.any() and not (mask & ~lungs).any()
    diff = with_f - base
    assert diff[mask].mean() > 0.1  # brighter where the finding is
    near_lungs = binary_dilation(lungs, iterations=3)  # the lung edge is soft
    assert np.abs(diff[~near_lungs]).max() < 1e-6  # nothing changes outside the lungs
    # radiological convention: patient's right lung is on the image left
    cols = np.nonzero(mask)[1]
    assert (cols.mean() < 48) == (side == "right")


def test_finding_zones_are_ordered():
    rows = [
        np.nonzero(phantom_mask(96, seed=1, findings=[Finding(zone=z)]))[0].mean()
        for z in ("upper", "middle", "lower")
    ]
    assert rows[0] < rows[1] < rows[2]


def test_bad_finding_and_size():
    with pytest.raises(MedImageError, match="side"):
        Finding(side="middle")
    with pytest.raises(MedImageError, match="kind"):
        Finding(kind="fracture")
    with pytest.raises(MedImageError, match="size"):
        chest_phantom(4, seed=0)


def test_phantom_speed():
    t = time.perf_counter()
    for i in range(64):
        chest_phantom(64, seed=i)
    assert time.perf_counter() - t < 1.0


def test_phantom_dataset_items_and_ground_truth():
    ds = PhantomDataset(20, size=32, kind="chest", finding_probability=0.5, seed=0)
    assert len(ds) == 20 and len(ds.findings) == 20
    labels = {ds[i]["label"] for i in range(20)}
    assert labels == {"opacity", "no finding"}
    for i in range(20):
        item = ds[i]
        assert item["pixel_values"].shape == (1, 32, 32) and item["pixel_values"].dtype == torch.float32
        assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
        assert item["label"] == ("opacity" if ds.findings[i] else "no finding")
        assert item["prompt"] == f"a chest x-ray, {item['label']}"
        assert item["path"] == f"phantom://chest/{i}" and item["patient_id"] == str(i)
        assert ds.mask(i).any() == bool(ds.findings[i])
    again = PhantomDataset(20, size=32, seed=0)
    assert torch.equal(again[7]["pixel_values"], ds[7]["pixel_values"])
    sub = ds.select([3, 5])
    assert [sub[k]["path"] for k in range(2)] == ["phantom://chest/3", "phantom://chest/5"]
    assert torch.equal(sub[1]["pixel_values"], ds[5]["pixel_values"])
    jitter = PhantomDataset(3, size=32, seed=0, transform=ImageTransform(32, affine=True))
    assert jitter[0]["pixel_values"].shape == (1, 32, 32)
    assert not torch.allclose(jitter[0]["pixel_values"], ds[0]["pixel_values"])
    ct = PhantomDataset(2, size=32, kind="ct", finding_probability=1.0)
    assert ct[0]["label"] == "opacity" and ct[0]["path"] == "phantom://ct/0" and "ct" in ct[0]["prompt"]
