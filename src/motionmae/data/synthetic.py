"""The built-in labelled video dataset: moving glyphs on smooth, drifting textures, written as real mp4.

`make_dataset(out_dir, ...)` writes `train/*.mp4`, `val/*.mp4` (H.264, yuv420p, through PyAV), the lists
`train.csv` / `val.csv` and `labels.json` (label names, generator settings). Each list line is header-less CSV,
paths relative to the list's folder (how `datasets.read_annotation_list` resolves them):

    train/000000.mp4,<class>,<direction>,<speed>,<arrow>

- class (appearance): glyph shape, `CLASSES` (procedural, the default) or, opt-in with `glyphs="fashion"`, the 10
  Fashion-MNIST classes from /usr/share/datasets/fashion-mnist. Glyph colour, size, position and the background
  are nuisances.
- direction (motion): the glyph's observed direction, `DIRECTIONS` (right, left, down, up).
- speed (motion): `SPEEDS`, the glyph moves `Style.speeds` of the frame side per frame (slow, fast).
- arrow (arrow of time): 0 forward, 1 reversed playback. A forward clip's background drifts downwards; a
  reversed clip is literally the forward clip played backwards (so its glyph direction is the opposite one and
  its background drifts upwards).

Motion labels cannot be read from any single frame, not even from a frame at a known time: the glyph starts
uniformly at random on a torus (positions wrap around the frame), the background's phases are uniform, and
the glyph's size and colour do not depend on time or on any label, so frame t has the same distribution
for every value of direction, speed and arrow. The class is visible in every frame.

Why it looks like this (docs/RESULTS.md, "Diagnosis"): a masked-autoencoder target is each cube normalised to
unit variance, so what a short run learns is whatever structure visible cubes predict best. With a wallpaper
background one patch per period (`period=1/8`), that is the wallpaper: the loss falls fast, but the encoder
becomes a texture-phase detector and its frozen features read class and motion worse than a random init.
So the default puts the learnable structure on the glyph: a glyph carrying a class-specific texture
(`class_texture`, the same waves for every clip of a class at a random offset: like an animal's coat, part of
the appearance class) on a smooth, drifting background of a few low-frequency waves (locally a ramp, with a
guaranteed contrast in every channel). Motion is a fraction of a patch per frame. Two more choices make the loss
fall within a few hundred steps without losing the motion labels (RESULTS, "Loss and motion"):
- the glyph is large (radius 0.45-0.6 of the side): it wraps around the torus, so most of the frame is glyph and
  the class shows as much in the background's gaps (a cross of gaps for a square, a diamond for a disc) as in the
  glyph;
- half of its texture is fixed in the frame and half moves with the glyph (`glyph_texture_moves=0.5`). The fixed
  half is the same in every time slice, so any visible glyph cube predicts a masked one: that is what the loss
  learns first. The moving half carries direction and speed.
And the speeds do not alias against the texture's period (`Style.speeds`). `Style` holds these knobs;
`Style(glyph_radius=(0.28, 0.36), speeds=(1 / 64, 3 / 64), glyph_texture_moves=1)` is the previous default.

Default: 800 train / 200 val clips, 16 frames, 64x64 (read at 32x32 by the demo). `render_clip(ClipSpec)`
renders one clip in memory (numpy), the same function the writer uses.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

CLASSES = ("disc", "square", "triangle", "cross", "ring", "diamond")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
DIRECTIONS = ("right", "left", "down", "up")  # opposite of d is d ^ 1
SPEEDS = ("slow", "fast")
ARROWS = ("forward", "reversed")
BACKGROUNDS = ("waves", "flat", "noise")
_VELOCITY = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per direction
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Style:
    """How hard the data is. Lengths are fractions of the frame side; speeds are fractions of it per frame."""

    glyph_radius: Tuple[float, float] = (0.45, 0.6)  # drawn uniformly per clip; above 0.5 the glyph wraps around
    speeds: Tuple[float, float] = (0.5 / 64, 1.5 / 64)  # glyph motion per frame: slow, fast (0.25 / 0.75 px at 32 px;
    # between frames 2 apart, 1/8 and 3/8 of the glyph's wave period: unaliased, unlike 1 and 3 px at 64 px)
    drift: float = 1 / 64  # background motion per frame, downwards when played forward
    background: str = "waves"  # waves: periodic texture | flat: one colour | noise: white-noise texture
    period: float = 1.0  # waves: fundamental period (of the frame side): 1/8 = a wallpaper 8 tiles across
    max_freq: int = 2  # waves: the 4 plane waves are harmonics 1..max_freq of the fundamental
    contrast: float = 0.35  # waves / noise: the background's range in every channel is at least 0.6 x this
    glyph_texture: float = 0.6  # the glyph carries its own waves L: colour x (1 - this x (1 - L) / 2)
    glyph_period: float = 1 / 8  # fundamental period of the glyph's waves (of the frame side)
    glyph_texture_moves: float = 0.5  # share of the glyph's waves that move with it: 1 all (True), 0 none (False:
    # fixed in the frame, seen through the glyph); between, the same waves fixed and moving, mixed
    class_texture: bool = True  # the glyph's waves are the same for every clip of a class (at a random offset)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Style":
        d = dict(d or {})
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def parse(cls, text: str) -> dict:
        """'KEY=VALUE;KEY=VALUE' (YAML values, e.g. glyph_radius=[0.28,0.36]) -> the fields it sets, checked."""
        import yaml

        from motionmae.errors import UserError

        fields = {f.name for f in dataclass_fields(cls)}
        out = {}
        for item in (i.strip() for i in text.split(";")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in fields:
                raise UserError(f"--style item '{item}': expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
            out[key.strip()] = yaml.safe_load(value)
        return out


@dataclass(frozen=True)
class ClipSpec:
    glyph: int  # class
    direction: int  # observed direction
    speed: int
    arrow: int  # 0 forward, 1 reversed playback
    frames: int = 16
    size: int = 32
    seed: int = 0  # nuisances: position, size, colours, texture, Fashion-MNIST sample
    style: Style = field(default_factory=Style)

    def labels(self):
        return (self.glyph, self.direction, self.speed, self.arrow)

    def reversed(self) -> "ClipSpec":
        """The spec whose clip is this clip played backwards."""
        return replace(self, direction=self.direction ^ 1, arrow=self.arrow ^ 1)


# ----------------------------------------------------------------------------------------------- glyphs


def _shape_inside(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Procedural glyph `kind` in coordinates normalised by the glyph radius."""
    r = np.sqrt(u * u + v * v)
    if kind == 0:
        return r <= 1
    if kind == 1:
        return np.maximum(abs(u), abs(v)) <= 0.85
    if kind == 2:  # apex up, flat base
        return (v <= 0.7) & (abs(u) <= (v + 1) / 1.7)
    if kind == 3:
        return ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1))
    if kind == 4:
        return (r <= 1) & (r >= 0.55)
    if kind == 5:
        return abs(u) + abs(v) <= 1.15
    raise ValueError(kind)


