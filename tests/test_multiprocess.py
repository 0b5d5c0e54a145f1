"""Several training processes on one CPU machine (gloo), launched as docs/training.md says; DeepSpeed and
FSDP configs parsed and their accelerate plugins built (deepspeed itself is not needed for that)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"


def _launch(
    launch_args: list[str], script: str, args: list[str], timeout: int = 420
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_args,
        str(REPO / "recipes" / script),
        *args,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def _ok(proc: subprocess.CompletedProcess) -> str:
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def _check_processes(summary: dict, n: int) -> None:
    assert summary["num_processes"] == n
    shards = summary["processes"]["first_batch_indices"]
    assert len(shards) == n
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat), f"processes drew overlapping batches: {shards}"
    sums = summary["processes"]["weight_checksums"]
    assert all(s == sums[0] for s in sums), f"weights differ between processes: {sums}"


def _common_ddpm(out: Path) -> list[str]:
    return [
        "--phantom_count", "16", "--resolution", "16", "--train_batch_size", "2",
        "--checkpointing_steps", "2", "--validation_steps", "0", "--num_validation_images", "2",
        "--validation_inference_steps", "2", "--report_to", "none", "--progress_bar", "false",
        "--logging_steps", "1", "--output_dir", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_ddpm_two_cpu_processes_from_cpu_yaml_then_resume_on_one(tmp_path):
    out = tmp_path / "ddpm"
    log = _ok(
        _launch(
            ["--config_file", str(CONFIGS / "cpu.yaml")],
            "train_ddpm.py",
            [*_common_ddpm(out), "--max_train_steps", "4"],
        )
    )
    assert log.count("2 process(es), DistributedType.MULTI_CPU") == 1  # logged once, by the main process
    summary = json.loads((out / "train_summary.json").read_text())
    _check_processes(summary, 2)
    assert [s for s, _ in summary["loss_history"]] == [1, 2, 3, 4]
    # single writes: one folder per checkpoint, no half-written ones, one final model
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "model_index.json").is_file()

    launch1 = [
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    log = _ok(
        _launch(
            launch1,
            "train_ddpm.py",
            [*_common_ddpm(out), "--max_train_steps", "6", "--resume_from_checkpoint", "latest"],
        )
    )
    assert "Resumed from" in log and "checkpoint-4" in log
    summary = json.loads((out / "train_summary.json").read_text())
    _check_processes(summary, 1)
    assert summary["steps"] == 6 and [s for s, _ in summary["loss_history"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_sd_lora_two_cpu_processes_with_documented_flags_then_resume_on_one(tmp_path):
    from medsd.pipelines.random_sd import TINY_RESOLUTION, save_random_sd_pipeline

    base = save_random_sd_pipeline(tmp_path / "base", size="tiny")
    out = tmp_path / "lora"
    common = [
        "--pretrained_model_name_or_path", str(base), "--train_data_dir", "phantom", "--phantom_count", "8",
        "--resolution", str(TINY_RESOLUTION), "--train_batch_size", "2", "--rank", "4",
        "--checkpointing_steps", "1", "--validation_steps", "0", "--report_to", "none",
        "--logging_steps", "1", "--progress_bar", "false", "--output_dir", str(out),
    ]  # fmt: skip
    flags = [
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    log = _ok(_launch(flags, "finetune_sd_xray.py", [*common, "--max_train_steps", "2"]))
    assert "starting 2 CPU processes" in log
    summary = json.loads((out / "train_summary.json").read_text())
    _check_processes(summary, 2)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    flags[2] = "1"
    log = _ok(
        _launch(
            flags,
            "finetune_sd_xray.py",
            [*common, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"],
        )
    )
    assert "Resumed from" in log
    summary = json.loads((out / "train_summary.json").read_text())
    _check_processes(summary, 1)
    assert summary["steps"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_multi_gpu_without_gpus_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "never"
    proc = _launch(
        ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "no"],
        "train_ddpm.py",
        ["--output_dir", str(out)],
        timeout=240,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("medsd: error:")]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "accelerate_configs/cpu.yaml" in lines[0]
    assert not out.exists()  # nothing was written


def _launch_args(config: str):
    from medsd.training.compat import parse_launch_config

    return parse_launch_config(str(CONFIGS / config))


def test_deepspeed_zero2_config_parses_and_builds_its_plugin():
    """accelerate parses the config and builds the DeepSpeed plugin; running it needs `pip install deepspeed`
    and GPUs (not tested here)."""
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    args, cfg, _ = _launch_args("deepspeed_zero2.yaml")
    assert cfg.distributed_type == DistributedType.DEEPSPEED and args.use_deepspeed and not args.use_fsdp
    ds = cfg.deepspeed_config
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        gradient_accumulation_steps=ds["gradient_accumulation_steps"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        zero3_init_flag=ds["zero3_init_flag"],
    )
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "none"


def test_fsdp_config_parses_and_builds_its_plugin():
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    args, cfg, _ = _launch_args("fsdp.yaml")
    assert cfg.distributed_type == DistributedType.FSDP and args.use_fsdp
    kwargs = {k.removeprefix("fsdp_"): v for k, v in cfg.fsdp_config.items()}
    plugin = FullyShardedDataParallelPlugin(**kwargs)
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT and plugin.use_orig_params
    assert plugin.auto_wrap_policy is not None


def test_cpu_yaml_asks_for_two_cpu_processes():
    from accelerate.utils import DistributedType

    args, cfg, _ = _launch_args("cpu.yaml")
    assert cfg.distributed_type == DistributedType.MULTI_CPU and cfg.num_processes == 2 and cfg.use_cpu
    assert not args.multi_gpu  # accelerate's simple launcher: medsd starts the processes (distributed.py)
