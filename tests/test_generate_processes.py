"""``medsd generate`` writes the same files, byte for byte, from one process and from two CPU processes
(``accelerate launch --num_processes 2`` as docs/generate.md shows it, and ``torchrun --nproc_per_node 2``,
gloo), for each family: the light DDPM, the cDDPM (condition images from a folder) and the text-to-X-ray
(a tiny random Stable Diffusion); and the same files with batch sizes 1 and 3 in the batch-invariant mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sd_fixtures
import torch
from diffusers import DDPMScheduler
from PIL import Image

from medsd.cli import main
from medsd.data.degradations import Degradation
from medsd.models import LightUNet2DModel
from medsd.pipelines.cddpm import MedCDDPMPipeline, paper_scheduler
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

REPO = Path(__file__).resolve().parents[1]
single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base
ACCELERATE = ["accelerate.commands.launch", "--num_processes", "2"]
TORCHRUN = ["torch.distributed.run", "--nproc_per_node", "2"]


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of the dataset (the run state under .medsd_generate/ aside)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".medsd_generate" not in p.parts
    }


def launch(launcher: list[str], args: list) -> str:
    """``python -m LAUNCHER ... -m medsd generate ARGS`` on the CPU, one torch thread per process."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MEDSD_CPU_BF16="0", CUDA_VISIBLE_DEVICES="")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", *launcher, "-m", "medsd", "generate", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _ddpm(folder: Path) -> list:
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    p = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=100).config))
    p.save_pretrained(folder / "ddpm")
    return [folder / "ddpm", "--num_images", 5]


def _cddpm(folder: Path) -> list:
    torch.manual_seed(0)
    d = Degradation("denoise")
    unet = LightUNet2DModel(
        sample_size=16, in_channels=1 + d.cond_channels, block_out_channels=(8, 16), norm_num_groups=8
    )
    p = MedCDDPMPipeline(unet=unet, scheduler=paper_scheduler(20))
    p.medsd_metadata = {"task": "denoise", "cond_channels": d.cond_channels, "degradation": d.to_dict()}
    p.save_pretrained(folder / "cddpm")
    conds = folder / "conditions"
    conds.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(conds / name)
    return [folder / "cddpm", "--condition", conds, "--num_images", 3]  # 2 conditions x 3 samples


def _text2xray(folder: Path, base: Path) -> list:
    return [base, "--label", "No Finding=3", "--label", "Pneumonia=2"]


@pytest.fixture(scope="module", params=["ddpm", "cddpm", "text2xray"])
def family_args(request, tmp_path_factory) -> tuple[str, list]:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "text2xray":
        return request.param, _text2xray(folder, request.getfixturevalue("tiny_sd_base"))
    return request.param, {"ddpm": _ddpm, "cddpm": _cddpm}[request.param](folder)


def _check_columns(family: str, out: Path) -> None:
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == {"ddpm": 5, "cddpm": 6, "text2xray": 5}[family]
    assert len(list(out.glob("*.png"))) == len(rows)
    assert [r["index"] for r in rows] == list(range(len(rows))) and [r["seed"] for r in rows] == [
        r["index"] for r in rows
    ]
    if family == "cddpm":
        assert [Path(r["condition"]).name for r in rows] == ["a.png"] * 3 + ["b.png"] * 3
    if family == "text2xray":
        assert [r["label"] for r in rows] == ["No Finding"] * 3 + ["Pneumonia"] * 2


@pytest.mark.slow
def test_each_family_one_process_two_processes_and_batch_sizes_give_the_same_files(
    family_args, tmp_path, monkeypatch
):
    family, args = family_args
    monkeypatch.setenv("MEDSD_CPU_BF16", "0")
    args = [*args, "--num_inference_steps", 2, "--device", "cpu"]
    invariant, batched = ["--batch_invariant", "true"], ["--batch_invariant", "false", "--batch_size", 3]
    for name, extra in [("b1", [*invariant, "--batch_size", 1]), ("b3", [*invariant, "--batch_size", 3])]:
        assert main(["generate", *map(str, [*args, *extra, "--out", tmp_path / name])]) == 0
    assert main(["generate", *map(str, [*args, *batched, "--out", tmp_path / "batched"])]) == 0
    launch(ACCELERATE, [*args, *invariant, "--batch_size", 3, "--out", tmp_path / "accelerate"])
    launch(TORCHRUN, [*args, *batched, "--out", tmp_path / "torchrun"])
    for two in ("accelerate", "torchrun"):  # both processes drew their share
        parts = sorted(p.name for p in (tmp_path / two / ".medsd_generate" / "parts").iterdir())
        assert parts == ["process-00000.jsonl", "process-00001.jsonl"], two
    b1, b3, acc = (files_of(tmp_path / d) for d in ("b1", "b3", "accelerate"))
    assert sorted(b1) == sorted(b3) == sorted(acc)
    assert all(b1[k] == b3[k] == acc[k] for k in b1), [k for k in b1 if not b1[k] == b3[k] == acc[k]]
    one, two = files_of(tmp_path / "batched"), files_of(tmp_path / "torchrun")
    assert sorted(one) == sorted(two) and all(one[k] == two[k] for k in one)
    _check_columns(family, tmp_path / "b1")