def load_fashion_mnist(root: str = FASHION_MNIST_DIR):
    """(images uint8 (N, 28, 28), labels int64 (N,)) from the idx(.gz) files, or None when absent."""
    root = Path(root)
    if not root.is_dir():
        return None
    for img_name, lab_name in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                               ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        for ext in (".gz", ""):
            ip, lp = root / (img_name + ext), root / (lab_name + ext)
            if ip.exists() and lp.exists():
                op = gzip.open if ext else open
                with op(ip, "rb") as f:
                    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
                with op(lp, "rb") as f:
                    labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
                return images, labels
    return None


def glyph_alpha(kind: int, size, centres: np.ndarray, radius: float, fashion=None, pick: int = 0) -> np.ndarray:
    """Soft alpha (T, H, W) of glyph `kind` centred at `centres` (T, 2) (y, x), anti-aliased by 2x2 supersampling;
    `size`: the frame side, or (H, W). Positions wrap around the frame (a torus). `fashion`: (images, labels) to
    draw Fashion-MNIST sample `pick` of class `kind` instead of a procedural shape."""
    h, w = (size, size) if np.isscalar(size) else size
    cy, cx = centres[:, 0, None, None], centres[:, 1, None, None]
    dy = ((np.arange(2 * h) + 0.5) / 2)[None, :, None] - cy  # supersampled pixel centres, (T, 2h, 1)
    dx = ((np.arange(2 * w) + 0.5) / 2)[None, None, :] - cx  # (T, 1, 2w)
    dy, dx = (dy + h / 2) % h - h / 2, (dx + w / 2) % w - w / 2
    if fashion is None:
        inside = _shape_inside(kind, dx / radius, dy / radius).astype(np.float32)
    else:
        images, labels = fashion
        pool = np.flatnonzero(labels == kind)
        img = images[pool[pick % len(pool)]].astype(np.float32) / 255
        # nearest sample of the 28x28 image over [-radius, radius]^2
        iy = np.floor((dy / radius + 1) * 14).astype(np.int64)
        ix = np.floor((dx / radius + 1) * 14).astype(np.int64)
        ok = (iy >= 0) & (iy < 28) & (ix >= 0) & (ix < 28)
        inside = np.where(ok, img[np.clip(iy, 0, 27), np.clip(ix, 0, 27)], 0.0)
    inside = np.broadcast_to(inside, (len(centres), 2 * h, 2 * w))
    return inside.reshape(len(centres), h, 2, w, 2).mean(axis=(2, 4))


