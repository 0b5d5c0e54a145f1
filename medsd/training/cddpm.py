"""Image-conditioned DDPM training (Med-cDiff, Hung et al.) for super-resolution, denoising or inpainting.

Clean images come from ``medsd.data`` (decoded once into a uint8 cache on the training device when possible);
the degradation is applied on the fly on the device, and the denoiser learns
``MSE(eps, eps_theta(concat(x_t, y), t))`` with ``t`` uniform over the T training steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsd.flags import flag

from .config import TrainConfig
from .core import Trainer
from .data_args import DataArgs, build_training_data
from .diffusion_task import UNetDiffusionArgs, UNetDiffusionTask
from .recipe import recipe_main


@dataclasses.dataclass
class CDDPMTrainConfig(UNetDiffusionArgs, DataArgs, TrainConfig):
    """Train an image-conditioned 1-channel DDPM (Med-cDiff): sr, denoise or inpaint (defaults: CPU-sized)."""

    task: str = flag("sr", help="sr (super-resolution), denoise or inpaint.")
    factor: float = flag(
        4.0, help="Super-resolution factor; non-integer allowed (e.g. 2.8284 for 2*sqrt(2))."
    )
    down_mode: str = flag("area", help="Super-resolution down-sampling: area, bicubic or bilinear.")
    up_mode: str = flag(
        "bicubic",
        help="Interpolation of the low-resolution image back to full size: bicubic, bilinear or nearest.",
    )
    noise_sigma: list[float] = flag(
        [0.05, 0.2],
        help="Denoising: range of the Gaussian noise sigma, in units of the [0, 1] intensity range.",
    )
    sp_amount: list[float] = flag(
        [0.0, 0.05], help="Denoising: range of the salt-and-pepper fraction of pixels."
    )
    mask_kind: str = flag(
        "mixed", help="Inpainting masks: box, irregular (free-form strokes), mixed or file."
    )
    mask_file: str | None = flag(None, help="Inpainting: a mask image (white = missing) for mask_kind file.")
    box_frac: list[float] = flag([0.25, 0.5], help="Inpainting: box side as a fraction of the image side.")
    num_train_timesteps: int = 2000
    validation_sampler: str = flag(
        "ddpm",
        resume="free",
        help="Sampler of the validation grid: ddpm (ancestral, robust also with fewer steps than T), ddim or dpm.",
    )
    validation_inference_steps: int = 100
    num_validation_images: int = 4
    output_dir: str = "outputs/cddpm"


def degradation_from_config(config: CDDPMTrainConfig) -> Any:
    from medsd.data.degradations import Degradation

    return Degradation(
        task=config.task,
        factor=config.factor,
        down_mode=config.down_mode,
        up_mode=config.up_mode,
        noise_sigma=tuple(config.noise_sigma),
        sp_amount=tuple(config.sp_amount),
        mask_kind=config.mask_kind,
        mask_file=config.mask_file,
        box_frac=tuple(config.box_frac),
    )


def _batch_of(dataset: Any, indices: list[int], device: torch.device) -> torch.Tensor:
    """Clean images ``[B, 1, H, W]`` of ``indices`` from a uint8 cache or a map-style dataset."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices, device)["pixel_values"].float()
    return torch.stack([dataset[i]["pixel_values"] for i in indices]).float().to(device)


