"""How many processes a training run uses, so that documented ``accelerate launch`` commands do what they say.

- ``accelerate launch --cpu --num_processes 2 SCRIPT`` (or ``--config_file accelerate_configs/cpu.yaml``)
  starts one process: accelerate starts several CPU processes only through MPI. medsd sees that case
  (``ACCELERATE_USE_CPU`` with ``MASTER_ADDR`` but no ``WORLD_SIZE``), reads the process count from the
  ``accelerate launch`` command line (or its config file) and starts the processes itself with
  ``torch.distributed.run``; they train together over gloo.
- ``accelerate launch --multi_gpu`` on a machine without CUDA would start independent runs on one
  output folder: medsd stops at once with one line.
- ``torchrun`` without CUDA: the processes train on CPU over gloo.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RELAUNCHED_ENV = "MEDSD_CPU_PROCESSES"


def _truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _launcher_num_processes() -> int | None:
    """The ``--num_processes`` of the ``accelerate launch`` that started this process (or of its config)."""
    try:
        import psutil
        from accelerate.commands.launch import launch_command_parser
    except ImportError:  # pragma: no cover - both come with accelerate
        return None
    try:
        cmdline = psutil.Process(os.getppid()).cmdline()
    except Exception:  # noqa: BLE001 - no parent information: behave like accelerate
        return None
    start = next(
        (i + 1 for i, a in enumerate(cmdline) if a == "launch" or a.endswith("accelerate.commands.launch")),
        None,
    )
    if start is None:
        return None
    try:
        args, _ = launch_command_parser().parse_known_args(cmdline[start:])
    except SystemExit:
        return None
    if args.num_processes is not None:
        return int(args.num_processes)
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file

    config_file = args.config_file or (default_config_file if os.path.isfile(default_config_file) else None)
    if config_file is None:
        return None
    try:
        return int(load_config_from_file(config_file).num_processes or 1)
    except Exception:  # noqa: BLE001
        return None


def accelerator_cpu_flag() -> bool:
    """``cpu=`` for ``Accelerator``: True for several processes on a machine without CUDA (gloo)."""
    import torch

    return _world_size() > 1 and not torch.cuda.is_available()


def check_launch() -> None:
    """Stop a launch that cannot work, or start the CPU processes accelerate did not start (see module doc).

    Returns in the process that should train; the process that starts others exits with their status.
    """
    import torch

    world = _world_size()
    use_cpu = _truthy(os.environ.get("ACCELERATE_USE_CPU"))
    if (
        world > 1
        and not torch.cuda.is_available()
        and not use_cpu
        and "ACCELERATE_MIXED_PRECISION" in os.environ
    ):
        # `accelerate launch --multi_gpu` (or a MULTI_GPU config) on a machine without CUDA
        if os.environ.get("LOCAL_RANK", "0") == "0":  # one line, not one per process
            print(
                f"medsd: error: accelerate launch --multi_gpu: no CUDA GPU on this machine (WORLD_SIZE={world}); "
                "for several CPU processes use `accelerate launch --cpu --num_processes N ...` or "
                "--config_file accelerate_configs/cpu.yaml",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(2)
    if world == 1 and use_cpu and os.environ.get("MASTER_ADDR") and not os.environ.get(RELAUNCHED_ENV):
        n = _launcher_num_processes()
        if n and n > 1:
            raise SystemExit(_run_cpu_processes(n))


def unstarted_cpu_processes() -> int | None:
    """N when ``accelerate launch --num_processes N`` (N > 1, with or without ``--cpu``) started only this
    process on a machine without CUDA (accelerate starts several CPU processes only through MPI); else None."""
    import torch

    launched = os.environ.get("MASTER_ADDR") and "ACCELERATE_MIXED_PRECISION" in os.environ
    if _world_size() > 1 or not launched or os.environ.get(RELAUNCHED_ENV) or torch.cuda.is_available():
        return None
    n = _launcher_num_processes()
    return n if n and n > 1 else None


def run_cpu_processes(n: int, argv: list[str]) -> int:
    """Run ``python ARGV`` in ``n`` processes with ``torch.distributed.run`` (gloo); their exit status."""
    return _run_cpu_processes(n, argv)


def _run_cpu_processes(n: int, argv: list[str] | None = None) -> int:
    """Run this script (or ``argv``) again in ``n`` processes with ``torch.distributed.run`` (gloo); their exit
    status."""
    import subprocess

    # A free port, not accelerate's fixed default (29500): the parent `accelerate launch` never listens on it,
    # and two runs on one machine (two users, a test beside a job) would otherwise collide.
    port = str(_free_port())
    env = dict(os.environ, **{RELAUNCHED_ENV: str(n), "ACCELERATE_USE_CPU": "True"})
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "--master_port",
        port,
        *(argv or (sys.argv if sys.argv and sys.argv[0] else ["-"])),
    ]
    print(
        f"medsd: starting {n} CPU processes (gloo) for `accelerate launch --cpu --num_processes {n}`",
        flush=True,
    )
    return subprocess.call(cmd, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe(accelerator: Any) -> str:
    """One line: how many processes, of which type, on which device."""
    return (
        f"medsd: {accelerator.num_processes} process(es), {accelerator.distributed_type}, "
        f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}"
    )


def process_record(accelerator: Any, params: list, first_batch: list[int] | None, batch_size: int) -> dict:
    """Per process: the indices of its first micro-batch of this run and a checksum of its trainable
    weights (gathered from every process; identical checksums = identical weights)."""
    import torch

    device = accelerator.device
    idx = torch.tensor(first_batch if first_batch is not None else [-1] * batch_size, device=device)
    with torch.no_grad():
        flat = [p.detach().double().flatten() for p in params]
        checksum = torch.stack([sum(f.sum() for f in flat), sum((f * f).sum() for f in flat)]).to(device)
    idx_all = accelerator.gather(idx[None]).cpu().tolist()
    sums = accelerator.gather(checksum[None]).cpu().tolist()
    return {"first_batch_indices": idx_all, "weight_checksums": sums}
