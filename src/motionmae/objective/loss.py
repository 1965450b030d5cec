"""Masked reconstruction loss: the prediction and the target hold the masked tokens only, (B, M, P)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from motionmae.errors import UserError

LOSSES = ("mse", "l1", "smooth_l1")


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean over masked tokens and their values, in float32 (pred may be bf16 under autocast)."""
    pred, target = pred.float(), target.float()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    raise UserError(f"unknown objective.loss '{kind}'; valid: {', '.join(LOSSES)}")