class CDDPMTask(UNetDiffusionTask):
    """Noise prediction conditioned on a degraded copy of the image: ``MSE(eps, unet([x_t, y], t))``."""

    family = "cddpm"

    def __init__(self, config: CDDPMTrainConfig, dataset: Any = None, mapping: Any = None):
        from medsd.pipelines.cddpm import paper_scheduler

        self.config = config
        self.degradation = degradation_from_config(config)
        if dataset is None:
            dataset, mapping = build_training_data(config)
        self.dataset, self.mapping = dataset, mapping
        self.unet = self.build_unet(
            config.model, in_channels=1 + self.degradation.cond_channels, out_channels=1
        )
        self.noise_scheduler = paper_scheduler(**self.schedule())
        self._val_batch: tuple[torch.Tensor, Any] | None = None

    def setup(self, accelerator: Any) -> None:
        # A uint8 cache lives on the training device: batches are sliced and degraded there.
        if (
            hasattr(self.dataset, "get_batch")
            and hasattr(self.dataset, "to")
            and self.config.cache_images_on_device
        ):
            self.dataset.to(accelerator.device)

    def predict(
        self, unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        """The denoiser sees x_t concatenated with the degraded image (drawn on the fly, on the device)."""
        from medsd.pipelines.cddpm import denoise

        with torch.no_grad():
            cond = self.degradation(clean).condition  # global RNG: checkpointed by accelerate
        return denoise(unet, noisy, cond, t)

    def metadata(self) -> dict[str, Any]:
        d = self.degradation
        return {
            **super().metadata(),
            "task": d.task,
            "factor": d.factor if d.task == "sr" else None,
            "cond_channels": d.cond_channels,
            "degradation": d.to_dict(),
            "data_seed": self.config.seed,
        }

    def make_pipeline(self, unet: nn.Module):
        from medsd.pipelines.cddpm import MedCDDPMPipeline

        return MedCDDPMPipeline(unet=unet, scheduler=self.noise_scheduler)

    def validation_batch(self, device: torch.device) -> tuple[torch.Tensor, Any]:
        """The fixed validation images and their fixed, seeded degradation (the same at every validation)."""
        if self._val_batch is None:
            n = max(1, min(self.config.num_validation_images, len(self.dataset)))
            indices = list(range(n))
            clean = _batch_of(self.dataset, indices, torch.device("cpu"))
            self._val_batch = (clean, self.degradation.fixed(clean, indices, seed=self.config.seed))
        clean, degraded = self._val_batch
        return clean.to(device), degraded

    def render(self, pipe: Any, generator: torch.Generator, device: torch.device) -> list[Any]:
        clean, degraded = self.validation_batch(device)
        cond_image = degraded.condition[:, :1]
        out = pipe(
            image=cond_image,
            mask=degraded.mask,
            num_inference_steps=self.config.validation_inference_steps,
            generator=generator,
            output_type="pt",
            sampler=self.config.validation_sampler,
            image_size=tuple(cond_image.shape[-2:]),
        )
        return [restoration_grid([cond_image.cpu(), out.images.cpu(), clean.cpu()])]

    def model_card(self, output_dir: Path) -> dict[str, Any]:
        cfg, d = self.config, self.degradation
        return dict(
            title=f"medsd cDDPM ({d.describe()})",
            summary=(
                f"An image-conditioned {cfg.model} U-Net DDPM (Med-cDiff) for {d.describe()} of {cfg.resolution} px "
                f"1-channel images, trained on {cfg.train_data}."
            ),
            usage=(
                "from medsd import MedCDDPMPipeline\n"
                f'pipe = MedCDDPMPipeline.from_pretrained("{output_dir.name}")\n'
                "out = pipe(image=degraded, num_samples=8, sampler='dpm')  # add mask= for inpainting\n"
                "restored, mean, std = out.images, out.mean, out.std"
            ),
            training=self.card_training("task", "factor", "model", "num_train_timesteps"),
            pipeline_tag="image-to-image",
        )


def restoration_grid(rows: list[torch.Tensor], pad: int = 2) -> Any:
    """One PIL image: each tensor ``[N, 1, H, W]`` in [-1, 1] is a row (e.g. condition | sample | target)."""
    from medsd.metrics.figures import image_grid
    from medsd.pipelines.output import postprocess

    n = max(r.shape[0] for r in rows)
    images = [im for r in rows for im in postprocess(r.float().clamp(-1, 1), "pil")]
    return image_grid(images, cols=n, pad=pad, background=255)


def train_cddpm(config: CDDPMTrainConfig):
    """Train and save a :class:`~medsd.pipelines.cddpm.MedCDDPMPipeline` into ``config.output_dir``."""
    return Trainer.from_config(CDDPMTask, config).run()


def main(argv: list[str] | None = None) -> int:
    return recipe_main(CDDPMTrainConfig, train_cddpm, "medsd train cddpm", argv)
