"""One job table for ``medsd generate``, whatever the number of processes.

Image ``i`` of a run has its own seed (``--seed + i``) and its own ``torch.Generator``. Images are grouped into
fixed batches by index (batch ``k`` = images ``[k*B, (k+1)*B)``), and batch ``k`` is drawn by process
``k mod N``. A batch is drawn the same way by any process, so the files, and their bytes, do not depend on
``N``: ``accelerate launch --num_processes N -m medsd generate ...`` and ``torchrun --nproc_per_node N -m medsd
generate ...`` split the work, and one process draws the same set. Each process appends a line per finished
image to its own manifest part; the main process merges the parts when all processes are done
(:mod:`.generate_store`). SIGTERM / Ctrl-C end a process after its current batch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import generate_store as store
from .generate_draw import ImageSpec, LoadedModel, Settings, draw, sidecar, write_image, write_json

BARRIER_TIMEOUT = timedelta(hours=72)
"""How long the main process waits for the others to finish their share before merging."""


@dataclasses.dataclass
class World:
    """This process's place among the processes of the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_world() -> World:
    """The processes a launcher started (``WORLD_SIZE``/``RANK``; gloo on CPU, NCCL on GPUs), or one.

    Under ``accelerate launch --num_processes N`` on a machine without CUDA, accelerate starts one process:
    that process starts the ``N`` with ``torch.distributed.run`` and exits with their status.
    """
    from medsd.training.distributed import run_cpu_processes, unstarted_cpu_processes

    n = unstarted_cpu_processes()
    if n:
        print(f"medsd: starting {n} CPU processes (gloo) for `accelerate launch --num_processes {n}`")
        raise SystemExit(run_cpu_processes(n, ["-m", "medsd", *sys.argv[1:]]))
    if int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        return World()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    return World(state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone)


def process_device(device: str, world: World) -> str:
    """One GPU per process on a node (``cuda`` -> ``cuda:LOCAL_RANK``); CPU processes share the CPU."""
    return f"cuda:{world.local_rank}" if device == "cuda" and world.size > 1 else device


def batches_of(specs: list[ImageSpec], batch_size: int) -> list[list[ImageSpec]]:
    """Batch ``k`` holds images ``[k*B, (k+1)*B)`` of the run."""
    return [specs[k : k + batch_size] for k in range(0, len(specs), batch_size)]


def my_batches(specs: list[ImageSpec], batch_size: int, world: World) -> list[list[ImageSpec]]:
    """The batches this process draws: ``k mod N == rank``."""
    return batches_of(specs, batch_size)[world.rank :: world.size]


def file_stem(prefix: str, index: int) -> str:
    return f"{prefix}_{index:05d}"


def metadata_row(spec: ImageSpec, family: str, image_name: str, side_name: str) -> dict[str, Any]:
    """The image's ``metadata.jsonl`` row (the columns ``datasets``' imagefolder loader returns)."""
    row: dict[str, Any] = {"file_name": image_name, "index": spec.index, "seed": spec.seed}
    if family == "text2xray":
        row.update(label=spec.label, prompt=spec.prompt)
    if family == "cddpm":
        row.update(condition=spec.condition, mask=spec.mask)
    row["sidecar"] = side_name
    return row


def write_item(
    loaded: LoadedModel,
    spec: ImageSpec,
    image: Any,
    s: Settings,
    stem: Path,
    batch: list[ImageSpec] | None,
) -> dict[str, Any]:
    """Write one image and its sidecar (each renamed into place); returns its manifest line."""
    side = stem.with_name(stem.name + ".json")
    path = write_image(image, stem, s.format)
    write_json(side, sidecar(loaded, spec, s, path.name, batch))
    return {
        "index": spec.index,
        "file_name": path.name,
        "sha256": store.sha256_of(path),
        "sidecar": side.name,
        "sidecar_sha256": store.sha256_of(side),
        "metadata": metadata_row(spec, loaded.family, path.name, side.name),
    }


