"""Clip transforms in plain torch (no torchvision): crops and flips on uint8, resize, normalisation.

Layout inside this module: a clip is a uint8 tensor (C, T, H, W) (the dataset output), and crops are
taken before resizing so only the kept pixels are interpolated. Every random draw takes a
`torch.Generator`, so a clip is a pure function of (video, seed).

Train: `multi_scale_crop` (VideoMAE's GroupMultiScaleCrop: crop side from scales of the short side, aspect
distortion of at most one scale step, offset from a fixed 13-point grid), resize to `input_size`, optional
horizontal flip. Test: `short_side_resize`, then `center_crop` or `three_crop` (along the long side).
`to_model_input` is where uint8 becomes normalised float on the device.

Fine-tuning train clips (VideoMAE's recipe): `RandAugment` (timm's 'rand-m7-n4-mstd0.5-inc1') on the frames
(brought down to the short side the dataset evaluates at), one draw of ops and arguments per clip applied to every frame alike (`apply_op(clip, name, arg)` is one
op), then `random_resized_crop` (torchvision's RandomResizedCrop draw: area 8-100%, aspect 3/4-4/3), then the flip.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def from_numpy_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) from the decoder -> uint8 (C, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


def randint(low: int, high: int, generator: torch.Generator) -> int:
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
    crop_w, crop_h = pairs[randint(0, len(pairs) - 1, generator)]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]  # (x, y) in steps: corners and centre
    if more_fix_crop:
        offsets += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    ox, oy = offsets[randint(0, len(offsets) - 1, generator)]
    return oy * h_step, ox * w_step, crop_h, crop_w


def multi_scale_crop(clip: torch.Tensor, input_size: int, scales: Sequence[float], generator: torch.Generator,
                     max_distort: int = 1) -> torch.Tensor:
    """Random multi-scale crop of (C, T, H, W), resized to (input_size, input_size)."""
    top, left, ch, cw = multi_scale_crop_params(clip.shape[-2], clip.shape[-1], input_size, scales, generator, max_distort)
    return resize(crop(clip, top, left, ch, cw), (input_size, input_size))


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_resized_crop_params(height: int, width: int, scale: Tuple[float, float], ratio: Tuple[float, float],
                               generator: torch.Generator) -> Tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) as torchvision's RandomResizedCrop draws them (VideoMAE fine-tuning): up to 10
    tries of an area fraction in `scale` and a log-uniform aspect (w / h) in `ratio`; else the centre crop of the
    whole frame clamped to `ratio`."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return randint(0, height - h, generator), randint(0, width - w, generator), h, w
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(clip: torch.Tensor, input_size: int, generator: torch.Generator,
                        scale: Tuple[float, float] = (0.08, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop of (C, T, H, W), the same box for every frame, resized to (input_size, input_size)."""
    top, left, ch, cw = random_resized_crop_params(clip.shape[-2], clip.shape[-1], scale, ratio, generator)
    return resize(crop(clip, top, left, ch, cw), (input_size, input_size))


