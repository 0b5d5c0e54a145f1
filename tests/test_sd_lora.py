"""Stable Diffusion text-to-X-ray LoRA fine-tuning on a tiny in-code SD pipeline (offline, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sd_fixtures
import torch
from safetensors.torch import load_file
from sd_fixtures import TINY_RESOLUTION, quick_config, reset_accelerate, run_training

from medsd.training.config import parse_config
from medsd.training.sd_lora import SDLoRATrainConfig, to_vae_input
from medsd.training.sd_lora_config import resolve_data_args
from medsd.training.sd_lora_data import SDTensorDataset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "finetune_sd_xray.py"
NIH = Path(os.environ.get("MEDSD_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih_cxr14"
LORA_FILE = "pytorch_lora_weights.safetensors"

# pytest fixtures shared with test_med_pipeline.py
single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base
trained_lora = sd_fixtures.trained_lora


def _launch(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        str(RECIPE),
        *args,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _lora_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / LORA_FILE))


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


# -- configuration -------------------------------------------------------------------------------------
def test_flags_follow_diffusers_names(tmp_path):
    cfg = parse_config(
        SDLoRATrainConfig,
        [
            "--pretrained_model_name_or_path", "some/base",
            "--train_data_dir", "phantom",
            "--resolution", "256",
            "--rank", "8",
            "--target_modules", "to_q,to_v",
            "--prompt_template", "a chest x-ray, {label}",
            "--validation_prompt", "a chest x-ray, pneumonia|a chest x-ray, no finding",
            "--train_text_encoder",
            "--snr_gamma", "5",
            "--checkpoints_total_limit", "2",
            "--resume_from_checkpoint", "latest",
        ],
    )  # fmt: skip
    assert (cfg.resolution, cfg.rank, cfg.target_modules) == (256, 8, ["to_q", "to_v"])
    assert cfg.train_text_encoder is True and cfg.snr_gamma == 5.0
    assert cfg.hflip is False and cfg.crop == "center"
    assert cfg.resolved_train_data() == "phantom"
    # defaults: U-Net attention projections, 512 px
    default = SDLoRATrainConfig()
    assert default.target_modules == ["to_k", "to_q", "to_v", "to_out.0"] and default.resolution == 512


def test_imagefolder_metadata_columns_are_detected(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,a chest x-ray\n")
    args = resolve_data_args(SDLoRATrainConfig(train_data_dir=str(tmp_path)))
    assert args.train_data == str(tmp_path / "metadata.csv")
    assert (args.image_column, args.caption_column) == ("file_name", "text")

    (tmp_path / "metadata.csv").write_text("filename,label\na.png,pneumonia\n")
    with pytest.raises(ValueError, match="prompt_template"):
        resolve_data_args(SDLoRATrainConfig(train_data_dir=str(tmp_path)))
    args = resolve_data_args(
        SDLoRATrainConfig(
            train_data_dir=str(tmp_path), label_column="label", prompt_template="a chest x-ray, {label}"
        )
    )
    assert (args.image_column, args.caption_column, args.label_column) == ("filename", None, "label")
    with pytest.raises(FileNotFoundError):
        SDLoRATrainConfig(train_data_dir=str(tmp_path / "nope")).resolved_train_data()


def test_grayscale_is_replicated_for_the_vae():
    x = torch.rand(2, 1, 8, 8)
    y = to_vae_input(x)
    assert y.shape == (2, 3, 8, 8) and torch.equal(y[:, 0], y[:, 2])
    with pytest.raises(ValueError):
        to_vae_input(torch.rand(2, 2, 8, 8))


# -- training (in-process through the shared core) ---------------------------------------------------------
def test_saved_lora_is_what_was_trained(trained_lora):
    """The diffusers-format file, loaded by plain diffusers, reproduces the in-memory trained modules
    (alpha != rank and text-encoder LoRA included) and changes the image for a fixed seed."""
    from diffusers import StableDiffusionPipeline

    out, task = trained_lora.output_dir, trained_lora.task
    info = json.loads((out / "medsd_lora.json").read_text())
    assert info["base_model"] == str(trained_lora.base)
    assert (info["lora_rank"], info["lora_alpha"], info["train_text_encoder"]) == (4, 8, True)
    assert info["prompt_template"] == "a chest x-ray, {label}" and info["resolution"] == TINY_RESOLUTION
    assert info["intensity_mapping"] == {"type": "window", "low": 0.0, "high": 1.0}
    assert (out / "README.md").is_file() and (out / "intensity_mapping.json").is_file()
    keys = set(_lora_tensors(out))
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)

    pipe = StableDiffusionPipeline.from_pretrained(trained_lora.base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np")
    base_img = pipe("a chest x-ray, opacity", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(out))
    lora_img = pipe("a chest x-ray, opacity", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert abs(lora_img - base_img).max() > 1e-3

    torch.manual_seed(0)
    sample = torch.randn(1, 4, 16, 16)
    ids = pipe.tokenizer(
        ["a chest x-ray, opacity"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    hidden = torch.randn(1, 77, 32)
    with torch.no_grad():
        task.unet.eval()
        ref = task.unet(sample, 10, hidden).sample
        got = pipe.unet(sample, 10, hidden).sample
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        ref_te = task.text_encoder(ids)[0]
        got_te = pipe.text_encoder(ids)[0]
        torch.testing.assert_close(got_te, ref_te, atol=1e-5, rtol=1e-4)


def test_only_lora_parameters_train(trained_lora):
    task = trained_lora.task
    trainable = [n for n, p in task.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in task.unet.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in task.vae.parameters())
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"to_k", "to_q", "to_v", "0"}  # to_out.0


def test_merged_export_equals_base_plus_lora(trained_lora):
    from diffusers import StableDiffusionPipeline

    merged_dir = trained_lora.output_dir / "merged"
    assert (merged_dir / "model_index.json").is_file()
    merged = StableDiffusionPipeline.from_pretrained(merged_dir, safety_checker=None)
    lora = StableDiffusionPipeline.from_pretrained(trained_lora.base, safety_checker=None)
    lora.load_lora_weights(str(trained_lora.output_dir))
    base = StableDiffusionPipeline.from_pretrained(trained_lora.base, safety_checker=None)
    images = []
    for p in (merged, lora, base):
        p.set_progress_bar_config(disable=True)
        images.append(
            p(
                "a chest x-ray, no finding",
                num_inference_steps=3,
                generator=torch.Generator().manual_seed(1),
                output_type="np",
            ).images
        )
    assert abs(images[0] - images[1]).max() < 2e-3
    assert abs(images[0] - images[2]).max() > 1e-3


def test_resume_restores_lora_optimizer_and_step(tiny_sd_base, tmp_path):
    """Checkpoint rotation keeps the newest ``checkpoints_total_limit``; resuming from 'latest' restores the
    LoRA weights exactly and continues to the same weights as an uninterrupted run."""
    straight = quick_config(tiny_sd_base, tmp_path / "straight", max_train_steps=4, checkpointing_steps=1,
                            checkpoints_total_limit=2)  # fmt: skip
    _, result = run_training(straight)
    assert result.global_step == 4
    assert sorted(p.name for p in (tmp_path / "straight").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    ckpt = tmp_path / "straight" / "checkpoint-4"
    assert (ckpt / LORA_FILE).is_file() and (ckpt / "optimizer.bin").is_file()
    assert not list(ckpt.glob("model*.safetensors")), (
        "checkpoints should hold the LoRA only, not the base U-Net"
    )
    _assert_same_tensors(_lora_tensors(ckpt), _lora_tensors(tmp_path / "straight"))

    part = tmp_path / "part"
    run_training(quick_config(tiny_sd_base, part, max_train_steps=2, checkpointing_steps=2))
    first = _lora_tensors(part / "checkpoint-2")
    # A fresh task (newly initialised LoRA) resumed at its last step: nothing trains, the saved LoRA must be
    # the checkpoint's.
    _, resumed = run_training(
        quick_config(tiny_sd_base, part, max_train_steps=2, resume_from_checkpoint="latest")
    )
    assert resumed.global_step == 2
    _assert_same_tensors(_lora_tensors(part), first)
    assert any(v.abs().max() > 0 for k, v in first.items() if "lora.up" in k or "lora_B" in k)
    # Continue to step 4: same result as the uninterrupted run.
    _, cont = run_training(
        quick_config(
            tiny_sd_base, part, max_train_steps=4, checkpointing_steps=2, resume_from_checkpoint="latest"
        )
    )
    assert cont.global_step == 4 and [s for s, _ in cont.loss_history] == [1, 2, 3, 4]
    _assert_same_tensors(_lora_tensors(part), _lora_tensors(tmp_path / "straight"), atol=1e-6)


@pytest.mark.parametrize("flag,env", [("bf16", None), ("auto", "bf16"), ("bf16", "no")])
def test_mixed_precision_keeps_lora_in_fp32(tiny_sd_base, tmp_path, monkeypatch, flag, env):
    """bf16 from the script flag, from `accelerate launch --mixed_precision` (ACCELERATE_MIXED_PRECISION), or
    both (the explicit flag wins): frozen weights in bf16, trainable LoRA weights in fp32."""
    if env:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    task, result = run_training(
        quick_config(tiny_sd_base, tmp_path / "bf16", max_train_steps=1, mixed_precision=flag)
    )
    assert task.weight_dtype == torch.bfloat16
    assert task.unet.conv_in.weight.dtype == torch.bfloat16
    lora = [p for n, p in task.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_history)
    assert (tmp_path / "bf16" / LORA_FILE).is_file()


def test_cached_latents_and_text_embeddings(tiny_sd_base, tmp_path):
    """With both caches a step runs only the U-Net: the VAE encoder and text encoder are never called after
    the dataset is encoded; also exercises Min-SNR, noise offset and v-prediction."""
    config = quick_config(
        tiny_sd_base,
        tmp_path / "cached",
        cache_latents=True,
        cache_text_embeddings=True,
        snr_gamma=5.0,
        noise_offset=0.05,
        prediction_type="v_prediction",
        max_train_steps=2,
    )
    from medsd.training.core import train
    from medsd.training.sd_lora import SDLoRATask

    reset_accelerate()
    try:
        task = SDLoRATask(config)
        calls = {"vae": 0, "te": 0}
        vae_encode, te_forward = task.vae.encode, task.text_encoder.forward
        original_train_dataset = task.train_dataset

        def counting_train_dataset():
            ds = original_train_dataset()
            task.vae.encode = lambda *a, **k: (
                calls.__setitem__("vae", calls["vae"] + 1) or vae_encode(*a, **k)
            )
            task.text_encoder.forward = lambda *a, **k: (
                calls.__setitem__("te", calls["te"] + 1) or te_forward(*a, **k)
            )
            counting_train_dataset.dataset = ds
            return ds

        task.train_dataset = counting_train_dataset
        result = train(task, config)
    finally:
        reset_accelerate()
    ds = counting_train_dataset.dataset
    assert isinstance(ds, SDTensorDataset)
    assert set(ds.tensors) == {"latent_mean", "latent_std", "prompt_embeds"}
    assert ds.tensors["latent_mean"].shape == (8, 4, TINY_RESOLUTION // 2, TINY_RESOLUTION // 2)
    prompts = [task.source[i]["prompt"] for i in range(len(task.source))]
    assert ds.tensors["prompt_embeds"].shape[0] == len(set(prompts)) and len(set(prompts)) < len(prompts)
    batch = ds.get_batch([0, 1], torch.device("cpu"))
    ids = task.tokenizer(prompts[:2], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(batch["prompt_embeds"], te_forward(ids)[0])
    assert calls == {"vae": 0, "te": 0}
    assert result.global_step == 2 and task.prediction_type == "v_prediction"
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_history)


def test_refuses_cached_text_embeddings_with_text_encoder_lora(tiny_sd_base, tmp_path):
    from medsd.training.sd_lora import SDLoRATask

    with pytest.raises(ValueError, match="cache_text_embeddings"):
        SDLoRATask(quick_config(tiny_sd_base, tmp_path, train_text_encoder=True, cache_text_embeddings=True))


def test_validation_is_seeded_and_grayscale(trained_lora):
    """validate() renders the prompts with the in-memory modules from a seeded generator: the same images
    twice, whatever the global RNG does in between."""
    from medsd.training.sd_lora import SDLoRATask

    task: SDLoRATask = trained_lora.task
    task.config.validation_prompt = "a chest x-ray, opacity|a chest x-ray, no finding"
    task.config.num_validation_images = 2
    task.config.validation_inference_steps = 2
    try:
        modules = task.modules()
        for m in modules.values():
            m.train()
        first = task.validate(modules, 0, _FakeAccelerator())
        torch.manual_seed(123)
        second = task.validate(modules, 0, _FakeAccelerator())
    finally:
        task.config.validation_prompt = None
    assert len(first) == 4 and all(im.mode == "L" and im.size == (TINY_RESOLUTION,) * 2 for im in first)
    assert [im.tobytes() for im in first] == [im.tobytes() for im in second]
    assert all(m.training for m in modules.values()), "validate must restore the training mode"


class _FakeAccelerator:
    device = torch.device("cpu")
    mixed_precision = "no"


# -- the recipe through `accelerate launch` -----------------------------------------------------------------
@pytest.mark.slow
def test_recipe_under_accelerate_launch(tiny_sd_base, tmp_path):
    out = tmp_path / "recipe"
    common = [
        "--pretrained_model_name_or_path", str(tiny_sd_base),
        "--train_data_dir", "phantom",
        "--phantom_count", "8",
        "--resolution", str(TINY_RESOLUTION),
        "--train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--rank", "4",
        "--train_text_encoder",
        "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "2",
        "--validation_prompt", "a chest x-ray, opacity",
        "--num_validation_images", "2",
        "--validation_inference_steps", "2",
        "--validation_steps", "2",
        "--report_to", "none",
        "--logging_steps", "1",
        "--progress_bar", "false",
        "--mixed_precision", "no",
        "--output_dir", str(out),
    ]  # fmt: skip
    _launch(*common, "--max_train_steps", "3")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (out / LORA_FILE).is_file() and (out / "samples" / "step-0000002.png").is_file()
    info = json.loads((out / "medsd_lora.json").read_text())
    assert info["train_text_encoder"] is True and info["lora_rank"] == 4
    ckpt3 = _lora_tensors(out / "checkpoint-3")

    proc = _launch(*common, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    assert "Resumed from" in proc.stdout + proc.stderr and "checkpoint-3" in proc.stdout + proc.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 5 and [s for s, _ in summary["loss_history"]] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    final = _lora_tensors(out)
    assert any(not torch.equal(final[k], ckpt3[k]) for k in final), "training did not continue after resume"


@pytest.mark.slow
@pytest.mark.skipif(not (NIH / "metadata.csv").is_file(), reason="shared NIH ChestX-ray14 folder is absent")
def test_recipe_on_nih_cxr14_with_label_prompts(tiny_sd_base, tmp_path):
    """Must-show: real chest X-rays, prompts from the CSV label column through a template."""
    out = tmp_path / "nih"
    _launch(
        "--pretrained_model_name_or_path", str(tiny_sd_base),
        "--train_data_dir", str(NIH),
        "--image_column", "filename",
        "--label_column", "label",
        "--patient_column", "patient_id",
        "--prompt_template", "a chest x-ray, {label}",
        "--max_train_samples", "16",
        "--resolution", str(TINY_RESOLUTION),
        "--train_batch_size", "4",
        "--max_train_steps", "3",
        "--checkpointing_steps", "0",
        "--validation_prompt", "a chest x-ray, Pneumonia",
        "--num_validation_images", "2",
        "--validation_inference_steps", "2",
        "--report_to", "none",
        "--output_dir", str(out),
    )  # fmt: skip
    info = json.loads((out / "medsd_lora.json").read_text())
    assert info["prompt_template"] == "a chest x-ray, {label}"
    assert info["train_data"].endswith("metadata.csv")
    assert info["intensity_mapping"]["type"] == "window"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and all(loss == loss for _, loss in summary["loss_history"])

    from medsd.pipelines.auto import MedPipeline

    pipe = MedPipeline.from_pretrained(out)
    images = pipe(
        "a chest x-ray, Pneumonia", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).images
    assert images[0].mode == "L" and images[0].size == (TINY_RESOLUTION, TINY_RESOLUTION)


@pytest.mark.parametrize("name", ["sd_lora_cxr.yaml", "sd_lora_cpu_smoke.yaml"])
def test_recipe_configs_parse(name):
    from medsd.training.config import config_from_dict, load_yaml

    cfg = config_from_dict(SDLoRATrainConfig, load_yaml(REPO / "recipes" / "configs" / name))
    assert cfg.target_modules == ["to_k", "to_q", "to_v", "to_out.0"]
    assert len(cfg.validation_prompt.split("|")) == 2


def test_help_lists_the_diffusers_flags(capsys):
    from medsd.training.sd_lora import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--train_data_dir",
        "--dataset_name",
        "--rank",
        "--cache_latents",
        "--snr_gamma",
        "--export_merged",
    ):
        assert flag in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_train_and_generate(tiny_sd_base, tmp_path, precision):
    from medsd.pipelines.auto import MedPipeline

    out = tmp_path / precision
    task, result = run_training(quick_config(tiny_sd_base, out, mixed_precision=precision, max_train_steps=3))
    assert task.unet.conv_in.weight.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert all(p.dtype == torch.float32 for p in task.unet.parameters() if p.requires_grad)
    assert all(loss == loss for _, loss in result.loss_history)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    pipe = MedPipeline.from_pretrained(out, torch_dtype=dtype, device="cuda")
    img = pipe("a chest x-ray, opacity", num_inference_steps=3, generator=torch.Generator("cuda").manual_seed(0),
               output_type="np").images  # fmt: skip
    assert img.shape == (1, TINY_RESOLUTION, TINY_RESOLUTION) and np.isfinite(img).all()


def test_imagefolder_captions_train_and_hf_dataset_name(tiny_sd_base, tmp_path):
    """diffusers' imagefolder convention (metadata.csv: file_name + text), as --train_data_dir and as a
    datasets folder through --dataset_name."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["file_name,text"]
    for i in range(4):
        arr = (np.random.default_rng(i).random((40, 48)) * 255).astype(np.uint8)
        Image.fromarray(arr, mode="L").save(folder / f"{i}.png")
        rows.append(f"{i}.png,a chest x-ray with caption {i}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    task, result = run_training(
        quick_config(tiny_sd_base, tmp_path / "out", train_data_dir=str(folder), max_train_steps=1)
    )
    prompts = sorted(task.source[i]["prompt"] for i in range(len(task.source)))
    assert prompts == [f"a chest x-ray with caption {i}" for i in range(4)]
    assert task.source[0]["pixel_values"].shape == (1, TINY_RESOLUTION, TINY_RESOLUTION)
    assert result.global_step == 1
    info = json.loads((tmp_path / "out" / "medsd_lora.json").read_text())
    assert info["intensity_mapping"] == {"type": "window", "low": 0.0, "high": 255.0}

    pytest.importorskip("datasets")
    from medsd.training.sd_lora import SDLoRATask

    hf_task = SDLoRATask(quick_config(tiny_sd_base, tmp_path / "hf", dataset_name=str(folder)))
    hf_prompts = sorted(hf_task.source[i]["prompt"] for i in range(len(hf_task.source)))
    assert hf_prompts == prompts


