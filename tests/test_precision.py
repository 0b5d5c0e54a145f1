"""`--mixed_precision auto` on CPU: bf16 where the CPU has native bf16, fp32 elsewhere."""

from __future__ import annotations

import pytest

from medsd.training import precision
from medsd.training.precision import resolve_mixed_precision


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("MEDSD_CPU_BF16", raising=False)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_bf16", "amx_tile"}, "bf16"),
        ({"avx2", "avx512f"}, "no"),
        (set(), "no"),
    ],
)
def test_auto_follows_the_cpu_flags(monkeypatch, no_cuda, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision.torch.backends.mkldnn, "is_available", lambda: True)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("no") == "no"  # an explicit choice is kept


def test_environment_override_wins(monkeypatch, no_cuda):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv("MEDSD_CPU_BF16", "0")
    assert resolve_mixed_precision("auto") == "no"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.setenv("MEDSD_CPU_BF16", "1")
    assert precision.auto_mixed_precision("cpu") == "bf16"


def test_accelerate_launch_precision_is_honoured(monkeypatch, no_cuda):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision("auto") is None


def test_cpu_flags_reads_proc_cpuinfo():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
