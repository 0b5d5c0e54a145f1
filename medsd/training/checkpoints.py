"""Checkpoint folders: atomic writes, rotation, finding one to resume from, protecting finished models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_META = "medsd_checkpoint.json"
FINISHED_MARKERS = ("model_index.json", "pytorch_lora_weights.safetensors", "train_summary.json")


def check_output_dir(output_dir: str | Path, overwrite: bool = False, resuming: bool = False) -> Path:
    """Refuse to write over a finished model unless asked to."""
    out = Path(output_dir)
    if out.exists() and not overwrite and not resuming:
        finished = [m for m in FINISHED_MARKERS if (out / m).exists()]
        if finished:
            raise FileExistsError(
                f"output_dir {out} already holds a finished model ({finished[0]}); pass "
                "--overwrite_output_dir to replace it or --resume_from_checkpoint latest to continue"
            )
    return out


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def find_checkpoint(output_dir: str | Path, which: str) -> Path | None:
    """``"latest"`` (None when there is none) or a named checkpoint folder."""
    if which == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / which
    if not (path / CHECKPOINT_META).is_file():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a medsd checkpoint folder")
    return path


def read_checkpoint_meta(checkpoint: Path) -> tuple[int, list[tuple[int, float]]]:
    """(step, loss history) stored in a checkpoint folder."""
    meta = json.loads((checkpoint / CHECKPOINT_META).read_text())
    return int(meta["step"]), [tuple(h) for h in meta.get("loss_history", [])]


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, meta: dict, limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` atomically: save into a temporary folder, then rename."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / CHECKPOINT_META, "w") as f:
            json.dump(meta, f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if limit is not None and limit > 0:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
