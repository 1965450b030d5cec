"""Token masks for masked video modelling. True = masked; token order t-major, then h, then w.

Counting rule (the same for every kind, so the kinds are compared at equal cost): with S = H'*W' tokens
per temporal slice, each slice masks `floor(ratio * S)` tokens (VideoMAE's tube rule,
`int(mask_ratio * num_patches_per_frame)`), so the clip keeps `T' * (S - floor(ratio * S))` visible tokens.
- per_slice (MotionMAE default): every slice masks exactly that many, at positions drawn independently
  per slice and per sample.
- tube (VideoMAE): one 2D mask per sample, repeated over all T' slices.
- random (MAE-ST): the same total masked count, uniform over all space-time tokens of the sample.
Positions come from `torch.rand(..., generator=generator)` + argsort, so a seeded generator reproduces.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from motionmae.errors import UserError

MASK_KINDS = ("per_slice", "tube", "random")


def masked_per_slice(slice_tokens: int, ratio: float) -> int:
    """Masked tokens per temporal slice: floor(ratio * S) (a tiny epsilon absorbs float error, e.g. 0.29*100)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"mask.ratio={ratio} must be in [0, 1)")
    return min(int(ratio * slice_tokens + 1e-6), slice_tokens - 1)


def num_visible(grid: Tuple[int, int, int], ratio: float) -> int:
    """Visible tokens per sample for any mask kind."""
    t, h, w = grid
    return t * (h * w - masked_per_slice(h * w, ratio))


def _lowest(noise: torch.Tensor, k: int) -> torch.Tensor:
    """bool mask of the same shape, True at the k smallest noise values of the last dim."""
    out = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    if k > 0:
        ids = torch.argsort(noise, dim=-1)[..., :k]
        out.scatter_(-1, ids, True)
    return out


def make_mask(
    kind: str,
    batch_size: int,
    grid: Tuple[int, int, int],
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """bool (B, N) with N = T'*H'*W', True = masked; every row masks the same count (see module docstring)."""
    t, h, w = grid
    s = h * w
    k = masked_per_slice(s, ratio)
    draw_device = generator.device if generator is not None else device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=draw_device)

    if kind == "per_slice":
        mask = _lowest(rand(batch_size, t, s), k)
    elif kind == "tube":
        mask = _lowest(rand(batch_size, 1, s), k).expand(batch_size, t, s)
    elif kind == "random":
        mask = _lowest(rand(batch_size, t * s), t * k)
    else:
        raise UserError(f"unknown mask.kind '{kind}'; valid: {', '.join(MASK_KINDS)}")
    mask = mask.reshape(batch_size, t * s)
    return mask if device is None else mask.to(device)
