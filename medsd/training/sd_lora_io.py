"""SD LoRA weights on disk: diffusers-format LoRA state dicts, accelerate checkpoint hooks that save and load
only the LoRA weights (not the frozen base model), and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model_card import write_model_card
from .sd_lora_config import SDLoRATrainConfig


def lora_state_dicts(unet: nn.Module, text_encoder: nn.Module | None) -> dict[str, Any]:
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


def save_lora_weights(output_dir: str | Path, unet: nn.Module, text_encoder: nn.Module | None) -> None:
    """``pytorch_lora_weights.safetensors`` (diffusers format) of the U-Net (and text encoder) adapters."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(output_dir, **lora_state_dicts(unet, text_encoder))


def _set_peft_state(
    module: nn.Module, state_dict: dict[str, torch.Tensor], what: str, input_dir: str
) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state_dict, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{input_dir}: unexpected {what} LoRA keys {unexpected[:5]}")


def load_lora_weights(input_dir: str, unet: nn.Module, text_encoder: nn.Module | None) -> None:
    """Load the LoRA weights of ``input_dir`` into the U-Net's (and text encoder's) peft adapters."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    state_dict, _ = StableDiffusionPipeline.lora_state_dict(input_dir)
    unet_sd = {k[len("unet.") :]: v for k, v in state_dict.items() if k.startswith("unet.")}
    _set_peft_state(unet, convert_unet_state_dict_to_peft(unet_sd), "U-Net", input_dir)
    if text_encoder is not None:
        # Public conversions (diffusers format -> peft) in place of diffusers' private
        # ``_set_state_dict_into_text_encoder``, which does the same.
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

        te_sd = {k[len("text_encoder.") :]: v for k, v in state_dict.items() if k.startswith("text_encoder.")}
        if not te_sd:
            raise RuntimeError(f"{input_dir}: the checkpoint holds no text-encoder LoRA weights")
        te_sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te_sd))
        _set_peft_state(text_encoder, te_sd, "text-encoder", input_dir)


class LoRACheckpointHooks:
    """accelerate ``save_state`` / ``load_state`` pre-hooks: checkpoints hold only the LoRA weights
    (diffusers format), not the frozen base model."""

    def __init__(self, accelerator: Any, unet: nn.Module, text_encoder: nn.Module, train_text_encoder: bool):
        self.accelerator, self.unet, self.text_encoder = accelerator, unet, text_encoder
        self.train_text_encoder = train_text_encoder

    def register(self) -> None:
        self.accelerator.register_save_state_pre_hook(self.save_state)
        self.accelerator.register_load_state_pre_hook(self.load_state)

    def _ours(self, models: list[nn.Module]) -> list[int]:
        unwrap = self.accelerator.unwrap_model
        return [i for i, model in enumerate(models) if unwrap(model) in (self.unet, self.text_encoder)]

    def save_state(self, models: list[nn.Module], weights: list[Any], output_dir: str) -> None:
        ours = self._ours(models)
        if not ours:
            return
        for i in reversed(ours):
            if i < len(weights):
                weights.pop(i)
        if self.accelerator.is_main_process:
            save_lora_weights(output_dir, self.unet, self.text_encoder if self.train_text_encoder else None)

    def load_state(self, models: list[nn.Module], input_dir: str) -> None:
        from diffusers.training_utils import cast_training_params

        ours = self._ours(models)
        if not ours:
            return
        for i in reversed(ours):
            models.pop(i)
        load_lora_weights(input_dir, self.unet, self.text_encoder if self.train_text_encoder else None)
        trained = [self.unet] + ([self.text_encoder] if self.train_text_encoder else [])
        cast_training_params(trained, dtype=torch.float32)


def write_sd_lora_model_card(output_dir: Path, cfg: SDLoRATrainConfig, prompt: str) -> None:
    """The model card (README.md) of a trained LoRA folder, with a usage example for ``prompt``."""
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
        if "/" in cfg.pretrained_model_name_or_path and not Path(cfg.pretrained_model_name_or_path).exists()
        else None,
        pipeline_tag="text-to-image",
    )


__all__ = [
    "LoRACheckpointHooks",
    "load_lora_weights",
    "lora_state_dicts",
    "save_lora_weights",
    "write_sd_lora_model_card",
]
