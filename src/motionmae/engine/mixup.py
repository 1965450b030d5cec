"""Fine-tuning regularisers for video batches: mixup / cutmix with label smoothing, and random erasing.

Both work on a normalised float batch (B, C, T, H, W) on any device. Every random draw comes from a CPU
`torch.Generator` the caller seeds (from seed, rank, step), so a resumed run draws the same boxes and lambdas.
The semantics follow timm's `Mixup` (mode 'batch': the batch is mixed with its own reverse) and VideoMAE's
random erasing with `cube=True` (one box per clip, the same on every frame).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _beta(alpha: float, g: torch.Generator) -> float:
    # torch.distributions cannot take a generator: seed a numpy Generator from ours instead.
    return float(np.random.default_rng(int(torch.randint(0, 2**62, (), generator=g))).beta(alpha, alpha))


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int64 -> (B, num_classes) float: 1 - smoothing + smoothing/K on the class, smoothing/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, g: torch.Generator) -> Tuple[int, int, int, int]:
    """A box covering about (1 - lam) of the frame, centre uniform, clipped to the frame: (y0, y1, x0, x1)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (), generator=g))
    cx = int(torch.randint(0, width, (), generator=g))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class Mixup:
    """Mix a batch with its reverse (timm's mode 'batch'): mixup with lam ~ Beta(mixup_alpha), or with
    probability `switch_prob` cutmix with lam ~ Beta(cutmix_alpha) and one box shared by all frames; the
    targets are mixed with lam recomputed from the exact pixel area of the clipped box.

    Call: `x, soft_target = mixup(x, target, generator)` with x (B, C, T, H, W), target (B,) int64 class indices
    (smoothed one-hot) or (B, num_classes) float multi-hot (multi-label: mixed as they are, not smoothed).
    With both alphas 0 it only applies label smoothing.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    def draw(self, g: torch.Generator) -> Tuple[float, bool]:
        """(lam, use_cutmix) for one batch."""
        if (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0) or _uniform(g) >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = _uniform(g) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        return _beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, g), use_cutmix

    def __call__(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator):
        lam, use_cutmix = self.draw(generator)
        if lam < 1.0:
            if use_cutmix:
                h, w = x.shape[-2:]
                y0, y1, x0, x1 = cutmix_box(h, w, lam, generator)
                x = x.clone()
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        y = target.float() if target.dim() == 2 else smooth_one_hot(target, self.num_classes, self.label_smoothing)
        return x, y * lam + y.flip(0) * (1.0 - lam)


class RandomErasing:
    """With probability `prob` per clip, replace one box (same box on every frame) by per-pixel normal noise.

    Box area is uniform in [min_area, max_area] of the frame and its log aspect ratio uniform in
    [log(min_aspect), log(1/min_aspect)] (timm / VideoMAE: 0.02, 1/3, 0.3); up to 10 attempts to fit.
    Call on a normalised batch (B, C, T, H, W); returns a new tensor.
    """

    def __init__(self, prob: float = 0.25, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                 attempts: int = 10):
        self.prob, self.min_area, self.max_area = prob, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.attempts = attempts

    def box(self, height: int, width: int, g: torch.Generator) -> Optional[Tuple[int, int, int, int]]:
        area = height * width
        for _ in range(self.attempts):
            target_area = _uniform(g, self.min_area, self.max_area) * area
            aspect = math.exp(_uniform(g, *self.log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, top + h, left, left + w
        return None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.prob <= 0:
            return x
        x = x.clone()
        c, t, height, width = x.shape[1:]
        for i in range(x.shape[0]):
            if _uniform(generator) >= self.prob:
                continue
            b = self.box(height, width, generator)
            if b is None:
                continue
            y0, y1, x0, x1 = b
            noise = torch.randn((c, t, y1 - y0, x1 - x0), generator=generator)
            x[i, :, :, y0:y1, x0:x1] = noise.to(device=x.device, dtype=x.dtype)
        return x


def soft_cross_entropy(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)) (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-soft_target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
