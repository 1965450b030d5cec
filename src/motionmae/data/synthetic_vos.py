"""A small synthetic video-object-segmentation set in the DAVIS-2017 layout, with exact masks.

Two scenes (`scene=`):
- 'glyphs' (default): 2-3 annotated glyphs of distinct shapes (the classification set's `CLASSES`) plus one
  unannotated distractor glyph, all of *one* colour, on the classification set's drifting wave texture; they
  move with constant velocity, bounce off the borders and pass in front of each other in a fixed depth order.
  Colour cannot tell the objects apart (nor an object from the distractor): tracking them needs features that
  know shape, which is what separates a pretrained encoder from a random one (a random ViT's patch features are
  mostly local colour plus position).
- 'sprites' (the first version of this set): a panning textured background and 1-3 textured objects (ellipses
  and rectangles with stripe / checker textures in their own colours) moving with constant velocity, bouncing off
  the borders, growing or shrinking by up to 30% and passing in front of each other in a fixed depth order, under
  a slowly changing global brightness. Distinct colours make it easy: a random encoder already tracks well.
Every annotated object is fully visible in the first frame (DAVIS semi-supervised: all objects are given there).
Written as

    <out>/JPEGImages/480p/<seq>/00000.jpg ...    (JPEG, quality 95, no chroma subsampling)
    <out>/Annotations/480p/<seq>/00000.png ...   (palette PNG, DAVIS palette, index = object id)
    <out>/ImageSets/2017/val.txt

    motionmae make-dataset --kind vos --out data/synthetic-vos                       # glyphs, 64x88, 24 frames
    motionmae make-dataset --kind vos --vos-scene sprites --size 96 --frames 12 --out data/synthetic-vos-sprites
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from motionmae.data.synthetic import CLASSES, Style, background, glyph_alpha
from motionmae.errors import UserError
from motionmae.data.palette import write_mask

SCENES = ("glyphs", "sprites")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour texture, float (height, width, 3) in [0, 255]: a few random plane waves."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(60, 190, size=3)
    for _ in range(4):
        f = rng.uniform(0.02, 0.12)
        a = rng.uniform(0, np.pi)
        wave = np.sin(f * (np.cos(a) * x + np.sin(a) * y) + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(-30, 30, size=3)
    return np.clip(img + base, 0, 255)


def _sprite(rng: np.random.Generator, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A textured object: (colour float (h, w, 3), shape bool (h, w))."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        shape = ((y - (h - 1) / 2) / (h / 2)) ** 2 + ((x - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0
    else:
        shape = np.ones((h, w), bool)
    c1, c2 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    period = rng.integers(4, 9)
    if rng.random() < 0.5:
        a = rng.uniform(0, np.pi)
        sel = np.sin(2 * np.pi * (np.cos(a) * x + np.sin(a) * y) / period) > 0
    else:
        sel = ((y // period) + (x // period)) % 2 == 0
    colour = np.where(sel[..., None], c1, c2).astype(np.float32)
    return colour, shape


def _sequence(rng: np.random.Generator, num_frames: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """-> frames uint8 (T, H, W, 3), masks uint8 (T, H, W)."""
    pan = rng.uniform(-1.0, 1.0, size=2)  # background drift, pixels per frame
    margin = int(np.ceil(np.abs(pan).max() * num_frames)) + 1
    bg = _background(rng, height + 2 * margin, width + 2 * margin)
    # a global brightness change over time, so that matching exact colours is not enough
    flicker, phase, period = rng.uniform(0.0, 0.15), rng.uniform(0, 2 * np.pi), rng.uniform(6, 16)
    n_obj = int(rng.integers(1, 4))
    objects = []
    for _ in range(n_obj):
        oh = int(rng.integers(height // 5, height * 2 // 5))
        ow = int(rng.integers(width // 6, width // 3))
        colour, shape = _sprite(rng, (oh, ow))
        speed = rng.uniform(1.0, 3.0) * max(height, width) / 128
        angle = rng.uniform(0, 2 * np.pi)
        objects.append({"colour": colour, "shape": shape, "grow": rng.uniform(-0.3, 0.3),  # relative size change over the clip
                        "v": np.array([np.sin(angle), np.cos(angle)]) * speed})
    # first-frame centres: inside the frame, not overlapping, so every object is fully visible there
    for _attempt in range(200):
        for o in objects:
            oh, ow = o["shape"].shape
            o["c"] = np.array([rng.uniform(oh / 2, height - oh / 2), rng.uniform(ow / 2, width - ow / 2)])
        boxes = [_box(o["c"], o["shape"].shape) for o in objects]
        if all(not _overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            break
    else:  # fall back to fewer objects rather than an invisible one
        objects = objects[:1]
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        oy, ox = (margin + pan * t).round().astype(int)
        img = bg[oy : oy + height, ox : ox + width].copy()
        mask = np.zeros((height, width), np.uint8)
        for k, o in enumerate(objects):  # later objects are in front
            scale = 1 + o["grow"] * t / max(num_frames - 1, 1)
            colour, shape = _scaled(o["colour"], scale), _scaled(o["shape"], scale)
            _paste(img, mask, colour, shape, _box(o["c"], shape.shape)[:2], k + 1)
            o["c"] = o["c"] + o["v"]  # constant velocity, bouncing off the borders
            for d, limit in ((0, height), (1, width)):
                half = shape.shape[d] / 2
                if not half <= o["c"][d] <= limit - half:
                    o["v"][d] = -o["v"][d]
                    o["c"][d] = np.clip(o["c"][d], half, max(half, limit - half))
        gain = 1 + flicker * np.sin(2 * np.pi * t / period + phase)
        frames[t] = np.clip(img * gain, 0, 255).round().astype(np.uint8)
        masks[t] = mask
    return frames, masks


# a busy wallpaper (8 tiles across, drifting): matching a patch by its colour alone is then ambiguous
VOS_BACKGROUND = Style(period=1 / 8, max_freq=1)


def _glyph_sequence(rng: np.random.Generator, num_frames: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """The 'glyphs' scene -> frames uint8 (T, H, W, 3), masks uint8 (T, H, W)."""
    side = min(height, width)
    bg = background(rng, VOS_BACKGROUND, (height, width), num_frames)
    colour = rng.permutation([1.0, rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.6)])  # one colour for every glyph
    n_obj = int(rng.integers(2, 4))
    kinds = rng.choice(len(CLASSES), n_obj + 1, replace=False)  # the last one is the unannotated distractor
    radius = rng.uniform(0.10, 0.14, n_obj + 1) * side
    reach = 1.2 * radius  # the farthest a glyph reaches from its centre (the diamond: 1.15 radius)
    angle = rng.uniform(0, 2 * np.pi, n_obj + 1)
    velocity = np.stack([np.sin(angle), np.cos(angle)], 1) * rng.uniform(0.5, 1.5, (n_obj + 1, 1)) * side / 64
    lo, hi = np.stack([reach, reach], 1), np.stack([height - reach, width - reach], 1)
    for _attempt in range(500):  # first frame: no two glyphs overlap, so every object is fully visible
        start = rng.uniform(lo, np.maximum(hi, lo))
        gap = np.linalg.norm(start[:, None] - start[None], axis=-1) - reach[:, None] - reach[None]
        if (gap[np.triu_indices(n_obj + 1, 1)] > 0).all():
            break
    # constant velocity, reflected at the borders (a triangle wave between lo and hi per axis)
    pos = start[None] + np.arange(num_frames)[:, None, None] * velocity[None]  # (T, K, 2)
    span = np.maximum(hi - lo, 1e-6)[None]
    pos = lo[None] + span - np.abs((pos - lo[None]) % (2 * span) - span)
    order = rng.permutation(n_obj + 1)  # depth: later in front
    img = bg.copy()
    masks = np.zeros((num_frames, height, width), np.uint8)
    for k in order:
        alpha = glyph_alpha(int(kinds[k]), (height, width), pos[:, k], radius[k])
        img = alpha[..., None] * colour + (1 - alpha[..., None]) * img
        masks[alpha > 0.5] = k + 1 if k < n_obj else 0  # the distractor is background
    return np.round(img * 255).clip(0, 255).astype(np.uint8), masks


def _box(centre, size) -> Tuple[int, int, int, int]:
    """(top, left, bottom, right) of an object of `size` (h, w) centred at `centre`."""
    top, left = int(round(centre[0] - size[0] / 2)), int(round(centre[1] - size[1] / 2))
    return top, left, top + size[0], left + size[1]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _scaled(x: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour resize by `scale` (keeps masks exact: the mask is the resized shape itself)."""
    h, w = x.shape[:2]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
    return x[rows][:, cols]


