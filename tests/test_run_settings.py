"""Settings users tripped over: data paths that survive a change of folder, honest help, uncapped audits."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from medsd.cli import main
from medsd.training.config import config_from_dict, load_yaml
from medsd.training.ddpm import DDPMTrainConfig


def _png_folder(folder, n=8, size=24):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_training_config_keeps_an_absolute_data_path(tmp_path, monkeypatch):
    """A resume (or a re-run of training_config.yaml) from another folder must still find the data."""
    monkeypatch.chdir(tmp_path)
    _png_folder(tmp_path / "data")
    argv = ["train", "ddpm", "--train_data", "data", "--model", "light-tiny", "--resolution", "16"]
    argv += [
        "--max_train_steps",
        "1",
        "--train_batch_size",
        "2",
        "--output_dir",
        "run",
        "--report_to",
        "none",
    ]
    argv += ["--progress_bar", "false", "--validation_steps", "0", "--num_validation_images", "1"]
    argv += ["--validation_inference_steps", "1", "--mixed_precision", "no"]
    assert main(argv) == 0
    saved = yaml.safe_load((tmp_path / "run" / "training_config.yaml").read_text())
    assert saved["train_data"] == str(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = config_from_dict(DDPMTrainConfig, load_yaml(tmp_path / "run" / "training_config.yaml"))
    from medsd.training.data_args import build_training_data

    dataset, _ = build_training_data(config, cache=False)
    assert len(dataset) > 0


def test_a_source_that_is_not_a_path_is_kept_as_written():
    assert DDPMTrainConfig(train_data="phantom").train_data == "phantom"


def test_mixed_precision_help_says_what_auto_does_on_a_cpu(capsys):
    with pytest.raises(SystemExit):
        main(["train", "ddpm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "CPU: bf16 where it has native bf16" in text
    assert "--max_train_minutes" in text


def test_eval_max_images_caps_real_and_fake_but_audits_every_training_image(tmp_path):
    from medsd.metrics.evaluate import EvalConfig, evaluate

    real = _png_folder(tmp_path / "real", n=12)
    fake = _png_folder(tmp_path / "fake", n=12)
    train = _png_folder(tmp_path / "train", n=20)
    cfg = EvalConfig(
        real=str(real),
        fake=str(fake),
        train=str(train),
        out=str(tmp_path / "out"),
        size=32,
        max_images=6,
        c2st=False,
        reference_draws=0,
        kid_subsets=2,
        diversity_pairs=4,
        image_figures=False,
        progress=False,
    )
    report, _ = evaluate(cfg, log=lambda s: None)
    assert report["sets"]["real"]["n_images"] == 6 and report["sets"]["fake"]["n_images"] == 6
    assert report["sets"]["train"]["n_images"] == 20
    capped, _ = evaluate(
        EvalConfig(**{**cfg.__dict__, "max_train_images": 5, "out": str(tmp_path / "o2")}), log=lambda s: None
    )
    assert capped["sets"]["train"]["n_images"] == 5
