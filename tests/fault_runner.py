"""Test-side fork server of tests/test_fault_harness.py (not production code).

It imports torch, diffusers and medsd once, then for each request forks a child that runs the real
``medsd train ...`` command line (``medsd.cli.main``) with faults injected: the child SIGKILLs itself at
the k-th checkpoint file write, metadata write, commit rename, rotation rename or delete, or final-save
step, or pauses there until a signal arrives. Forking saves each trial the seconds of imports; the child
is still a separate process that the test kills with real signals.

Protocol (one JSON object per line on stdin / stdout):
  {"start": {"argv": [...], "log": PATH, "faults": [...]}}  ->  {"pid": PID}
  {"wait": PID}                                               ->  {"rc": EXIT_CODE}  (-N: killed by signal N)
The child's stdout and stderr go to ``log``; it writes ``MEDSD-STEP n`` after each optimizer step,
``MEDSD-SAVED n count`` after each checkpoint (count: complete checkpoints then), ``MEDSD-PAUSED`` and
``MEDSD-FIRED {fault}`` just before it kills itself.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _preload() -> None:
    """Import what a training child needs (no torch op runs here: forking after one could hang OpenMP)."""
    import accelerate  # noqa: F401
    import accelerate.checkpointing  # noqa: F401
    import accelerate.utils.other  # noqa: F401
    import diffusers
    import matplotlib
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import tqdm.auto  # noqa: F401
    from diffusers.optimization import get_scheduler  # noqa: F401
    from diffusers.training_utils import EMAModel  # noqa: F401

    for name in ("DDPMScheduler", "DDIMScheduler", "UNet2DModel", "DiffusionPipeline", "ConfigMixin"):
        getattr(diffusers, name)
    import medsd.cli
    import medsd.commands.train  # noqa: F401
    import medsd.pipelines.ddpm  # noqa: F401
    import medsd.training.ddpm  # noqa: F401

    medsd.cli.build_parser()


def _out(text: str) -> None:
    os.write(1, (text + "\n").encode())


class Faults:
    """Counts matching events per kind and fires a fault at the k-th one."""

    def __init__(self, faults: list[dict]):
        self.faults = faults
        self.counts: dict[str, int] = {}
        self.got_signal: int | None = None

    def event(self, kind: str, phase: str, path: str | None = None) -> None:
        if phase == "before":
            self.counts[kind] = self.counts.get(kind, 0) + 1
        for f in self.faults:
            if f["at"] != kind or f["k"] != self.counts.get(kind):
                continue
            mode = f["mode"]
            if phase == "before" and mode == "torn" and kind == "trash_delete":
                tear(Path(path))  # half of the folder is gone when the process dies
                self.fire(f, path)
            elif phase == "before" and mode in ("before", "pause"):
                self.fire(f, path)
            elif phase == "after" and mode in ("after", "torn"):
                if mode == "torn" and path:
                    tear(Path(path))
                self.fire(f, path)

    def fire(self, fault: dict, path: str | None) -> None:
        if fault["mode"] == "pause":
            _out("MEDSD-PAUSED")
            deadline = time.time() + 60
            while self.got_signal is None and time.time() < deadline:
                time.sleep(0.005)
            if self.got_signal is None:
                os._exit(99)
            return
        _out("MEDSD-FIRED " + json.dumps({**fault, "path": path}))
        os.kill(os.getpid(), signal.SIGKILL)


def tear(path: Path) -> None:
    """Leave ``path`` half-written (a file) or half-deleted (a folder), as a kill mid-way would."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for p in files[: max(1, len(files) // 2)]:
            p.unlink()
    elif path.is_file():
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)


def install(faults: Faults) -> None:
    """Wrap the functions a checkpoint / final save goes through (by the names they are called under)."""
    import accelerate.utils.other as acc_other
    import torch
    from diffusers.configuration_utils import ConfigMixin

    import medsd.training.core as core
    from medsd.training.checkpoints import is_complete, list_checkpoints
    from medsd.training.signals import StopSignals

    def watched(fn, kind_of):
        def wrapper(*args, **kwargs):
            kind, path = kind_of(*args, **kwargs)
            if kind is None:
                return fn(*args, **kwargs)
            faults.event(kind, "before", path)
            result = fn(*args, **kwargs)
            faults.event(kind, "after", path)
            return result

        return wrapper

    def in_tmp_ckpt(path) -> bool:
        return "/.tmp-checkpoint-" in str(path)

    torch.save = watched(
        torch.save, lambda obj, f, *a, **k: ("ckpt_write" if in_tmp_ckpt(f) else None, str(f))
    )
    acc_other.safe_save_file = watched(
        acc_other.safe_save_file,
        lambda t, filename, *a, **k: ("ckpt_write" if in_tmp_ckpt(filename) else None, str(filename)),
    )

    def replace_kind(src, dst, *a, **k):
        s, d = Path(src), Path(dst)
        if s.name.startswith(".tmp-checkpoint-"):
            return "commit", str(d)
        if d.name.startswith(".trash-checkpoint-"):
            return "trash_rename", str(d)
        if "/.tmp-final/" in str(s):
            return "final_move", str(d)
        return None, None

    os.replace = watched(os.replace, replace_kind)
    shutil.rmtree = watched(
        shutil.rmtree,
        lambda path, *a, **k: (
            "trash_delete" if Path(path).name.startswith(".trash-checkpoint-") else None,
            str(path),
        ),
    )
    real_dump = json.dump

    def dump(obj, fp, *a, **k):
        if not str(getattr(fp, "name", "")).endswith("medsd_checkpoint.json"):
            return real_dump(obj, fp, *a, **k)
        faults.event("meta_write", "before", fp.name)
        for f in faults.faults:  # torn: half the JSON reaches the disk, then the process dies
            if f["at"] == "meta_write" and f["k"] == faults.counts["meta_write"] and f["mode"] == "torn":
                text = json.dumps(obj)
                fp.write(text[: len(text) // 2])
                fp.flush()
                faults.fire(f, fp.name)
        real_dump(obj, fp, *a, **k)
        faults.event("meta_write", "after", None)

    json.dump = dump
    ConfigMixin.to_json_file = watched(
        ConfigMixin.to_json_file,
        lambda self, p, *a, **k: ("final_json" if str(p).endswith("model_index.json") else None, str(p)),
    )

    real_step, real_save = core.Trainer.step, core.save_checkpoint

    def step(self):
        real_step(self)
        _out(f"MEDSD-STEP {self.global_step}")
        faults.event("step", "before", None)

    def save_checkpoint(accelerator, output_dir, step, *a, **k):
        result = real_save(accelerator, output_dir, step, *a, **k)
        _out(f"MEDSD-SAVED {step} {sum(is_complete(c) for c in list_checkpoints(output_dir))}")
        return result

    core.Trainer.step, core.save_checkpoint = step, save_checkpoint
    real_handle = StopSignals._handle

    def handle(self, signum, frame):
        faults.got_signal = signum
        real_handle(self, signum, frame)

    StopSignals._handle = handle


def child(request: dict) -> None:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    code = 70
    faults = Faults(request.get("faults", []))
    try:
        import medsd.cli

        install(faults)
        code = int(medsd.cli.main(request["argv"]) or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        _out("MEDSD-COUNTS " + json.dumps(faults.counts))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    _preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            pid = os.fork()
            if pid == 0:
                child(request["start"])
            print(json.dumps({"pid": pid}), flush=True)
        elif "wait" in request:
            _, status = os.waitpid(int(request["wait"]), 0)
            print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