# -- transformers/peft compatibility ------------------------------------------------------------------------
def test_installed_transformers_and_peft_support_text_encoder_lora():
    from medsd.training.compat import check_text_encoder_lora_support

    check_text_encoder_lora_support()  # the tested set (constraints.txt) must pass


def test_incompatible_peft_stops_at_startup_in_one_line(tiny_sd_base, tmp_path, monkeypatch, capsys):
    """A transformers that wants a newer peft is refused before any model is loaded, naming both."""
    from importlib import metadata

    from packaging.version import Version

    import medsd.training.compat as compat
    from medsd.cli import main

    monkeypatch.setattr(compat, "required_peft_version", lambda: Version("99.0"))
    loaded = []
    monkeypatch.setattr("transformers.CLIPTokenizer.from_pretrained", lambda *a, **k: loaded.append(a))
    code = main(
        ["train", "sd-lora", "--pretrained_model_name_or_path", str(tiny_sd_base), "--train_text_encoder"]
        + ["--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not loaded and len(err.splitlines()) == 1, err
    assert f"transformers {metadata.version('transformers')}" in err and "peft>=99.0" in err
    assert f"peft {metadata.version('peft')} is installed" in err and "constraints.txt" in err


def test_train_labels_selects_the_sd_lora_training_images(tiny_sd_base, tmp_path):
    """--train_labels reaches SD LoRA through the shared data road: only images of that label train."""
    from medsd.training.sd_lora import main

    out = tmp_path / "opacity"
    argv = ["--pretrained_model_name_or_path", str(tiny_sd_base), "--train_data_dir", "phantom",
            "--phantom_count", "8", "--resolution", str(TINY_RESOLUTION), "--train_batch_size", "2",
            "--max_train_steps", "1", "--checkpointing_steps", "0", "--validation_steps", "0",
            "--report_to", "none", "--mixed_precision", "no", "--output_dir", str(out)]  # fmt: skip
    task, _ = run_training(quick_config(tiny_sd_base, out, train_labels="opacity", max_train_steps=1))
    everything, _ = run_training(quick_config(tiny_sd_base, tmp_path / "all", max_train_steps=1))
    assert set(task.source.labels) == {"opacity"} and 0 < len(task.source) < len(everything.source)
    assert all("opacity" in task.source[i]["prompt"] for i in range(len(task.source)))

    reset_accelerate()
    try:
        assert main([*argv, "--train_labels", "opacity", "--output_dir", str(tmp_path / "cli")]) == 0
    finally:
        reset_accelerate()
    assert (tmp_path / "cli" / "pytorch_lora_weights.safetensors").is_file()
    with pytest.raises(ValueError, match="train_labels: no image has a label in"):
        run_training(quick_config(tiny_sd_base, tmp_path / "none", train_labels="nonexistent"))
