"""Unconditional DDPM training (lightweight U-Net or diffusers UNet2DModel) on the shared core."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .core import seeded_task, train
from .data_args import DataArgs, build_training_data
from .diffusion_task import UNetDiffusionArgs, UNetDiffusionTask, recipe_main


@dataclasses.dataclass
class DDPMTrainConfig(UNetDiffusionArgs, DataArgs, TrainConfig):
    """Train an unconditional 1-channel DDPM on CT / X-ray images (defaults: chest phantoms, CPU-sized)."""

    model: str = "light-tiny"
    """U-Net preset: light-tiny, light-ct, xray-synth-256, diffusers-small, diffusers-unconditional."""
    time_embedding: str | None = None
    """Override the light U-Net's time-embedding injection: every_block, once or encoder."""
    skip_connections: bool | None = None
    """Override the light U-Net's skip connections (false = encoder-decoder baseline)."""
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    """epsilon, v_prediction or sample."""
    validation_inference_steps: int = 25
    learning_rate: float = 2e-4
    train_batch_size: int = 16
    output_dir: str = "outputs/ddpm"
    # diffusers' train_unconditional.py names (aliases of the fields above)
    train_data_dir: str | None = None
    """Alias of train_data: a folder of images."""
    dataset_name: str | None = None
    """A Hugging Face datasets id or local dataset folder (train_data 'hf:NAME')."""
    ddpm_num_steps: int | None = None
    """Alias of num_train_timesteps."""
    ddpm_beta_schedule: str | None = None
    """Alias of beta_schedule."""
    num_epochs: int | None = None
    """Train this many passes over the data (sets max_train_steps)."""
    logger: str = ""
    """Alias of report_to (tensorboard, wandb, none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_data_dir:
            self.train_data = self.train_data_dir
        if self.dataset_name:
            self.train_data = f"hf:{self.dataset_name}"
        if self.ddpm_num_steps is not None:
            self.num_train_timesteps = self.ddpm_num_steps
        if self.ddpm_beta_schedule:
            self.beta_schedule = self.ddpm_beta_schedule
        if self.logger:
            self.report_to = self.logger


def steps_for_epochs(epochs: int, n_images: int, config: Any) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_images`` (all processes, gradient accumulation)."""
    import math
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_step = config.train_batch_size * world * config.gradient_accumulation_steps
    return max(1, math.ceil(epochs * n_images / per_step))


class DDPMTask(UNetDiffusionTask):
    """Noise-prediction MSE on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform."""

    def __init__(self, config: DDPMTrainConfig):
        from diffusers import DDPMScheduler

        self.config = config
        self.dataset, self.mapping = build_training_data(config)
        if config.num_epochs:
            config.max_train_steps = steps_for_epochs(config.num_epochs, len(self.dataset), config)
        overrides: dict[str, Any] = {}
        if config.time_embedding is not None:
            overrides["time_embedding"] = config.time_embedding
        if config.skip_connections is not None:
            overrides["skip_connections"] = config.skip_connections
        self.unet = self.build_unet(config.model, **overrides)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=config.prediction_type,
            clip_sample=True,
        )

    def pipeline(self, unet: nn.Module):
        from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

        pipe = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(self.noise_scheduler.config))
        pipe.intensity_mapping = self.mapping
        pipe.medsd_metadata = {
            "family": "ddpm",
            "train_data": self.config.train_data,
            "resolution": self.config.resolution,
            "train_scheduler": dict(self.noise_scheduler.config),
        }
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def render(self, pipe: Any, generator: torch.Generator, device: torch.device) -> list[Any]:
        return pipe(
            batch_size=self.config.num_validation_images,
            num_inference_steps=self.config.validation_inference_steps,
            generator=generator,
        ).images

    def model_card(self, output_dir: Path) -> dict[str, Any]:
        cfg = self.config
        return dict(
            title="medsd unconditional DDPM",
            summary=f"A {cfg.model} U-Net DDPM generating {cfg.resolution} px 1-channel images, trained on {cfg.train_data}.",
            usage=(
                "from medsd import MedDDPMPipeline\n"
                f'pipe = MedDDPMPipeline.from_pretrained("{output_dir.name}")\n'
                "images = pipe(batch_size=4, num_inference_steps=25).images"
            ),
            training={
                k: getattr(cfg, k)
                for k in (
                    "model",
                    "train_data",
                    "resolution",
                    "max_train_steps",
                    "train_batch_size",
                    "learning_rate",
                    "mixed_precision",
                    "use_ema",
                    "time_embedding",
                    "skip_connections",
                )
            },
        )


def train_ddpm(config: DDPMTrainConfig):
    """Train and save a :class:`~medsd.pipelines.ddpm.MedDDPMPipeline` into ``config.output_dir``."""
    return train(seeded_task(DDPMTask, config), config)


def main(argv: list[str] | None = None) -> int:
    return recipe_main(DDPMTrainConfig, train_ddpm, "medsd train ddpm", argv)
