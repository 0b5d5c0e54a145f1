"""Fault harness: real `medsd train ddpm` processes killed at random points, then resumed with
``--resume_from_checkpoint latest`` until they finish, must end with bit-exact weights (model, EMA, optimizer)
equal to an uninterrupted run, and leave the output folder sound after every kill.

Kill points come from a seeded RNG: ``MEDSD_FAULT_SEED=N`` replays a run (every failure names its seed,
trial and plan). The training processes are forked by ``tests/fault_runner.py`` (imports paid once); it
SIGKILLs a child at the k-th checkpoint file write / metadata write / commit / rotation rename or delete /
final-save step, or pauses it there for a signal from this process. Other kills come from this process at
a random step after a random delay.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsd.training.checkpoints import check_output_dir, find_checkpoint, is_complete, list_checkpoints
from medsd.training.run_guard import LOCK_NAME

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs os.fork (POSIX)")

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MEDSD_FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))

CONFIGS = {
    # a checkpoint every step, two kept: a rotation at every save from the third on
    "every-step": dict(max_train_steps=6, checkpointing_steps=1, checkpoints_total_limit=2),
    # accumulation, a warm-up + cosine LR schedule, a checkpoint every 2 steps, one kept
    "accum-cosine": dict(
        max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=1, gradient_accumulation_steps=2,
        lr_scheduler="cosine", lr_warmup_steps=2,
    ),
}  # fmt: skip
COMMON = dict(
    resolution=16, phantom_count=8, data_split="all", train_batch_size=2, learning_rate=1e-3, use_ema="true",
    validation_steps=0, num_validation_images=1, validation_inference_steps=1, logging_steps=1,
    report_to="none", progress_bar="false", mixed_precision="no", seed=3,
)  # fmt: skip


def _argv(config: str, out: Path, resume: bool, **extra) -> list[str]:
    values = {**COMMON, **CONFIGS[config], **extra, "output_dir": out}
    argv = ["train", "ddpm"] + [a for k, v in values.items() for a in (f"--{k}", str(v))]
    return argv + (["--resume_from_checkpoint", "latest"] if resume else [])


class Child:
    def __init__(self, runner: Runner, pid: int, log: Path):
        self.runner, self.pid, self.log = runner, pid, log
        self._rc: int | None = None

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            time.sleep(0.003)
        raise AssertionError(f"{pattern!r} never appeared in {self.log}:\n{self.text()[-3000:]}")

    def wait(self) -> int:
        if self._rc is None:
            self._rc = self.runner.request({"wait": self.pid})["rc"]
        return self._rc

    def counts(self) -> dict[str, int]:
        return json.loads(re.findall(r"^MEDSD-COUNTS (.*)$", self.text(), re.M)[-1])


class Runner:
    """The fork server of tests/fault_runner.py."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MEDSD_CPU_BF16="0")
        env.pop("WORLD_SIZE", None)
        env.pop("RANK", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "fault_runner.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        assert json.loads(self.proc.stdout.readline()).get("ready"), "the fork server did not start"
        self.n = 0

    def request(self, obj: dict) -> dict:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, argv: list[str], log_dir: Path, faults: list[dict] | None = None) -> Child:
        self.n += 1
        log = log_dir / f"run-{self.n}.log"
        pid = self.request({"start": {"argv": argv, "log": str(log), "faults": faults or []}})["pid"]
        return Child(self, pid, log)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner():
    r = Runner()
    yield r
    r.close()


# -- what a folder holds ---------------------------------------------------------------------------------
def _load_any(path: Path) -> object:
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix in (".bin", ".pkl"):
        return torch.load(path, weights_only=False, map_location="cpu")
    return path.read_bytes()


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) inside a state dict, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix: torch.tensor(obj, dtype=torch.float64)}
    return {}


def snapshot(out: Path) -> dict[str, torch.Tensor]:
    """The final (EMA) U-Net, and the last checkpoint's model, EMA, optimizer and LR schedule."""
    last = list_checkpoints(out)[-1]
    snap = {
        f"final{k}": v for k, v in load_file(out / "unet" / "diffusion_pytorch_model.safetensors").items()
    }
    for name in (
        "model.safetensors",
        "custom_checkpoint_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
    ):
        snap.update({f"{name}{k}": v for k, v in _tensors(_load_any(last / name)).items()})
    summary = json.loads((out / "train_summary.json").read_text())
    snap["loss_history"] = torch.tensor(summary["loss_history"], dtype=torch.float64)
    snap["steps"] = torch.tensor(summary["steps"])
    return snap


