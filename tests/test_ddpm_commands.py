"""`medsd ablation` and `medsd xray-table` end to end at a tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsd.cli import main


@pytest.mark.slow
def test_ablation_trains_the_four_variants_from_one_switch(tmp_path, capsys):
    out = tmp_path / "abl"
    code = main(
        [
            "ablation",
            "--out",
            str(out),
            "--resolution",
            "16",
            "--max_train_steps",
            "3",
            "--train_batch_size",
            "4",
            "--num_samples",
            "8",
            "--num_inference_steps",
            "3",
        ]
    )
    assert code == 0
    report = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"no_skips", "once", "encoder", "every_block"}
    # the switches change the network: no skips means narrower decoder convolutions
    assert rows["no_skips"]["parameters"] < rows["every_block"]["parameters"]
    assert rows["once"]["parameters"] != rows["encoder"]["parameters"]
    for r in rows.values():
        assert (
            np.isfinite(r["radiomics_fd_all"])
            and 0 <= r["degenerate"] <= 8
            and r["train_seconds_per_step"] > 0
        )
    saved = json.loads((out / "once" / "unet" / "config.json").read_text())
    assert saved["time_embedding"] == "once" and saved["skip_connections"] is True
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") == 6  # header, separator, 4 variants
    assert (
        Image.open(out / "ablation_samples.png").height > Image.open(out / "ablation_samples.png").width / 4
    )


@pytest.mark.slow
def test_ablation_ddpm_sampler_two_seeds_and_config(tmp_path, capsys):
    out = tmp_path / "abl2"
    cfg = tmp_path / "abl.yaml"
    cfg.write_text("resolution: 16\nmax_train_steps: 2\ntrain_batch_size: 4\nnum_samples: 8\nsampler: ddpm\n")
    code = main(
        [
            "ablation",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--variants",
            "once,every_block",
            "--seeds",
            "2",
        ]
        + ["--num_inference_steps", "4"]
    )
    assert code == 0
    report = json.loads((out / "ablation.json").read_text())
    assert report["settings"]["resolution"] == 16 and report["settings"]["sampler"] == "ddpm"
    assert [(r["variant"], r["seed"]) for r in report["rows"]] == [
        ("once", 0),
        ("once", 1),
        ("every_block", 0),
        ("every_block", 1),
    ]
    assert all(r["sampler"] == "ddpm" and r["num_inference_steps"] == 4 for r in report["rows"])
    assert (out / "once" / "seed_1" / "unet" / "config.json").is_file()
    summ = {r["variant"]: r for r in report["summary"]}
    vals = [r["radiomics_fd_all"] for r in report["rows"] if r["variant"] == "once"]
    assert summ["once"]["radiomics_fd_all"]["mean"] == pytest.approx(np.mean(vals))
    assert summ["once"]["radiomics_fd_all"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert "±" in (out / "ablation.md").read_text()
    # the paper-setting config parses and names the paper's model and size
    import yaml

    paper = yaml.safe_load(open("recipes/configs/ablation_nguyen_light_ct.yaml"))
    assert paper["model"] == "light-ct" and paper["resolution"] == 236 and paper["sampler"] == "ddpm"
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolutoin: 16\n")
    capsys.readouterr()
    assert main(["ablation", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "unknown field 'resolutoin' (did you mean 'resolution'?)" in capsys.readouterr().err


def test_xray_table_orders_classes(tmp_path, capsys):
    """Synthetic 'opacity' phantoms are closer to real opacity phantoms than to a different anatomy."""
    from medsd.data import Finding, chest_phantom, ct_phantom

    fake = tmp_path / "fake"
    real = tmp_path / "real"
    fake.mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(
            (
                chest_phantom(32, seed=100 + i, findings=[Finding("opacity", "left", "lower", 0.1)]) * 255
            ).astype(np.uint8)
        ).save(fake / f"f{i}.png")
    real.mkdir()
    for i in range(12):
        for label, img in (("chest", chest_phantom(32, seed=i)), ("ct", ct_phantom(32, seed=i))):
            name = f"{label}{i}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(real / name)
            rows.append(f"{name},{label}")
    (real / "metadata.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    code = main(
        [
            "xray-table",
            "--fake",
            f"opacity={fake}",
            "--real",
            str(real / "metadata.csv"),
            "--classes",
            "chest,ct",
            "--size",
            "32",
            "--num_images",
            "12",
            "--max_pairs",
            "60",
            "--out",
            str(tmp_path / "tab"),
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "tab" / "xray_table.json").read_text())["rows"]
    get = {(r["set"], r["versus"]): r for r in rows}
    near, far = get[("synthetic opacity", "real chest")], get[("synthetic opacity", "real ct")]
    assert near["mse"] < far["mse"] and near["ssim"] > far["ssim"]
    assert ("real chest", "real chest") in get  # the real-vs-real baseline row
