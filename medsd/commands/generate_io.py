"""What ``medsd generate`` reads, checks and records: its flags and output folder, cDDPM condition inputs, and the
hashes its sidecars carry."""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError
from medsd.run_folder import CHECKPOINT_PREFIX

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CONDITION_COLUMNS = ("condition", "image", "path", "filename", "file_name")


class GenerateError(MedsdError):
    """Bad ``medsd generate`` input (model, condition, prompt, sidecar)."""


# -- command line ------------------------------------------------------------------------------------------
FAMILY_FLAGS = {
    "text2xray": (
        "prompt",
        "prompt_file",
        "label",
        "labels_csv",
        "negative_prompt",
        "guidance_scale",
        "height",
        "width",
    ),
    "cddpm": ("condition", "condition_column", "mask", "task", "image_size"),
}


RUN_STATE_DIR = ".medsd_generate"
"""Where a ``medsd generate`` run keeps its state inside ``--out`` (see :mod:`.generate_store`)."""


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file or already has files (the folder is made once the model has loaded).

    The run state folder alone does not count: another process of the same launch may have just made it."""
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} is a file; expected a folder")
    if out.exists() and any(p.name != RUN_STATE_DIR for p in out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to write into it")


def folder_family(model: str | None) -> str | None:
    """The family of a local model folder read from its files (None for a Hub id or an unknown folder)."""
    from medsd.pipelines.folder import LORA_WEIGHTS_FILE, MODEL_INDEX, folder_class_name, read_model_index
    from medsd.pipelines.samplers import LORA_FAMILY, family_of_class

    folder = Path(model) if model else None
    if folder is None or not folder.is_dir():
        return None
    if (folder / MODEL_INDEX).is_file():
        return family_of_class(folder_class_name(read_model_index(folder)))
    return LORA_FAMILY if (folder / LORA_WEIGHTS_FILE).is_file() else None


def check_family_flags(args: argparse.Namespace, family: str | None) -> None:
    """Refuse flags of another model family (they would be silently ignored)."""
    if family is None:
        return
    for fam, flags in FAMILY_FLAGS.items():
        given = [f for f in flags if getattr(args, f, None) is not None]
        if fam != family and given:
            raise GenerateError(f"--{given[0]} applies to {fam} models; {args.model} is a {family} model")


def prompts_of(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        pf = Path(args.prompt_file)
        if not pf.is_file():
            raise GenerateError(f"--prompt_file {pf} does not exist")
        prompts += [line.strip() for line in pf.read_text().splitlines() if line.strip()]
    if not prompts:
        raise GenerateError("a text-to-X-ray model needs --prompt TEXT or --prompt_file FILE")
    return prompts


def parse_labels(values: list[str]) -> list[tuple[str, int]]:
    """``--label NAME=COUNT`` values as (label, count) pairs, in the order given."""
    pairs: list[tuple[str, int]] = []
    for value in values:
        name, sep, count = value.rpartition("=")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise GenerateError(
                f"--label {value!r}: expected NAME=COUNT with a count >= 1, e.g. Pneumonia=500"
            )
        if any(name.strip() == n for n, _ in pairs):
            raise GenerateError(f"--label {name.strip()!r} is given twice")
        pairs.append((name.strip(), int(count)))
    return pairs


def read_label_table(path: str | os.PathLike) -> list[tuple[str | None, str | None, int]]:
    """``--labels_csv`` rows as (label, prompt, count), in file order. The table has a ``count`` column and a
    ``label`` and/or ``prompt`` column; a row's prompt is used as given, a label alone is prompted through the
    model's prompt template."""
    p = Path(path)
    if not p.is_file():
        raise GenerateError(f"--labels_csv {p} does not exist")
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or [] if c]
        if "count" not in columns or not {"label", "prompt"} & set(columns):
            raise GenerateError(
                f"--labels_csv {p}: expected a 'count' column and a 'label' or 'prompt' column, got {columns}"
            )
        rows: list[tuple[str | None, str | None, int]] = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            label, prompt, count = row.get("label") or None, row.get("prompt") or None, row.get("count", "")
            if not count.isdigit() or int(count) < 1:
                raise GenerateError(
                    f"--labels_csv {p}, line {line}, column 'count': expected an integer >= 1, got {count!r}"
                )
            if label is None and prompt is None:
                raise GenerateError(f"--labels_csv {p}, line {line}: both 'label' and 'prompt' are empty")
            if any((label, prompt) == (lab, pr) for lab, pr, _ in rows):
                raise GenerateError(f"--labels_csv {p}, line {line}: {label or prompt!r} is listed twice")
            rows.append((label, prompt, int(count)))
    if not rows:
        raise GenerateError(f"--labels_csv {p}: the table has no rows")
    return rows


def weights_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 over the weight files of a model folder (relative path and content of each, sorted)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    files = [
        p
        for p in files
        if not any(part.startswith(CHECKPOINT_PREFIX) for part in p.relative_to(folder).parts)
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
