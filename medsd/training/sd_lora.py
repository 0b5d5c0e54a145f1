"""Text-to-X-ray LoRA fine-tuning of Stable Diffusion (RoentGen-style) on the shared training core.

peft LoRA adapters on the U-Net attention projections (and optionally the CLIP text encoder) are trained
with the epsilon- or v-prediction loss of the base model, optionally Min-SNR weighted. 1-channel images are
replicated to 3 channels for the VAE; prompts come from a caption column or a label column through a
prompt template. With ``cache_latents`` / ``cache_text_embeddings`` the dataset is encoded once with the
frozen VAE / text encoder, so a step runs only the U-Net.

Output (``output_dir``): ``pytorch_lora_weights.safetensors`` (diffusers format, loads with
``StableDiffusionPipeline.load_lora_weights``), ``medsd_lora.json`` (base model, prompt template,
intensity mapping, LoRA settings), ``intensity_mapping.json``, a model card, and with ``export_merged`` a
full merged pipeline in ``output_dir/merged``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import with_epochs
from .core import Trainer, TrainingTask, TrainResult, diffusion_target
from .precision import weight_dtype_for
from .recipe import recipe_main
from .sd_lora_config import (
    SDLoRATrainConfig,
)
from .sd_lora_data import (
    SDStreamingDataset,
    build_source_dataset,
    build_tensor_dataset,
    to_vae_input,
    uses_tensor_cache,
)
from .sd_lora_io import LoRACheckpointHooks, save_lora_weights, write_sd_lora_model_card

logger = logging.getLogger("medsd.training.sd_lora")


class SDLoRATask(TrainingTask):
    """LoRA adapters on a frozen Stable Diffusion U-Net (and text encoder), trained on text-image pairs."""

    def __init__(self, config: SDLoRATrainConfig):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if config.train_text_encoder and config.cache_text_embeddings:
            raise ValueError("cache_text_embeddings cannot be combined with train_text_encoder")
        if config.train_text_encoder:
            from .compat import check_text_encoder_lora_support

            check_text_encoder_lora_support()  # before any model is loaded
        if config.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type must be epsilon or v_prediction, got {config.prediction_type!r}"
            )
        self.config = config
        base = config.pretrained_model_name_or_path
        kw = {"revision": config.revision}
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        self.text_encoder = CLIPTextModel.from_pretrained(
            base, subfolder="text_encoder", variant=config.variant, **kw
        )
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", variant=config.variant, **kw)
        self.unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", variant=config.variant, **kw)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw)
        if config.prediction_type is not None:
            self.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)

        self.lora_alpha = config.lora_alpha if config.lora_alpha is not None else config.rank
        with torch.random.fork_rng(devices=[]):  # seeded LoRA init without touching the global RNG
            torch.manual_seed(config.seed)
            self._add_adapters()
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()

        if config.streaming:
            raise ValueError("streaming datasets are not supported for SD LoRA training; drop --streaming")
        self.source, self.mapping = build_source_dataset(config)
        if len(self.source) == 0:
            raise ValueError(f"no training images in {config.resolved_train_data()}")
        self.accelerator: Any = None
        self.weight_dtype = torch.float32
        # epochs give the step counts in a copy of the config: the config given is never changed
        self.config = with_epochs(config, len(self.source), config.num_train_epochs, config.validation_epochs)
        if config.enable_xformers_memory_efficient_attention:
            try:
                self.unet.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError) as e:
                logger.warning(
                    "xformers attention unavailable (%s); using PyTorch scaled-dot-product attention", e
                )

    def _add_adapters(self) -> None:
        from peft import LoraConfig

        config = self.config
        self.unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=self.lora_alpha,
                lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=list(config.target_modules),
            )
        )
        if config.train_text_encoder:
            te_rank = config.text_encoder_rank or config.rank
            self.text_encoder.add_adapter(
                LoraConfig(
                    r=te_rank,
                    lora_alpha=te_rank if config.lora_alpha is None else self.lora_alpha,
                    lora_dropout=config.lora_dropout,
                    init_lora_weights="gaussian",
                    target_modules=list(config.text_encoder_target_modules),
                )
            )

    # -- the core's hooks ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"unet": self.unet}
        if self.config.train_text_encoder:
            mods["text_encoder"] = self.text_encoder
        return mods

    def setup(self, accelerator: Any) -> None:
        """Frozen weights in the resolved mixed-precision dtype, trainable LoRA weights in fp32."""
        from diffusers.training_utils import cast_training_params

        self.accelerator = accelerator
        device = accelerator.device
        # accelerator.mixed_precision is the resolved value, whether it came from
        # `accelerate launch --mixed_precision`, --mixed_precision, or both.
        self.weight_dtype = weight_dtype_for(accelerator)
        vae_dtype = torch.float32 if self.config.cache_latents else self.weight_dtype
        for module, dtype in (
            (self.vae, vae_dtype),
            (self.text_encoder, self.weight_dtype),
            (self.unet, self.weight_dtype),
        ):
            module.to(device)
            if module.dtype != dtype:
                module.to(dtype=dtype)
        trained = [self.unet] + ([self.text_encoder] if self.config.train_text_encoder else [])
        cast_training_params(trained, dtype=torch.float32)
        LoRACheckpointHooks(
            accelerator, self.unet, self.text_encoder, self.config.train_text_encoder
        ).register()

    def train_dataset(self) -> Any:
        cfg = self.config
        if not uses_tensor_cache(cfg):
            return SDStreamingDataset(self.source, self.tokenizer)
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        self._augment_batches = not cfg.cache_latents
        return build_tensor_dataset(
            self.source, cfg, self.vae, self.tokenizer, self.text_encoder, device, self.weight_dtype
        )

    def loss(self, batch: dict[str, Any], modules: dict[str, nn.Module], accelerator: Any) -> torch.Tensor:
        from diffusers.training_utils import compute_snr

        cfg = self.config
        unet = modules["unet"]
        latents = self._latents(batch).to(self.weight_dtype)
        noise = torch.randn_like(latents)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(
                latents.shape[0], latents.shape[1], 1, 1, device=latents.device, dtype=latents.dtype
            )
        bsz = latents.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
        ).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if "prompt_embeds" in batch:
            hidden = batch["prompt_embeds"].to(self.weight_dtype)
        elif cfg.train_text_encoder:
            hidden = modules["text_encoder"](batch["input_ids"], return_dict=False)[0]
        else:
            with torch.no_grad():
                hidden = self.text_encoder(batch["input_ids"], return_dict=False)[0]
        target = diffusion_target(self.noise_scheduler, self.prediction_type, latents, noise, timesteps)
        pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
        if cfg.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float())
        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=cfg.snr_gamma)
        weights = weights / snr if self.prediction_type == "epsilon" else weights / (snr + 1)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weights).mean()

    def validate(self, modules: dict[str, nn.Module], step: int, accelerator: Any) -> list[Any]:
        prompts = self.validation_prompts()
        if not prompts:
            return []
        from medsd.pipelines.output import postprocess

        images = self.render(
            modules,
            prompts,
            num_images_per_prompt=self.config.num_validation_images,
            device=accelerator.device,
        )
        return postprocess(images, "pil")

    def save(self, output_dir: Path, modules: dict[str, nn.Module], accelerator: Any) -> None:
        from medsd.pipelines.lora_io import INTENSITY_FILE, LORA_INFO_FILE, export_merged_pipeline

        cfg = self.config
        save_lora_weights(output_dir, modules["unet"], modules.get("text_encoder"))
        info = self.lora_info()
        with open(output_dir / LORA_INFO_FILE, "w") as f:
            json.dump(info, f, indent=1)
        if self.mapping is not None:
            self.mapping.save(output_dir / INTENSITY_FILE)
        if cfg.export_merged:
            export_merged_pipeline(output_dir, output_dir / "merged")
        prompts = self.validation_prompts()
        write_sd_lora_model_card(output_dir, cfg, prompts[0] if prompts else "a chest x-ray, no finding")

    # -- helpers -----------------------------------------------------------------------------------
    def validation_prompts(self) -> list[str]:
        text = self.config.validation_prompt
        return [p.strip() for p in text.split("|") if p.strip()] if text else []

    def prompt_template(self) -> str | None:
        """The template the prompts came from (the phantoms' built-in one when none was given)."""
        if self.config.prompt_template:
            return self.config.prompt_template
        template = getattr(self.source, "template", None)
        return getattr(template, "template", None) if template is not None else None

    def lora_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": "medsd-sd-lora",
            "version": 1,
            "base_model": cfg.pretrained_model_name_or_path,
            "revision": cfg.revision,
            "variant": cfg.variant,
            "prompt_template": self.prompt_template(),
            "caption_column": cfg.caption_column,
            "label_column": cfg.label_column,
            "train_data": cfg.resolved_train_data(),
            "resolution": cfg.resolution,
            "intensity_mapping": self.mapping.to_dict() if self.mapping is not None else None,
            "lora_rank": cfg.rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": list(cfg.target_modules),
            "train_text_encoder": cfg.train_text_encoder,
            "text_encoder_rank": (cfg.text_encoder_rank or cfg.rank) if cfg.train_text_encoder else None,
            "prediction_type": self.prediction_type,
            "max_train_steps": cfg.max_train_steps,
            "mixed_precision": str(getattr(self.accelerator, "mixed_precision", cfg.mixed_precision)),
            "default_guidance_scale": 4.0,
            "default_num_inference_steps": 75,
            "channels": 1,
        }

    def pipeline(self, modules: dict[str, nn.Module] | None = None) -> Any:
        """A :class:`~medsd.pipelines.text2xray.TextToXRayPipeline` (a ``StableDiffusionPipeline``) over the
        in-memory components (no copy of any weight), with the training data's intensity mapping."""
        from diffusers import DPMSolverMultistepScheduler

        from medsd.pipelines.text2xray import TextToXRayPipeline

        modules = modules or self.modules()
        pipe = TextToXRayPipeline(
            vae=self.vae,
            text_encoder=modules.get("text_encoder", self.text_encoder),
            tokenizer=self.tokenizer,
            unet=modules["unet"],
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            intensity_mapping=self.mapping,
            medsd_metadata={"resolution": self.config.resolution, "prompt_template": self.prompt_template()},
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def render(
        self,
        modules: dict[str, nn.Module],
        prompts: list[str],
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """1-channel images [B, 1, H, W] in [-1, 1] from a seeded generator (never the global RNG)."""
        cfg = self.config
        device = device or next(modules["unet"].parameters()).device
        pipe = self.pipeline(modules)
        trained = list(modules.values())
        was_training = [m.training for m in trained]
        for m in trained:
            m.eval()
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        autocast: Any = contextlib.nullcontext()
        if self.weight_dtype != torch.float32:
            autocast = torch.autocast(device.type, dtype=self.weight_dtype)
        try:
            with autocast:
                gray = pipe(
                    prompts,
                    num_images_per_prompt=num_images_per_prompt,
                    num_inference_steps=cfg.validation_inference_steps,
                    guidance_scale=cfg.validation_guidance_scale,
                    generator=generator,
                    height=cfg.resolution,
                    width=cfg.resolution,
                    output_type="pt",
                ).images
        finally:
            for m, flag in zip(trained, was_training):
                m.train(flag)
        return gray

    def _latents(self, batch: dict[str, Any]) -> torch.Tensor:
        from medsd.data.transforms import augment_batch, random_hflip

        sf = self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        if "latent_mean" in batch:
            dist = torch.cat([batch["latent_mean"], batch["latent_std"]], 1).float()
            if "latent_mean_flipped" in batch:
                mirrored = torch.cat([batch["latent_mean_flipped"], batch["latent_std_flipped"]], 1).float()
                dist = random_hflip(dist, mirrored=mirrored)
            mean, std = dist.chunk(2, dim=1)
            return (mean + std * torch.randn_like(mean) - shift) * sf
        pixels = batch["pixel_values"]
        if self._augment_batches:
            pixels = augment_batch(pixels.float(), self.config.affine, self.config.hflip)
        pixels = to_vae_input(pixels.to(self.vae.dtype))
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample()
        return (latents.float() - shift) * sf

    _augment_batches = False


def train_sd_lora(config: SDLoRATrainConfig) -> TrainResult:
    """Train (or resume) a LoRA as ``config`` says; the library entry point."""
    return Trainer.from_config(SDLoRATask, config).run()


def main(argv: list[str] | None = None) -> int:
    """``medsd train sd-lora`` / ``recipes/finetune_sd_xray.py``: parse flags (and --config YAML), train."""
    return recipe_main(SDLoRATrainConfig, train_sd_lora, "medsd train sd-lora", argv, saved="LoRA")


__all__ = ["SDLoRATrainConfig", "SDLoRATask", "train_sd_lora", "main", "to_vae_input", "build_source_dataset"]
