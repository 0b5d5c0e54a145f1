"""Unconditional DDPM training (lightweight U-Net or diffusers UNet2DModel) on the shared core."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, parse_config
from .core import TrainingTask, diffusion_target, seeded_task, train
from .data_args import DataArgs, build_training_data
from .model_card import write_model_card


@dataclasses.dataclass
class DDPMTrainConfig(DataArgs, TrainConfig):
    """Train an unconditional 1-channel DDPM on CT / X-ray images (defaults: chest phantoms, CPU-sized)."""

    model: str = "light-tiny"
    """U-Net preset: light-tiny, light-ct, xray-synth-256, diffusers-small, diffusers-unconditional."""
    time_embedding: str | None = None
    """Override the light U-Net's time-embedding injection: every_block, once or encoder."""
    skip_connections: bool | None = None
    """Override the light U-Net's skip connections (false = encoder-decoder baseline)."""
    block_out_channels: list[int] | None = None
    """Override the U-Net's channels per level, e.g. 32,64,128."""
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
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


class DDPMTask(TrainingTask):
    """Noise-prediction MSE on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform."""

    ema_module = "unet"

    def __init__(self, config: DDPMTrainConfig):
        from diffusers import DDPMScheduler

        from medsd.models import build_unet

        self.config = config
        self.dataset, self.mapping = build_training_data(config)
        if config.num_epochs:
            config.max_train_steps = steps_for_epochs(config.num_epochs, len(self.dataset), config)
        overrides: dict[str, Any] = {"sample_size": config.resolution}
        if config.time_embedding is not None:
            overrides["time_embedding"] = config.time_embedding
        if config.skip_connections is not None:
            overrides["skip_connections"] = config.skip_connections
        if config.block_out_channels:
            overrides["block_out_channels"] = tuple(config.block_out_channels)
        self.unet = build_unet(config.model, **overrides)
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=config.prediction_type,
            clip_sample=True,
        )

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def train_dataset(self) -> Any:
        return self.dataset

    def setup(self, accelerator: Any) -> None:
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(accelerator.device)

    def loss(self, batch: dict[str, Any], modules: dict[str, nn.Module], accelerator: Any) -> torch.Tensor:
        clean = batch["pixel_values"]
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, t)
        pred = modules["unet"](noisy, t).sample
        target = diffusion_target(self.noise_scheduler, self.config.prediction_type, clean, noise, t)
        return F.mse_loss(pred.float(), target.float())

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

    def validate(self, modules: dict[str, nn.Module], step: int, accelerator: Any) -> list[Any]:
        unet = modules["unet"]
        was_training = unet.training
        unet.eval()
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        with torch.autocast(accelerator.device.type, enabled=False):
            images = self.pipeline(unet)(
                batch_size=self.config.num_validation_images,
                num_inference_steps=self.config.validation_inference_steps,
                generator=generator,
            ).images
        unet.train(was_training)
        return images

    def save(self, output_dir: Path, modules: dict[str, nn.Module], accelerator: Any) -> None:
        pipe = self.pipeline(modules["unet"])
        pipe.save_pretrained(output_dir)
        cfg = self.config
        write_model_card(
            output_dir,
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
    config = parse_config(DDPMTrainConfig, argv, prog="medsd train ddpm")
    result = train_ddpm(config)
    print(f"pipeline saved to {result.output_dir} ({result.global_step} steps, {result.seconds:.0f} s)")
    return 0