def _paste(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, shape: np.ndarray, top_left, index: int) -> None:
    """Draw the object's pixels (where `shape`) at `top_left`, clipped to the frame."""
    y, x = top_left
    H, W = mask.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + shape.shape[0], H), min(x + shape.shape[1], W)
    if y1 <= y0 or x1 <= x0:
        return
    region = shape[y0 - y : y1 - y, x0 - x : x1 - x]
    img[y0:y1, x0:x1][region] = colour[y0 - y : y1 - y, x0 - x : x1 - x][region]
    mask[y0:y1, x0:x1][region] = index


def make_vos_dataset(out_dir, num_sequences: int = 8, num_frames: int = 24, height: int = 64, width: int = 88,
                     seed: int = 0, scene: str = "glyphs") -> Path:
    """Write the set (DAVIS-2017 layout) under `out_dir`; returns its root. Deterministic in `seed`."""
    if scene not in SCENES:
        raise UserError(f"unknown VOS scene '{scene}'; valid: {', '.join(SCENES)}")
    make = _glyph_sequence if scene == "glyphs" else _sequence
    root = Path(out_dir)
    names: List[str] = []
    for i in range(num_sequences):
        rng = np.random.default_rng([seed, i])
        frames, masks = make(rng, num_frames, height, width)
        name = f"synth{i:03d}"
        names.append(name)
        fdir = root / "JPEGImages" / "480p" / name
        fdir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            Image.fromarray(frames[t]).save(fdir / f"{t:05d}.jpg", quality=95, subsampling=0)
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", masks[t])
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("".join(n + "\n" for n in names))
    return root


