"""The headline metrics cannot be fooled: images that are not chest radiographs of these patients land far outside
the real-vs-real band, and real images of other patients land inside it.

On the NIH development images at 64 px, against the held-out patients: samples of a deliberately under-trained DDPM
(clouds), chest phantoms, blurred and intensity-changed real images of other patients. The band is what real images
of other patients score at the same sample size (C2ST: disjoint random real subsets; FD, precision, recall: the
report's same-size real reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from medsd.metrics.c2st import c2st_floor, classifier_two_sample_test
from medsd.metrics.distribution import distribution_metrics
from medsd.metrics.features import get_extractor
from medsd.metrics.io import load_image_set

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr14" / "metadata.csv"
SIZE, N = 64, 64
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not NIH.is_file(), reason=f"needs the NIH development images ({NIH})"),
]


def _clouds(tmp_path: Path) -> np.ndarray:
    """Samples of a light DDPM trained for 30 steps: soft grey fields, as an under-trained model draws."""
    import torch

    from medsd.pipelines.ddpm import MedDDPMPipeline
    from medsd.training.ddpm import DDPMTrainConfig, train_ddpm

    config = DDPMTrainConfig(
        train_data=str(NIH),
        patient_column="patient_id",
        max_samples=64,
        model="light-tiny",
        resolution=SIZE,
        max_train_steps=30,
        train_batch_size=8,
        output_dir=str(tmp_path / "clouds"),
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        progress_bar=False,
        mixed_precision="no",
    )
    train_ddpm(config)
    pipe = MedDDPMPipeline.from_pretrained(tmp_path / "clouds")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        batch_size=N, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return np.asarray(out.images, np.float32).reshape(N, SIZE, SIZE)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, np.ndarray]:
    held = load_image_set(NIH, SIZE, split="heldout").images
    rng = np.random.default_rng(1)
    train = load_image_set(NIH, SIZE, split="train", max_images=300).images
    other = train[rng.choice(len(train), N, replace=False)]
    return {
        "held_out": held,
        "other_patients": other,
        "clouds": _clouds(tmp_path_factory.mktemp("guard")),
        "phantoms": load_image_set("phantom", SIZE, max_images=N).images,
        "blurred": np.stack([gaussian_filter(x, 1.5) for x in other]),
        "lower_contrast": 0.5 + 0.8 * (other - 0.5),
        "gamma": other**0.7,
    }


@pytest.fixture(scope="module")
def scores(sets) -> dict[str, dict]:
    held = sets["held_out"]
    extractor = get_extractor("radiomics", size=SIZE)
    real_feats = extractor(held)
    out = {"floor": c2st_floor(held, N, draws=2)}
    for name, images in sets.items():
        if name == "held_out":
            continue
        d = distribution_metrics(real_feats, extractor(images), scaling=extractor.scaling, reference_draws=5)
        ref = d["real_reference"]
        out[name] = {
            "c2st": classifier_two_sample_test(held, images, n=N),
            "fake": {k: ref["fake_vs_real"][k]["mean"] for k in ("frechet_distance", "precision", "recall")},
            "band": {k: ref["real_vs_real"][k] for k in ("frechet_distance", "precision", "recall")},
        }
    return out


def _sigmas(score: dict, metric: str) -> float:
    """How many real-vs-real standard deviations the fake row is from the real-vs-real mean."""
    band = score["band"][metric]
    return (score["fake"][metric] - band["mean"]) / max(band["std"], 1e-3)


def test_real_images_of_other_patients_sit_inside_the_band(scores):
    s, floor = scores["other_patients"], scores["floor"]["accuracy"]
    assert s["c2st"]["accuracy_ci95"][0] < 0.5 < s["c2st"]["accuracy_ci95"][1] + 0.02
    assert abs(s["c2st"]["accuracy"] - floor["mean"]) < 0.1
    for metric in ("frechet_distance", "precision", "recall"):
        assert abs(_sigmas(s, metric)) < 3, metric


@pytest.mark.parametrize("kind", ["clouds", "phantoms"])
def test_not_a_chest_radiograph_is_far_outside_on_every_headline_metric(scores, kind):
    s, floor = scores[kind], scores["floor"]["accuracy"]
    assert s["c2st"]["accuracy"] > 0.9 and s["c2st"]["accuracy_ci95"][0] > floor["max"] + 0.2
    assert s["fake"]["frechet_distance"] > 10 * s["band"]["frechet_distance"]["mean"]
    assert _sigmas(s, "precision") < -5 and _sigmas(s, "recall") < -5


@pytest.mark.parametrize("kind", ["blurred", "lower_contrast", "gamma"])
def test_changed_real_images_are_caught_by_the_c2st_and_the_distance(scores, kind):
    """A blur of 1.5 px or a moderate intensity change of real images of other patients: the C2ST says they
    differ (its whole interval above the floor) and FD is at least 5 real-vs-real deviations out."""
    s, floor = scores[kind], scores["floor"]["accuracy"]
    assert s["c2st"]["accuracy_ci95"][0] > floor["max"]
    assert _sigmas(s, "frechet_distance") > 5


@pytest.mark.parametrize("kind", ["blurred", "lower_contrast"])
def test_blur_and_lost_contrast_also_leave_the_manifold(scores, kind):
    """Precision and recall see texture and contrast; a pure gamma change keeps images near real ones in feature
    space (precision inside the band), which is why the headline reports the C2ST and FD beside them."""
    s = scores[kind]
    assert min(_sigmas(s, "precision"), _sigmas(s, "recall")) < -3
