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
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, parse_config
from .core import TrainingTask, TrainResult, seeded_task, train, weight_dtype_for
from .data_args import DataArgs, data_config, is_jsonl_imagefolder
from .model_card import write_model_card

logger = logging.getLogger("medsd.training.sd_lora")

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
IMAGE_COLUMN_CANDIDATES = ("file_name", "filename", "image", "path", "image_path")
CAPTION_COLUMN_CANDIDATES = ("text", "caption", "prompt")


@dataclasses.dataclass
class SDLoRATrainConfig(DataArgs, TrainConfig):
    """LoRA fine-tuning of Stable Diffusion for text-to-X-ray generation (flags follow diffusers'
    train_text_to_image_lora.py)."""

    pretrained_model_name_or_path: str = DEFAULT_BASE_MODEL
    """Base Stable Diffusion pipeline: a Hub id or a local folder (model_index.json)."""
    revision: str | None = None
    variant: str | None = None
    """Weight variant of the base model files, e.g. fp16."""
    train_data_dir: str | None = None
    """A folder with metadata.csv (file_name + caption or label column; images beside it), a CSV file,
    or 'phantom' / 'phantom-ct' (generated phantoms with prompts). Overrides train_data."""
    dataset_name: str | None = None
    """A Hugging Face datasets id or local dataset folder (image_column default 'image'). Overrides train_data."""
    image_column: str | None = None
    """Image column; default: the first of file_name, filename, image, path present."""
    caption_column: str | None = None
    """Caption column; default: 'text', 'caption' or 'prompt' when present and no prompt_template is given."""
    prompt_template: str | None = None
    """Prompts from metadata fields, e.g. 'a chest x-ray, {label}' with --label_column label."""
    data_split: str = "all"
    """all (every image in the source), or train / val / test of a patient-level split."""
    resolution: int = 512
    """Training image size (square center crop); 512 for SD 1.x, 256 trains faster."""
    rank: int = 4
    """LoRA rank of the U-Net adapters."""
    lora_alpha: int | None = None
    """LoRA alpha (scale alpha / rank); default: the rank (scale 1)."""
    lora_dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(UNET_TARGET_MODULES))
    """U-Net modules that get LoRA adapters (comma-separated)."""
    train_text_encoder: bool = False
    """Also train LoRA adapters on the CLIP text encoder (q/k/v/out projections)."""
    text_encoder_rank: int | None = None
    """LoRA rank of the text encoder adapters; default: rank."""
    text_encoder_target_modules: list[str] = dataclasses.field(
        default_factory=lambda: list(TEXT_ENCODER_TARGET_MODULES)
    )
    cache_latents: bool = False
    """Encode every image once with the frozen VAE (kept in memory), so steps run only the U-Net."""
    cache_text_embeddings: bool = False
    """Encode every prompt once with the frozen text encoder (not with train_text_encoder)."""
    snr_gamma: float | None = None
    """Min-SNR loss weighting gamma (5.0 is the recommended value); default: plain MSE."""
    noise_offset: float = 0.0
    """Noise offset (e.g. 0.05) for a wider range of image brightness."""
    prediction_type: str | None = None
    """epsilon or v_prediction; default: the base model scheduler's."""
    validation_prompt: str | None = None
    """Prompt(s) rendered every validation_steps into samples/; separate several with '|'."""
    num_validation_images: int = 4
    """Images per validation prompt."""
    validation_inference_steps: int = 30
    validation_guidance_scale: float = 4.0
    export_merged: bool = False
    """Also write a full pipeline with the LoRA merged into output_dir/merged."""
    output_dir: str = "outputs/sd-lora-xray"
    train_batch_size: int = 4
    checkpointing_steps: int = 500
    validation_steps: int = 250
    # diffusers' train_text_to_image_lora.py names
    enable_xformers_memory_efficient_attention: bool = False
    """Use xformers attention when installed (otherwise PyTorch's scaled-dot-product attention, the default)."""
    num_train_epochs: int | None = None
    """Train this many passes over the data (sets max_train_steps)."""
    validation_epochs: int | None = None
    """Validate every this many epochs (sets validation_steps)."""

    def resolved_train_data(self) -> str:
        """The DataArgs ``train_data`` string that train_data_dir / dataset_name stand for."""
        if self.dataset_name:
            return f"hf:{self.dataset_name}"
        if self.train_data_dir:
            d = self.train_data_dir
            if d in ("phantom", "phantom-chest", "phantom-ct"):
                return d
            p = Path(d)
            if p.is_dir() and (p / "metadata.jsonl").is_file():  # diffusers' imagefolder layout
                return str(p)
            if p.is_dir() and (p / "metadata.csv").is_file():
                return str(p / "metadata.csv")
            if not p.exists():
                raise FileNotFoundError(
                    f"train_data_dir {d!r} does not exist (expected a folder with metadata.csv, a CSV file, "
                    "'phantom' or 'phantom-ct')"
                )
            return str(p)
        return self.train_data


