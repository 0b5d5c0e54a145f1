"""Shared test settings: CPU, offline, small thread count; GPU tests skipped without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `--mixed_precision auto` picks bf16 on CPUs with native bf16; tests train in fp32 on every machine
# (tests/test_precision.py checks the detection itself).
os.environ.setdefault("MEDSD_CPU_BF16", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    # Small CPU tensors gain nothing from intra-op threads, and oversubscribed threads slow a busy
    # 2-core machine down by orders of magnitude.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip on machines without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real images not found at {SHARED_DATA}")
    return SHARED_DATA
