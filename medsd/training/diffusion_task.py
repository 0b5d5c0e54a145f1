"""What the two U-Net diffusion families (DDPM, cDDPM) share: the task skeleton.

A :class:`UNetDiffusionTask` trains one U-Net ``unet`` with the shared prediction target; the families say
only what differs: the condition the U-Net sees (none for DDPM), the pipeline that renders and saves, the
validation images and the model card.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsd.flags import flag

from .core import TrainingTask, diffusion_target
from .model_card import write_model_card
from .task import PREDICTION_TYPES

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def _preset_names() -> tuple[str, ...]:
    from medsd.models import PRESETS

    return tuple(sorted(PRESETS))


@dataclasses.dataclass
class UNetDiffusionArgs:
    """Config fields of both U-Net diffusion families (each family adds its own and sets its defaults)."""

    model: str = flag(
        "light-tiny",
        choices=_preset_names,
        help="U-Net preset: light-tiny, light-ct, xray-synth-256, diffusers-small, diffusers-unconditional "
        "(cDDPM sets in_channels to 1 + the condition channels).",
    )
    block_out_channels: list[int] | None = flag(
        None, help="Override the U-Net's channels per level, e.g. 32,64,128."
    )
    num_train_timesteps: int = flag(1000, aliases=("ddpm_num_steps",))
    prediction_type: str = flag(
        "epsilon",
        choices=PREDICTION_TYPES,
        help="What the U-Net predicts: epsilon, v_prediction or sample (x0).",
    )
    beta_schedule: str = flag(
        "linear",
        choices=BETA_SCHEDULES,
        aliases=("ddpm_beta_schedule",),
        help="Noise schedule of training (diffusers' DDPMScheduler): linear, scaled_linear or squaredcos_cap_v2.",
    )
    beta_start: float = 1e-4
    beta_end: float = 0.02
    validation_inference_steps: int = flag(25, resume="free")
    init_from: str | None = flag(
        None,
        help="A trained medsd pipeline folder whose U-Net weights start this run (fine-tuning, e.g. privately "
        "with --dp after public pre-training); the U-Net settings must match it.",
    )


class UNetDiffusionTask(TrainingTask):
    """MSE between the U-Net's prediction on x_t (plus an optional condition) and the shared target, t uniform."""

    ema_module = "unet"
    config: Any
    dataset: Any
    unet: nn.Module
    noise_scheduler: Any

    def build_unet(self, preset: str, **overrides: Any) -> nn.Module:
        from medsd.models import build_unet

        if self.config.block_out_channels:
            overrides["block_out_channels"] = tuple(self.config.block_out_channels)
        unet = build_unet(preset, sample_size=self.config.resolution, **overrides)
        if self.config.init_from:
            load_unet_weights(unet, self.config.init_from)
        if self.config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return unet

    def schedule(self) -> dict[str, Any]:
        """The training noise schedule the config asks for (``DDPMScheduler`` keyword arguments)."""
        keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
        return {k: getattr(self.config, k) for k in keys}

    def card_training(self, *keys: str) -> dict[str, Any]:
        """The config values a model card lists under training (``keys``, then the shared budget)."""
        shared = ("train_data", "resolution", "max_train_steps", "train_batch_size", "learning_rate")
        return {k: getattr(self.config, k) for k in (*keys, *shared, "mixed_precision", "use_ema")}

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def train_dataset(self) -> Any:
        return self.dataset

    def predict(
        self, unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        """The U-Net's output for ``noisy`` at ``t`` (a conditional family derives its condition from ``clean``)."""
        return unet(noisy, t).sample

    def loss(self, batch: dict[str, Any], modules: dict[str, nn.Module], accelerator: Any) -> torch.Tensor:
        clean = batch["pixel_values"].float()
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, t)
        pred = self.predict(modules["unet"], noisy, t, clean)
        target = diffusion_target(self.noise_scheduler, self.config.prediction_type, clean, noise, t)
        return F.mse_loss(pred.float(), target.float())

    family: str = "ddpm"
    """The family name saved in the pipeline's medsd metadata."""
    mapping: Any = None

    @abstractmethod
    def make_pipeline(self, unet: nn.Module) -> Any:
        """The family's pipeline class around ``unet`` and its sampling scheduler."""

    def metadata(self) -> dict[str, Any]:
        """The medsd metadata saved with the pipeline (a family adds its own keys)."""
        return {
            "family": self.family,
            "train_data": self.config.train_data,
            "resolution": self.config.resolution,
            "train_scheduler": dict(self.noise_scheduler.config),
        }

    def pipeline(self, unet: nn.Module) -> Any:
        """The family's pipeline around ``unet``, with the intensity mapping and metadata (progress bar off)."""
        pipe = self.make_pipeline(unet)
        pipe.intensity_mapping = self.mapping
        pipe.medsd_metadata = self.metadata()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @abstractmethod
    def render(self, pipe: Any, generator: torch.Generator, device: torch.device) -> list[Any]:
        """Validation images (PIL) from ``pipe``."""

    @abstractmethod
    def model_card(self, output_dir: Path) -> dict[str, Any]:
        """Keyword arguments of :func:`~medsd.training.model_card.write_model_card` for this model."""

    def validate(self, modules: dict[str, nn.Module], step: int, accelerator: Any) -> list[Any]:
        unet = modules["unet"]
        was_training = unet.training
        unet.eval()
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        try:
            with torch.autocast(accelerator.device.type, enabled=False):
                return self.render(self.pipeline(unet), generator, accelerator.device)
        finally:
            unet.train(was_training)

    def save(self, output_dir: Path, modules: dict[str, nn.Module], accelerator: Any) -> None:
        self.pipeline(modules["unet"]).save_pretrained(output_dir)
        write_model_card(output_dir, **self.model_card(output_dir))


def load_unet_weights(unet: nn.Module, folder: str) -> None:
    """Load ``FOLDER/unet``'s weights into ``unet``; one line when the folder or the architecture does not fit."""
    from safetensors.torch import load_file

    from medsd.errors import MedsdConfigError

    path = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise MedsdConfigError(
            f"--init_from {folder}: no {path.relative_to(folder)}; expected a medsd pipeline folder"
        )
    try:
        unet.load_state_dict(load_file(path))
    except RuntimeError as e:
        raise MedsdConfigError(
            f"--init_from {folder}: its U-Net does not match this run's --model/--resolution settings "
            f"({str(e).splitlines()[1].strip()[:200] if len(str(e).splitlines()) > 1 else e})"
        ) from None
