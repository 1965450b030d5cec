"""A small synthetic video-object-segmentation set in the DAVIS-2017 layout, with exact masks.

Each sequence: a panning textured background and 1-3 textured objects (ellipses and rectangles with
stripe / checker textures in their own colours) moving with constant velocity, bouncing off the
borders and passing in front of each other in a fixed depth order. Every object is fully visible in
the first frame (DAVIS semi-supervised: all objects are given there). Written as

    <out>/JPEGImages/480p/<seq>/00000.jpg ...    (JPEG, quality 95, no chroma subsampling)
    <out>/Annotations/480p/<seq>/00000.png ...   (palette PNG, DAVIS palette, index = object id)
    <out>/ImageSets/2017/val.txt

    motionmae make-dataset --kind vos --out data/synthetic-vos
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from motionmae.errors import UserError
from motionmae.eval.davis import write_mask


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
    n_obj = int(rng.integers(1, 4))
    objects = []
    for _ in range(n_obj):
        oh = int(rng.integers(height // 5, height * 2 // 5))
        ow = int(rng.integers(width // 6, width // 3))
        colour, shape = _sprite(rng, (oh, ow))
        speed = rng.uniform(1.0, 3.0) * max(height, width) / 128
        angle = rng.uniform(0, 2 * np.pi)
        objects.append({"colour": colour, "shape": shape, "v": np.array([np.sin(angle), np.cos(angle)]) * speed})
    # first-frame positions: inside the frame, not overlapping, so every object is fully visible there
    for _attempt in range(200):
        for o in objects:
            oh, ow = o["shape"].shape
            o["p"] = np.array([rng.uniform(0, height - oh), rng.uniform(0, width - ow)])
        boxes = [(o["p"][0], o["p"][1], o["p"][0] + o["shape"].shape[0], o["p"][1] + o["shape"].shape[1]) for o in objects]
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
            _paste(img, mask, o, k + 1)
        frames[t] = np.clip(img, 0, 255).round().astype(np.uint8)
        masks[t] = mask
        for o in objects:  # constant velocity, bounce off the borders
            oh, ow = o["shape"].shape
            o["p"] = o["p"] + o["v"]
            for d, limit in ((0, height - oh), (1, width - ow)):
                if o["p"][d] < 0 or o["p"][d] > limit:
                    o["v"][d] = -o["v"][d]
                    o["p"][d] = np.clip(o["p"][d], 0, limit)
    return frames, masks


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _paste(img: np.ndarray, mask: np.ndarray, obj: dict, index: int) -> None:
    y, x = np.round(obj["p"]).astype(int)
    oh, ow = obj["shape"].shape
    region = obj["shape"][: img.shape[0] - y, : img.shape[1] - x]
    rh, rw = region.shape
    img[y : y + rh, x : x + rw][region] = obj["colour"][:rh, :rw][region]
    mask[y : y + rh, x : x + rw][region] = index


def make_vos_dataset(out_dir, num_sequences: int = 4, num_frames: int = 12, height: int = 96, width: int = 128,
                     seed: int = 0) -> Path:
    """Write the set (DAVIS-2017 layout) under `out_dir`; returns its root. Deterministic in `seed`."""
    root = Path(out_dir)
    names: List[str] = []
    for i in range(num_sequences):
        rng = np.random.default_rng([seed, i])
        frames, masks = _sequence(rng, num_frames, height, width)
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
    parser.add_argument("--num-sequences", type=int, default=4, help="--kind vos: number of sequences (default: 4)")


def _frame_size(value) -> Tuple[int, int]:
    """`--size` as (height, width): an int is the height, the width is 4/3 of it rounded to a multiple of 8."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    h = int(value)
    return h, max(8, int(round(h * 4 / 3 / 8)) * 8)


def run(args) -> int:
    """`motionmae make-dataset --kind vos` (dispatched from data/synthetic.py)."""
    out = getattr(args, "out", None) or "data/synthetic-vos"
    num = getattr(args, "num_sequences", 4)
    frames = getattr(args, "frames", 12)
    height, width = _frame_size(getattr(args, "size", 96))
    seed = getattr(args, "seed", 0)
    if num < 1 or frames < 3 or min(height, width) < 16:
        raise UserError(f"--kind vos needs --num-sequences >= 1, --frames >= 3 (DAVIS skips the first and last) and "
                        f"--size >= 16; got {num}, {frames}, {height}")
    root = make_vos_dataset(out, num, frames, height, width, seed)
    print(f"wrote {num} sequences x {frames} frames at {height}x{width} in DAVIS-2017 layout to {root}")
    return 0
