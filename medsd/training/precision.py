"""Which mixed precision ``--mixed_precision auto`` picks on the machine it runs on.

On CPUs with native bfloat16 arithmetic (x86 ``avx512_bf16`` or ``amx_bf16``) bf16 autocast is a
measured win for diffusion training and sampling (``docs/performance.md``); on other CPUs bf16 is
emulated and slower than fp32, so ``auto`` stays at fp32 there.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs that compute in bfloat16 natively."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first core in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 instructions and PyTorch's oneDNN kernels can use them.

    ``MEDSD_CPU_BF16=0`` (or ``1``) overrides the detection.
    """
    override = os.environ.get("MEDSD_CPU_BF16")
    if override is not None and override.strip() != "":
        return override.strip().lower() not in ("0", "false", "no", "off")
    if not torch.backends.mkldnn.is_available():
        return False
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def auto_mixed_precision(device_type: str | None = None) -> str:
    """'bf16', 'fp16' or 'no' for ``device_type`` ('cuda' or 'cpu'; default: CUDA when available)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def resolve_mixed_precision(requested: str) -> str | None:
    """'auto' picks bf16 on GPUs that support it, fp16 on other CUDA GPUs, bf16 on CPUs with native
    bf16 (``precision.cpu_has_native_bf16``) and no on other CPUs.

    Returns None when accelerate's own configuration (``accelerate launch --mixed_precision``) should
    decide, so a precision given to accelerate is honoured.
    """
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    return auto_mixed_precision()


def weight_dtype_for(accelerator: Any) -> torch.dtype:
    """dtype for frozen weights under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        str(accelerator.mixed_precision), torch.float32
    )
