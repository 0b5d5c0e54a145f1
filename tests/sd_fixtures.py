"""A tiny Stable Diffusion pipeline built in code (no downloads), for offline CPU tests.

The tokenizer is a real CLIP BPE tokenizer: its ``vocab.json`` and ``merges.txt`` are written from the BPE
vocabulary bundled with ``open_clip`` exactly the way CLIP builds its vocabulary, so prompts are tokenized
as by ``openai/clip-vit-large-patch14``; the networks are tiny and randomly initialised (seeded).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

TINY_RESOLUTION = 32
"""Image size of the tiny pipeline (latents are 16 x 16: the tiny VAE downsamples by 2)."""


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer_files(folder: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE tokenizer (49408 tokens) into ``folder``."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return vocab_file, merges_file


def build_clip_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token="<|endoftext|>")


def build_tiny_sd_pipeline(work_dir: str | Path, seed: int = 0):
    """A randomly initialised tiny ``StableDiffusionPipeline`` (about 3 M parameters)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = build_clip_tokenizer(Path(work_dir) / "tokenizer_src")
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_sd_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it into ``folder`` (returned)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    pipe = build_tiny_sd_pipeline(folder.parent / f"{folder.name}_src", seed=seed)
    pipe.save_pretrained(folder)
    return folder


# -- pytest fixtures and helpers shared by test_sd_lora.py and test_med_pipeline.py ---------------------
import pytest  # noqa: E402


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state so the next in-process run may use another precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def quick_config(base: str | Path, output_dir: str | Path, **overrides):
    """A few-step CPU config on 8 phantom chest X-rays at 32 px."""
    from medsd.training.sd_lora import SDLoRATrainConfig

    values = dict(
        pretrained_model_name_or_path=str(base),
        train_data_dir="phantom",
        phantom_count=8,
        resolution=TINY_RESOLUTION,
        train_batch_size=2,
        max_train_steps=2,
        learning_rate=5e-3,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=1,
        report_to="none",
        mixed_precision="no",
        progress_bar=False,
        output_dir=str(output_dir),
    )
    values.update(overrides)
    return SDLoRATrainConfig(**values)


def run_training(config):
    """(task, TrainResult) of an in-process run of the shared training core."""
    from medsd.training.core import train
    from medsd.training.sd_lora import SDLoRATask

    reset_accelerate()
    try:
        task = SDLoRATask(config)
        return task, train(task, config)
    finally:
        reset_accelerate()


_SESSION: dict = {}
"""Built once per test session even when several test modules import these fixtures."""


@pytest.fixture(scope="session")
def tiny_sd_base(tmp_path_factory) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.getbasetemp() / "tiny_sd_base")


@pytest.fixture(scope="session")
def trained_lora(tiny_sd_base, tmp_path_factory):
    """A LoRA trained in-process (U-Net rank 4 / alpha 8 and text encoder), with a merged export."""
    from types import SimpleNamespace

    key = ("trained_lora", str(tiny_sd_base))
    if key in _SESSION:
        return _SESSION[key]
    out = tmp_path_factory.mktemp("sd_lora") / "run"
    config = quick_config(
        tiny_sd_base,
        out,
        rank=4,
        lora_alpha=8,
        train_text_encoder=True,
        max_train_steps=3,
        export_merged=True,
        prompt_template="a chest x-ray, {label}",
    )
    task, result = run_training(config)
    _SESSION[key] = SimpleNamespace(
        task=task, result=result, output_dir=out, base=tiny_sd_base, config=config
    )
    return _SESSION[key]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The tiny models are faster on one thread; with several, OpenMP spin-waits dominate (and collapse
    when other processes share the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
