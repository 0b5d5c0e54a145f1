"""The layout of a training run's output folder, in one place: every layer that writes, reads, finds,
protects or uploads a run asks :class:`RunFolder` for a name instead of spelling it.

::

    OUTPUT/
      model_index.json | pytorch_lora_weights.safetensors, ...   the finished model (markers moved in last)
      train_summary.json                                        moved in last of all: the run is finished
      checkpoint-<step>/medsd_checkpoint.json                   complete checkpoints (metadata written last)
      logs/  samples/                                           trackers; validation grids
      .tmp-medsd.lock  .tmp-checkpoint-<step>/  .tmp-final/     the lock and what is being written
      .trash-<name>/                                            what is being removed
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_META = "medsd_checkpoint.json"
"""Written last into a checkpoint folder: a checkpoint counts once it is there."""
TEMP_PREFIX = ".tmp-"
"""Names being written; the output-folder check and the Hub upload pass them by."""
TRASH_PREFIX = ".trash-"
"""Checkpoints being removed are renamed to this first (atomic), so a kill can never leave half of one."""
LOCK_NAME = f"{TEMP_PREFIX}medsd.lock"
FINAL_STAGE = f"{TEMP_PREFIX}final"
"""The final model is written into ``OUTPUT/.tmp-final/<name>`` and moved in, the finished markers last."""
FINISHED_MARKERS = ("model_index.json", "pytorch_lora_weights.safetensors", "train_summary.json")
RUN_FINISHED = "train_summary.json"
"""Moved in last of all: a medsd run is finished once it is there."""
LOGS = "logs"
SAMPLES = "samples"
HUB_IGNORE = [
    f"{CHECKPOINT_PREFIX}*",
    f"{CHECKPOINT_PREFIX}*/**",
    f"{TEMP_PREFIX}*",
    f"{TEMP_PREFIX}*/**",
    f"{LOGS}/**",
    f"{SAMPLES}/**",
]
"""What a Hub upload of a run folder leaves out (``huggingface_hub`` ignore patterns)."""


def is_checkpoint_name(name: str) -> bool:
    """``checkpoint-<step>``."""
    return name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit()


def looks_like_checkpoint(folder: Path) -> bool:
    """A folder named like a checkpoint, or holding a checkpoint's metadata."""
    return folder.name.startswith(CHECKPOINT_PREFIX) or (folder / CHECKPOINT_META).is_file()


class RunFolder:
    """The names inside one run's output folder (paths only: nothing is created or read here)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def lock(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def sample_grid(self, step: int) -> Path:
        return self.path / SAMPLES / f"step-{step:07d}.png"

    def checkpoint(self, step: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoint_in_progress(self, step: int) -> Path:
        return self.path / f"{TEMP_PREFIX}{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """The ``checkpoint-<step>`` folders, oldest first (complete or not)."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.iterdir() if p.is_dir() and is_checkpoint_name(p.name)]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))

    @staticmethod
    def checkpoint_meta(checkpoint: Path) -> Path:
        return Path(checkpoint) / CHECKPOINT_META

    def leftovers(self) -> list[Path]:
        """Checkpoints being written and folders being removed when a run was killed."""
        return [*self.path.glob(f"{TEMP_PREFIX}{CHECKPOINT_PREFIX}*"), *self.path.glob(f"{TRASH_PREFIX}*")]

    @staticmethod
    def trash(folder: Path) -> Path:
        return folder.with_name(f"{TRASH_PREFIX}{folder.name}")

    @property
    def final_stage(self) -> Path:
        return self.path / FINAL_STAGE

    def finished_markers(self) -> list[str]:
        """The finished-model files present."""
        return [m for m in FINISHED_MARKERS if (self.path / m).exists()]

    @property
    def run_finished(self) -> Path:
        return self.path / RUN_FINISHED

    def user_files(self) -> list[str]:
        """Names in the folder other than what is being written or removed."""
        return sorted(
            p.name for p in self.path.iterdir() if not p.name.startswith((TEMP_PREFIX, TRASH_PREFIX))
        )


__all__ = [
    "CHECKPOINT_META",
    "CHECKPOINT_PREFIX",
    "FINISHED_MARKERS",
    "HUB_IGNORE",
    "LOCK_NAME",
    "RunFolder",
    "is_checkpoint_name",
    "looks_like_checkpoint",
]