@pytest.fixture(scope="module")
def references(runner, tmp_path_factory):
    """One uninterrupted run per config: its snapshot, checkpoint file names and event counts."""
    refs = {}
    for name in CONFIGS:
        base = tmp_path_factory.mktemp(f"ref-{name}")
        child = runner.start(_argv(name, base / "run", resume=False), base)
        assert child.wait() == 0, child.text()[-3000:]
        out = base / "run"
        files = sorted(p.name for p in list_checkpoints(out)[-1].iterdir())
        model = sorted(
            p.name for p in out.iterdir() if not p.name.startswith("checkpoint-") and p.name != "samples"
        )
        assert "model_index.json" in model and "README.md" in model
        refs[name] = dict(snapshot=snapshot(out), files=files, model=model, counts=child.counts(), out=out)
    return refs


def check_folder(out: Path, config: str, ref: dict, child: Child, why: str) -> None:
    """What must hold after every run, killed or not."""
    limit = CONFIGS[config]["checkpoints_total_limit"]
    ckpts = list_checkpoints(out)
    for c in ckpts:  # nothing half-written or half-deleted under a checkpoint-N name
        assert is_complete(c), f"{why}: {c.name} has no medsd_checkpoint.json"
        assert sorted(p.name for p in c.iterdir()) == ref["files"], (
            f"{why}: {c.name} holds {list(c.iterdir())}"
        )
        for p in c.iterdir():
            try:
                _load_any(p)
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"{why}: {p} does not load ({e})") from e
    assert len(ckpts) <= limit + 1, (
        f"{why}: {len(ckpts)} checkpoints, limit {limit}"
    )  # killed before rotating
    saved = [int(c) for c in re.findall(r"^MEDSD-SAVED \d+ (\d+)$", child.text(), re.M)]
    assert all(c <= limit for c in saved), f"{why}: after a save {saved} complete checkpoints, limit {limit}"
    if ckpts:
        assert find_checkpoint(out, "latest") == ckpts[-1]
    if not (out / "train_summary.json").exists():  # unfinished: never refused as a finished model ...
        try:
            check_output_dir(out)
        except FileExistsError as e:
            assert "finished model" not in str(e), f"{why}: {e}"
    if (
        out / "model_index.json"
    ).exists():  # ... and what looks finished is complete: the model, its card, ...
        missing = [n for n in ref["model"] if n != "train_summary.json" and not (out / n).exists()]
        assert not missing, f"{why}: model_index.json is there but not {missing}"
        assert load_file(out / "unet" / "diffusion_pytorch_model.safetensors"), why


def check_finished(out: Path, ref: dict, why: str) -> None:
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".trash-")))
    assert not leftovers, f"{why}: leftovers {leftovers}"
    snap = snapshot(out)
    assert snap.keys() == ref["snapshot"].keys(), why
    differ = [k for k, v in ref["snapshot"].items() if not torch.equal(v, snap[k])]
    assert not differ, f"{why}: not bit-exact: {differ[:5]} (of {len(differ)})"


# -- trials ----------------------------------------------------------------------------------------------
CATEGORIES = (
    # (what the first kill hits, how many trials)
    [("ckpt_write", m) for m in ("before", "after", "torn", "torn", "after", "before")]
    + [("meta_write", m) for m in ("before", "after", "torn")]
    + [("commit", m) for m in ("before", "after", "after")]
    + [("trash_rename", m) for m in ("before", "after", "after")]
    + [("trash_delete", m) for m in ("before", "torn", "torn")]
    + [("parent", None)] * 4
    + [("final_json", "after"), ("final_move", "before"), ("final_move", "after")]
)
REPLAY = "replay: MEDSD_FAULT_SEED={seed} python -m pytest tests/test_fault_harness.py -k '{test}'"


