"""Checkpoint folders: atomic writes, rotation, finding one to resume from, protecting finished models."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medsd.errors import MedsdError
from medsd.run_folder import (
    CHECKPOINT_META,
    FINISHED_MARKERS,
    RUN_FINISHED,
    RunFolder,
)

logger = logging.getLogger("medsd.training")


def check_output_dir(output_dir: str | Path, overwrite: bool = False, resuming: bool = False) -> Path:
    """Refuse to write into a folder that holds anything (a finished model, an earlier run's checkpoints,
    other files) unless resuming or asked to overwrite; ``overwrite`` also retires the old checkpoints, so
    a crash of the new run can never resume the old one."""
    out, run = Path(output_dir), RunFolder(output_dir)
    # One process decides (the others may start after it has written training_config.yaml); if it
    # refuses, the launcher stops the rest.
    if not out.is_dir() or resuming or os.environ.get("RANK", "0") != "0":
        return out
    if overwrite:
        for old in list_checkpoints(out):
            _remove(old)
        return out
    finished = run.finished_markers()
    if finished and not run.run_finished.exists() and list_checkpoints(out):
        finished = []  # a run killed while moving its final model in: its checkpoints say resume it
    if finished:
        raise FileExistsError(
            f"output_dir {out} already holds a finished model ({finished[0]}); pass "
            "--overwrite_output_dir to replace it or --resume_from_checkpoint latest to continue"
        )
    if list_checkpoints(out):
        raise FileExistsError(
            f"output_dir {out} holds checkpoints of an earlier run ({list_checkpoints(out)[-1].name}); pass "
            "--resume_from_checkpoint latest to continue it or --overwrite_output_dir to start over"
        )
    others = run.user_files()
    if others:
        raise FileExistsError(
            f"output_dir {out} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
            "choose an empty folder or pass --overwrite_output_dir"
        )
    return out


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's ``checkpoint-<step>`` folders, oldest first."""
    return RunFolder(output_dir).checkpoints()


class CheckpointWriteError(MedsdError):
    """A checkpoint could not be written (full disk, lost file system); the previous one is kept."""


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint counts once its metadata file, written last before the atomic rename, is there."""
    return RunFolder.checkpoint_meta(checkpoint).is_file()


def find_checkpoint(output_dir: str | Path, which: str) -> Path | None:
    """``"latest"`` complete checkpoint (None when there is none; incomplete ones are skipped with a
    warning) or a named checkpoint folder."""
    if which == "latest":
        for ckpt in reversed(list_checkpoints(output_dir)):
            if is_complete(ckpt):
                return ckpt
            logger.warning("skipping %s: incomplete checkpoint (no %s)", ckpt, CHECKPOINT_META)
        return None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / which
    if not is_complete(path):
        raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a complete medsd checkpoint folder")
    return path


def read_checkpoint_meta(checkpoint: Path) -> tuple[int, list[tuple[int, float]]]:
    """(step, loss history) stored in a checkpoint folder."""
    meta = json.loads(RunFolder.checkpoint_meta(checkpoint).read_text())
    return int(meta["step"]), [tuple(h) for h in meta.get("loss_history", [])]


def read_checkpoint_config(checkpoint: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(config class name, config fields) a checkpoint was written with; (None, None) for older ones."""
    meta = json.loads(RunFolder.checkpoint_meta(checkpoint).read_text())
    return meta.get("config_class"), meta.get("config")


def _remove(folder: Path) -> None:
    """Rename ``folder`` out of the checkpoint list first (atomic), then delete it."""
    trash = RunFolder.trash(folder)
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _clean_leftovers(output_dir: Path) -> None:
    """Temporary and half-deleted folders left by a killed run."""
    run = RunFolder(output_dir)
    for p in run.leftovers():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    shutil.rmtree(run.final_stage, ignore_errors=True)


