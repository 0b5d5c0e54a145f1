"""The state of a ``medsd generate`` output folder, so that a run can stop anywhere and start again.

- ``.medsd_generate/run.json``: what the run draws (model and weights hash, sampler, steps, seed, image list,
  precision, format, ...). A re-run must draw the same thing: a different one is refused in one line naming
  the difference.
- ``.medsd_generate/parts/process-NNNNN.jsonl``: one line per finished image, appended by the process that
  wrote it after the image and its sidecar were renamed into place: index, file name, SHA-256 of both, and
  the image's ``metadata.jsonl`` row. A line torn by a kill is skipped.
- ``metadata.jsonl`` and ``manifest.json``: written (temporary name, then renamed) once every image is done,
  from the parts of all processes, sorted by index, so they do not depend on how many processes ran.

An image counts as done only when its line is present and both files still hash to it; anything else is drawn
again (the drawing depends on the image's seed and batch only, so the redraw writes the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .generate_draw import replace_atomically, temporary_name, write_json
from .generate_io import RUN_STATE_DIR, GenerateError

STATE_DIR = RUN_STATE_DIR
RUN_FILE = "run.json"
PARTS_DIR = "parts"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1

IDENTITY_NAMES = {
    "model": "MODEL",
    "weights_sha256": "the weights of MODEL (weights_sha256)",
    "base_model_weights_sha256": "the weights of the base model",
    "family": "the model family",
    "scheduler": "--scheduler",
    "num_inference_steps": "--num_inference_steps",
    "seed": "--seed",
    "images": "the image list (--num_images, --prompt/--prompt_file, --label, --condition/--mask)",
    "guidance_scale": "--guidance_scale",
    "negative_prompt": "--negative_prompt",
    "size": "--height/--width/--image_size",
    "task": "--task/--keep_known_pixels",
    "dtype": "--dtype",
    "device": "--device",
    "format": "--format",
    "prefix": "--prefix",
    "batching": "--batch_size/--batch_invariant (batched drawing depends on the batch)",
}
"""``run.json`` keys, and how a refusal names each one."""


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def state_dir(out: Path) -> Path:
    return out / STATE_DIR


def is_resumable(out: Path) -> bool:
    """True when ``out`` holds the state of a ``medsd generate`` run (which a re-run continues)."""
    return (state_dir(out) / RUN_FILE).is_file()


def open_run(out: Path, identity: dict[str, Any], overwrite: bool, is_main: bool) -> None:
    """Check that ``out`` is empty or holds this same run; the main process records the run in a new folder.

    A run with another identity is refused with one line naming the first difference (``--overwrite`` starts
    the new run over the old one instead).
    """
    run_file = state_dir(out) / RUN_FILE
    same = True
    if run_file.is_file():
        before = json.loads(run_file.read_text())
        diff = next((k for k in IDENTITY_NAMES if before.get(k) != identity.get(k)), None)
        same = diff is None
        if not same and not overwrite:
            raise GenerateError(
                f"--out {out} holds a run with another {IDENTITY_NAMES[diff]}: {_short(before.get(diff))} there, "
                f"{_short(identity.get(diff))} now; re-run the same command to continue it, choose another "
                "--out, or pass --overwrite to replace it"
            )
    if not is_main:
        return
    if not same:
        shutil.rmtree(state_dir(out) / PARTS_DIR, ignore_errors=True)
    (state_dir(out) / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".tmp-*"):  # files a killed run was writing: never renamed, never counted
        leftover.unlink(missing_ok=True)
    if not run_file.is_file() or not same:
        write_json(run_file, identity)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_parts(out: Path) -> dict[int, dict[str, Any]]:
    """The last complete line per image index over every process's part (torn lines skipped)."""
    lines: dict[int, dict[str, Any]] = {}
    for part in sorted((state_dir(out) / PARTS_DIR).glob("process-*.jsonl")):
        for raw in part.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and isinstance(line.get("index"), int):
                lines[line["index"]] = line
    return lines


def is_intact(out: Path, line: dict[str, Any]) -> bool:
    """The image and sidecar a part line names exist and still hash to it."""
    image, side = out / line["file_name"], out / line["sidecar"]
    return (
        image.is_file()
        and side.is_file()
        and sha256_of(image) == line.get("sha256")
        and sha256_of(side) == line.get("sidecar_sha256")
    )


def verified_done(out: Path, indices: set[int]) -> set[int]:
    """The images among ``indices`` that are finished and intact (see the module doc)."""
    lines = read_parts(out)
    return {i for i in indices if i in lines and is_intact(out, lines[i])}


class ManifestPart:
    """The append-only part of one process: a line per finished image, on disk before the next image."""

    def __init__(self, out: Path, rank: int):
        self.path = state_dir(out) / PARTS_DIR / f"process-{rank:05d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # a kill mid-line: end it so the next line starts clean
                with open(self.path, "a") as f:
                    f.write("\n")

    def append(self, line: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def merge(out: Path, num_images: int, provenance: dict[str, Any]) -> bool:
    """Write ``metadata.jsonl`` and ``manifest.json`` from every part when all ``num_images`` are done."""
    lines = read_parts(out)
    if any(i not in lines or not (out / lines[i]["file_name"]).is_file() for i in range(num_images)):
        return False
    ordered = [lines[i] for i in range(num_images)]
    tmp = temporary_name(out / METADATA_FILE)
    tmp.write_text("".join(json.dumps(line["metadata"]) + "\n" for line in ordered))
    replace_atomically(tmp, out / METADATA_FILE)
    items = [
        {k: line[k] for k in ("index", "file_name", "sha256", "sidecar", "sidecar_sha256")}
        for line in ordered
    ]
    write_json(
        out / MANIFEST_FILE,
        {"medsd_generate_manifest": MANIFEST_VERSION, **provenance, "num_images": num_images, "items": items},
    )
    return True
