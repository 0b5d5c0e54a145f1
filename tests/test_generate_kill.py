"""``medsd generate`` killed with SIGKILL at many points, then re-run with the same command, ends with exactly
the files of an uninterrupted run: no duplicate, no gap, no corrupt or half-written file.

The children are forked from a multiprocessing fork server that has imported torch, diffusers and medsd once
(no torch op runs before the fork), so each try costs the model load, not the imports; each is still a real
process killed with a real SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from medsd.cli import main
from medsd.models import LightUNet2DModel
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

KILLS = 12
PRELOAD = [
    "torch",
    "diffusers",
    "medsd.cli",
    "medsd.commands.generate",
    "medsd.pipelines.ddpm",
    "medsd.pipelines.auto",
]


def files_of(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".medsd_generate" not in p.parts
    }


def _child(argv: list[str]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os._exit(main(argv))


def _entries(out: Path) -> int:
    parts = out / ".medsd_generate" / "parts"
    lines = sum(p.read_bytes().count(b"\n") for p in parts.glob("*.jsonl")) if parts.is_dir() else 0
    return (len(os.listdir(out)) if out.is_dir() else 0) + lines


def _kill_at_a_random_point(ctx, argv: list[str], out: Path, rng: random.Random) -> int | None:
    """Start a run, SIGKILL it once it has made 1-4 new files or lines (or after a random time); its exit code."""
    proc = ctx.Process(target=_child, args=(argv,))
    seen = _entries(out)
    target = rng.randint(1, 4)
    deadline = time.monotonic() + rng.uniform(0.5, 20.0)
    proc.start()
    while proc.is_alive() and _entries(out) < seen + target and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.kill()  # SIGKILL
    proc.join()
    return proc.exitcode


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    p = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=100).config))
    folder = tmp_path_factory.mktemp("kill") / "ddpm"
    p.save_pretrained(folder)
    return folder


def test_sigkill_at_many_points_then_rerun_gives_the_uninterrupted_files(ddpm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSD_CPU_BF16", "0")
    common = [
        "generate",
        str(ddpm_dir),
        "--num_images",
        "12",
        "--batch_size",
        "3",
        "--batch_invariant",
        "false",
    ]
    common += ["--num_inference_steps", "2", "--format", "png16", "--dtype", "fp32"]
    assert main([*common, "--out", str(tmp_path / "reference")]) == 0
    reference = files_of(tmp_path / "reference")
    out = tmp_path / "killed"
    argv = [*common, "--out", str(out)]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    rng = random.Random(0)
    codes = [_kill_at_a_random_point(ctx, argv, out, rng) for _ in range(KILLS)]
    assert codes.count(-9) >= 10, f"fewer than 10 runs were killed mid-way: {codes}"
    assert main(argv) == 0
    got = files_of(out)
    assert sorted(got) == sorted(reference), "missing or extra files"
    assert [k for k in reference if got[k] != reference[k]] == [], "files differ from the uninterrupted run"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")], "a temporary file was left"
