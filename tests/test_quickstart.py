"""`medsd quickstart` end to end at a reduced size (the full size runs in about 5 minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from medsd.cli import main


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    args = [
        "quickstart",
        "--output_dir",
        str(out),
        "--max_train_steps",
        "30",
        "--num_images",
        "64",
        "--num_samples",
        "16",
        "--resolution",
        "16",
        "--train_batch_size",
        "8",
        "--num_inference_steps",
        "5",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "samples_grid.png") in printed and "Fréchet" in printed
    grid = Image.open(out / "samples_grid.png")
    assert grid.mode == "L" and grid.size == (8 * 16, 2 * 16)
    report = json.loads((out / "eval" / "report.json").read_text())
    fd = report["distribution"]["radiomics"]["frechet_distance_all"]
    assert fd == fd and fd >= 0  # finite, non-negative
    # the size-aware degenerate rule does not flag the real held-out phantoms at the evaluated size
    assert report["degenerate"]["real_fraction"] <= 0.05
    assert report["sets"]["fake"]["n_images"] == 16
    assert (out / "pipeline" / "loss_curve.png").is_file()
    summary = json.loads((out / "pipeline" / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["loss_history"][-1][1] < summary["loss_history"][0][1]

    # a second run into the same folder is refused, not silently overwritten
    assert main(args) == 2
    assert "overwrite_output_dir" in capsys.readouterr().err
