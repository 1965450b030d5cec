"""Clip transforms in plain torch (no torchvision): crops and flips on uint8, resize, normalisation.

Layout inside this module: a clip is a uint8 tensor (C, T, H, W) (the dataset output), and crops are
taken before resizing so only the kept pixels are interpolated. Every random draw takes a
`torch.Generator`, so a clip is a pure function of (video, seed).

Train: `multi_scale_crop` (VideoMAE's GroupMultiScaleCrop: crop side from scales of the short side, aspect
distortion of at most one scale step, offset from a fixed 13-point grid), resize to `input_size`, optional
horizontal flip. Test: `short_side_resize`, then `center_crop` or `three_crop` (along the long side).
`to_model_input` is where uint8 becomes normalised float on the device.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def from_numpy_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) from the decoder -> uint8 (C, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def resize(clip: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, T, H, W) to (C, T, *size); antialiased when shrinking. Keeps the dtype."""
    c, t, h, w = clip.shape
    if (h, w) == tuple(size):
        return clip
    x = clip.permute(1, 0, 2, 3)  # frames as the batch: (T, C, H, W)
    down = size[0] < h or size[1] < w
    kw = dict(size=tuple(size), mode="bilinear", align_corners=False, antialias=down)
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        try:  # torch's native uint8 bilinear kernel (channels-last) is 3-4x faster than a float round trip
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), **kw)
            return x.permute(1, 0, 2, 3).contiguous()
        except RuntimeError:  # a build without the uint8 kernel
            pass
    y = F.interpolate(x.float(), **kw)
    y = y.round_().clamp_(0, 255).to(torch.uint8) if clip.dtype == torch.uint8 else y.to(clip.dtype)
    return y.permute(1, 0, 2, 3).contiguous()


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return clip[..., top : top + height, left : left + width]


def multi_scale_crop_params(height: int, width: int, input_size: int, scales: Sequence[float], generator: torch.Generator,
                            max_distort: int = 1, more_fix_crop: bool = True) -> Tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) as VideoMAE's GroupMultiScaleCrop (fix_crop=True) draws them."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    # Sizes within 3 px of the target snap to it (avoids a needless 1-2 px resize).
    snapped = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [(snapped[i], snapped[j]) for i in range(len(sizes)) for j in range(len(sizes)) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[_randint(0, len(pairs) - 1, generator)]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]  # (x, y) in steps: corners and centre
    if more_fix_crop:
        offsets += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    ox, oy = offsets[_randint(0, len(offsets) - 1, generator)]
    return oy * h_step, ox * w_step, crop_h, crop_w


def multi_scale_crop(clip: torch.Tensor, input_size: int, scales: Sequence[float], generator: torch.Generator,
                     max_distort: int = 1) -> torch.Tensor:
    """Random multi-scale crop of (C, T, H, W), resized to (input_size, input_size)."""
    top, left, ch, cw = multi_scale_crop_params(clip.shape[-2], clip.shape[-1], input_size, scales, generator, max_distort)
    return resize(crop(clip, top, left, ch, cw), (input_size, input_size))


def random_flip(clip: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip with probability p (the draw is made even when p == 0, keeping streams aligned)."""
    u = float(torch.rand((), generator=generator))
    return clip.flip(-1) if u < p else clip


def short_side_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, T, H, W) so that min(H, W) == size, keeping the aspect ratio."""
    h, w = clip.shape[-2:]
    if h <= w:
        new = (size, max(size, int(round(w * size / h))))
    else:
        new = (max(size, int(round(h * size / w))), size)
    return resize(clip, new)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    return crop(clip, (h - size) // 2, (w - size) // 2, size, size)


def three_crop(clip: torch.Tensor, size: int) -> List[torch.Tensor]:
    """Three size x size crops spread along the long side: start, centre, end (VideoMAE's test views)."""
    h, w = clip.shape[-2:]
    if w >= h:
        top = (h - size) // 2
        return [crop(clip, top, left, size, size) for left in (0, (w - size) // 2, w - size)]
    left = (w - size) // 2
    return [crop(clip, top, left, size, size) for top in (0, (h - size) // 2, h - size)]


def train_transform(clip: torch.Tensor, input_size: int, scales: Sequence[float], flip: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """Multi-scale crop to input_size, then a random horizontal flip when `flip`."""
    clip = multi_scale_crop(clip, input_size, scales, generator)
    return random_flip(clip, generator, 0.5 if flip else 0.0)


def eval_views(clip: torch.Tensor, input_size: int, short_side: int, num_crops: int) -> List[torch.Tensor]:
    """Short-side resize to `short_side`, then 1 centre crop or 3 crops of input_size."""
    clip = short_side_resize(clip, short_side)
    if num_crops == 1:
        return [center_crop(clip, input_size)]
    if num_crops == 3:
        return three_crop(clip, input_size)
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")


def to_model_input(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float], device=None,
                   dtype: torch.dtype = torch.float32, channels_last: bool = None) -> torch.Tensor:
    """uint8 (B, C, T, H, W) or (B, T, H, W, C) -> normalised float (B, C, T, H, W) on `device`.

    The uint8 batch is moved first (4x less to copy), then converted and normalised there. A float input
    is taken to be in [0, 1]. When both dim 1 and the last dim equal len(mean), (B, C, T, H, W) is assumed
    unless `channels_last=True`.
    """
    c = len(mean)
    if clips.dim() != 5:
        raise ValueError(f"expected a 5-D clip batch, got shape {tuple(clips.shape)}")
    if channels_last is None:
        channels_last = clips.shape[1] != c and clips.shape[-1] == c
    if channels_last:
        clips = clips.permute(0, 4, 1, 2, 3)
    if clips.shape[1] != c:
        raise ValueError(f"expected {c} channels, got shape {tuple(clips.shape)}")
    x = clips.to(device=device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, c, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, c, 1, 1, 1)
    return ((x - m) / s).to(dtype).contiguous()