def _csv_columns(path: str) -> list[str]:
    import csv

    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def resolve_data_args(config: SDLoRATrainConfig) -> DataArgs:
    """DataArgs for ``medsd.data``: aliases resolved and image / caption columns detected."""
    source = config.resolved_train_data()
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(DataArgs)}
    values["train_data"] = source
    image_col, caption_col = config.image_column, config.caption_column
    if source.endswith(".csv"):
        columns = _csv_columns(source)
        if image_col is None:
            image_col = next((c for c in IMAGE_COLUMN_CANDIDATES if c in columns), None)
            if image_col is None:
                raise ValueError(f"{source}: no image column among {columns}; pass --image_column")
        elif image_col not in columns:
            raise ValueError(f"{source}: image_column {image_col!r} not in {columns}")
        if caption_col is None and config.prompt_template is None:
            caption_col = next((c for c in CAPTION_COLUMN_CANDIDATES if c in columns), None)
            if caption_col is None:
                raise ValueError(
                    f"{source}: no caption column (text, caption, prompt) among {columns}; pass "
                    "--caption_column, or --label_column with --prompt_template 'a chest x-ray, {label}'"
                )
        elif caption_col is not None and caption_col not in columns:
            raise ValueError(f"{source}: caption_column {caption_col!r} not in {columns}")
    elif source.startswith("hf:") or is_jsonl_imagefolder(source):
        image_col = image_col or "image"
        if caption_col is None and config.prompt_template is None:
            caption_col = "text"
    values["image_column"] = image_col or "filename"
    values["caption_column"] = caption_col
    return DataArgs(**values)


def build_source_dataset(config: SDLoRATrainConfig) -> tuple[Any, Any]:
    """(dataset yielding ``pixel_values`` [1, H, W] in [-1, 1] and ``prompt``, intensity mapping)."""
    from medsd.data import build_dataset

    args = resolve_data_args(config)
    return build_dataset(data_config(args, seed=config.seed))


