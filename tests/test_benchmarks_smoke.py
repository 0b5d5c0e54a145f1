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