def add_vos_arguments(parser) -> None:
    """Options of `make-dataset` used only with `--kind vos` (its --out, --frames, --size, --seed are shared)."""
    parser.add_argument("--num-sequences", type=int, default=8, help="--kind vos: number of sequences (default: 8)")
    parser.add_argument("--vos-scene", default="glyphs", choices=SCENES,
                        help="--kind vos: glyphs (one colour for all objects and a distractor; default) or sprites "
                             "(distinct colours, the easier first version)")


def _frame_size(value) -> Tuple[int, int]:
    """`--size` as (height, width): an int is the height, the width is 4/3 of it rounded to a multiple of 8."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    h = int(value)
    return h, max(8, int(round(h * 4 / 3 / 8)) * 8)


def run(args) -> int:
    """`motionmae make-dataset --kind vos` (dispatched from data/synthetic.py)."""
    out = getattr(args, "out", None) or "data/synthetic-vos"
    num = getattr(args, "num_sequences", 8)
    frames = getattr(args, "frames", None) or 24
    height, width = _frame_size(getattr(args, "size", None) or 64)
    scene = getattr(args, "vos_scene", "glyphs")
    seed = getattr(args, "seed", 0)
    if num < 1 or frames < 3 or min(height, width) < 16:
        raise UserError(f"--kind vos needs --num-sequences >= 1, --frames >= 3 (DAVIS skips the first and last) and "
                        f"--size >= 16; got {num}, {frames}, {height}")
    root = make_vos_dataset(out, num, frames, height, width, seed, scene)
    print(f"wrote {num} '{scene}' sequences x {frames} frames at {height}x{width} in DAVIS-2017 layout to {root}")
    return 0
