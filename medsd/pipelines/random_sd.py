"""Randomly initialised Stable Diffusion pipelines built from configs (no download).

Used by the offline tests (``size="tiny"``, about 3 M parameters) and by
``benchmarks/sd_lora_full_size.py`` (``size="sd-v1.5"``: the architecture of Stable Diffusion v1.5,
860 M-parameter U-Net, 84 M VAE, 123 M CLIP text encoder) to measure speed, memory and numerical
soundness of LoRA fine-tuning at full size before any weights are downloaded.

The tokenizer is a real CLIP BPE tokenizer: ``vocab.json`` and ``merges.txt`` are written from the BPE
vocabulary bundled with ``open_clip`` exactly the way CLIP builds its vocabulary, so prompts are
tokenized as by ``openai/clip-vit-large-patch14``. (Hand-written because no library exports these files
offline; transformers only downloads them.)
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TINY_RESOLUTION = 32
"""Image size of the tiny pipeline (latents are 16 x 16: the tiny VAE downsamples by 2)."""

SIZES = ("tiny", "sd-v1.5")


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
    """A ``CLIPTokenizer`` (77 tokens) from files written into ``folder``."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token="<|endoftext|>")


def _component_configs(size: str) -> dict[str, dict[str, Any]]:
    if size == "tiny":
        return {
            "unet": dict(
                block_out_channels=(32, 64),
                layers_per_block=1,
                sample_size=TINY_RESOLUTION // 2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=32,
            ),
            "vae": dict(
                block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1,
                sample_size=TINY_RESOLUTION,
            ),
            "text": dict(
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                projection_dim=32,
            ),
        }
    if size == "sd-v1.5":
        # The configs of stable-diffusion-v1-5/stable-diffusion-v1-5 (unet/, vae/, text_encoder/).
        return {
            "unet": dict(
                block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2,
                sample_size=64,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768,
                attention_head_dim=8,
                norm_num_groups=32,
            ),
            "vae": dict(
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                sample_size=512,
            ),
            "text": dict(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                projection_dim=768,
                hidden_act="quick_gelu",
            ),
        }
    raise ValueError(f"unknown Stable Diffusion size {size!r}; choose one of {SIZES}")


def build_random_sd_pipeline(work_dir: str | Path, size: str = "tiny", seed: int = 0):
    """A randomly initialised (seeded) ``StableDiffusionPipeline`` of the given ``size``.

    ``work_dir`` receives the tokenizer's source files.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = _component_configs(size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **cfg["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32, **cfg["vae"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            vocab_size=49408,
            max_position_embeddings=77,
            **cfg["text"],
        )
    )
    # Stable Diffusion v1's scheduler config.
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


def save_random_sd_pipeline(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build a random pipeline and ``save_pretrained`` it into ``folder`` (kept if already there)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    pipe = build_random_sd_pipeline(folder.parent / f"{folder.name}_src", size=size, seed=seed)
    pipe.save_pretrained(folder)
    return folder
