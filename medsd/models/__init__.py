"""Denoising networks."""

from .light_unet import LightUNet2DModel, LightUNet2DOutput
from .presets import PRESETS, build_unet

__all__ = ["LightUNet2DModel", "LightUNet2DOutput", "PRESETS", "build_unet"]
