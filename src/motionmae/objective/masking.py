"""Token masks for masked video modelling. True = masked; token order t-major, then h, then w.

Counting rule (the same for every kind, so the kinds are compared at equal cost): with S = H'*W' tokens
per temporal slice, each slice masks `floor(ratio * S)` tokens (VideoMAE's tube rule,
`int(mask_ratio * num_patches_per_frame)`), so the clip keeps `T' * (S - floor(ratio * S))` visible tokens.
- per_slice (MotionMAE default): every slice masks exactly that many, at positions drawn independently
  per slice and per sample.
- tube (VideoMAE): one 2D mask per sample, repeated over all T' slices.
- random (MAE-ST): the same total masked count, uniform over all space-time tokens of the sample.
- motion: like per_slice, but each slice's masked tokens are drawn without replacement with probability
  proportional to the token's frame-difference energy (the mean squared difference of adjacent frames over
  its cube, the first difference repeated for the first frame as the motion target does), plus a floor of
  1e-3 x the clip's mean energy so still tokens can be drawn too: moving parts are masked first. MGMAE guides
  its masks with optical flow; this needs none.
Positions come from `torch.rand(..., generator=generator)` (+ argsort), so a seeded generator reproduces.

Dual masking (VideoMAE v2, `mask.decoder_ratio`): `decoder_mask` also hides part of the *masked* tokens from the
decoder, which then reconstructs (and is scored on) only the rest. Which ones: VideoMAE v2's running cell, a 2x2
cell of which `int(4 * decoder_ratio)` positions are dropped, tiled over each slice and shifted by one position
per slice (from a start drawn per clip), so every spatial position is reconstructed in some slices. The masked
tokens the cell keeps come first, the others after, each group in random order, and exactly
`num_decoded` are kept: every clip reconstructs the same count whatever its encoder mask (static shapes). Unlike
v2's code, whose decoder also predicts the encoder-visible positions the cell keeps, only masked tokens are
reconstructed: the decoder sees the visible tokens plus the kept masked positions, as the v2 paper describes.

A new kind: a function `(rand, batch_size, grid, k, clip) -> bool (B, T', S)` masking k tokens per slice (or
T' * k per sample), its entry in `MASKS`, and its name in config.MaskKind.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from motionmae.config import masked_per_slice
from motionmae.errors import UserError


def num_visible(grid: Tuple[int, int, int], ratio: float) -> int:
    """Visible tokens per sample for any mask kind."""
    t, h, w = grid
    return t * (h * w - masked_per_slice(h * w, ratio))


def num_decoded(grid: Tuple[int, int, int], ratio: float, decoder_ratio: float) -> int:
    """Masked tokens per sample the decoder reconstructs (all of them when `decoder_ratio` is 0)."""
    t, h, w = grid
    return _decoded(t * masked_per_slice(h * w, ratio), decoder_ratio)


def _decoded(masked: int, decoder_ratio: float) -> int:
    """Of `masked` tokens, the decoder keeps masked - floor(decoder_ratio * masked), at least one."""
    return masked - min(int(decoder_ratio * masked + 1e-6), max(masked - 1, 0))


def _lowest(noise: torch.Tensor, k: int) -> torch.Tensor:
    """bool mask of the same shape, True at the k smallest noise values of the last dim."""
    out = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    if k > 0:
        ids = torch.argsort(noise, dim=-1)[..., :k]
        out.scatter_(-1, ids, True)
    return out


def _per_slice(rand, b, grid, k, clip):
    t, h, w = grid
    return _lowest(rand(b, t, h * w), k)


def _tube(rand, b, grid, k, clip):
    t, h, w = grid
    return _lowest(rand(b, 1, h * w), k).expand(b, t, h * w)


def _random(rand, b, grid, k, clip):
    t, h, w = grid
    return _lowest(rand(b, t * h * w), t * k).reshape(b, t, h * w)


def _motion(rand, b, grid, k, clip):
    if clip is None:
        raise UserError("mask.kind=motion needs the clip (its frame differences weight the masked positions)")
    weight = motion_energy(clip, grid)
    weight = weight + 1e-3 * weight.mean(dim=(1, 2), keepdim=True) + 1e-12
    # k draws without replacement, P ~ weight: the k smallest exponential variates divided by the weights
    u = rand(b, grid[0], grid[1] * grid[2])
    return _lowest(-torch.log1p(-u) / weight.to(u.device), k)


MASKS = {"per_slice": _per_slice, "tube": _tube, "random": _random, "motion": _motion}


def motion_energy(clip: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """(B, T', H'*W'): per token, the mean over its cube of the squared difference to the previous frame
    (frame 0 takes frame 1's difference). `clip` (B, C, T, H, W), any scale (uint8 or float)."""
    x = clip.float()
    d = x.new_empty(x.shape)
    torch.sub(x[:, :, 1:], x[:, :, :-1], out=d[:, :, 1:])
    d[:, :, :1] = d[:, :, 1:2]
    t, h, w = grid
    b, c, frames, height, width = x.shape
    cubes = d.square().reshape(b, c, t, frames // t, h, height // h, w, width // w)
    return cubes.mean(dim=(1, 3, 5, 7)).reshape(b, t, h * w)


def make_mask(
    kind: str,
    batch_size: int,
    grid: Tuple[int, int, int],
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
    clip: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """bool (B, N) with N = T'*H'*W', True = masked; every row masks the same count (see module docstring).

    `clip` (B, C, T, H, W): the frames the encoder sees (T = T' x tubelet), for kinds that look at them (motion)."""
    if kind not in MASKS:
        raise UserError(f"unknown mask.kind '{kind}'; valid: {', '.join(MASKS)}")
    t, h, w = grid
    k = masked_per_slice(h * w, ratio)
    draw_device = generator.device if generator is not None else device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=draw_device)

    mask = MASKS[kind](rand, batch_size, grid, k, clip).reshape(batch_size, t * h * w)
    return mask if device is None else mask.to(device)


def running_cell(batch_size: int, grid: Tuple[int, int, int], drop: int, start: torch.Tensor) -> torch.Tensor:
    """bool (B, T'*H'*W'), True where VideoMAE v2's running cell drops a token: within each 2x2 cell, position
    j = 2 * (h % 2) + (w % 2) of slice t is dropped when (j + t + start[b]) % 4 < `drop` (0..3)."""
    t, h, w = grid
    j = 2 * (torch.arange(h) % 2)[:, None] + (torch.arange(w) % 2)[None, :]  # (H', W')
    phase = j[None, None] + torch.arange(t)[None, :, None, None] + start.view(-1, 1, 1, 1).cpu()
    return ((phase % 4) < drop).reshape(batch_size, t * h * w)


def decoder_mask(mask: torch.Tensor, grid: Tuple[int, int, int], decoder_ratio: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """bool (B, N), True = a masked token the decoder neither sees nor reconstructs: a subset of the encoder's
    `mask` (B, N) (every row masking the same count M), keeping M - floor(decoder_ratio * M) masked tokens per row.
    Draws from `generator` (the engine continues the clip's generator after the encoder mask)."""
    b, n = mask.shape
    keep = _decoded(int(mask[0].sum()), decoder_ratio)
    draw_device = generator.device if generator is not None else mask.device
    start = torch.randint(4, (b,), generator=generator, device=draw_device)
    u = torch.rand(b, n, generator=generator, device=draw_device).to(mask.device)
    dropped = running_cell(b, grid, min(int(4 * decoder_ratio + 1e-6), 3), start).to(mask.device)
    # order: masked and kept by the cell (u in [0, 1)), masked and dropped by it ([1, 2)), visible (>= 2)
    priority = u + dropped + 2 * (~mask)
    kept = _lowest(priority, keep)
    return mask & ~kept
