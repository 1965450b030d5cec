"""The reconstruction targets, by name (`objective.targets`): appearance and motion here, HOG in hog.py.

All are computed from the un-normalised clip in [0, 1], shape (B, C, T, H, W) (see `tokens.Target`).

Appearance (VideoMAE): the cube's pixels, normalised per cube and per channel with the *unbiased* std:
(x - mean) / (std + eps) over the tubelet*p*p values of that channel; or raw pixels.

Motion (MotionMAE): frame differences, gap g >= 1, of the sampled frames (objective.motion_frames=sampled,
D_t = X_{t+g} - X_t, g * data.sampling_rate raw frames apart) or of raw adjacent frames (adjacent).
- sampled, motion_pad='first': the clip has T frames; the T-g differences are padded back to T by repeating the
  first difference g times at the front: M = [D_0]*g + [D_0, ..., D_{T-g-1}], i.e. M_t = X_t - X_{t-g} for
  t >= g and M_t = X_g - X_0 for t < g.
- sampled, motion_pad='extra_frame': the clip carries T+g frames; M_t = D_t = X_{t+g} - X_t for t = 0..T-1, and
  the appearance target (and the encoder input) use the first T frames only.
- adjacent: the clip carries 2T frames, the T sampled frames X_t = R(i_t) then their raw neighbours R(i_t + g)
  (data/datasets.py ClipMaker, neighbor_gap); M_t = R(i_t + g) - R(i_t), no padding.
Then optionally grayscale (luma 0.299 R + 0.587 G + 0.114 B, one channel, so tubelet*p*p values per
token), optionally absolute value, patchified like appearance and optionally normalised per cube per channel.

A new target: a `Target` subclass in its own file, its name in `TARGETS` below, and in config.py its name in
`TargetName`, its weight `w_<name>` and its options in `ObjectiveConfig` (hog.py is the example).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from motionmae.config import ModelConfig, ObjectiveConfig
from motionmae.errors import UserError
from motionmae.objective.hog import HOG
from motionmae.objective.tokens import Target, cubes, unpatchify

LUMA = (0.299, 0.587, 0.114)


class Appearance(Target):
    name, title, show_truth = "appearance", "appearance", False

    def __init__(self, cfg: ObjectiveConfig, tubelet: int, patch: int, in_chans: int = 3):
        super().__init__(cfg, tubelet, patch, in_chans)
        self.normalize = cfg.appearance_norm

    @property
    def dim(self) -> int:
        return self.tubelet * self.patch**2 * self.channels

    def cubes(self, clip01: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return cubes(clip01[:, :, : self.frames(clip01)], self.tubelet, self.patch, index)

    def picture(self, values: torch.Tensor, grid: Tuple[int, int, int], reference: torch.Tensor) -> torch.Tensor:
        return unpatchify(values, self.tubelet, self.patch, grid).clamp(0, 1)


class Motion(Target):
    """Pictures show the signed differences on grey = 0, one gain per picture (the largest true |difference|
    maps to full range) shared by the true and predicted columns."""

    name, title = "motion", "motion"

    def __init__(self, cfg: ObjectiveConfig, tubelet: int, patch: int, in_chans: int = 3):
        super().__init__(cfg, tubelet, patch, in_chans)
        self.normalize = cfg.motion_norm
        self.channels = 1 if cfg.motion_color == "gray" else in_chans

    @property
    def dim(self) -> int:
        return self.tubelet * self.patch**2 * self.channels

    def cubes(self, clip01: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return cubes(motion_frames(clip01, self.cfg), self.tubelet, self.patch, index)

    def picture(self, values: torch.Tensor, grid: Tuple[int, int, int], reference: torch.Tensor) -> torch.Tensor:
        gain = 0.5 / max(float(reference.abs().max()), 1e-6)
        return (0.5 + gain * unpatchify(values, self.tubelet, self.patch, grid)).clamp(0, 1)


def motion_frames(clip01: torch.Tensor, cfg: ObjectiveConfig) -> torch.Tensor:
    """Aligned frame differences (B, C or 1, T, H, W), before patchifying (see the module docstring)."""
    g = cfg.motion_gap
    t = cfg.encoder_frames(clip01.shape[2])
    if g < 1 or (cfg.motion_frames == "sampled" and cfg.motion_pad == "first" and g >= t):
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
    if cfg.motion_frames == "adjacent":  # the neighbours follow the T sampled frames
        d = x[:, :, t:] - x[:, :, :t]
    elif cfg.motion_pad == "first":  # D_t = X_{t+g} - X_t written after g slots, which then get D_0
        d = x.new_empty(x.shape)
        torch.sub(x[:, :, g:], x[:, :, :-g], out=d[:, :, g:])
        d[:, :, :g] = d[:, :, g : g + 1]
    else:
        d = x[:, :, g:] - x[:, :, :-g]
    return d.abs_() if cfg.motion_mode == "abs" else d


TARGETS = {"appearance": Appearance, "motion": Motion, "hog": HOG}


def build_targets(objective: ObjectiveConfig, model: ModelConfig) -> List[Target]:
    """The targets of `objective.targets`, in that order (the order of the losses and the picture columns)."""
    unknown = [n for n in objective.targets if n not in TARGETS]
    if unknown:
        raise UserError(f"unknown objective.targets {unknown}; valid: {', '.join(TARGETS)}")
    return [TARGETS[n](objective, model.tubelet_size, model.patch_size, model.in_chans) for n in objective.targets]
