"""SD LoRA training data: the source dataset, prompts and tokens, and tensors cached once (latents, embeddings)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .data_args import build_training_data
from .sd_lora_config import SDLoRATrainConfig, resolve_data_args

logger = logging.getLogger("medsd.training.sd_lora")


def uses_tensor_cache(config: SDLoRATrainConfig) -> bool:
    """Whether training reads an :class:`SDTensorDataset` (images or latents prepared once) rather than
    items read on the fly."""
    return config.cache_latents or config.cache_text_embeddings or config.cache_images_on_device


def build_source_dataset(config: SDLoRATrainConfig) -> tuple[Any, Any]:
    """(dataset yielding ``pixel_values`` [1, H, W] in [-1, 1] and ``prompt``, intensity mapping), through
    the shared ``build_training_data``. Items prepared once come without jitter: batches get it later."""
    return build_training_data(resolve_data_args(config), cache=False, augment=not uses_tensor_cache(config))


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


def _encode_latents(
    vae: Any,
    pixels: list[torch.Tensor],
    config: SDLoRATrainConfig,
    device: torch.device,
    storage: torch.device,
) -> dict[str, torch.Tensor]:
    """VAE latent distributions (mean, std) of every image, and of its mirror image with ``hflip``."""
    from tqdm.auto import tqdm

    from medsd.data.transforms import hflip

    parts: dict[str, list[torch.Tensor]] = {"latent_mean": [], "latent_std": []}
    if config.hflip:
        parts.update(latent_mean_flipped=[], latent_std_flipped=[])
    bs = max(1, config.train_batch_size)
    for start in tqdm(range(0, len(pixels), bs), desc="encoding latents", disable=not config.progress_bar):
        x = torch.stack(pixels[start : start + bs]).to(device, vae.dtype)
        views = [("", x)] + ([("_flipped", hflip(x))] if config.hflip else [])
        for suffix, view in views:
            dist = vae.encode(to_vae_input(view)).latent_dist
            parts[f"latent_mean{suffix}"].append(dist.mean.float().to(storage))
            parts[f"latent_std{suffix}"].append(dist.std.float().to(storage))
    return {k: torch.cat(v) for k, v in parts.items()}


def _encode_prompts(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    device: torch.device,
    storage: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text-encoder embeddings of the distinct prompts, each item's index into them)."""
    unique = sorted(set(prompts))
    lookup = {p: k for k, p in enumerate(unique)}
    embeds = []
    for start in range(0, len(unique), 64):
        ids = tokenize(tokenizer, unique[start : start + 64]).to(device)
        embeds.append(text_encoder(ids, return_dict=False)[0].to(storage, dtype))
    logger.info("cached text embeddings of %d distinct prompts", len(unique))
    index = torch.tensor([lookup[p] for p in prompts], dtype=torch.long, device=storage)
    return torch.cat(embeds), index


@torch.no_grad()
def build_tensor_dataset(
    source: Any,
    config: SDLoRATrainConfig,
    vae: Any,
    tokenizer: Any,
    text_encoder: Any,
    device: torch.device,
    weight_dtype: torch.dtype,
) -> SDTensorDataset:
    """Read the source once; encode images with the VAE / prompts with the text encoder when asked."""
    from tqdm.auto import tqdm

    storage = device if config.cache_images_on_device else torch.device("cpu")
    pixels, prompts = [], []
    for i in tqdm(range(len(source)), desc="reading images", disable=not config.progress_bar):
        item = source[i]
        pixels.append(item["pixel_values"].float())
        prompts.append(prompt_of(item))
    if config.cache_latents:
        tensors = _encode_latents(vae, pixels, config, device, storage)
    else:
        half = torch.float16 if storage.type == "cuda" else torch.float32
        tensors = {"pixel_values": torch.stack(pixels).to(storage, half)}
    prompt_index = None
    if config.cache_text_embeddings:
        tensors["prompt_embeds"], prompt_index = _encode_prompts(
            tokenizer, text_encoder, prompts, device, storage, weight_dtype
        )
    else:
        tensors["input_ids"] = tokenize(tokenizer, prompts).to(storage)
    return SDTensorDataset(tensors, prompt_index)


__all__ = [
    "SDStreamingDataset",
    "SDTensorDataset",
    "build_source_dataset",
    "build_tensor_dataset",
    "uses_tensor_cache",
    "prompt_of",
    "to_vae_input",
    "tokenize",
]
