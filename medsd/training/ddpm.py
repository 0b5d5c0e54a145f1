"""Unconditional DDPM training (lightweight U-Net or diffusers UNet2DModel) on the shared core."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsd.flags import Alias, flag

from .config import TrainConfig, with_epochs
from .core import Trainer
from .data_args import DataArgs, build_training_data
from .diffusion_task import UNetDiffusionArgs, UNetDiffusionTask
from .recipe import recipe_main


def _hf_source(name: str) -> str:
    return f"hf:{name}"


@dataclasses.dataclass
class DDPMTrainConfig(UNetDiffusionArgs, DataArgs, TrainConfig):
    """Train an unconditional 1-channel DDPM on CT / X-ray images (defaults: chest phantoms, CPU-sized)."""

    time_embedding: str | None = flag(
        None, help="Override the light U-Net's time-embedding injection: every_block, once or encoder."
    )
    skip_connections: bool | None = flag(
        None, help="Override the light U-Net's skip connections (false = encoder-decoder baseline)."
    )
    learning_rate: float = 2e-4
    output_dir: str = "outputs/ddpm"
    # diffusers' train_unconditional.py names are aliases: --train_data_dir, --dataset_name (hf:NAME)
    train_data: str = flag("phantom", aliases=("train_data_dir", Alias("dataset_name", convert=_hf_source)))
    num_epochs: int | None = flag(
        None,
        resume="free",
        help="Train this many passes over the data (the run's max_train_steps; the config itself keeps its own).",
    )


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
    return Trainer.from_config(DDPMTask, config).run()


def main(argv: list[str] | None = None) -> int:
    return recipe_main(DDPMTrainConfig, train_ddpm, "medsd train ddpm", argv)
