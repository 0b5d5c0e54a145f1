"""diffusers' example flags accepted by medsd's recipes, and the metadata.jsonl imagefolder layout."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from medsd.training.config import parse_config
from medsd.training.ddpm import DDPMTrainConfig
from medsd.training.sd_lora import SDLoRATrainConfig, resolve_data_args


def test_ddpm_takes_train_unconditional_flags(tmp_path):
    cfg = parse_config(DDPMTrainConfig, [
        "--train_data_dir", str(tmp_path), "--ddpm_num_steps", "500", "--ddpm_beta_schedule", "squaredcos_cap_v2",
        "--num_epochs", "2", "--logger", "none", "--center_crop", "false",
    ])  # fmt: skip
    assert cfg.train_data == str(tmp_path) and cfg.num_train_timesteps == 500
    assert cfg.beta_schedule == "squaredcos_cap_v2" and cfg.report_to == "none" and cfg.crop == "random"
    assert parse_config(DDPMTrainConfig, ["--dataset_name", "me/cxr"]).train_data == "hf:me/cxr"


def test_ddpm_num_epochs_sets_steps():
    from medsd.training.ddpm import DDPMTask

    cfg = DDPMTrainConfig(phantom_count=10, resolution=16, train_batch_size=4, num_epochs=3)
    n = len(DDPMTask(cfg).dataset)  # the training split of the 10 phantoms
    assert n > 4 and cfg.max_train_steps == -(-3 * n // 4)  # ceil(3 epochs * n / batch 4)


def test_sd_takes_train_text_to_image_lora_flags():
    cfg = parse_config(SDLoRATrainConfig, [
        "--center_crop", "--enable_xformers_memory_efficient_attention", "--num_train_epochs", "2",
        "--validation_epochs", "1", "--hub_token", "hf_x",
    ])  # fmt: skip
    assert cfg.crop == "center" and cfg.enable_xformers_memory_efficient_attention
    assert cfg.num_train_epochs == 2 and cfg.validation_epochs == 1 and cfg.hub_token == "hf_x"


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
