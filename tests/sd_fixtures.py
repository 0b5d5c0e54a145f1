"""A tiny Stable Diffusion pipeline built in code (no downloads), for offline CPU tests.

The builder lives in ``medsd.pipelines.random_sd`` (real CLIP BPE tokenizer, seeded random networks).
"""

from __future__ import annotations

from pathlib import Path

from medsd.pipelines.random_sd import TINY_RESOLUTION, save_random_sd_pipeline

__all__ = ["TINY_RESOLUTION"]


# -- pytest fixtures and helpers shared by test_sd_lora.py and test_med_pipeline.py ---------------------
import pytest  # noqa: E402


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so a second in-process run may use another precision:
    what accelerate's own ``AccelerateTestCase`` does after each test."""
    from accelerate.test_utils.testing import AccelerateTestCase

    AccelerateTestCase().tearDown()


def quick_config(base: str | Path, output_dir: str | Path, **overrides):
    """A few-step CPU config on 8 phantom chest X-rays at 32 px."""
    from medsd.training.sd_lora import SDLoRATrainConfig

    values = dict(
        pretrained_model_name_or_path=str(base),
        train_data_dir="phantom",
        phantom_count=8,
        resolution=TINY_RESOLUTION,
        train_batch_size=2,
        max_train_steps=2,
        learning_rate=5e-3,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=1,
        report_to="none",
        mixed_precision="no",
        progress_bar=False,
        output_dir=str(output_dir),
    )
    values.update(overrides)
    return SDLoRATrainConfig(**values)


def run_training(config):
    """(task, TrainResult) of an in-process run of the shared training core."""
    from medsd.training.core import train
    from medsd.training.sd_lora import SDLoRATask

    reset_accelerate()
    try:
        task = SDLoRATask(config)
        return task, train(task, config)
    finally:
        reset_accelerate()


_SESSION: dict = {}
"""Built once per test session even when several test modules import these fixtures."""


@pytest.fixture(scope="session")
def tiny_sd_base(tmp_path_factory) -> Path:
    return save_random_sd_pipeline(tmp_path_factory.getbasetemp() / "tiny_sd_base", size="tiny")


@pytest.fixture(scope="session")
def trained_lora(tiny_sd_base, tmp_path_factory):
    """A LoRA trained in-process (U-Net rank 4 / alpha 8 and text encoder), with a merged export."""
    from types import SimpleNamespace

    key = ("trained_lora", str(tiny_sd_base))
    if key in _SESSION:
        return _SESSION[key]
    out = tmp_path_factory.mktemp("sd_lora") / "run"
    config = quick_config(
        tiny_sd_base,
        out,
        rank=4,
        lora_alpha=8,
        train_text_encoder=True,
        max_train_steps=3,
        export_merged=True,
        prompt_template="a chest x-ray, {label}",
    )
    task, result = run_training(config)
    _SESSION[key] = SimpleNamespace(
        task=task, result=result, output_dir=out, base=tiny_sd_base, config=config
    )
    return _SESSION[key]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The tiny models are faster on one thread; with several, OpenMP spin-waits dominate (and collapse
    when other processes share the cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
