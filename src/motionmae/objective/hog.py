"""HOG target (MaskFeat, Wei et al. 2022): histograms of oriented gradients of each cube's first frame.

As MaskFeat computes it (SlowFast's HOG layer), on the clip in [0, 1], per colour channel:
- gradients by 3x3 Sobel filters on the reflect-padded frame: gx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]] (a
  cross-correlation, as conv2d is), gy its transpose;
- each pixel votes its magnitude sqrt(gx^2 + gy^2) into one of `objective.hog_bins` unsigned orientation bins:
  bin = floor(atan2(gx, gy) / pi * bins) mod bins (so opposite gradients share a bin);
- votes are summed over cells of `objective.hog_cell` x `hog_cell` pixels and each cell's histogram is L2
  normalised (the local contrast normalisation MaskFeat found essential; an empty cell stays 0).
A cube of tubelet x p x p pixels takes the HOG of its first frame (MaskFeat with temporal patches of 2): (p/cell)^2
cells x bins values per channel, laid out (cell_y, cell_x, bin, C), channel fastest. Not normalised again per
cube. One difference from MaskFeat: no Gaussian weighting of the votes within a patch.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from motionmae.config import ObjectiveConfig
from motionmae.objective.tokens import Target

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


def hog_cells(frames: torch.Tensor, bins: int, cell: int) -> torch.Tensor:
    """frames (B, C, H, W) -> per-cell histograms (B, C, bins, H / cell, W / cell), each L2 normalised over bins."""
    b, c, h, w = frames.shape
    kx = frames.new_tensor(SOBEL_X).expand(c, 1, 3, 3)
    x = F.pad(frames, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(x, kx, groups=c)
    gy = F.conv2d(x, kx.transpose(-1, -2), groups=c)
    magnitude = torch.hypot(gx, gy)
    index = torch.floor(torch.atan2(gx, gy) / math.pi * bins).long() % bins
    votes = frames.new_zeros(b, c, bins, h, w).scatter_add_(2, index[:, :, None], magnitude[:, :, None])
    hist = votes.reshape(b, c, bins, h // cell, cell, w // cell, cell).sum(dim=(4, 6))
    return F.normalize(hist, dim=2)


class HOG(Target):
    """Pictures draw each cell's histogram as the classic HOG glyph: a line along the edge of each bin's
    orientation through the cell centre, as bright as the bin (mean over channels)."""

    name, title = "hog", "HOG"

    def __init__(self, cfg: ObjectiveConfig, tubelet: int, patch: int, in_chans: int = 3):
        super().__init__(cfg, tubelet, patch, in_chans)
        self.bins, self.cell = cfg.hog_bins, cfg.hog_cell
        self.per_side = patch // self.cell  # cells along a patch side

    @property
    def dim(self) -> int:
        return self.per_side**2 * self.bins * self.channels

    def cubes(self, clip01: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        first = clip01[:, :, : self.frames(clip01) : self.tubelet]  # (B, C, T', H, W): each cube's first frame
        b, c, t, h, w = first.shape
        hist = hog_cells(first.transpose(1, 2).reshape(b * t, c, h, w), self.bins, self.cell)
        k, gh, gw = self.per_side, h // self.patch, w // self.patch
        x = hist.reshape(b, t, c, self.bins, gh, k, gw, k).permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, T', H', W', C, k, k, bins)
        x = x.reshape(b, t * gh * gw, c, k * k * self.bins)
        if index is not None:
            x = torch.gather(x, 1, index[:, :, None, None].expand(-1, -1, *x.shape[2:]))
        return x

    def picture(self, values: torch.Tensor, grid: Tuple[int, int, int], reference: torch.Tensor) -> torch.Tensor:
        gt, gh, gw = grid
        b, k = values.shape[0], self.per_side
        hist = values.reshape(b, gt, gh, gw, k, k, self.bins, self.channels).mean(-1).clamp(min=0)
        glyphs = torch.einsum("btyxijn,npq->btyipxjq", hist, self._glyphs().to(values))  # (B, T', H', k, cell, W', k, cell)
        img = glyphs.reshape(b, 1, gt, 1, gh * self.patch, gw * self.patch).clamp(0, 1)
        return img.expand(-1, 3, -1, self.tubelet, -1, -1).reshape(b, 3, gt * self.tubelet, gh * self.patch, gw * self.patch)

    def _glyphs(self) -> torch.Tensor:
        """(bins, cell, cell): for each bin a line through the cell centre along the edge (perpendicular to the
        gradient direction (sin a, cos a) of angle a = atan2(gx, gy) at the bin's centre), antialiased."""
        a = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * math.pi / self.bins
        edge = torch.stack([torch.cos(a), -torch.sin(a)], dim=1)  # (x, y) direction of the edge
        c = torch.arange(self.cell, dtype=torch.float64) - (self.cell - 1) / 2
        y, x = torch.meshgrid(c, c, indexing="ij")
        distance = (x[None] * edge[:, 1, None, None] - y[None] * edge[:, 0, None, None]).abs()  # to the line
        return (1.0 - distance).clamp(min=0).float()
