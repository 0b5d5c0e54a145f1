"""The configuration of SD LoRA training (:class:`SDLoRATrainConfig`) and its data-source resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medsd.data.build import DataConfig, parse_source, source_columns
from medsd.data.errors import MedImageError
from medsd.flags import flag

from .config import TrainConfig
from .data_args import DataArgs
from .task import PREDICTION_TYPES

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
IMAGE_COLUMN_CANDIDATES = ("file_name", "filename", "image", "path", "image_path")
CAPTION_COLUMN_CANDIDATES = ("text", "caption", "prompt")


@dataclasses.dataclass
class SDLoRATrainConfig(DataArgs, TrainConfig):
    """LoRA fine-tuning of Stable Diffusion for text-to-X-ray generation (flags follow diffusers'
    train_text_to_image_lora.py)."""

    pretrained_model_name_or_path: str = flag(
        DEFAULT_BASE_MODEL,
        help="Base Stable Diffusion pipeline: a Hub id or a local folder (model_index.json).",
    )
    revision: str | None = None
    variant: str | None = flag(None, help="Weight variant of the base model files, e.g. fp16.")
    train_data_dir: str | None = flag(
        None,
        help="A folder with metadata.csv (file_name + caption or label column; images beside it), a CSV file, or 'phantom' / 'phantom-ct' (generated phantoms with prompts). Overrides train_data.",
    )
    dataset_name: str | None = flag(
        None,
        help="A Hugging Face datasets id or local dataset folder (image_column default 'image'). Overrides train_data.",
    )
    image_column: str | None = flag(
        None, help="Image column; default: the first of file_name, filename, image, path present."
    )
    caption_column: str | None = flag(
        None,
        help="Caption column; default: 'text', 'caption' or 'prompt' when present and no prompt_template is given.",
    )
    prompt_template: str | None = flag(
        None, help="Prompts from metadata fields, e.g. 'a chest x-ray, {label}' with --label_column label."
    )
    split: str = flag(
        "all", help="all (every image in the source), or train / val / test of a patient-level split."
    )
    resolution: int = flag(
        512, help="Training image size (square center crop); 512 for SD 1.x, 256 trains faster."
    )
    rank: int = flag(4, help="LoRA rank of the U-Net adapters.")
    lora_alpha: int | None = flag(None, help="LoRA alpha (scale alpha / rank); default: the rank (scale 1).")
    lora_dropout: float = 0.0
    target_modules: list[str] = flag(
        list(UNET_TARGET_MODULES), help="U-Net modules that get LoRA adapters (comma-separated)."
    )
    train_text_encoder: bool = flag(
        False, help="Also train LoRA adapters on the CLIP text encoder (q/k/v/out projections)."
    )
    text_encoder_rank: int | None = flag(None, help="LoRA rank of the text encoder adapters; default: rank.")
    text_encoder_target_modules: list[str] = flag(list(TEXT_ENCODER_TARGET_MODULES))
    cache_latents: bool = flag(
        False,
        help="Encode every image once with the frozen VAE (kept in memory), so steps run only the U-Net.",
    )
    cache_text_embeddings: bool = flag(
        False, help="Encode every prompt once with the frozen text encoder (not with train_text_encoder)."
    )
    snr_gamma: float | None = flag(
        None, help="Min-SNR loss weighting gamma (5.0 is the recommended value); default: plain MSE."
    )
    noise_offset: float = flag(0.0, help="Noise offset (e.g. 0.05) for a wider range of image brightness.")
    prediction_type: str | None = flag(
        None, choices=PREDICTION_TYPES, help="epsilon or v_prediction; default: the base model scheduler's."
    )
    validation_prompt: str | None = flag(
        None,
        resume="free",
        help="Prompt(s) rendered every validation_steps into samples/; separate several with '|'.",
    )
    num_validation_images: int = flag(4, help="Images per validation prompt.")
    validation_inference_steps: int = flag(30, resume="free")
    validation_guidance_scale: float = flag(4.0, resume="free")
    export_merged: bool = flag(
        False, resume="free", help="Also write a full pipeline with the LoRA merged into output_dir/merged."
    )
    output_dir: str = "outputs/sd-lora-xray"
    train_batch_size: int = 4
    checkpointing_steps: int = 500
    validation_steps: int = 250
    # diffusers' train_text_to_image_lora.py names
    enable_xformers_memory_efficient_attention: bool = flag(
        False,
        resume="free",
        help="Use xformers attention when installed (otherwise PyTorch's scaled-dot-product attention, the default).",
    )
    num_train_epochs: int | None = flag(
        None, resume="free", help="Train this many passes over the data (sets max_train_steps)."
    )
    validation_epochs: int | None = flag(
        None, resume="free", help="Validate every this many epochs (sets validation_steps)."
    )

    def resolved_train_data(self) -> str:
        """The DataArgs ``train_data`` string that train_data_dir / dataset_name stand for: a folder with
        diffusers' ``metadata.csv`` is read through that table; anything else as ``parse_source`` reads it."""
        if self.dataset_name:
            return f"hf:{self.dataset_name}"
        if not self.train_data_dir:
            return self.train_data
        try:
            spec = parse_source(self.train_data_dir, hub_ids=False)
        except MedImageError as e:
            raise FileNotFoundError(f"train_data_dir: {e}") from None
        table = Path(self.train_data_dir) / "metadata.csv"
        return str(table) if spec.kind == "folder" and table.is_file() else self.train_data_dir


def _pick_column(
    source: str, role: str, given: str | None, candidates: tuple[str, ...], columns: list[str]
) -> str | None:
    """``given`` when ``columns`` has it, else the first candidate present (None when there is none)."""
    if given is not None and given not in columns:
        raise ValueError(f"{source}: {role} {given!r} not in {columns}")
    return given if given is not None else next((c for c in candidates if c in columns), None)


def resolve_data_args(config: SDLoRATrainConfig) -> DataArgs:
    """DataArgs for ``medsd.data``: aliases resolved and image / caption columns detected."""
    source = config.resolved_train_data()
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(DataArgs) if f.init}
    values["train_data"] = source
    image_col, caption_col = config.image_column, config.caption_column
    spec = parse_source(source)
    if spec.kind == "csv":
        columns, _ = source_columns(DataConfig(source="csv", path=spec.path))
        image_col = _pick_column(source, "image_column", image_col, IMAGE_COLUMN_CANDIDATES, columns)
        if image_col is None:
            raise ValueError(f"{source}: no image column among {columns}; pass --image_column")
        wanted = caption_col is not None or config.prompt_template is None
        caption_col = _pick_column(source, "caption_column", caption_col, CAPTION_COLUMN_CANDIDATES, columns)
        if wanted and caption_col is None:
            raise ValueError(
                f"{source}: no caption column (text, caption, prompt) among {columns}; pass "
                "--caption_column, or --label_column with --prompt_template 'a chest x-ray, {label}'"
            )
        caption_col = caption_col if wanted else None
    elif spec.kind == "hf":
        image_col = image_col or "image"
        if caption_col is None and config.prompt_template is None:
            caption_col = "text"
    values["image_column"] = image_col or "filename"
    values["caption_column"] = caption_col
    return DataArgs(**values)


__all__ = [
    "CAPTION_COLUMN_CANDIDATES",
    "DEFAULT_BASE_MODEL",
    "IMAGE_COLUMN_CANDIDATES",
    "TEXT_ENCODER_TARGET_MODULES",
    "UNET_TARGET_MODULES",
    "SDLoRATrainConfig",
    "resolve_data_args",
]