def plan_for(trial: int, kind: str, mode: str | None, counts: dict[str, int]) -> tuple[str, list[dict]]:
    """The config and the kills of one trial: the first hits ``kind``; up to two more are random."""
    rng = random.Random(f"{SEED}-{trial}")
    config = sorted(CONFIGS)[trial % len(CONFIGS)]
    steps = CONFIGS[config]["max_train_steps"]

    def fault(kind: str, mode: str | None, n: int) -> dict:
        if kind == "parent":
            return {"at": "parent", "step": rng.randint(1, steps - 1), "delay": rng.uniform(0, 0.03)}
        return {"at": kind, "k": rng.randint(1, max(1, n)), "mode": mode}

    plan = [fault(kind, mode, counts.get(kind, 1))]
    for _ in range(rng.choice((0, 1, 2))):  # later kills in the resumed runs: early ones, so they land
        more = rng.choice(("parent", "ckpt_write", "commit", "trash_rename", "trash_delete", "meta_write"))
        modes = {"trash_delete": ("before", "torn"), "commit": ("before", "after")}.get(
            more, ("before", "after", "torn")
        )
        plan.append(fault(more, rng.choice(modes), 3))
    return config, plan


def run_until_finished(
    runner, references, tmp_path, config, plan, why, resume: bool = False
) -> tuple[list[int], list[str]]:
    """Run the plan's kills, then resume until finished; check the folder after every run."""
    out, ref = tmp_path / "run", references[config]
    rcs, fired = [], []
    for i in range(len(plan) + 4):
        fault = plan[i] if i < len(plan) else None
        child_faults = [fault] if fault and fault["at"] != "parent" else []
        child = runner.start(_argv(config, out, resume=resume or i > 0), tmp_path, child_faults)
        if fault and fault["at"] == "parent":
            try:
                child.wait_for(rf"^MEDSD-STEP {fault['step']}$|^MEDSD-COUNTS", timeout=60)
                time.sleep(fault["delay"])
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rc = child.wait()
        rcs.append(rc)
        fired.append("fired" if "MEDSD-FIRED" in child.text() or (fault and rc == -9) else "-")
        assert rc in (0, -signal.SIGKILL), f"{why}: run {i} exit {rc}:\n{child.text()[-3000:]}"
        check_folder(out, config, ref, child, f"{why}, after run {i} (exit {rc})")
        if rc == 0:
            check_finished(out, ref, why)
            return rcs, fired
    raise AssertionError(f"{why}: not finished after {len(rcs)} runs {rcs}")


@pytest.mark.parametrize(
    "trial", range(len(CATEGORIES)), ids=[f"sigkill-{i}-{c[0]}" for i, c in enumerate(CATEGORIES)]
)
def test_sigkill_trial(runner, references, tmp_path, trial):
    kind, mode = CATEGORIES[trial]
    config, plan = plan_for(trial, kind, mode, references[sorted(CONFIGS)[trial % len(CONFIGS)]]["counts"])
    why = f"trial {trial} ({config}, plan {plan}); " + REPLAY.format(seed=SEED, test=f"sigkill-{trial}-")
    rcs, fired = run_until_finished(runner, references, tmp_path, config, plan, why)
    assert rcs[0] == -signal.SIGKILL and fired[0] == "fired", f"{why}: the first kill did not happen: {rcs}"


SIGNAL_TRIALS = [
    (signal.SIGTERM, "step"), (signal.SIGTERM, "ckpt_write"), (signal.SIGINT, "step"), (signal.SIGINT, "ckpt_write"),
]  # fmt: skip


