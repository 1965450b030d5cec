"""Mixed precision: which autocast dtype `amp` (auto | bf16 | fp16 | none) means on a device, and the context itself.

Training adds fp16 loss scaling on top (`engine.optim.LossScaler`); evaluation needs none.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch

from motionmae.errors import UserError


def resolve_amp(amp: str, device: torch.device, key: str = "train.amp") -> Optional[torch.dtype]:
    """The autocast dtype for `amp`: 'none' -> None (fp32); 'bf16' -> bfloat16; 'fp16' -> float16 (training adds
    loss scaling; VideoMAE's own setting); 'auto' -> bfloat16 on CUDA GPUs that support it, float16 on older ones
    (V100, T4), bfloat16 on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32."""
    fixed = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp in fixed:
        return fixed[amp]
    if amp != "auto":
        raise UserError(f"{key}='{amp}' is not one of auto, bf16, fp16, none")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """Autocast to `amp_dtype` on CPU and CUDA alike; a no-op when it is None (fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