def random_flip(clip: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip with probability p (the draw is made even when p == 0, keeping streams aligned)."""
    u = float(torch.rand((), generator=generator))
    return clip.flip(-1) if u < p else clip


def short_side_shape(h: int, w: int, size: int) -> Tuple[int, int]:
    """(H, W) with min(H, W) == size and the aspect ratio kept (rounded)."""
    if h <= w:
        return size, max(size, int(round(w * size / h)))
    return max(size, int(round(h * size / w))), size


def short_side_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, T, H, W) so that min(H, W) == size, keeping the aspect ratio."""
    return resize(clip, short_side_shape(*clip.shape[-2:], size))


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


def eval_short_side(input_size: int, short_side: int = 0) -> int:
    """The short side clips are resized to before the test crop: `short_side`, or 0 for input_size * 256 / 224
    (VideoMAE's 224 -> 256)."""
    return short_side or int(round(input_size * 256 / 224))


def preprocess(frames, input_size: int, mean: Sequence[float], std: Sequence[float], short_side: int = 0,
               crop: str = "center", device=None) -> torch.Tensor:
    """Decoded frames -> model input, the way evaluation clips are made (one centre view).

    `frames`: uint8 (T, H, W, C) or a batch (B, T, H, W, C), numpy or torch (what PyAV, decord and
    torchvision.io.read_video return; `data.decode.VideoReader(path).get_frames(indices)` too). Also taken: the
    datasets' (C, T, H, W) / (B, C, T, H, W) uint8. Returns float (B, C, T, input_size, input_size) on `device`:
    short side resized to `short_side` (0: input_size * 256 / 224) and the centre crop (`crop="full"`: the whole
    frame resized to input_size x input_size, as VideoMAE v2's TAD features), scaled to [0, 1], normalised with
    mean/std. Give exactly the frames the model should see (`model.num_frames` of them, at its frame stride).
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    c = len(mean)
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5 or c not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"expected frames (T, H, W, {c}) or (B, T, H, W, {c}), got shape {tuple(x.shape)}")
    if x.shape[-1] == c:
        x = x.permute(0, 4, 1, 2, 3)  # -> (B, C, T, H, W)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (0..255), got {x.dtype}: for float frames in [0, 1] use "
                         "(frames * 255).round().to(torch.uint8), or normalise them yourself")
    views = [spatial_view(v, input_size, short_side, crop) for v in x]
    return to_model_input(torch.stack(views), mean, std, device)


def spatial_view(clip: torch.Tensor, input_size: int, short_side: int = 0, crop: str = "center") -> torch.Tensor:
    """uint8 (C, T, H, W) -> (C, T, input_size, input_size): the centre test view (`crop="center"`), or the whole frame
    resized (`crop="full"`)."""
    if crop == "full":
        return resize(clip, (input_size, input_size))
    if crop != "center":
        raise ValueError(f"crop must be 'center' or 'full', got '{crop}'")
    return eval_views(clip, input_size, eval_short_side(input_size, short_side), 1)[0]


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


# ----------------------------------------------------------------------------------------------
# RandAugment for clips (timm's `rand-m{M}-n{N}-mstd{S}-inc1`, as VideoMAE fine-tuning uses it)
#
# One draw of ops and parameters per clip, applied identically to every frame: a clip stays a video of one
# scene. The ops follow PIL's definitions (what timm calls per frame), on uint8 after every op. Statistics of
# the data-dependent ops (AutoContrast, Equalize, Contrast's mean) are taken over the whole clip, so even
# these map a pixel value the same way in every frame (timm/VideoMAE compute them per frame).

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# 'inc1': severity grows with the magnitude for every op (timm's _RAND_INCREASING_TRANSFORMS)
RAND_INCREASING_OPS = tuple(n + "Increasing" if n in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
                            else n for n in RAND_OPS)
FILL = 128  # timm's fill colour for pixels that geometric ops bring in from outside the frame


def _signed(v: float, generator: torch.Generator) -> float:
    return -v if float(torch.rand((), generator=generator)) > 0.5 else v


def rand_augment_arg(name: str, magnitude: float, generator: torch.Generator):
    """timm's level -> argument for op `name` at `magnitude` in [0, 10] (signs drawn from `generator`)."""
    m = magnitude / 10.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return _signed(30.0 * m, generator)  # degrees, counter-clockwise
    if name in ("ShearX", "ShearY"):
        return _signed(0.3 * m, generator)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _signed(0.45 * m, generator)  # fraction of the width / height
    if name == "Posterize":
        return int(4 * m)  # bits kept (timm's RandAugment: 0..4)
    if name == "PosterizeIncreasing":
        return 4 - int(4 * m)
    if name == "Solarize":
        return int(256 * m)  # threshold
    if name == "SolarizeIncreasing":
        return 256 - int(256 * m)
    if name == "SolarizeAdd":
        return int(110 * m)
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return max(0.1, 1.0 + _signed(0.9 * m, generator))  # enhance factor 1 +- 0.9 m
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 1.8 * m + 0.1
    raise ValueError(f"unknown RandAugment op '{name}'")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float -> uint8 by truncation, as PIL's blend (ImageEnhance) stores its result."""
    return x.clamp_(0, 255).to(torch.uint8)


def _gray(clip: torch.Tensor) -> torch.Tensor:
    """PIL's 'L' conversion (ITU-R 601-2 luma in 16-bit fixed point): int32 (1, T, H, W)."""
    if clip.shape[0] != 3:
        return clip.int().sum(0, keepdim=True) // clip.shape[0]
    r, g, b = clip.int().unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(0)


def _blend(degenerate: torch.Tensor, clip: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's Image.blend(degenerate, clip, factor): degenerate + factor * (clip - degenerate)."""
    d = degenerate.float()
    return _to_uint8(d + factor * (clip.float() - d))


def _lut(clip: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Lookup of every pixel in `table`: (256,) for all channels or (C, 256) per channel, uint8. (A gather is
    2x faster than torch.where on uint8, so every value -> value map goes through here.)"""
    table = table.to(device=clip.device, dtype=torch.uint8)
    if table.dim() == 1:
        return torch.take(table, clip.long())
    return torch.take(table.reshape(-1), _channel_index(clip))


def _channel_index(clip: torch.Tensor) -> torch.Tensor:
    """Pixel value + 256 * channel: the index into a flattened (C, 256) table."""
    c = clip.shape[0]
    return clip.long() + (torch.arange(c, device=clip.device) * 256).view(c, 1, 1, 1)


def _channel_hist(clip: torch.Tensor) -> torch.Tensor:
    return torch.bincount(_channel_index(clip).reshape(-1), minlength=256 * clip.shape[0]).view(clip.shape[0], 256)


def autocontrast(clip: torch.Tensor) -> torch.Tensor:
    """Stretch each channel's [min, max] over the clip to [0, 255] (PIL ImageOps.autocontrast, cutoff 0)."""
    tables = []
    for ch in clip.reshape(clip.shape[0], -1):
        lo, hi = int(ch.min()), int(ch.max())
        if hi <= lo:
            tables.append(torch.arange(256))
            continue
        scale = 255.0 / (hi - lo)
        tables.append(torch.tensor([min(max(int(i * scale - lo * scale), 0), 255) for i in range(256)]))
    return _lut(clip, torch.stack(tables))


def equalize(clip: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel over the clip (PIL ImageOps.equalize)."""
    tables = []
    for h in _channel_hist(clip).cpu():
        used = h[h > 0]
        step = int(used.sum() - used[-1]) // 255 if len(used) > 1 else 0
        if step == 0:
            tables.append(torch.arange(256))
            continue
        before = torch.cat([torch.zeros(1, dtype=h.dtype), h.cumsum(0)[:-1]])  # pixels below each value
        tables.append(((before + step // 2) // step).clamp(max=255))
    return _lut(clip, torch.stack(tables))


def posterize(clip: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top `bits` bits (0 bits: black)."""
    if bits >= 8:
        return clip
    return clip & ((0xFF << (8 - max(bits, 0))) & 0xFF)


def solarize(clip: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert the pixels >= threshold."""
    v = torch.arange(256)
    return _lut(clip, torch.where(v < threshold, v, 255 - v))


def solarize_add(clip: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    """Add `add` (saturating) to the pixels < threshold."""
    v = torch.arange(256)
    return _lut(clip, torch.where(v < threshold, (v + add).clamp(0, 255), v))


def sharpness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13, border pixels kept)."""
    if min(clip.shape[-2:]) < 3:
        return clip
    x = clip.short()  # 13 * 255 fits: integer sums are exact and 3x faster than a float conv2d
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    s = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * x[..., 1:-1, 1:-1]
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (2 * s + 13) // 26  # round(s / 13); no ties for integer s
    return _blend(smooth, clip, factor)


def affine(clip: torch.Tensor, matrix: Sequence[Sequence[float]], fill: int = FILL) -> torch.Tensor:
    """Resample every frame at input = matrix @ (x, y, 1) for each output pixel (x, y), in pixel units with the
    origin at the top-left corner (PIL's Image.transform(AFFINE) convention); bilinear, `fill` outside."""
    c, t, h, w = clip.shape
    a = torch.eye(3, dtype=torch.float64)
    a[:2] = torch.as_tensor(matrix, dtype=torch.float64)
    norm = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=torch.float64)  # pixels -> [-1, 1]
    theta = (norm @ a @ torch.linalg.inv(norm))[:2].float().unsqueeze(0).to(clip.device)
    grid = F.affine_grid(theta, [1, c * t, h, w], align_corners=False)
    # sampling (x - fill) with zero padding brings `fill` in from outside (with a blended edge, like antialiasing)
    x = clip.reshape(1, c * t, h, w).float() - fill
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return y.round_().clamp_(0, 255).to(torch.uint8).view(c, t, h, w)


def rotate(clip: torch.Tensor, degrees: float, fill: int = FILL) -> torch.Tensor:
    """Rotate counter-clockwise about the frame centre (PIL Image.rotate)."""
    h, w = clip.shape[-2:]
    a = np.deg2rad(degrees)
    cos, sin = round(float(np.cos(a)), 15), round(float(np.sin(a)), 15)  # exact for multiples of 90
    cx, cy = w / 2.0, h / 2.0
    return affine(clip, [[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]], fill)


def apply_op(clip: torch.Tensor, name: str, arg=None) -> torch.Tensor:
    """One RandAugment op (names of RAND_OPS / RAND_INCREASING_OPS) with its argument on uint8 (C, T, H, W)."""
    base = name[: -len("Increasing")] if name.endswith("Increasing") else name
    h, w = clip.shape[-2:]
    if base == "AutoContrast":
        return autocontrast(clip)
    if base == "Equalize":
        return equalize(clip)
    if base == "Invert":
        return 255 - clip
    if base == "Rotate":
        return rotate(clip, arg)
    if base == "Posterize":
        return posterize(clip, arg)
    if base == "Solarize":
        return solarize(clip, arg)
    if base == "SolarizeAdd":
        return solarize_add(clip, arg)
    if base == "Color":
        return _blend(_gray(clip), clip, arg)
    if base == "Contrast":
        mean = int(_gray(clip).double().mean() + 0.5)
        return _blend(torch.full((), mean), clip, arg)
    if base == "Brightness":
        return _blend(torch.zeros(()), clip, arg)
    if base == "Sharpness":
        return sharpness(clip, arg)
    if base == "ShearX":
        return affine(clip, [[1, arg, 0], [0, 1, 0]])
    if base == "ShearY":
        return affine(clip, [[1, 0, 0], [arg, 1, 0]])
    if base == "TranslateXRel":
        return affine(clip, [[1, 0, arg * w], [0, 1, 0]])
    if base == "TranslateYRel":
        return affine(clip, [[1, 0, 0], [0, 1, arg * h]])
    raise ValueError(f"unknown RandAugment op '{name}'")


def rand_augment(clip: torch.Tensor, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 generator: torch.Generator = None, increasing: bool = True, prob: float = 0.5,
                 magnitude_max: float = 10.0) -> torch.Tensor:
    """RandAugment on a uint8 clip (C, T, H, W): `num_ops` ops drawn uniformly (with replacement), each applied
    with probability `prob` at a magnitude ~ N(magnitude, magnitude_std) clipped to [0, magnitude_max]
    (uniform in [0, magnitude] when magnitude_std is inf); the same ops and arguments for every frame."""
    if clip.dtype != torch.uint8 or clip.dim() != 4:
        raise ValueError(f"rand_augment expects a uint8 (C, T, H, W) clip, got {clip.dtype} {tuple(clip.shape)}")
    names = RAND_INCREASING_OPS if increasing else RAND_OPS
    for i in torch.randint(0, len(names), (num_ops,), generator=generator).tolist():
        if float(torch.rand((), generator=generator)) > prob:
            continue
        m = magnitude
        if magnitude_std == float("inf"):
            m = magnitude * float(torch.rand((), generator=generator))
        elif magnitude_std > 0:
            m = magnitude + magnitude_std * float(torch.randn((), generator=generator))
        m = min(max(m, 0.0), magnitude_max)
        clip = apply_op(clip, names[i], rand_augment_arg(names[i], m, generator))
    return clip


class RandAugment:
    """`rand_augment` with fixed settings, built from a timm-style spec such as 'rand-m7-n4-mstd0.5-inc1'
    (keys: m magnitude, n ops, mstd magnitude std (> 100: uniform), mmax magnitude cap, inc 0/1, p op prob)."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, increasing: bool = True,
                 prob: float = 0.5, magnitude_max: float = 10.0):
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std
        self.increasing, self.prob, self.magnitude_max = increasing, prob, magnitude_max

    @classmethod
    def from_spec(cls, spec: str, key: str = "aa") -> Optional["RandAugment"]:
        """None for '' / 'none'; a UserError naming `key` for anything that is not a valid 'rand-...' spec."""
        from motionmae.errors import UserError

        spec = (spec or "").strip()
        if spec.lower() in ("", "none", "off"):
            return None
        parts = spec.split("-")
        if parts[0] != "rand":
            raise UserError(f"{key}='{spec}': only RandAugment specs are supported, e.g. 'rand-m7-n4-mstd0.5-inc1' "
                            "(or '' / 'none' to turn it off)")
        kw = dict(num_ops=2, magnitude=10.0, magnitude_std=0.0, increasing=False, prob=0.5, magnitude_max=10.0)  # timm
        fields = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
                  "mmax": ("magnitude_max", float), "inc": ("increasing", lambda v: bool(int(v))), "p": ("prob", float)}
        for part in parts[1:]:
            k = part.rstrip("0123456789.")
            if k not in fields or k == part:
                raise UserError(f"{key}='{spec}': cannot read '{part}'; expected parts m<magnitude>, n<ops>, mstd<std>, "
                                "mmax<max>, inc<0|1>, p<prob>, e.g. 'rand-m7-n4-mstd0.5-inc1'")
            name, conv = fields[k]
            try:
                kw[name] = conv(part[len(k):])
            except ValueError:
                raise UserError(f"{key}='{spec}': '{part}' has no valid number") from None
        if kw["magnitude_std"] > 100:
            kw["magnitude_std"] = float("inf")
        if kw["num_ops"] < 0 or not 0 <= kw["prob"] <= 1:
            raise UserError(f"{key}='{spec}': need n >= 0 and 0 <= p <= 1")
        return cls(**kw)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rand_augment(clip, self.num_ops, self.magnitude, self.magnitude_std, generator, self.increasing,
                            self.prob, self.magnitude_max)

    def __repr__(self):
        return (f"RandAugment(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, inc={int(self.increasing)}, "
                f"p={self.prob})")
