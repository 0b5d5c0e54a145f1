"""diffusers' example flags accepted by medsd's recipes, and the metadata.jsonl imagefolder layout."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from medsd.training.config import parse_config
from medsd.training.ddpm import DDPMTrainConfig
from medsd.training.sd_lora import SDLoRATrainConfig
from medsd.training.sd_lora_config import resolve_data_args


def test_ddpm_takes_train_unconditional_flags(tmp_path):
    cfg = parse_config(DDPMTrainConfig, [
        "--train_data_dir", str(tmp_path), "--ddpm_num_steps", "500", "--ddpm_beta_schedule", "squaredcos_cap_v2",
        "--num_epochs", "2", "--logger", "none", "--center_crop", "false",
    ])  # fmt: skip
    assert cfg.train_data == str(tmp_path) and cfg.num_train_timesteps == 500
    assert cfg.beta_schedule == "squaredcos_cap_v2" and cfg.report_to == "none" and cfg.crop == "random"
    assert parse_config(DDPMTrainConfig, ["--dataset_name", "me/cxr"]).train_data == "hf:me/cxr"


def test_ddpm_num_epochs_sets_the_run_steps_and_leaves_the_config_unchanged(tmp_path):
    import copy

    import yaml

    from medsd.training.ddpm import DDPMTask, train_ddpm

    cfg = DDPMTrainConfig(phantom_count=10, split="all", resolution=16, train_batch_size=4, num_epochs=3)
    task = DDPMTask(cfg)
    n = len(task.dataset)  # all 10 phantoms
    assert n > 4 and n % 4 and task.config.max_train_steps == 3 * -(-n // 4)  # 3 x whole steps per epoch
    assert cfg.max_train_steps == 1000  # the config given is never changed

    cfg = DDPMTrainConfig(
        output_dir=str(tmp_path / "run"), phantom_count=10, split="all", resolution=16, train_batch_size=4, num_epochs=2,
        checkpointing_steps=0, validation_steps=0, report_to="none", progress_bar=False, mixed_precision="no",
    )  # fmt: skip
    before = copy.deepcopy(cfg)
    result = train_ddpm(cfg)
    assert cfg == before  # training did not touch the config object
    assert result.global_step == 2 * -(-n // 4) != cfg.max_train_steps
    saved = yaml.safe_load((result.output_dir / "training_config.yaml").read_text())
    assert saved["num_epochs"] == 2 and saved["max_train_steps"] == result.global_step
    # the saved YAML gives the same run again
    again = parse_config(DDPMTrainConfig, ["--config", str(result.output_dir / "training_config.yaml")])
    assert DDPMTask(again).config.max_train_steps == result.global_step


def test_sd_takes_train_text_to_image_lora_flags():
    cfg = parse_config(SDLoRATrainConfig, [
        "--center_crop", "--enable_xformers_memory_efficient_attention", "--num_train_epochs", "2",
        "--validation_epochs", "1", "--hub_token", "hf_x",
    ])  # fmt: skip
    assert cfg.crop == "center" and cfg.enable_xformers_memory_efficient_attention
    assert cfg.num_train_epochs == 2 and cfg.validation_epochs == 1 and cfg.hub_token == "hf_x"


def test_data_flags_are_the_data_config_fields_and_old_names_alias_them():
    import dataclasses

    from medsd.data import DataConfig
    from medsd.training.cddpm import CDDPMTrainConfig
    from medsd.training.config import settable_fields

    derived = {"source", "path", "data_dir", "phantom_kind"}  # what --train_data names
    for cls in (DDPMTrainConfig, CDDPMTrainConfig, SDLoRATrainConfig):
        flags = {f.name for f in settable_fields(cls)}
        assert {f.name for f in dataclasses.fields(DataConfig)} - derived <= flags, cls
        assert not derived & flags
    old = parse_config(DDPMTrainConfig, [
        "--data_split", "all", "--random_flip", "--affine_jitter", "true", "--max_train_samples", "5",
        "--window_low", "-1000", "--window_high", "400", "--train_data", "phantom-ct",
    ])  # fmt: skip
    new = parse_config(DDPMTrainConfig, [
        "--split", "all", "--hflip", "--affine", "true", "--max_samples", "5", "--window=-1000,400",
        "--train_data", "phantom-ct",
    ])  # fmt: skip
    assert old == new and not hasattr(old, "random_flip") and old.window == (-1000.0, 400.0)
    d = new.data_config()
    assert type(d) is DataConfig and (d.source, d.phantom_kind, d.split, d.hflip) == (
        "phantom",
        "ct",
        "all",
        True,
    )
    assert (d.affine, d.max_samples, d.phantom_count) == (True, 5, 512)
    # a DataConfig field is carried through by name, with no second list to edit
    assert {k: getattr(new, k) for k in d.to_dict()} == d.to_dict()


def test_metadata_jsonl_imagefolder_with_caption_column(tmp_path):
    from medsd.data import build_dataset
    from medsd.training.data_args import data_config

    rows = []
    for i in range(3):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a chest x-ray, case {i}"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = parse_config(
        SDLoRATrainConfig,
        ["--train_data_dir", str(tmp_path), "--caption_column", "text", "--resolution", "16"],
    )
    args = resolve_data_args(cfg)
    assert args.image_column == "image" and args.caption_column == "text"
    ds, _ = build_dataset(data_config(args))
    prompts = sorted(ds[i]["prompt"] for i in range(len(ds)))
    assert prompts == [r["text"] for r in rows] and tuple(ds[0]["pixel_values"].shape) == (1, 16, 16)
