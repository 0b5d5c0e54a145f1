"""`medsd tstr` end to end at a tiny size on a labelled phantom CSV with patient ids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medsd.cli import main


@pytest.mark.slow
def test_tstr_end_to_end(tmp_path, capsys):
    from medsd.data import Finding, chest_phantom

    rows = []
    for i in range(40):
        label = "Pneumonia" if i % 2 else "No Finding"
        findings = [Finding("opacity", "left", "lower", 0.15)] if label == "Pneumonia" else []
        x = chest_phantom(32, seed=i, findings=findings)
        name = f"img_{i:03d}.png"
        Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)).save(tmp_path / name)
        rows.append({"filename": name, "label": label, "patient_id": f"p{i // 2}"})
    rows.append(
        {"filename": "img_000.png", "label": "Other", "patient_id": "p0"}
    )  # other labels are left out
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "tstr"
    args = ["tstr", "--train_data", str(tmp_path / "metadata.csv"), "--out", str(out), "--resolution", "16"]
    args += ["--max_train_steps", "2", "--train_batch_size", "4", "--num_synthetic", "6"]
    args += ["--num_inference_steps", "2", "--classifier_epochs", "1", "--bootstrap", "20"]
    assert main(args) == 0
    rep = json.loads((out / "tstr.json").read_text())
    assert rep["classes"] == ["No Finding", "Pneumonia"]
    assert rep["patients"]["shared"] == 0 and rep["patients"]["test"] > 0
    res = rep["downstream"]["results"]
    assert set(res) == {"real", "synthetic", "real+synthetic"}
    assert res["synthetic"]["n_train"] == 12
    assert res["real+synthetic"]["n_train"] == res["real"]["n_train"] + 12
    for v in res.values():
        assert 0 <= v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1] <= 1
    n_real = sum(c["real_train"] for c in rep["per_class"].values())
    assert (
        n_real == res["real"]["n_train"]
        and n_real + sum(c["real_test"] for c in rep["per_class"].values()) < 40
    )
    assert "| real+synthetic |" in (out / "tstr.md").read_text()
    assert (out / "tstr_synthetic_samples.png").is_file()
    assert (out / "ddpm_pneumonia" / "unet" / "config.json").is_file()
    # a second run into the same folder is refused
    assert main(args) == 2
