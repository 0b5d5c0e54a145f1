"""Named U-Net presets, selectable by name in configs (``model: light-ct``)."""

from __future__ import annotations

from typing import Any

from .light_unet import LightUNet2DModel

PRESETS: dict[str, dict[str, Any]] = {
    # Nguyen et al.: lightweight U-Net, time embedding after every down/up convolution, CT at 236 px.
    "light-ct": dict(
        cls="LightUNet2DModel",
        sample_size=236,
        block_out_channels=(32, 64, 128, 256),
        layers_per_block=1,
        norm_num_groups=8,
        attention_levels=(3,),
        time_embedding="every_block",
    ),
    # Small light model for the quickstart and tests on CPU.
    "light-tiny": dict(
        cls="LightUNet2DModel",
        sample_size=32,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention_levels=(),
        time_embedding="every_block",
    ),
    # Abeywardane et al.: sinusoidal embedding added to every residual block, 256 px chest X-rays.
    "xray-synth-256": dict(
        cls="LightUNet2DModel",
        sample_size=256,
        block_out_channels=(64, 128, 256, 256, 512),
        layers_per_block=2,
        norm_num_groups=32,
        attention_levels=(3,),
        time_embedding="every_block",
    ),
    # The UNet2DModel diffusers' train_unconditional.py example builds, with 1 channel instead of 3.
    "diffusers-unconditional": dict(
        cls="UNet2DModel",
        sample_size=128,
        layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=(
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    # A small UNet2DModel (e.g. for 64 px CPU experiments).
    "diffusers-small": dict(
        cls="UNet2DModel",
        sample_size=64,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
}


def build_unet(preset: str, **overrides: Any):
    """Build a denoising U-Net from a preset name, with config overrides (e.g. ``in_channels=2``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {k: v for k, v in PRESETS[preset].items() if k != "cls"}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if PRESETS[preset]["cls"] == "UNet2DModel":
        from diffusers import UNet2DModel

        cfg.setdefault("in_channels", 1)
        cfg.setdefault("out_channels", 1)
        return UNet2DModel(**cfg)
    return LightUNet2DModel(**cfg)