def _write_error(tmp: Path, output_dir: Path, error: BaseException) -> CheckpointWriteError:
    shutil.rmtree(tmp, ignore_errors=True)  # give the space back
    free = shutil.disk_usage(output_dir).free
    no_space = (
        getattr(error, "errno", None) == errno.ENOSPC or "space" in str(error).lower() or free < 64 << 20
    )
    why = (
        "no space left on device"
        if no_space
        else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    )
    kept = [c for c in list_checkpoints(output_dir) if is_complete(c)]
    return CheckpointWriteError(
        f"could not write a checkpoint in {output_dir} ({why}; {free / 2**30:.2f} GiB free); "
        f"the last complete checkpoint is {kept[-1] if kept else 'none'}"
    )


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, meta: dict, limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` atomically: into a temporary folder, metadata last, then one rename.

    An older ``checkpoint-<step>`` (a resumed run passing it again) and rotated checkpoints are first
    renamed away, so a kill at any moment leaves only complete checkpoints under their names.
    """
    run = RunFolder(output_dir)
    final, tmp = run.checkpoint(step), run.checkpoint_in_progress(step)
    if accelerator.is_main_process:
        _clean_leftovers(output_dir)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(RunFolder.checkpoint_meta(tmp), "w") as f:
                json.dump(meta, f)
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise several kinds for a full disk
        raise _write_error(tmp, output_dir, e) from e
    if accelerator.is_main_process:
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        if limit is not None and limit > 0:
            for old in list_checkpoints(output_dir)[:-limit]:
                _remove(old)
    accelerator.wait_for_everyone()
    return final


def final_stage(output_dir: Path) -> Path:
    """An empty ``OUTPUT/.tmp-final/<name>`` to write the final model into (same name, so a model card naming
    its folder names the real one); leftovers of a killed run are removed first."""
    _clean_leftovers(output_dir)
    stage = RunFolder(output_dir).final_stage / output_dir.resolve().name
    stage.mkdir(parents=True)
    return stage


def publish_final(stage: Path, output_dir: Path) -> None:
    """Move the staged final model into ``output_dir``: a kill at any moment leaves either no finished
    markers (the old ones are removed first) or a complete model, and ``train_summary.json`` comes last."""
    names = sorted(p.name for p in stage.iterdir())
    markers = [m for m in FINISHED_MARKERS if m in names]
    for old in (RUN_FINISHED, *FINISHED_MARKERS):  # an older model in the folder stops looking finished
        if (output_dir / old).is_file():
            (output_dir / old).unlink()
    for name in [n for n in names if n not in markers] + markers:
        src, dst = stage / name, output_dir / name
        if dst.is_dir() and not dst.is_symlink():
            _remove(dst)
        elif src.is_dir() and dst.exists():
            dst.unlink()
        os.replace(src, dst)
    shutil.rmtree(RunFolder(output_dir).final_stage, ignore_errors=True)


EMA_STATE = "custom_checkpoint_0.pkl"
"""accelerate's file for the first object registered for checkpointing: the EMA model, when there is one."""


def load_checkpoint_weights(checkpoint: Path, module: Any, ema: bool = True) -> Any:
    """Load a checkpoint's weights of ``module`` (the EMA average when the run kept one and ``ema``) into it.

    For scoring a run as it went (a time-to-quality curve) without resuming it. ``module`` must have the
    architecture the run trained (e.g. the U-Net of its finished pipeline).
    """
    import torch
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    ema_file = checkpoint / EMA_STATE
    if ema and ema_file.is_file():
        shadow = torch.load(ema_file, map_location="cpu", weights_only=True)["shadow_params"]
        params = list(module.parameters())
        if len(shadow) != len(params):
            raise MedsdError(
                f"{ema_file}: {len(shadow)} EMA tensors, but the module has {len(params)} parameters"
            )
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s.to(p.dtype))
        return module
    module.load_state_dict(load_file(checkpoint / "model.safetensors"))
    return module
