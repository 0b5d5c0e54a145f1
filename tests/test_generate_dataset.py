"""``medsd generate`` as a dataset maker: the same DDPM files from 1 or 2 processes (accelerate launch batched,
torchrun batch-invariant; every family in both launchers: test_generate_processes.py),
resume that skips verified images and refuses another run, an imagefolder dataset with its columns, a
class-balanced label table, a dataset card and a dataset push that reaches the Hub call without network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sd_fixtures
import torch
from diffusers import DDPMScheduler

from medsd.cli import main
from medsd.models import LightUNet2DModel
from medsd.pipelines.ddpm import MedDDPMPipeline, fast_scheduler

REPO = Path(__file__).resolve().parents[1]
single_torch_thread = sd_fixtures.single_torch_thread
tiny_sd_base = sd_fixtures.tiny_sd_base
STEPS = ["--num_inference_steps", "2"]


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    unet = LightUNet2DModel(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    p = MedDDPMPipeline(unet=unet, scheduler=fast_scheduler(DDPMScheduler(num_train_timesteps=100).config))
    folder = tmp_path_factory.mktemp("gen") / "ddpm"
    p.save_pretrained(folder)
    return folder


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of the dataset (the run state under .medsd_generate/ aside)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".medsd_generate" not in p.parts
    }


def _run(*args) -> int:
    return main(["generate", *map(str, args)])


def _launch(launcher: list[str], args: list) -> None:
    env = dict(
        os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1"
    )
    env.update(HF_HUB_OFFLINE="1", MEDSD_CPU_BF16="0")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", *launcher, "-m", "medsd", "generate", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, mode",
    [
        (["accelerate.commands.launch", "--num_processes", "2"], ["--batch_invariant", "false"]),
        (["torch.distributed.run", "--nproc_per_node", "2"], ["--batch_invariant", "true"]),
    ],
    ids=["accelerate-batched", "torchrun-invariant"],
)
def test_two_cpu_processes_write_the_files_of_one(ddpm_dir, tmp_path, monkeypatch, launcher, mode):
    monkeypatch.setenv("MEDSD_CPU_BF16", "0")
    args = [ddpm_dir, "--num_images", 5, "--batch_size", 2, *STEPS, *mode]
    assert _run(*args, "--out", tmp_path / "one") == 0
    log = _launch(launcher, [*args, "--out", tmp_path / "two"])
    parts = sorted(p.name for p in (tmp_path / "two" / ".medsd_generate" / "parts").iterdir())
    assert parts == ["process-00000.jsonl", "process-00001.jsonl"], log[-2000:]  # both processes drew
    one, two = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert sorted(one) == sorted(two) and len([k for k in one if k.endswith(".png")]) == 5
    assert all(one[k] == two[k] for k in one), [k for k in one if one[k] != two[k]]


def test_rerun_skips_verified_images_redraws_corrupt_ones_and_refuses_another_seed(
    ddpm_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = [ddpm_dir, "--num_images", 4, "--batch_size", 2, *STEPS, "--out", out]
    assert _run(*args) == 0
    before = files_of(out)
    first = out / "image_00001.png"
    mtime = (out / "image_00002.png").stat().st_mtime_ns
    first.write_bytes(b"not a png")  # corrupt: its hash no longer verifies
    (out / "image_00003.png").unlink()  # missing
    assert _run(*args) == 0
    assert files_of(out) == before
    assert (out / "image_00002.png").stat().st_mtime_ns == mtime  # a verified image is not rewritten
    capsys.readouterr()
    assert _run(*args[:-2], "--seed", 1, "--out", out) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "--seed" in err[0] and "0 there, 1 now" in err[0]
    assert files_of(out) == before


def test_imagefolder_dataset_has_the_columns_and_the_card_passes(ddpm_dir, tmp_path):
    from datasets import load_dataset

    from medsd.commands.dataset_card import check_dataset_card

    out = tmp_path / "ds"
    assert _run(ddpm_dir, "--num_images", 3, *STEPS, "--out", out, "--license", "cc-by-4.0") == 0
    ds = load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 3 and {"image", "index", "seed", "sidecar"} <= set(ds.column_names)
    assert sorted(ds["seed"]) == [0, 1, 2] and ds[0]["image"].size == (16, 16)
    assert check_dataset_card(out / "README.md") == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_images"] == 3 and set(manifest["versions"]) == {"medsd", "diffusers", "torch"}
    assert len(manifest["weights_sha256"]) == 64 and manifest["dtype"] in ("float32", "bfloat16")


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda t: t.replace("license: cc-by-4.0\n", ""), "license is missing"),
        (lambda t: t.replace("- n<1K\n", "").replace("size_categories:\n", ""), "size_categories is missing"),
        (lambda t: t.replace("task_categories:\n- unconditional-image-generation\n", ""), "task_categories"),
        (lambda t: t.replace("- synthetic\n", ""), "tag 'synthetic'"),
        (lambda t: t.replace("- medical\n", ""), "tag 'medical'"),
        (lambda t: t.replace("## How it was made", "## Notes"), "How it was made"),
        (lambda t: t.replace("## Evaluation", "## Scores"), "Evaluation"),
        (lambda t: t.replace("not for diagnosis", "fine"), "not for diagnosis"),
    ],
)
def test_card_check_catches_each_missing_field(ddpm_dir, tmp_path_factory, edit, problem):
    from medsd.commands.dataset_card import check_dataset_card

    out = tmp_path_factory.getbasetemp() / "card_ds"
    if not (out / "README.md").is_file():
        assert _run(ddpm_dir, "--num_images", 2, *STEPS, "--out", out, "--license", "cc-by-4.0") == 0
    card = out.parent / "edited.md"
    card.write_text(edit((out / "README.md").read_text()))
    problems = check_dataset_card(card)
    assert len(problems) == 1 and problem in problems[0], problems


def test_dataset_push_reaches_the_hub_call_private_with_the_gate(ddpm_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    out = tmp_path / "ds"
    assert _run(ddpm_dir, "--num_images", 2, *STEPS, "--out", out) == 0
    calls: dict = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None: {"name": "me"})
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.update(create=(repo_id, kw)))
    for method in ("upload_folder", "upload_large_folder"):
        monkeypatch.setattr(HfApi, method, lambda self, **kw: calls.update(upload=kw), raising=False)
    push = [
        "push",
        str(out),
        "--repo_id",
        "me/synthetic-ct",
        "--repo_type",
        "dataset",
        "--token",
        "hf_secret123456",
    ]
    assert main(push) == 2  # no memorisation audit: refused before any Hub call
    assert not calls
    assert main([*push, "--skip_audit"]) == 0
    assert "--skip_audit" in (out / "README.md").read_text()
    assert calls["create"] == (
        "me/synthetic-ct",
        {"repo_type": "dataset", "private": True, "exist_ok": True, "token": "hf_secret123456"},
    )
    upload = calls["upload"]
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == str(out)
    assert ".medsd_generate/**" in upload["ignore_patterns"]
    assert "hf_secret123456" not in capsys.readouterr().out
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps({"memorisation": {"n_copies": 1, "settings": {"n_generated": 2, "threshold": 0.95}}})
    )
    calls.clear()
    assert main([*push, "--eval_report", str(report)]) == 2  # the models' memorisation gate
    assert "upload" not in calls
    assert main([*push, "--eval_report", str(report), "--allow_memorised"]) == 2  # and it is invalid
    assert "upload" not in calls
    assert main([*push, "--eval_report", str(report), "--allow_memorised", "--skip_audit"]) == 0
    assert "--allow_memorised" in (out / "README.md").read_text()


def test_sigterm_finishes_the_batch_then_the_same_command_finishes_the_run(ddpm_dir, tmp_path, monkeypatch):
    import signal

    from medsd.commands import generate_jobs

    real_draw, calls = generate_jobs.draw, []

    def draw_then_sigterm(loaded, specs, s):
        calls.append([sp.index for sp in specs])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while batch 1 is being drawn
        return real_draw(loaded, specs, s)

    monkeypatch.setattr(generate_jobs, "draw", draw_then_sigterm)
    out = tmp_path / "out"
    args = [
        ddpm_dir,
        "--num_images",
        6,
        "--batch_size",
        2,
        "--batch_invariant",
        "false",
        *STEPS,
        "--out",
        out,
    ]
    assert _run(*args) == 128 + signal.SIGTERM
    assert calls == [[0, 1], [2, 3]]  # the batch in progress was finished, the next one not started
    assert sorted(p.name for p in out.glob("*.png")) == [f"image_{i:05d}.png" for i in range(4)]
    assert not (out / "metadata.jsonl").exists()  # not a dataset yet
    monkeypatch.setattr(generate_jobs, "draw", real_draw)
    assert _run(*args) == 0
    assert len(list(out.glob("*.png"))) == 6 and len((out / "metadata.jsonl").read_text().splitlines()) == 6


def test_labels_csv_makes_a_class_balanced_set_and_bad_tables_are_one_line_errors(
    tiny_sd_base, tmp_path, capsys
):
    table = tmp_path / "labels.csv"
    table.write_text('label,prompt,count\nNo Finding,,2\nPneumonia,,1\n,"a chest x-ray, effusion",1\n')
    args = [tiny_sd_base, *STEPS, "--dtype", "fp32", "--labels_csv", table]
    assert _run(*args, "--out", tmp_path / "ds") == 0
    rows = [json.loads(x) for x in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["No Finding", "No Finding", "Pneumonia", None]
    assert "pneumonia" in rows[2]["prompt"] and rows[3]["prompt"] == "a chest x-ray, effusion"
    assert [r["seed"] for r in rows] == [0, 1, 2, 3]
    bad = {
        "label,n\nPneumonia,2\n": ["labels.csv", "'count' column", "['label', 'n']"],
        "label,count\nPneumonia,two\n": ["labels.csv", "line 2", "column 'count'", "'two'"],
        "label,count\nPneumonia,0\n": ["line 2", "column 'count'", ">= 1"],
        "label,count\nPneumonia,1\nPneumonia,2\n": ["line 3", "'Pneumonia' is listed twice"],
        "label,count\n": ["no rows"],
    }
    for i, (text, words) in enumerate(bad.items()):
        table.write_text(text)
        capsys.readouterr()
        assert _run(*args, "--out", tmp_path / f"bad{i}") == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert len(err) == 1 and all(w in err[0] for w in words), (text, err)
        assert not (tmp_path / f"bad{i}").exists()  # refused before anything is written
    assert _run(*args, "--label", "Pneumonia=1", "--out", tmp_path / "both") == 2
    assert "not both" in capsys.readouterr().err
