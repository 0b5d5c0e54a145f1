"""Random Stable Diffusion pipelines built from configs: the full-size one has SD v1.5's architecture."""

from __future__ import annotations

import pytest

from medsd.pipelines.random_sd import _component_configs, build_clip_tokenizer


def _param_counts(size: str) -> dict[str, float]:
    """Millions of parameters per component, built on the meta device (no memory, no init time)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = _component_configs(size)
    with init_empty_weights():
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **cfg["unet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **cfg["text"]))
    return {
        name: sum(p.numel() for p in module.parameters()) / 1e6
        for name, module in (("unet", unet), ("vae", vae), ("text", text))
    }


def test_sd_v15_size_matches_the_published_parameter_counts():
    # stable-diffusion-v1-5: U-Net 859.5 M, VAE 83.7 M, CLIP ViT-L/14 text encoder 123.1 M parameters.
    counts = _param_counts("sd-v1.5")
    assert counts["unet"] == pytest.approx(859.52, abs=0.05)
    assert counts["vae"] == pytest.approx(83.65, abs=0.05)
    assert counts["text"] == pytest.approx(123.06, abs=0.05)
    assert _param_counts("tiny")["unet"] < 5


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="sd-v1.5"):
        _component_configs("sdxl")


def test_clip_tokenizer_encodes_like_clip(tmp_path):
    tok = build_clip_tokenizer(tmp_path)
    ids = tok("a chest x-ray").input_ids
    # <|startoftext|> ... <|endoftext|>; 'a</w>' is CLIP's token 320, 'chest</w>' 10563.
    assert ids[0] == 49406 and ids[-1] == 49407
    assert ids[1:3] == [320, 10563]
    assert len(tok.get_vocab()) == 49408