def draw_share(
    loaded: LoadedModel,
    specs: list[ImageSpec],
    s: Settings,
    out: Path,
    prefix: str,
    batch_size: int,
    batch_invariant: bool,
    world: World,
) -> tuple[int, int | None]:
    """Draw this process's batches, skipping images already done; returns (images written, stop signal)."""
    from tqdm.auto import tqdm

    from medsd.training.signals import StopSignals

    mine = my_batches(specs, batch_size, world)
    done = store.verified_done(out, {sp.index for b in mine for sp in b})
    part = store.ManifestPart(out, world.rank)
    todo_total = sum(sp.index not in done for b in mine for sp in b)
    desc = "generating" if world.size == 1 else f"generating (process {world.rank})"
    loaded.pipe.set_progress_bar_config(leave=False, desc="denoising")
    written = 0
    with StopSignals() as stop, tqdm(total=todo_total, desc=desc, unit="image") as bar:
        for batch in mine:
            if stop.received:
                break
            todo = [sp for sp in batch if sp.index not in done]
            # batch-invariant: each image alone; batched: the whole batch, so that every image keeps its bytes
            calls = [[sp] for sp in todo] if batch_invariant else ([batch] if todo else [])
            for call in calls:
                for spec, image in zip(call, draw(loaded, call, s)):
                    if spec.index in done:
                        continue
                    stem = out / file_stem(prefix, spec.index)
                    part.append(write_item(loaded, spec, image, s, stem, None if batch_invariant else call))
                    written += 1
                    bar.update(1)
    return written, stop.received


def provenance(loaded: LoadedModel, s: Settings, seed: int, batching: str) -> dict[str, Any]:
    """What made the images (``manifest.json``): model and weights, versions, sampler, precision, device."""
    import diffusers
    import torch

    import medsd

    return {
        **loaded.record,
        "family": loaded.family,
        "scheduler": s.scheduler,
        "scheduler_class": type(loaded.pipe.scheduler).__name__,
        "num_inference_steps": s.num_inference_steps,
        "guidance_scale": s.guidance_scale,
        "negative_prompt": s.negative_prompt,
        "seed": seed,
        "seeds": "image i: seed + i, one torch.Generator per image",
        "batching": batching,
        "dtype": s.dtype,
        "device": loaded.pipe.device.type,
        "format": s.format,
        "versions": {
            "medsd": medsd.__version__,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        },
    }


def identity(
    loaded: LoadedModel, s: Settings, specs: list[ImageSpec], seed: int, prefix: str, batching: str
) -> dict[str, Any]:
    """What a re-run must draw the same to continue a run (``run.json``)."""
    images = [[sp.prompt, sp.label, sp.condition, sp.mask] for sp in specs]
    return {
        **{k: loaded.record.get(k) for k in ("model", "weights_sha256", "base_model_weights_sha256")},
        "family": loaded.family,
        "scheduler": s.scheduler,
        "num_inference_steps": s.num_inference_steps,
        "seed": seed,
        "images": {"count": len(specs), "sha256": _digest(images)},
        "guidance_scale": s.guidance_scale,
        "negative_prompt": s.negative_prompt,
        "size": [s.height, s.width, s.image_size],
        "task": [s.task, s.keep_known_pixels],
        "dtype": s.dtype,
        "device": loaded.pipe.device.type,
        "format": s.format,
        "prefix": prefix,
        "batching": batching,
    }


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def run_share(
    loaded: LoadedModel,
    specs: list[ImageSpec],
    s: Settings,
    out: Path,
    prefix: str,
    batch_size: int,
    batch_invariant: bool,
    seed: int,
    world: World,
    finish: Callable[[Path, dict[str, Any]], None] | None = None,
) -> int:
    """Draw this process's share of the run into ``out``, then (main process) merge; the exit status."""
    batching = "invariant" if batch_invariant else f"batch_size={batch_size}"
    written, signum = draw_share(loaded, specs, s, out, prefix, batch_size, batch_invariant, world)
    world.barrier()
    if signum:
        print(
            f"medsd generate: stopped by signal {signum} after the current batch ({written} image(s) written by "
            f"process {world.rank}); run the same command again to continue",
            file=sys.stderr,
        )
        return 128 + signum
    if not world.is_main:
        return 0
    prov = provenance(loaded, s, seed, batching)
    if not store.merge(out, len(specs), prov):
        print(
            f"medsd generate: {out} is not complete; run the same command again to finish it", file=sys.stderr
        )
        return 1
    if finish is not None:
        finish(out, prov)
    print(f"wrote {len(specs)} {loaded.family} images (and a NAME.json sidecar for each) to {out}")
    return 0