def periodic_field(rng: np.random.Generator, kind: str, size, frames: int, period: float, max_freq: int,
                   velocity=(0.0, 0.0), offset=(0.0, 0.0)) -> np.ndarray:
    """float (T, H, W) in [-1, 1]: a random texture on the torus, shifted by `offset` (dy, dx) px and translated
    by `velocity` px per frame.

    It is defined by its Fourier spectrum, so any sub-pixel shift is exact and wraps seamlessly. 'waves': 4 plane
    waves whose frequencies are harmonics 1..max_freq of a fundamental period of `period` x the frame side
    (integer cycles per frame); 'noise': white noise (without the Nyquist row / column)."""
    h, w = (size, size) if np.isscalar(size) else size
    if kind == "waves":
        side = min(h, w)
        ky, kx = max(1, round(h / (period * side))), max(1, round(w / (period * side)))  # fundamental, cycles/frame
        spec = np.zeros((h, w), np.complex128)
        for _ in range(4):  # each wave as a conjugate pair (the field is real)
            while True:
                fy, fx = rng.integers(-max_freq, max_freq + 1, size=2)
                if max(abs(fy), abs(fx)) >= 1:
                    break
            c = rng.uniform(0.5, 1.0) * np.exp(1j * rng.uniform(0, 2 * np.pi))
            spec[fy * ky % h, fx * kx % w] += c
            spec[-fy * ky % h, -fx * kx % w] += np.conj(c)
    else:
        spec = np.fft.fft2(rng.standard_normal((h, w)))
        spec[h // 2, :] = spec[:, w // 2] = spec[0, 0] = 0
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]  # cycles per pixel
    t = np.arange(frames)[:, None, None]
    phase = np.exp(-2j * np.pi * (fy[None] * (offset[0] + velocity[0] * t) + fx[None] * (offset[1] + velocity[1] * t)))
    field_t = np.fft.ifft2(spec[None] * phase, axes=(1, 2)).real
    return np.clip(field_t / (np.abs(field_t[0]).max() + 1e-12), -1, 1)


def background(rng: np.random.Generator, style: Style, size, frames: int) -> np.ndarray:
    """float (T, H, W, 3) in [0, 1] (`size`: H = W, or (H, W)): `style.background`, drifting down
    `style.drift * H` px per frame, coloured per channel: mid + L * amp with |amp| >= 0.3 x contrast."""
    if style.background not in BACKGROUNDS:
        raise ValueError(f"unknown background '{style.background}'; valid: {', '.join(BACKGROUNDS)}")
    h, w = (size, size) if np.isscalar(size) else size
    mid = rng.uniform(0.3, 0.5, 3)
    if style.background == "flat":
        return np.broadcast_to(mid, (frames, h, w, 3)).astype(np.float32)
    field_t = periodic_field(rng, style.background, (h, w), frames, style.period, style.max_freq, (style.drift * h, 0.0))
    amp = style.contrast / 2 * rng.uniform(0.6, 1.0, 3) * rng.choice([-1.0, 1.0], 3)
    return (mid + field_t[..., None] * amp).astype(np.float32)


