"""What ``medsd generate`` reads and records: cDDPM condition inputs, and the hashes its sidecars carry."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CONDITION_COLUMNS = ("condition", "image", "path", "filename", "file_name")


class GenerateError(MedsdError):
    """Bad ``medsd generate`` input (model, condition, prompt, sidecar)."""


# -- command line ------------------------------------------------------------------------------------------


def weights_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 over the weight files of a model folder (relative path and content of each, sorted)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    files = [
        p for p in files if not any(part.startswith("checkpoint-") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise GenerateError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to hash")
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def list_conditions(
    condition: str | None, mask: str | None, column: str | None
) -> list[tuple[str, str | None]]:
    """(condition image, mask or None) pairs from an image, a folder or a CSV."""
    from medsd.data.io import IMAGE_EXTENSIONS

    if not condition:
        raise GenerateError("a cDDPM model needs --condition (a degraded image, a folder of them, or a CSV)")
    src = Path(condition)
    if not src.exists():
        raise GenerateError(f"--condition {src} does not exist")
    if src.suffix.lower() == ".csv":
        with open(src, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise GenerateError(f"--condition {src}: the CSV has no rows")
        cols = list(rows[0])
        col = column or next((c for c in CONDITION_COLUMNS if c in cols), None)
        if col is None or col not in cols:
            raise GenerateError(f"--condition {src}: no image column among {cols}; pass --condition_column")
        pairs = []
        for r in rows:
            img = str((src.parent / r[col]).resolve())
            m = r.get("mask") or None
            pairs.append((img, str((src.parent / m).resolve()) if m else None))
        paths = pairs
    elif src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise GenerateError(f"--condition {src}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        paths = [(str(p.resolve()), None) for p in files]
    else:
        paths = [(str(src.resolve()), None)]
    if mask:
        m = Path(mask)
        if not m.exists():
            raise GenerateError(f"--mask {m} does not exist")
        out = []
        for img, _ in paths:
            mp = m / Path(img).name if m.is_dir() else m
            if not mp.is_file():
                raise GenerateError(f"--mask {m}: no mask {mp.name} for condition image {img}")
            out.append((img, str(mp.resolve())))
        paths = out
    return paths


def read_condition(path: str, mapping: Any) -> Any:
    """A condition image as a ``[1, 1, H, W]`` tensor in [-1, 1], through the model's intensity mapping."""
    import numpy as np
    import torch

    from medsd.data.io import read_image

    img = read_image(path)
    arr = img.array
    if mapping is not None:
        x = np.asarray(mapping.forward(arr), dtype=np.float32)
    else:
        top = float(2 ** int(img.meta.get("bit_depth") or 8) - 1)
        x = np.clip(arr / top, 0, 1).astype(np.float32) * 2 - 1
    return torch.from_numpy(x)[None, None]


def read_mask(path: str) -> Any:
    import numpy as np

    from medsd.data.io import read_image

    img = read_image(path)
    top = float(2 ** int(img.meta.get("bit_depth") or 8) - 1)
    return (np.asarray(img.array) / top > 0.5).astype(np.float32)
