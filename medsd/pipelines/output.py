"""Turning model outputs in [-1, 1] into 1-channel images; finding a model folder locally or on the Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "uint16", "native")


def postprocess(images: torch.Tensor, output_type: str = "pil", mapping: Any = None) -> Any:
    """Convert a batch ``[B, 1, H, W]`` in [-1, 1] to the requested type.

    ``pil``: list of PIL "L" images; ``np``: float32 ``[B, H, W]`` in [0, 1]; ``pt``: the tensor in [-1, 1];
    ``uint16``: ``[B, H, W]`` uint16 using all 16 bits; ``native``: float32 ``[B, H, W]`` in the original
    units of the training data (e.g. HU) through the saved intensity mapping.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    images = images.detach().float().clamp(-1, 1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape [B, 1, H, W], got {tuple(images.shape)}")
    if output_type == "pt":
        return images
    x01 = ((images[:, 0] + 1) / 2).cpu().numpy()
    if output_type == "np":
        return x01
    if output_type == "uint16":
        return np.round(x01 * 65535).astype(np.uint16)
    if output_type == "native":
        if mapping is None:
            raise ValueError("output_type='native' needs the intensity mapping saved with the model")
        return np.asarray(mapping.inverse(images[:, 0].cpu().numpy()), dtype=np.float32)
    from PIL import Image

    return [Image.fromarray(np.round(x * 255).astype(np.uint8), mode="L") for x in x01]


def looks_like_path(name: str) -> bool:
    """True for a string that can only be a local path (a Hub id is ``name`` or ``owner/name``)."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).is_absolute()
        or name.strip() == ""
    )


def resolve_local_dir(path_or_id: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local folder for a path or a Hub id (downloaded with ``snapshot_download``)."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{p} is a file; expected a model folder or a Hub model id")
    if isinstance(path_or_id, os.PathLike) or looks_like_path(str(path_or_id)):
        raise FileNotFoundError(f"model folder {p} does not exist; expected a model folder or a Hub model id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), **hub_kwargs))
    except Exception as e:
        raise OSError(
            f"could not find a local folder {path_or_id!r} nor download it from the Hugging Face Hub ({e}). "
            "Offline, pass a local folder or set HF_HUB_OFFLINE=1 with the model in the local cache."
        ) from e