@pytest.mark.parametrize("signum,at", SIGNAL_TRIALS, ids=[f"{s.name}-during-{a}" for s, a in SIGNAL_TRIALS])
def test_signal_trial(runner, references, tmp_path, signum, at):
    """A real SIGTERM / SIGINT, at a step or in the middle of a checkpoint write: a checkpoint at the step it
    was in, exit 128 + signal, one line; the resume is bit-exact."""
    trial = SIGNAL_TRIALS.index((signum, at))
    rng = random.Random(f"{SEED}-signal-{trial}")
    config = sorted(CONFIGS)[trial % len(CONFIGS)]
    ref, out = references[config], tmp_path / "run"
    n = CONFIGS[config]["max_train_steps"] - 1 if at == "step" else ref["counts"]["ckpt_write"]
    fault = {"at": at, "k": rng.randint(1, n), "mode": "pause"}
    why = f"{signum.name} trial ({config}, {fault}); " + REPLAY.format(
        seed=SEED, test=f"{signum.name}-during-{at}"
    )
    child = runner.start(_argv(config, out, resume=False), tmp_path, [fault])
    child.wait_for("^MEDSD-PAUSED$")
    os.kill(child.pid, signum)
    assert child.wait() == 128 + signum, f"{why}:\n{child.text()[-3000:]}"
    step = int(re.findall(r"^MEDSD-STEP (\d+)$", child.text(), re.M)[-1])
    errors = [ln for ln in child.text().splitlines() if "error:" in ln]
    assert len(errors) == 1 and f"stopped by {signum.name} at step {step}" in errors[0], f"{why}: {errors}"
    assert list_checkpoints(out)[-1].name == f"checkpoint-{step}", why
    check_folder(out, config, ref, child, why)
    rcs, _ = run_until_finished(runner, references, tmp_path, config, [], why, resume=True)
    assert rcs == [0], why


def test_a_second_run_is_locked_out_and_a_killed_run_resumes(runner, references, tmp_path):
    """Two runs into one folder: the second stops with one line naming the folder and the holder; after the
    holder is SIGKILLed its (stale) lock does not block the resume, which is bit-exact."""
    config = "every-step"
    out = tmp_path / "run"
    first = runner.start(
        _argv(config, out, resume=False), tmp_path, [{"at": "step", "k": 2, "mode": "pause"}]
    )
    first.wait_for("^MEDSD-PAUSED$")
    second = runner.start(_argv(config, out, resume=True), tmp_path)
    assert second.wait() == 2
    errors = [ln for ln in second.text().splitlines() if "error:" in ln]
    assert len(errors) == 1, second.text()
    assert str(out) in errors[0] and f"pid {first.pid}" in errors[0] and socket.gethostname() in errors[0]
    assert "MEDSD-STEP" not in second.text()  # it trained nothing
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    third = runner.start(_argv(config, out, resume=True), tmp_path)
    assert third.wait() == 0, third.text()[-3000:]
    assert f"taking over the lock left by pid {first.pid}" in third.text()
    check_finished(out, references[config], "lock trial")


def test_a_resume_with_another_batch_size_is_refused_in_one_line(runner, references, tmp_path):
    config = "every-step"
    out = tmp_path / "run"
    child = runner.start(
        _argv(config, out, resume=False), tmp_path, [{"at": "step", "k": 3, "mode": "before"}]
    )
    assert child.wait() == -signal.SIGKILL

    def listing() -> list[str]:
        return sorted(
            p.name for p in out.iterdir() if p.name != LOCK_NAME
        )  # the dead run's lock is taken over

    before = listing()
    refused = runner.start(_argv(config, out, resume=True, train_batch_size=4, seed=5), tmp_path)
    assert refused.wait() == 2
    errors = [ln for ln in refused.text().splitlines() if "error:" in ln]
    assert len(errors) == 1, refused.text()
    assert "train_batch_size: 2 -> 4" in errors[0] and "seed: 3 -> 5" in errors[0]
    assert "--allow_config_change seed,train_batch_size" in errors[0]
    assert listing() == before  # nothing was written
    # allowed, but a U-Net of another shape cannot take the checkpoint's weights: one line, nothing written
    yaml_before = (out / "training_config.yaml").read_text()
    arch = _argv(
        config, out, resume=True, block_out_channels="16,32", allow_config_change="block_out_channels"
    )
    failed = runner.start(arch, tmp_path)
    assert failed.wait() == 2
    errors = [ln for ln in failed.text().splitlines() if "error:" in ln]
    assert (
        len(errors) == 1
        and "could not load" in errors[0]
        and "block_out_channels: None -> [16, 32]" in errors[0]
    )
    assert listing() == before and (out / "training_config.yaml").read_text() == yaml_before
    rcs, _ = run_until_finished(runner, references, tmp_path, config, [], "refused resume", resume=True)
    assert rcs == [0]