class SDTensorDataset:
    """Training tensors prepared once: images (or VAE latent distributions) and token ids (or prompt
    embeddings). ``get_batch`` slices them on the training device; ``__getitem__`` serves a DataLoader."""

    def __init__(self, tensors: dict[str, torch.Tensor], prompt_index: torch.Tensor | None = None):
        self.tensors = tensors
        self.prompt_index = prompt_index
        self.length = len(next(iter(v for k, v in tensors.items() if k != "prompt_embeds")))

    def __len__(self) -> int:
        return self.length

    def _select(self, idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in self.tensors.items():
            if key == "prompt_embeds":
                pidx = self.prompt_index[idx.to(self.prompt_index.device)]
                out[key] = value[pidx.to(value.device)].to(device, non_blocking=True)
            else:
                out[key] = value[idx.to(value.device)].to(device, non_blocking=True)
        return out

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        return self._select(torch.as_tensor(indices, dtype=torch.long), device)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self._select(torch.as_tensor([i], dtype=torch.long), torch.device("cpu"))
        return {k: v[0] for k, v in batch.items()}


class SDStreamingDataset(torch.utils.data.Dataset):
    """Items read on the fly from the source dataset: ``pixel_values`` [1, H, W] and ``input_ids``."""

    def __init__(self, source: Any, tokenizer: Any):
        self.source, self.tokenizer = source, tokenizer

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.source[i]
        return {
            "pixel_values": item["pixel_values"].float(),
            "input_ids": tokenize(self.tokenizer, [prompt_of(item)])[0],
        }


def prompt_of(item: dict[str, Any]) -> str:
    prompt = item.get("prompt")
    if prompt is None:
        raise ValueError(
            f"{item.get('path')}: no prompt; pass --caption_column, or --label_column with --prompt_template"
        )
    return prompt


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids


def to_vae_input(pixel_values: torch.Tensor) -> torch.Tensor:
    """1-channel images in [-1, 1] replicated to the 3 channels the Stable Diffusion VAE expects."""
    if pixel_values.shape[1] == 1:
        return pixel_values.expand(-1, 3, -1, -1)
    if pixel_values.shape[1] != 3:
        raise ValueError(f"expected 1- or 3-channel images, got shape {tuple(pixel_values.shape)}")
    return pixel_values


def _lora_state_dicts(unet: nn.Module, text_encoder: nn.Module | None) -> dict[str, Any]:
    """Keyword arguments of ``StableDiffusionPipeline.save_lora_weights`` (diffusers format + metadata)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in sd.items()}

    kwargs: dict[str, Any] = {
        "unet_lora_layers": contiguous(
            convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, save_embedding_layers=False))
        ),
        "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
    }
    if text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = contiguous(
            convert_state_dict_to_diffusers(
                get_peft_model_state_dict(text_encoder, save_embedding_layers=False)
            )
        )
        kwargs["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config["default"].to_dict()
    return kwargs


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
        if config.num_train_epochs or config.validation_epochs:
            from .ddpm import steps_for_epochs

            per_epoch = steps_for_epochs(1, len(self.source), config)
            if config.num_train_epochs:
                config.max_train_steps = per_epoch * config.num_train_epochs
            if config.validation_epochs:
                config.validation_steps = per_epoch * config.validation_epochs
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
        accelerator.register_save_state_pre_hook(self._save_state_hook)
        accelerator.register_load_state_pre_hook(self._load_state_hook)

    def train_dataset(self) -> Any:
        cfg = self.config
        if not (cfg.cache_latents or cfg.cache_text_embeddings or cfg.cache_images_on_device):
            return SDStreamingDataset(self.source, self.tokenizer)
        return self._build_tensor_dataset()

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
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
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
        from diffusers import StableDiffusionPipeline

        from medsd.pipelines.lora_io import LORA_INFO_FILE, export_merged_pipeline

        cfg = self.config
        text_encoder = modules.get("text_encoder")
        StableDiffusionPipeline.save_lora_weights(
            output_dir, **_lora_state_dicts(modules["unet"], text_encoder)
        )
        info = self.lora_info()
        with open(output_dir / LORA_INFO_FILE, "w") as f:
            json.dump(info, f, indent=1)
        if self.mapping is not None:
            self.mapping.save(output_dir / "intensity_mapping.json")
        if cfg.export_merged:
            export_merged_pipeline(output_dir, output_dir / "merged")
        self._write_model_card(output_dir)

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
        """A ``StableDiffusionPipeline`` over the in-memory components (no copy of any weight)."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        modules = modules or self.modules()
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=modules.get("text_encoder", self.text_encoder),
            tokenizer=self.tokenizer,
            unet=modules["unet"],
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
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
                rgb = pipe(
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
        return rgb.float().mean(dim=1, keepdim=True) * 2 - 1

    def _latents(self, batch: dict[str, Any]) -> torch.Tensor:
        sf = self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"].float(), batch["latent_std"].float()
            if "latent_mean_flipped" in batch:
                flip = (torch.rand(mean.shape[0], device=mean.device) < 0.5)[:, None, None, None]
                mean = torch.where(flip, batch["latent_mean_flipped"].float(), mean)
                std = torch.where(flip, batch["latent_std_flipped"].float(), std)
            return (mean + std * torch.randn_like(mean) - shift) * sf
        pixels = batch["pixel_values"]
        if self._flip_in_loss:
            flip = (torch.rand(pixels.shape[0], device=pixels.device) < 0.5)[:, None, None, None]
            pixels = torch.where(flip, pixels.flip(-1), pixels)
        pixels = to_vae_input(pixels.to(self.vae.dtype))
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample()
        return (latents.float() - shift) * sf

    _flip_in_loss = False

    @torch.no_grad()
    def _build_tensor_dataset(self) -> SDTensorDataset:
        """Read the source once; encode images with the VAE / prompts with the text encoder when asked."""
        from tqdm.auto import tqdm

        cfg = self.config
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        storage = device if cfg.cache_images_on_device else torch.device("cpu")
        pixels, prompts = [], []
        for i in tqdm(range(len(self.source)), desc="reading images", disable=not cfg.progress_bar):
            item = self.source[i]
            pixels.append(item["pixel_values"].float())
            prompts.append(prompt_of(item))
        tensors: dict[str, torch.Tensor] = {}
        prompt_index = None
        if cfg.cache_latents:
            means, stds, fmeans, fstds = [], [], [], []
            bs = max(1, cfg.train_batch_size)
            for start in tqdm(
                range(0, len(pixels), bs), desc="encoding latents", disable=not cfg.progress_bar
            ):
                x = torch.stack(pixels[start : start + bs]).to(device, self.vae.dtype)
                dist = self.vae.encode(to_vae_input(x)).latent_dist
                means.append(dist.mean.float().to(storage))
                stds.append(dist.std.float().to(storage))
                if cfg.random_flip:
                    fdist = self.vae.encode(to_vae_input(x.flip(-1))).latent_dist
                    fmeans.append(fdist.mean.float().to(storage))
                    fstds.append(fdist.std.float().to(storage))
            tensors["latent_mean"], tensors["latent_std"] = torch.cat(means), torch.cat(stds)
            if cfg.random_flip:
                tensors["latent_mean_flipped"], tensors["latent_std_flipped"] = (
                    torch.cat(fmeans),
                    torch.cat(fstds),
                )
        else:
            tensors["pixel_values"] = torch.stack(pixels).to(
                storage, torch.float16 if storage.type == "cuda" else torch.float32
            )
            self._flip_in_loss = cfg.random_flip
        if cfg.cache_text_embeddings:
            unique = sorted(set(prompts))
            lookup = {p: k for k, p in enumerate(unique)}
            embeds = []
            for start in range(0, len(unique), 64):
                ids = tokenize(self.tokenizer, unique[start : start + 64]).to(device)
                embeds.append(self.text_encoder(ids, return_dict=False)[0].to(storage, self.weight_dtype))
            tensors["prompt_embeds"] = torch.cat(embeds)
            prompt_index = torch.tensor([lookup[p] for p in prompts], dtype=torch.long, device=storage)
            logger.info("cached text embeddings of %d distinct prompts", len(unique))
        else:
            tensors["input_ids"] = tokenize(self.tokenizer, prompts).to(storage)
        return SDTensorDataset(tensors, prompt_index)

    def _save_state_hook(self, models: list[nn.Module], weights: list[Any], output_dir: str) -> None:
        """Checkpoints hold only the LoRA weights (diffusers format), not the frozen base model."""
        from diffusers import StableDiffusionPipeline

        unwrap = self.accelerator.unwrap_model
        ours = [i for i, model in enumerate(models) if unwrap(model) in (self.unet, self.text_encoder)]
        if not ours:
            return
        for i in reversed(ours):
            if i < len(weights):
                weights.pop(i)
        if self.accelerator.is_main_process:
            text_encoder = self.text_encoder if self.config.train_text_encoder else None
            StableDiffusionPipeline.save_lora_weights(
                output_dir, **_lora_state_dicts(self.unet, text_encoder)
            )

    def _load_state_hook(self, models: list[nn.Module], input_dir: str) -> None:
        from diffusers import StableDiffusionPipeline
        from diffusers.training_utils import cast_training_params
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        unwrap = self.accelerator.unwrap_model
        ours = [i for i, model in enumerate(models) if unwrap(model) in (self.unet, self.text_encoder)]
        if not ours:
            return
        for i in reversed(ours):
            models.pop(i)
        state_dict, _ = StableDiffusionPipeline.lora_state_dict(input_dir)
        unet_sd = {k[len("unet.") :]: v for k, v in state_dict.items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(
            self.unet, convert_unet_state_dict_to_peft(unet_sd), adapter_name="default"
        )
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"{input_dir}: unexpected U-Net LoRA keys {unexpected[:5]}")
        if self.config.train_text_encoder:
            # Public conversions (diffusers format -> peft) in place of diffusers' private
            # ``_set_state_dict_into_text_encoder``, which does the same.
            from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

            te_sd = {
                k[len("text_encoder.") :]: v for k, v in state_dict.items() if k.startswith("text_encoder.")
            }
            if not te_sd:
                raise RuntimeError(f"{input_dir}: the checkpoint holds no text-encoder LoRA weights")
            result = set_peft_model_state_dict(
                self.text_encoder,
                convert_state_dict_to_peft(convert_state_dict_to_diffusers(te_sd)),
                adapter_name="default",
            )
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"{input_dir}: unexpected text-encoder LoRA keys {unexpected[:5]}")
        trained = [self.unet] + ([self.text_encoder] if self.config.train_text_encoder else [])
        cast_training_params(trained, dtype=torch.float32)

    def _write_model_card(self, output_dir: Path) -> None:
        cfg = self.config
        prompt = self.validation_prompts()[0] if self.validation_prompts() else "a chest x-ray, no finding"
        write_model_card(
            output_dir,
            title="medsd text-to-X-ray LoRA",
            summary=(
                f"LoRA adapters (rank {cfg.rank}) for `{cfg.pretrained_model_name_or_path}` fine-tuned on "
                f"{cfg.resolution} px chest X-rays ({cfg.resolved_train_data()}) to generate synthetic "
                "radiographs from text prompts."
            ),
            usage=(
                "import torch\n"
                "from medsd import MedPipeline\n\n"
                f'pipe = MedPipeline.from_pretrained("{output_dir.name}")  # 1-channel text-to-X-ray\n'
                f'images = pipe("{prompt}", generator=torch.Generator().manual_seed(0)).images\n\n'
                "# or with plain diffusers (3-channel output)\n"
                "from diffusers import StableDiffusionPipeline\n"
                f'sd = StableDiffusionPipeline.from_pretrained("{cfg.pretrained_model_name_or_path}")\n'
                f'sd.load_lora_weights("{output_dir.name}")'
            ),
            training={
                k: getattr(cfg, k)
                for k in (
                    "pretrained_model_name_or_path",
                    "resolution",
                    "prompt_template",
                    "rank",
                    "train_text_encoder",
                    "max_train_steps",
                    "train_batch_size",
                    "learning_rate",
                    "mixed_precision",
                    "snr_gamma",
                )
            },
            tags=["lora", "stable-diffusion", "text-to-image", "chest-x-ray"],
            base_model=cfg.pretrained_model_name_or_path
            if "/" in cfg.pretrained_model_name_or_path
            and not Path(cfg.pretrained_model_name_or_path).exists()
            else None,
            pipeline_tag="text-to-image",
        )


def train_sd_lora(config: SDLoRATrainConfig) -> TrainResult:
    """Train (or resume) a LoRA as ``config`` says; the library entry point."""
    return train(seeded_task(SDLoRATask, config), config)


def main(argv: list[str] | None = None) -> int:
    """``medsd train sd-lora`` / ``recipes/finetune_sd_xray.py``: parse flags (and --config YAML), train."""
    config = parse_config(
        SDLoRATrainConfig, argv, description=SDLoRATrainConfig.__doc__, prog="medsd train sd-lora"
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = train_sd_lora(config)
    print(f"LoRA saved to {result.output_dir} ({result.global_step} steps, {result.seconds:.0f} s)")
    return 0


__all__ = ["SDLoRATrainConfig", "SDLoRATask", "train_sd_lora", "main", "to_vae_input", "build_source_dataset"]
