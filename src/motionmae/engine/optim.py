"""Optimiser pieces shared by pretraining and fine-tuning: parameter groups, AdamW, lr scaling, schedule.

Schedules are plain functions of the optimiser step (not torch LR schedulers) so a resumed run needs
nothing but the step number to be back on the same curve.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import nn

# Parameter names (by suffix) that get no weight decay besides every 1-D tensor (norms, biases): a learnable
# positional embedding (encoder's and decoder's `pos_embed`) and the mask tokens, as in MAE / VideoMAE / timm.
NO_DECAY = ("pos_embed", "mask_token")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: Iterable[str] = NO_DECAY,
    lr_scale_fn: Optional[Callable[[str], float]] = None,
) -> List[dict]:
    """Split trainable parameters into AdamW groups.

    No decay for 1-D tensors (LayerNorm weights, biases) and names ending in one of `no_decay`.
    `lr_scale_fn(name) -> float` gives a per-parameter lr multiplier (e.g. layer-wise lr decay); it is
    stored as the group's `lr_scale` and applied by `set_lr`. Groups are keyed by (decay, scale) so
    the group order is stable across runs (needed to reload optimiser state).
    """
    no_decay = tuple(no_decay)
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(no_decay)
        scale = float(lr_scale_fn(name)) if lr_scale_fn is not None else 1.0
        key = (not skip, scale)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if skip else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: Tuple[float, float] = (0.9, 0.95),
    no_decay: Iterable[str] = NO_DECAY,
    lr_scale_fn: Optional[Callable[[str], float]] = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(...)`; every group starts at `lr * lr_scale`."""
    groups = param_groups(model, weight_decay, no_decay, lr_scale_fn)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    kwargs = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    try:  # the fused kernel: 3.4x faster than the per-tensor loop for ViT-B on CPU (benchmarks/BENCHMARKS.md)
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a torch or device without it
        return torch.optim.AdamW(groups, **kwargs)


class LossScaler:
    """fp16 loss scaling around the optimiser step (torch's GradScaler): fp16 gradients underflow without it,
    and an overflowing step is skipped and the scale halved instead of stopping the run. A pass-through for
    fp32 and bf16, which need none. Both training loops call `backward(loss)`, `unscale_(optimizer)` before
    clipping, `step(optimizer)`, and keep `state_dict()` in the checkpoint (exact resume)."""

    INIT_SCALE = 2.0**16  # torch's default

    def __init__(self, amp_dtype: Optional[torch.dtype], device: torch.device):
        fp16 = amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, init_scale=self.INIT_SCALE) if fp16 else None

    @property
    def enabled(self) -> bool:
        return self.scaler is not None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.enabled else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.enabled:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.enabled:
            self.scaler.step(optimizer)  # skipped when the gradients hold inf/nan
            self.scaler.update()
        else:
            optimizer.step()

    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.enabled else {}

    def load_state_dict(self, state: dict) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of MAE / VideoMAE: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0, warmup_lr: float = 0.0) -> float:
    """Linear warm-up from `warmup_lr` to `peak_lr` over `warmup_steps`, then half-cosine to `min_lr` at `total_steps`.

    `step` counts optimiser steps from 0; the value is the lr used for that step.
    """
    if step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr * group['lr_scale']`."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)

