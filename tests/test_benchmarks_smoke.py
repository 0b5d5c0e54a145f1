"""CI smoke run of benchmarks/compare.py at tiny sizes: every workload runs and reports finite figures.

No timing is asserted (speed goals are ratios measured by the benchmark itself, docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("medsd_bench_compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    compare = _load_compare()
    out = tmp_path_factory.mktemp("bench")
    assert (
        compare.main(
            [
                "--device",
                "cpu",
                "--smoke",
                "--data",
                "phantom",
                "--medsd_precision",
                "bf16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return compare, json.loads((out / "compare.json").read_text()), (out / "compare.md").read_text()


def test_every_workload_has_finite_figures_and_a_ratio(smoke_report):
    compare, report, table = smoke_report
    results = {r["workload"]: r for r in report["results"]}
    assert set(results) == set(compare.WORKLOADS)
    for name, r in results.items():
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, name
        for side in ("stock", "medsd"):
            s = r[side]
            for key in ("img_s", "peak_mem_gib", "mfu", "busy"):
                assert math.isfinite(s[key]) and s[key] > 0, (name, side, key, s[key])
            assert s["precision"] in ("no", "bf16", "fp16")
        assert name in table


def test_training_workloads_report_losses_of_both_sides(smoke_report):
    _, report, _ = smoke_report
    for r in report["results"]:
        if r["workload"] in ("ddpm_unet2d", "ddpm_light", "cddpm", "sd_lora"):
            for side in ("stock", "medsd"):
                s = r[side]
                assert math.isfinite(s["loss"]) and 0 < s["loss"] < 10, (r["workload"], side)
                assert math.isfinite(s["ms_step"]) and s["steps_timed"] >= 1
            assert math.isfinite(r["loss_diff"])


def test_report_records_environment_and_matmul_peaks(smoke_report):
    _, report, _ = smoke_report
    assert report["environment"]["torch"]
    assert report["data"] == "phantom"
    assert all(v > 0 for v in report["matmul_peak_tflops"].values())


def test_time_to_quality_prepares_samples_and_scores_every_checkpoint(tmp_path):
    """benchmarks/time_to_quality.py on a tiny phantom CSV: the medsd side's checkpoints and its final model are
    sampled and scored by medsd eval against the held-out patients (C2ST, FD with floor, recall)."""
    import csv

    from PIL import Image

    from medsd.data.phantoms import chest_phantom

    spec = importlib.util.spec_from_file_location(
        "medsd_bench_ttq", ROOT / "benchmarks" / "time_to_quality.py"
    )
    ttq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttq)
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label", "patient_id"])
        for i in range(60):
            img = (chest_phantom(64, seed=i) * 255).astype("uint8")
            Image.fromarray(img).save(data / f"p{i}.png")
            w.writerow([f"p{i}.png", "No Finding", f"pat{i // 2}"])
    out = tmp_path / "ttq"
    common = ["--out", str(out), "--data", str(data / "metadata.csv")]
    assert ttq.main(["prepare", *common]) == 0
    assert len(list((out / "stock_train_images").iterdir())) > 30
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"train_data: {data / 'metadata.csv'}\npatient_column: patient_id\nmodel: light-tiny\nresolution: 64\n"
        "max_train_steps: 3\ntrain_batch_size: 4\ncheckpointing_steps: 2\ncheckpoints_total_limit: null\n"
        "validation_steps: 0\nreport_to: none\nprogress_bar: false\n"
    )
    assert ttq.main(["medsd", *common, "--config", str(config)]) == 0
    assert json.loads((out / "medsd_start.json").read_text())["start"] > 0
    assert ttq.main(["sample", *common, "--side", "medsd", "--n", "8"]) == 0
    assert sorted(p.name for p in (out / "samples" / "medsd").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert ttq.main(["score", *common, "--side", "medsd"]) == 0
    rows = json.loads((out / "scores.json").read_text())
    assert [r["step"] for r in rows] == [2, 3]
    assert rows[0]["minutes"] <= rows[1]["minutes"]
    for r in rows:
        assert 0 <= r["c2st_accuracy"] <= 1 and r["c2st_floor"] is not None
        assert r["fd"] is None or (math.isfinite(r["fd"]) and math.isfinite(r["fd_floor"]))