def render_clip(spec: ClipSpec, background_on: bool = True, fashion=None) -> np.ndarray:
    """uint8 (T, H, W, 3) for `spec`; `background_on=False` draws the glyph on black (for tests)."""
    st = spec.style
    rng = np.random.default_rng([spec.seed, spec.glyph])
    s, n = spec.size, spec.frames
    forward_dir = spec.direction ^ spec.arrow  # reversed playback shows the opposite direction
    velocity = np.array(_VELOCITY[forward_dir], np.float64) * st.speeds[spec.speed] * s
    start = rng.uniform(0, s, 2)
    radius = rng.uniform(*st.glyph_radius) * s
    colour = rng.permutation([1.0, rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.6)])  # bright: one channel at 1
    pick = int(rng.integers(1 << 30))
    bg = background(rng, st, s, n) if background_on else 0.0
    alpha = glyph_alpha(spec.glyph, s, start + np.arange(n)[:, None] * velocity, radius, fashion, pick)[..., None]
    if st.glyph_texture > 0 and background_on:
        offset = rng.uniform(0, s, 2)
        pattern_rng = np.random.default_rng([7919, spec.glyph]) if st.class_texture else rng
        pattern = periodic_field(pattern_rng, "waves", s, n, st.glyph_period, 1, velocity, offset)[..., None]
        m = float(st.glyph_texture_moves)
        pattern = m * pattern + (1 - m) * pattern[:1]  # frame 0 is where the moving waves start: the fixed ones
        colour = colour * (1 - st.glyph_texture * (1 - pattern) / 2)
    out = alpha * colour + (1 - alpha) * bg
    if spec.arrow:
        out = out[::-1]
    return np.round(out * 255).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- writing


