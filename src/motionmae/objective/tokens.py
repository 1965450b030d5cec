"""A clip as tokens, and what a reconstruction target is.

A token's values are laid out (tubelet, p, p, C) flattened, channel fastest (VideoMAE), and tokens are ordered
t-major, then h, then w (the Conv3d flatten order of the tubelet embedding). Targets work on `cubes`
(B, N, C, n) -- per-channel statistics reduce over a contiguous last dim -- and are written out in the token
layout once (`tokens`, `normalized_tokens`).

`Target` is the base of every reconstruction target (objective/targets.py lists them): a name, a channel count,
and `compute(clip01, ids_masked)`, the values the decoder head for it must predict at the masked tokens.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from motionmae.config import ObjectiveConfig


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


class Target:
    """What the decoder reconstructs at each masked token, computed from the clip in [0, 1], (B, C, T, H, W).

    A target sets `name`, `channels` (its values per position: C, or 1 for gray motion) and `normalize`, and
    writes `cubes(clip01, index) -> (B, N or M, channels, n)`; `compute` lays them out channel-fastest (B, M, dim),
    normalised per cube and channel when `normalize` (VideoMAE's norm-pix). `dim` = channels * n is the width of
    its decoder head; `weight` its weight in the loss (`objective.w_<name>`). The clip may carry more frames than
    the encoder sees, after them (`frames` is the encoder's count, `ObjectiveConfig.encoder_frames`).

    For pictures (viz.py), `picture(values, grid, reference)` turns raw (un-normalised) tokens of every position
    (B, N, dim) into frames (B, 3, T, H, W) in [0, 1]; `reference` holds the true tokens, for a common scale.
    `title` heads its columns; `show_truth` False when the truth is the input itself (appearance).
    """

    name = ""
    title = ""
    normalize = False
    show_truth = True

    def __init__(self, cfg: ObjectiveConfig, tubelet: int, patch: int, in_chans: int = 3):
        self.cfg, self.tubelet, self.patch, self.in_chans = cfg, tubelet, patch, in_chans
        self.weight = float(getattr(cfg, f"w_{self.name}"))
        self.channels = in_chans

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def frames(self, clip: torch.Tensor) -> int:
        return self.cfg.encoder_frames(clip.shape[2])

    def cubes(self, clip01: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def compute(self, clip01: torch.Tensor, ids_masked: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, M, dim) float32 at the tokens `ids_masked` (B, M) (every token when None), no gradient."""
        x = self.cubes(clip01.float(), ids_masked)
        return normalized_tokens(x, self.cfg.norm_eps) if self.normalize else tokens(x)

    def raw(self, clip01: torch.Tensor) -> torch.Tensor:
        """Every token's values before any normalisation, (B, N, dim)."""
        return tokens(self.cubes(clip01.float()))

    def picture(self, values: torch.Tensor, grid: Tuple[int, int, int], reference: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
