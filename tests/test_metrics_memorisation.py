"""Memorisation audit: every kind of transformed copy is caught and named, new images are not, patients are
counted, the self-test can fail the audit and planted copies never reach its counts."""

import json

import numpy as np
import pytest

import medsd.data.phantoms as phantoms
from medsd.metrics import PerceptualHash, RegisteredNCC, memorisation_audit, nearest_by_ncc, transform_copies
from medsd.metrics.memorisation import strip_arrays
from medsd.metrics.planting import PLANT_KINDS, plant_copies

S = 64
PER_KIND = 3
OPTS = dict(quantile=0.017, planted_per_kind=4, size=S, seed=0)


def _phantoms(seeds):
    return np.stack([phantoms.chest_phantom(S, seed=s) for s in seeds]).astype(np.float32)


@pytest.fixture(scope="module")
def sets():
    train = _phantoms(range(60))
    patients = [f"p{i // 2}" for i in range(60)]  # two images per patient
    heldout = _phantoms(range(1000, 1060))
    fresh = _phantoms(range(2000, 2012))
    copies, sources, kinds = [], [], []
    for j, kind in enumerate(PLANT_KINDS):
        src = np.arange(PER_KIND) * 7 + j  # distinct images per kind
        copies.append(transform_copies(train[src], kind, seed=j))
        sources += src.tolist()
        kinds += [kind] * PER_KIND
    generated = np.concatenate([fresh, *copies])
    audit = memorisation_audit(generated, train, heldout, train_patients=patients, **OPTS)
    return dict(train=train, patients=patients, fresh=len(fresh), sources=sources, kinds=kinds,
                generated=generated, audit=audit)  # fmt: skip


@pytest.mark.parametrize("kind", list(PLANT_KINDS))
def test_every_kind_of_transformed_copy_is_flagged_with_its_training_image(sets, kind):
    flagged = {c["generated_index"]: c for c in sets["audit"]["copies"]}
    for k, (src, kd) in enumerate(zip(sets["sources"], sets["kinds"], strict=True)):
        if kd != kind:
            continue
        g = sets["fresh"] + k
        assert g in flagged, f"{kind} copy of training image {src} not flagged"
        assert flagged[g]["train_index"] == src and flagged[g]["train_patient"] == sets["patients"][src]


def test_new_images_are_rarely_flagged_and_the_audit_is_valid(sets):
    # phantoms differ little from one another: at the 1.7% held-out quantile about that share of new ones
    a = sets["audit"]
    assert a["valid"], a["problems"]
    false_alarms = [c for c in a["copies"] if c["generated_index"] < sets["fresh"]]
    assert len(false_alarms) <= 1
    assert a["n_copies"] == len(sets["kinds"]) + len(false_alarms)
    assert a["calibration"]["false_alarm_rate"] <= 0.05
    assert set(a["calibration"]["thresholds"]) == {"registered_ncc", "dct_phash"}
    assert a["dcr"]["generated"]["registered_ncc"]["min"] == pytest.approx(0.0, abs=1e-3)
    assert a["nndr"]["heldout"]["registered_ncc"]["median"] > a["nndr"]["generated"]["registered_ncc"]["min"]
    json.dumps(strip_arrays(a))


def test_patients_are_counted(sets):
    a = sets["audit"]
    false_alarms = {c["train_patient"] for c in a["copies"] if c["generated_index"] < sets["fresh"]}
    patients = {sets["patients"][s] for s in sets["sources"]} | false_alarms
    assert a["n_train_patients"] == 30
    assert a["n_train_patients_with_copy"] == len(patients)
    assert a["n_train_images_copied"] >= len(set(sets["sources"]))


def test_planted_copies_never_reach_the_counts(sets):
    a = sets["audit"]
    st = a["self_test"]
    assert set(st["kinds"]) == set(PLANT_KINDS) and st["passed"]
    assert all(v["n"] == OPTS["planted_per_kind"] for v in st["kinds"].values())
    assert all(c["generated_index"] < len(sets["generated"]) for c in a["copies"])
    assert a["settings"]["n_generated"] == len(sets["generated"])
    # the same search with one planted copy instead of 44 finds the same copies
    one = memorisation_audit(sets["generated"], sets["train"], _phantoms(range(1000, 1060)),
                             train_patients=sets["patients"], **{**OPTS, "planted_per_kind": 1}, kinds=("exact",))  # fmt: skip
    assert (
        one["copies"] == a["copies"] and one["n_train_patients_with_copy"] == a["n_train_patients_with_copy"]
    )


def test_a_detector_that_misses_copies_makes_the_audit_invalid(sets):
    blind = [RegisteredNCC(size=S, rotations=(0.0,), zooms=(1.0,), max_shift=0.0, coarse_shift=0.0,
                           coarse_zooms=(1.0,), blur=0.5, highpass=2.5), PerceptualHash()]  # fmt: skip
    a = memorisation_audit(sets["generated"][:4], sets["train"], _phantoms(range(1000, 1060)),
                           detectors=blind, kinds=("exact", "shift", "rotate"), **OPTS)  # fmt: skip
    assert not a["valid"] and any("self-test" in p and "shift" in p for p in a["problems"])
    assert a["self_test"]["kinds"]["exact"]["recall"] == 1.0


def test_too_few_or_overlapping_heldout_images_are_said(sets):
    a = memorisation_audit(sets["generated"][:3], sets["train"], sets["train"][:10], train_patients=sets["patients"],
                           heldout_patients=sets["patients"][:10], kinds=("exact",), **OPTS)  # fmt: skip
    assert not a["valid"] and any("too few" in p for p in a["problems"])
    assert any("share a patient" in n for n in a["notes"])


def test_planting_is_seeded_and_changes_images():
    train = _phantoms(range(8))
    a, kinds, src = plant_copies(train, ["hflip", "noise"], 3, seed=1)
    b, _, src_b = plant_copies(train, ["hflip", "noise"], 3, seed=1)
    assert np.array_equal(a, b) and np.array_equal(src, src_b) and kinds == ["hflip"] * 3 + ["noise"] * 3
    assert np.allclose(a[0], train[src[0]][:, ::-1])
    with pytest.raises(ValueError, match="unknown planted-copy kind"):
        transform_copies(train, "smudge")


def test_plain_ncc_neighbours():
    train = _phantoms(range(5))
    sim, idx = nearest_by_ncc(train[:3], train, top_k=2)
    assert idx[:, 0].tolist() == [0, 1, 2] and np.allclose(sim[:, 0], 1.0)