def clip_specs(num: int, frames: int, size: int, seed: int, split: str, num_classes: int,
               style: Optional[Style] = None) -> List[ClipSpec]:
    """Labels drawn uniformly at random, reproducibly from (seed, split)."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split]])
    style = style or Style()
    specs = []
    for i in range(num):
        g, d, sp, a = int(rng.integers(num_classes)), int(rng.integers(4)), int(rng.integers(2)), int(rng.integers(2))
        specs.append(ClipSpec(g, d, sp, a, frames, size, seed=int(rng.integers(1 << 31)), style=style))
    return specs


def specs_from_meta(meta: dict, split: str):
    """(the ClipSpecs of a written split, a function rendering one of them) from its labels.json."""
    fashion = load_fashion_mnist() if meta.get("glyphs") == "fashion-mnist" else None
    num = meta["num_train" if split == "train" else "num_val"]
    specs = clip_specs(num, meta["frames"], meta["size"], meta["seed"], split, len(meta["class"]),
                       Style.from_dict(meta.get("style")))
    return specs, lambda spec: render_clip(spec, fashion=fashion)


_FASHION = {}  # per writer process: Fashion-MNIST is read once, not once per clip


def _write_one(job):
    from motionmae.data.decode import write_video

    path, spec, fps, crf, use_fashion = job
    if use_fashion and "data" not in _FASHION:
        _FASHION["data"] = load_fashion_mnist()
    # no-asm: x264's SIMD code reads past the end of the tight frame buffers PyAV hands it, so with it the same
    # frames gave files that depended on the process's heap (different datasets, and demo scores, run to run)
    options = {"crf": str(crf), "preset": "fast", "x264-params": "no-asm=1"}
    write_video(path, render_clip(spec, fashion=_FASHION.get("data")), fps=fps, options=options)


def make_dataset(out_dir, num_train: int = 800, num_val: int = 200, frames: int = 16, size: int = 64, seed: int = 0,
                 fps: int = 8, crf: int = 18, workers: int = 0, glyphs: str = "shapes", style: Optional[Style] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write the dataset; returns a summary dict (paths, counts, seconds). `glyphs`: shapes (procedural, the
    default: the same data on every machine) | fashion (Fashion-MNIST, where installed). `progress(done, total)`
    is called as clips are written."""
    from motionmae.errors import UserError

    from motionmae.files import folder_problem

    if num_train < 1 or num_val < 1:
        raise UserError(f"--num-train and --num-val must be >= 1, got {num_train} and {num_val}")
    if size % 2 or size < 16:
        raise UserError(f"--size must be even and >= 16 (yuv420p), got {size}")
    if frames < 2:
        raise UserError(f"--frames must be >= 2, got {frames}")
    if glyphs not in ("shapes", "fashion"):
        raise UserError(f"--glyphs must be 'shapes' or 'fashion', got '{glyphs}'")
    use_fashion = glyphs == "fashion"
    if use_fashion and load_fashion_mnist() is None:
        raise UserError(f"--glyphs fashion but Fashion-MNIST is not at {FASHION_MNIST_DIR}")
    style = style or Style()
    if style.background not in BACKGROUNDS:
        raise UserError(f"unknown background '{style.background}'; valid: {', '.join(BACKGROUNDS)}")
    class_names = FASHION_CLASSES if use_fashion else CLASSES
    out = Path(out_dir)
    problem = folder_problem(out)
    if problem:
        raise UserError(f"--out {out}: {problem}")
    t0 = time.time()
    jobs, lists = [], {}
    for split, num in (("train", num_train), ("val", num_val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        specs = clip_specs(num, frames, size, seed, split, len(class_names), style)
        rows = []
        for i, spec in enumerate(specs):
            rel = f"{split}/{i:06d}.mp4"
            jobs.append((str(out / rel), spec, fps, crf, use_fashion))
            rows.append(",".join([rel] + [str(v) for v in spec.labels()]))
        lists[split] = rows
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    progress = progress or (lambda done, total: None)
    if workers > 1 and len(jobs) > 8:
        import multiprocessing as mp

        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_write_one, jobs, chunksize=8), 1):
                progress(done, len(jobs))
    else:
        for done, job in enumerate(jobs, 1):
            _write_one(job)
            progress(done, len(jobs))
    for split, rows in lists.items():  # lists last: a list on disk means its videos are complete
        (out / f"{split}.csv").write_text("\n".join(rows) + "\n")
    meta = {"columns": ["class", "direction", "speed", "arrow"], "class": list(class_names),
            "direction": list(DIRECTIONS), "speed": list(SPEEDS), "arrow": list(ARROWS),
            "glyphs": "fashion-mnist" if use_fashion else "shapes", "style": asdict(style),
            "frames": frames, "size": size, "fps": fps, "crf": crf, "seed": seed, "num_train": num_train, "num_val": num_val}
    (out / "labels.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"out": str(out), "train": str(out / "train.csv"), "val": str(out / "val.csv"),
            "num_train": num_train, "num_val": num_val, "seconds": time.time() - t0, "glyphs": meta["glyphs"]}


def progress_printer(what: str = "clips", stream=None) -> Callable[[int, int], None]:
    """A one-line progress bar for `make_dataset(progress=...)`: rewritten in place on a terminal, a few lines in
    a log file (the data layer sits below the engine's ProgressBar)."""
    stream = stream or sys.stderr
    t0 = time.time()

    def show(done: int, total: int) -> None:
        frac = done / max(total, 1)
        eta = (time.time() - t0) / max(done, 1) * (total - done)
        line = f"writing [{'#' * int(20 * frac):.<20}] {done}/{total} {what}, eta {eta:.0f} s"
        if stream.isatty():
            stream.write("\r" + line + ("\n" if done == total else ""))
        elif done == total or done % max(total // 4, 1) == 0:
            stream.write(line + "\n")
        stream.flush()

    return show
