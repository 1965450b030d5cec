"""Reconstruction targets, all computed from the un-normalised clip in [0, 1], shape (B, C, T, H, W).

A token's values are laid out (tubelet, p, p, C) flattened, channel fastest (VideoMAE), and tokens are
ordered t-major, then h, then w (the Conv3d flatten order of the tubelet embedding).

Appearance (VideoMAE): the cube's pixels, normalised per cube and per channel with the *unbiased* std:
(x - mean) / (std + eps) over the tubelet*p*p values of that channel; or raw pixels.

Motion (MotionMAE): frame differences over the sampled frames, D_t = X_{t+g} - X_t, gap g >= 1.
- motion_pad='first': the clip has T frames; the T-g differences are padded back to T by repeating the
  first difference g times at the front: M = [D_0]*g + [D_0, ..., D_{T-g-1}], i.e. M_t = X_t - X_{t-g} for
  t >= g and M_t = X_g - X_0 for t < g.
- motion_pad='extra_frame': the clip carries T+g frames; M_t = D_t = X_{t+g} - X_t for t = 0..T-1, and
  the appearance target (and the encoder input) use the first T frames only.
Then optionally grayscale (luma 0.299 R + 0.587 G + 0.114 B, one channel, so tubelet*p*p values per
token), optionally absolute value, patchified like appearance and optionally normalised per cube per channel.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from motionmae.config import ObjectiveConfig
from motionmae.errors import UserError

LUMA = (0.299, 0.587, 0.114)


def cubes(clip: torch.Tensor, tubelet: int, patch: int, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, C, tubelet*p*p): each token's values, one row per channel.

    The working layout of the targets: per-channel statistics reduce over a contiguous last dim, and the
    gather copies runs of p values (the channel-fastest token layout is produced once, at the end).
    `index` (B, M): only those tokens, (B, M, C, tubelet*p*p), read straight from the clip."""
    b, c, t, h, w = clip.shape
    gt, gh, gw = t // tubelet, h // patch, w // patch
    x = clip.reshape(b, c, gt, tubelet, gh, patch, gw, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', H', W', C, tubelet, p, p)
    if index is not None:
        rows = torch.arange(b, device=clip.device)[:, None]
        return x[rows, index // (gh * gw), index // gw % gh, index % gw].reshape(b, index.shape[1], c, -1)
    return x.reshape(b, gt * gh * gw, c, -1)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C, tubelet*p*p) -> (B, N, tubelet*p*p*C): the token layout, channel fastest (VideoMAE)."""
    return x.transpose(-1, -2).reshape(*x.shape[:-2], -1)


def patchify(clip: torch.Tensor, tubelet: int, patch: int, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, tubelet*p*p*C), values laid out (tubelet, p, p, C).
    `index` (B, M): only those tokens, (B, M, tubelet*p*p*C)."""
    return tokens(cubes(clip, tubelet, patch, index))


def unpatchify(x: torch.Tensor, tubelet: int, patch: int, grid: Tuple[int, int, int]) -> torch.Tensor:
    """Exact inverse of `patchify`: (B, N, tubelet*p*p*C) on token grid (T', H', W') -> (B, C, T, H, W)."""
    b = x.shape[0]
    gt, gh, gw = grid
    c = x.shape[-1] // (tubelet * patch * patch)
    x = x.reshape(b, gt, gh, gw, tubelet, patch, patch, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', tubelet, H', p, W', p)
    return x.reshape(b, c, gt * tubelet, gh * patch, gw * patch)


def normalized_tokens(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, N, C, n) cubes -> (B, N, n*C) tokens, each channel of each token (x - mean) / (unbiased std + eps).

    Written out (mean, centre, vector norm, scale): torch.var_mean over the last dim alone took 3x as long as
    all of this on CPU."""
    x = x - x.mean(dim=-1, keepdim=True)
    std = torch.linalg.vector_norm(x, dim=-1, keepdim=True).div_((x.shape[-1] - 1) ** 0.5)
    scale = std.add_(eps).reciprocal_()
    out = x.new_empty(*x.shape[:-2], x.shape[-1], x.shape[-2])
    torch.mul(x, scale, out=out.transpose(-1, -2))  # the token layout written directly, no extra copy
    return out.reshape(*x.shape[:-2], -1)


def cube_stats(x: torch.Tensor, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased std) per token per channel, each (..., channels): what `normalized_tokens` divides by,
    for undoing the normalisation in pictures with the true cube statistics."""
    x = x.reshape(*x.shape[:-1], -1, channels)
    return x.mean(dim=-2), x.var(dim=-2, unbiased=True).sqrt()


def num_appearance_frames(clip: torch.Tensor, cfg: ObjectiveConfig) -> int:
    """Frames the encoder and the appearance target use: all of them, or T = T_clip - g with 'extra_frame'."""
    if cfg.motion_pad not in ("first", "extra_frame"):
        raise UserError(f"unknown objective.motion_pad '{cfg.motion_pad}'; valid: first, extra_frame")
    t = clip.shape[2]
    return t - cfg.motion_gap if cfg.motion_pad == "extra_frame" else t


def motion_channels(cfg: ObjectiveConfig, in_chans: int = 3) -> int:
    return 1 if cfg.motion_color == "gray" else in_chans


def appearance_target(
    clip01: torch.Tensor, cfg: ObjectiveConfig, tubelet: int, patch: int, index: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(B, N or M, tubelet*p*p*C). `index` (B, M): keep only these tokens (normalising only them)."""
    t = num_appearance_frames(clip01, cfg)
    x = cubes(clip01[:, :, :t], tubelet, patch, index)
    return normalized_tokens(x, cfg.norm_eps) if cfg.appearance_norm else tokens(x)


def motion_frames(clip01: torch.Tensor, cfg: ObjectiveConfig) -> torch.Tensor:
    """Aligned frame differences (B, C or 1, T, H, W), before patchifying (see the module docstring)."""
    g = cfg.motion_gap
    t = num_appearance_frames(clip01, cfg)
    if g < 1 or (cfg.motion_pad == "first" and g >= t):
        raise UserError(f"objective.motion_gap={g} must be >= 1 and smaller than the clip's {t} frames")
    if cfg.motion_color not in ("rgb", "gray"):
        raise UserError(f"unknown objective.motion_color '{cfg.motion_color}'; valid: rgb, gray")
    if cfg.motion_mode not in ("signed", "abs"):
        raise UserError(f"unknown objective.motion_mode '{cfg.motion_mode}'; valid: signed, abs")
    x = clip01
    if cfg.motion_color == "gray":
        if x.shape[1] != 3:
            raise UserError(f"objective.motion_color=gray needs 3-channel clips, got {x.shape[1]} channels")
        w = x.new_tensor(LUMA).view(1, 3, 1, 1, 1)
        x = (x * w).sum(dim=1, keepdim=True)
    if cfg.motion_pad == "first":  # D_t = X_{t+g} - X_t written after g slots, which then get D_0
        d = x.new_empty(x.shape)
        torch.sub(x[:, :, g:], x[:, :, :-g], out=d[:, :, g:])
        d[:, :, :g] = d[:, :, g : g + 1]
    else:
        d = x[:, :, g:] - x[:, :, :-g]
    return d.abs_() if cfg.motion_mode == "abs" else d


def motion_target(
    clip01: torch.Tensor, cfg: ObjectiveConfig, tubelet: int, patch: int, index: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """(B, N or M, tubelet*p*p*C') with C' = 1 (gray) or C. `index` (B, M): keep only these tokens."""
    x = cubes(motion_frames(clip01, cfg), tubelet, patch, index)
    return normalized_tokens(x, cfg.norm_eps) if cfg.motion_norm else tokens(x)
