"""Unconditional DDPM training (lightweight U-Net or diffusers UNet2DModel) on the shared core."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, with_epochs
from .core import seeded_task, train
from .data_args import DataArgs, build_training_data
from .diffusion_task import UNetDiffusionArgs, UNetDiffusionTask
from .recipe import recipe_main


@dataclasses.dataclass
class DDPMTrainConfig(UNetDiffusionArgs, DataArgs, TrainConfig):
    """Train an unconditional 1-channel DDPM on CT / X-ray images (defaults: chest phantoms, CPU-sized)."""

    time_embedding: str | None = None
    """Override the light U-Net's time-embedding injection: every_block, once or encoder."""
    skip_connections: bool | None = None
    """Override the light U-Net's skip connections (false = encoder-decoder baseline)."""
    learning_rate: float = 2e-4
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
    """Train this many passes over the data (the run's max_train_steps; the config itself keeps its own)."""
    logger: str = ""
    """Alias of report_to (tensorboard, wandb, none)."""

    def __post_init__(self) -> None:
        # each alias sets the field it names and then reads empty, so the saved YAML holds one value
        if self.train_data_dir:
            self.train_data, self.train_data_dir = self.train_data_dir, None
        if self.dataset_name:
            self.train_data, self.dataset_name = f"hf:{self.dataset_name}", None
        if self.ddpm_num_steps is not None:
            self.num_train_timesteps, self.ddpm_num_steps = self.ddpm_num_steps, None
        if self.ddpm_beta_schedule:
            self.beta_schedule, self.ddpm_beta_schedule = self.ddpm_beta_schedule, None
        if self.logger:
            self.report_to, self.logger = self.logger, ""
        super().__post_init__()


class DDPMTask(UNetDiffusionTask):
    """Noise-prediction MSE on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform."""

    family = "ddpm"

    def __init__(self, config: DDPMTrainConfig):
        from diffusers import DDPMScheduler

        self.dataset, self.mapping = build_training_data(config)
        if config.num_epochs:  # the run's step count, in a copy: the config given is never changed
            config = with_epochs(config, len(self.dataset), config.num_epochs)
        self.config = config
        overrides: dict[str, Any] = {}
        if config.time_embedding is not None:
            overrides["time_embedding"] = config.time_embedding
        if config.skip_connections is not None:
            overrides["skip_connections"] = config.skip_connections
        self.unet = self.build_unet(config.model, **overrides)
        self.noise_scheduler = DDPMScheduler(**self.schedule(), clip_sample=True)

    def make_pipeline(self, unet: nn.Module):
        from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

        return MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(self.noise_scheduler.config))

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
            training=self.card_training("model", "time_embedding", "skip_connections"),
        )


def train_ddpm(config: DDPMTrainConfig):
    """Train and save a :class:`~medsd.pipelines.ddpm.MedDDPMPipeline` into ``config.output_dir``."""
    task = seeded_task(DDPMTask, config)
    return train(task, task.config)


def main(argv: list[str] | None = None) -> int:
    return recipe_main(DDPMTrainConfig, train_ddpm, "medsd train ddpm", argv)
