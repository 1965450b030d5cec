"""Video datasets: annotation formats -> entries; clip sampling; a map-style Dataset that survives bad files.

Sources (`data.train` / `data.val`), any of:
- an annotation list, one video per line, space or comma separated (comma when a path holds spaces), no header:
  - `path`                      unlabeled (pretraining)
  - `path label [label ...]`    VideoMAE / MMAction lists; several integer columns give a label vector
  - `path start total`          VideoMAE v2 pretraining lists (`path 0 -1` for a video file); recognised when
                                the last value is -1 or the path is a frame folder
  - `dir total label`           MMAction / VideoMAE v2 raw-frame lists: only with `data.list_format=rawframes`
  - `path class class ...`        multi-label lists (mmaction2's multi-class format): the video's classes, any number of
                                  them; only with `data.list_format=multilabel`, read as a 0/1 column per class
  `data.list_format` (auto | labels | v2 | rawframes | multilabel) forces one reading when `auto` guesses wrong.
  Relative paths are joined to `data.root`, or to the list's own folder when `root` is empty.
- a folder of class folders (`root/<class>/<video>`): labels from the sorted folder names;
- a folder of videos, or a glob (`clips/*.mp4`): unlabeled. A "video" is a file or a frame folder
  (`img_00001.jpg`, ...).

Sampling is a pure function of (frames in the video, T, stride, generator) so tests can work the indices out by
hand: `dense_indices` (T frames at stride s from a random start) and `segment_indices` (TSN). Every random draw in
`VideoClipDataset` comes from a generator seeded from (seed, epoch, index), so clips do not depend on the
number of workers. Call `set_epoch(epoch)` before each epoch's iterator is created (do not use
`persistent_workers=True`: workers would keep the old epoch).

Items are dicts: "video" uint8 (C, T, H, W) (or (S, C, T, H, W) with `num_samples = S > 1` or test views),
"label" int64 (L,) (-1 when unlabeled), "index" int (the video actually used), "skipped" int (1 when this
item's own video failed and another was drawn in its place). `collate` flattens samples/views into the batch
and sums "skipped", so an engine reports the epoch's sum as "skipped N corrupt videos".
"""

from __future__ import annotations

import glob as globlib
import os
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from motionmae.data import transforms as T
from motionmae.data.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoDecodeError, VideoReader, is_frame_folder
from motionmae.errors import UserError


@dataclass
class VideoEntry:
    path: str
    label: Tuple[int, ...] = ()
    start: int = 0  # first frame used (v2 frame-folder lists)
    total: int = -1  # number of frames used; -1: to the end
    where: str = ""  # "list.csv:12", for messages


# ----------------------------------------------------------------------------------------------
# sources


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def is_shard_spec(spec: str) -> bool:
    """A source naming WebDataset shards (`data/shards.py`): every `::`-separated part ends in `.tar`."""
    return bool(spec) and all(p.strip().endswith(".tar") for p in spec.split("::"))


def _is_video(p: Path) -> bool:
    return (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or is_frame_folder(p)


LIST_FORMATS = ("auto", "labels", "v2", "rawframes", "multilabel")


def read_annotation_list(path, root: str = "", list_format: str = "auto") -> List[VideoEntry]:
    """Parse a header-less list (formats in the module docstring). A malformed line is a UserError naming file:line."""
    if list_format not in LIST_FORMATS:
        raise UserError(f"data.list_format must be one of {', '.join(LIST_FORMATS)}, got '{list_format}'")
    path = Path(path)
    base = Path(root) if root else path.parent
    entries: List[VideoEntry] = []
    ncols = None
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text annotation list (expected lines of 'path [label ...]')") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        parts = [p.strip() for p in line.split(",")] if "," in line else line.split()
        vpath, fields = parts[0], parts[1:]
        try:
            values = [int(v) for v in fields]
        except ValueError:
            raise UserError(f"{where}: expected 'path [label ...]' with integer labels (header-less, space or comma "
                            f"separated), got {raw.strip()!r}") from None
        if not vpath:
            raise UserError(f"{where}: empty video path in {raw.strip()!r}")
        full = vpath if os.path.isabs(vpath) else str(base / vpath)
        if list_format == "multilabel":  # path class class ...: the video's classes, any number (mmaction2's multi-class lists)
            if any(v < 0 for v in values):
                raise UserError(f"{where}: class indices must be >= 0, got {values}")
            entries.append(VideoEntry(full, tuple(sorted(set(values))), 0, -1, where))
            continue
        if ncols is not None and len(values) != ncols:
            raise UserError(f"{where}: {len(values)} value column(s) after the path, but earlier lines have {ncols}")
        ncols = len(values)
        if list_format in ("v2", "rawframes") and len(values) != 2:
            raise UserError(f"{where}: data.list_format={list_format} expects 2 integers after the path, got {len(values)}")
        if list_format == "rawframes":  # dir total label
            if values[0] <= 0 or values[1] < 0:
                raise UserError(f"{where}: expected 'dir total_frames label' with total > 0 and label >= 0, got {values}")
            entries.append(VideoEntry(full, (values[1],), 0, values[0], where))
        elif list_format == "v2" or (list_format == "auto" and len(values) == 2 and (values[1] == -1 or os.path.isdir(full))):
            if values[0] < 0 or values[1] == 0 or values[1] < -1:
                raise UserError(f"{where}: expected 'path start total' with start >= 0 and total > 0 or -1, got {values}")
            entries.append(VideoEntry(full, (), values[0], values[1], where))
        else:
            if any(v < 0 for v in values):
                raise UserError(f"{where}: labels must be >= 0, got {values}")
            entries.append(VideoEntry(full, tuple(values), 0, -1, where))
    if not entries:
        raise UserError(f"{path}: annotation list holds no videos")
    return entries


def scan_folder(path, class_names: Optional[Sequence[str]] = None) -> Tuple[List[VideoEntry], Optional[List[str]]]:
    """A folder of videos (unlabeled) or of class folders (labels = position in sorted class names)."""
    path = Path(path)
    children = sorted(path.iterdir())
    videos = [c for c in children if _is_video(c)]
    if videos:
        return [VideoEntry(str(v), (), where=str(v)) for v in videos], None
    dirs = [c for c in children if c.is_dir()]
    names = list(class_names) if class_names is not None else [d.name for d in dirs]
    lookup = {n: i for i, n in enumerate(names)}
    entries = []
    for d in dirs:
        if d.name not in lookup:
            raise UserError(f"{d}: class folder '{d.name}' is not among the training classes ({len(names)} classes)")
        for v in sorted(d.iterdir()):
            if _is_video(v):
                entries.append(VideoEntry(str(v), (lookup[d.name],), where=str(v)))
    if not entries:
        raise UserError(f"{path}: found no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders "
                        f"({', '.join(IMAGE_EXTENSIONS)}) in it or in its class folders")
    return entries, names


def resolve_source(spec: str, root: str = "", class_names=None,
                   list_format: str = "auto") -> Tuple[List[VideoEntry], Optional[List[str]]]:
    """Entries and class names (None unless class folders) for a list file, a folder or a glob."""
    if not spec:
        raise UserError("no data source given: set data.train / data.val to an annotation list, a folder or a glob")
    if is_shard_spec(spec):
        raise UserError(f"'{spec}' names WebDataset shards; this command reads annotation lists, folders and globs "
                        "(shards stream through motionmae.data.shards.build_dataset)")
    if _is_glob(spec):
        files = sorted(p for p in globlib.glob(os.path.join(root, spec) if root else spec, recursive=True))
        files = [f for f in files if _is_video(Path(f))]
        if not files:
            raise UserError(f"glob '{spec}' matches no videos")
        return [VideoEntry(f, (), where=f) for f in files], None
    p = Path(spec) if (not root or os.path.isabs(spec) or Path(spec).exists()) else Path(root) / spec
    if not p.exists():
        raise UserError(f"data source not found: {p}")
    if p.is_dir() and not is_frame_folder(p):
        return scan_folder(p, class_names)
    if p.is_file() and p.suffix.lower() not in VIDEO_EXTENSIONS:
        return read_annotation_list(p, root, list_format), None
    return [VideoEntry(str(p), (), where=str(p))], None


def check_source(data_cfg, split: str = "train") -> None:
    """Fail early, with the key named, when data.<split> is unset or points at nothing (before a model is built)."""
    spec = getattr(data_cfg, split)
    if not spec:
        raise UserError(f"data.{split} is not set: pass data.{split}=PATH (an annotation list, a folder of videos or "
                        "class folders, a glob, or WebDataset shards)")
    if is_shard_spec(spec):  # checked where they are expanded (data/shards.py)
        return
    if _is_glob(spec):
        pattern = os.path.join(data_cfg.root, spec) if data_cfg.root else spec  # as resolve_source reads it
        if not globlib.glob(pattern, recursive=True):
            raise UserError(f"data.{split}={spec}: the glob matches no files"
                            f"{f' (under data.root={data_cfg.root})' if data_cfg.root and pattern != spec else ''}")
        return
    p = Path(spec)
    if not p.is_absolute() and data_cfg.root and not p.exists():
        p = Path(data_cfg.root) / spec
    if not p.exists():
        raise UserError(f"data.{split}={spec}: no such file or directory")


def check_paths(entries: Sequence[VideoEntry], show: int = 5) -> None:
    """UserError listing missing videos (with the list line) when any path does not exist."""
    missing = [e for e in entries if not os.path.exists(e.path)]
    if missing:
        lines = "; ".join(f"{e.where}: {e.path}" if e.where != e.path else e.path for e in missing[:show])
        more = f" (and {len(missing) - show} more)" if len(missing) > show else ""
        raise UserError(f"{len(missing)} of {len(entries)} videos not found: {lines}{more}; check data.root")


# ----------------------------------------------------------------------------------------------
# sampling: pure functions of (frames in the video, T, stride, generator)


def dense_indices(num_video_frames: int, num_frames: int, stride: int, generator: Optional[torch.Generator] = None,
                  short_video: str = "loop") -> np.ndarray:
    """`num_frames` indices at `stride` from a random start (the centred start when generator is None).

    A video shorter than the span (num_frames - 1) * stride + 1 starts at 0 and either loops
    (index mod length) or clamps (holds the last frame)."""
    n, span = num_video_frames, (num_frames - 1) * stride + 1
    if n <= 0:
        raise ValueError("video has no frames")
    offsets = np.arange(num_frames, dtype=np.int64) * stride
    if n >= span:
        start = T.randint(0, n - span, generator) if generator is not None else (n - span) // 2
        return start + offsets
    if short_video == "loop":
        return offsets % n
    if short_video == "clamp":
        return np.minimum(offsets, n - 1)
    raise ValueError(f"short_video must be 'loop' or 'clamp', got {short_video!r}")


def dense_view_indices(num_video_frames: int, num_frames: int, stride: int, num_views: int,
                       short_video: str = "loop") -> List[np.ndarray]:
    """Test-time temporal views: `num_views` dense clips spread evenly from first to last, as VideoMAE's test
    (kinetics.py): the frames 0, s, 2s, ... of the video (L of them), clip k starting at grid frame
    int(k * (L - T) / (K - 1)). One view is the centred clip; a video shorter than the span loops or clamps."""
    n, span = num_video_frames, (num_frames - 1) * stride + 1
    if n < span or num_views == 1:
        return [dense_indices(n, num_frames, stride, None, short_video) for _ in range(num_views)]
    grid = -(-n // stride)  # len(range(0, n, stride))
    step = (grid - num_frames) / (num_views - 1)
    return [(int(k * step) + np.arange(num_frames, dtype=np.int64)) * stride for k in range(num_views)]


def segment_indices(num_video_frames: int, num_frames: int, generator: Optional[torch.Generator] = None,
                    view: int = 0, num_views: int = 1) -> np.ndarray:
    """TSN sampling: the video is cut into `num_frames` equal segments [i*n/T, (i+1)*n/T); training draws one
    uniform frame per segment; test (generator None) takes the point view / num_views of the way through each
    segment, as VideoMAE's SSv2 test (ssv2.py: offsets 0 and 1/2 for its 2 views), and the centre for one view."""
    n = num_video_frames
    if n <= 0:
        raise ValueError("video has no frames")
    i = np.arange(num_frames, dtype=np.float64)
    lo = np.floor(i * n / num_frames).astype(np.int64)
    if generator is None:
        offset = 0.5 if num_views == 1 else view / num_views
        return np.minimum(np.floor((i + offset) * n / num_frames).astype(np.int64), n - 1)
    hi = np.maximum(np.floor((i + 1) * n / num_frames).astype(np.int64) - 1, lo)  # inclusive
    u = torch.rand(num_frames, generator=generator, dtype=torch.float64).numpy()
    return lo + np.floor(u * (hi - lo + 1)).astype(np.int64)


def item_generator(seed: int, epoch: int, index: int, *more: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index, *more), well mixed so nearby tuples give unrelated streams."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, *more]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


_ODDITY_WARNINGS = 5  # videos named per process by `ClipMaker._note_oddities` (a data set may be full of short clips)
_REPLACEMENT_STREAM = 1 << 30  # the extra seed key of the stream that draws replacements for unreadable videos


# ----------------------------------------------------------------------------------------------
# dataset


class SkipLog:
    """Unreadable videos of one process (each DataLoader worker keeps its own): each is warned about and counted;
    once more than `max_skip_fraction` of the videos tried failed (judged after `floor` were tried), a UserError
    names the first failures."""

    def __init__(self, max_skip_fraction: float, floor: int):
        self.max_skip_fraction, self.floor = max_skip_fraction, floor
        self.failed: Dict[int, Tuple[str, str]] = {}  # key -> (video, error)
        self.tried: set = set()

    def record(self, key: int, name: str, err: Exception) -> None:
        self.failed[key] = (name, str(err))
        warnings.warn(f"skipping unreadable video {name}: {err}", RuntimeWarning, stacklevel=4)
        if len(self.failed) > self.max_skip_fraction * max(len(self.tried), self.floor):
            first = "; ".join(f"{n} ({msg})" for n, msg in list(self.failed.values())[:3])
            raise UserError(f"{len(self.failed)} of {len(self.tried)} videos tried failed to decode, more than "
                            f"data.max_skip_fraction={self.max_skip_fraction}: first failures: {first}")


class ClipMaker:
    """How one video becomes an item: temporal sampling, decoding, then the spatial transform of `mode`; shared by
    the map-style `VideoClipDataset` and the shard stream (`data/shards.py`).

    mode: 'train' (random temporal sample, then the spatial train transform of `crop`), 'val' (centre clip,
    short-side resize, centre crop), 'test' (K temporal x `test_crops` spatial views, returned stacked with
    "view" ids). `aa`: RandAugment spec such as 'rand-m7-n4-mstd0.5-inc1', 'train' only.
    crop='multiscale' (pretraining): multi-scale crop, flip, then RandAugment if any. crop='rrc' (VideoMAE
    fine-tuning): frames larger than `train_short_side` (0: `short_side`) resized down to it, RandAugment, random
    resized crop, flip. `decode_short_side` > 0: the decoder's converter scales larger frames down to that short
    side (data.decode_short_side; not bit-identical to resizing after decoding).
    `neighbor_gap` g > 0 (objective.motion_frames=adjacent): every sampled frame i also brings its raw neighbour
    i + g, decoded with the clip (so the decoder treats it as a frame the clip uses) and cropped/resized with it: the
    clip holds 2T frames, the T sampled ones then their T neighbours. Clips are then sampled from the first n - g
    frames, so that every neighbour exists (a video of at most g frames holds its last frame).
    """

    def __init__(self, *, num_frames: int = 16, sampling_rate: int = 4, sampling: str = "dense", mode: str = "train",
                 input_size: int = 224, short_side: int = 0, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
                 flip: bool = True, num_samples: int = 1, short_video: str = "loop", test_clips: int = 2,
                 test_crops: int = 3, aa: str = "", crop: str = "multiscale", decode_short_side: int = 0,
                 max_attempts: int = 50, neighbor_gap: int = 0, train_short_side: int = 0):
        if mode not in ("train", "val", "test"):
            raise UserError(f"dataset mode must be train, val or test, got '{mode}'")
        if sampling not in ("dense", "segment"):
            raise UserError(f"data.sampling must be 'dense' or 'segment', got '{sampling}'")
        if short_video not in ("loop", "clamp"):
            raise UserError(f"data.short_video must be 'loop' or 'clamp', got '{short_video}'")
        if crop not in ("multiscale", "rrc"):
            raise UserError(f"finetune.crop must be 'rrc' or 'multiscale', got '{crop}'")
        if test_crops not in (1, 3):
            raise UserError(f"data.test_crops must be 1 or 3, got {test_crops}")
        if num_samples < 1 or num_frames < 1 or sampling_rate < 1:
            raise UserError("data.num_samples, data.num_frames and data.sampling_rate must be >= 1")
        if decode_short_side < 0 or train_short_side < 0 or neighbor_gap < 0:
            raise UserError(f"data.decode_short_side ({decode_short_side}), finetune.train_short_side ({train_short_side}) "
                            f"and the neighbour gap ({neighbor_gap}) must be >= 0 (0: off)")
        self.num_frames, self.sampling_rate, self.sampling, self.mode = num_frames, sampling_rate, sampling, mode
        self.input_size, self.scales, self.flip, self.crop = input_size, tuple(scales), flip, crop
        self.short_side = T.eval_short_side(input_size, short_side)
        self.train_short_side = train_short_side or self.short_side
        self.neighbor_gap = neighbor_gap
        self.num_samples, self.short_video = num_samples, short_video
        self.test_clips, self.test_crops = test_clips, test_crops
        self.decode_short_side, self.max_attempts = decode_short_side, max_attempts
        self.rand_augment = T.RandAugment.from_spec(aa, "finetune.aa") if mode == "train" else None
        self._noted: set = set()  # videos already warned about (per process)

    # -- sampling
    def _train_indices(self, n: int, gen: torch.Generator) -> np.ndarray:
        if self.sampling == "segment":
            return segment_indices(n, self.num_frames, gen)
        return dense_indices(n, self.num_frames, self.sampling_rate, gen, self.short_video)

    def _eval_indices(self, n: int, k: int) -> List[np.ndarray]:
        if self.sampling == "segment":
            return [segment_indices(n, self.num_frames, None, v, k) for v in range(k)]
        return dense_view_indices(n, self.num_frames, self.sampling_rate, k, self.short_video)

    # -- loading
    def _clip(self, e: VideoEntry, gen: torch.Generator, source=None):
        """(video, view ids or None) of entry `e`, decoded from `source` (the file's bytes) or else from e.path.
        `source` may also be the VideoDecodeError met while fetching the bytes."""
        if isinstance(source, VideoDecodeError):
            raise source
        with VideoReader(e.path if source is None else source, name=e.path, short_side=self.decode_short_side) as reader:
            n = reader.num_frames - e.start if e.total < 0 else e.total
            if n <= 0:
                raise VideoDecodeError(f"{e.path}: no frames (start {e.start}, {reader.num_frames} frames)")
            g = self.neighbor_gap
            m = max(n - g, 1)  # frames a clip may start from: each keeps its neighbour g frames on
            if self.mode == "train":
                groups = [self._train_indices(m, gen) for _ in range(self.num_samples)]
            else:
                groups = self._eval_indices(m, self.test_clips if self.mode == "test" else 1)
            if g:  # the neighbours are frames the clip uses: the decoder's fast path decodes them
                groups = [np.concatenate([idx, np.minimum(idx + g, n - 1)]) for idx in groups]
            frames = reader.get_frames(np.concatenate(groups) + e.start)  # one decode for all samples
            self._note_oddities(e.path, reader.notes, n, frames.shape[1:3])
        clip = T.from_numpy_frames(frames)  # (C, sum T, H, W)
        clips = clip.split([len(g) for g in groups], dim=1)
        if self.mode == "train":
            views = [self._train_view(c, gen) for c in clips]
            return torch.stack(views) if self.num_samples > 1 else views[0], None
        views = [v for c in clips for v in T.eval_views(c, self.input_size, self.short_side,
                                                         self.test_crops if self.mode == "test" else 1)]
        if self.mode == "val":
            return views[0], None
        return torch.stack(views), torch.arange(len(views), dtype=torch.int64)  # view id = clip * crops + crop

    def _note_oddities(self, path: str, notes: List[str], n: int, size: Tuple[int, int]) -> None:
        """One warning per video and process for what it is trained on without being what the config expects:
        a damaged tail, a grayscale source, fewer frames than a clip spans, frames smaller than the input size."""
        if path in self._noted:
            return
        notes = list(notes)
        span = (self.num_frames - 1) * self.sampling_rate + 1 if self.sampling == "dense" else self.num_frames
        gap = f" and each frame's neighbour {self.neighbor_gap} on" if self.neighbor_gap else ""
        if n < span + self.neighbor_gap:  # a clip's frames start within the first n - gap (see _clip)
            fill = "loops over them" if self.short_video == "loop" else "holds the last one"
            notes.append(f"has {n} frame(s), fewer than a clip spans ({self.num_frames} at stride {self.sampling_rate}{gap}): "
                         f"the clip {fill} (data.short_video={self.short_video})")
        if min(size) < self.input_size:
            notes.append(f"is {size[1]}x{size[0]}, smaller than data.input_size={self.input_size}: its frames are upscaled")
        if notes:
            self._noted.add(path)
            if len(self._noted) <= _ODDITY_WARNINGS:
                last = " (further videos with such oddities are not named)" if len(self._noted) == _ODDITY_WARNINGS else ""
                warnings.warn(f"{path}: " + "; ".join(notes) + last, RuntimeWarning, stacklevel=3)

    def _train_view(self, clip: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flip = 0.5 if self.flip else 0.0
        if self.crop == "rrc":  # VideoMAE fine-tuning: RandAugment on the frames, then the crop
            if min(clip.shape[-2:]) > self.train_short_side:  # RandAugment's cost grows with the pixels
                clip = T.short_side_resize(clip, self.train_short_side)
            if self.rand_augment is not None:
                clip = self.rand_augment(clip, gen)
            return T.random_flip(T.random_resized_crop(clip, self.input_size, gen), gen, flip)
        clip = T.train_transform(clip, self.input_size, self.scales, self.flip, gen)
        return self.rand_augment(clip, gen) if self.rand_augment is not None else clip

    def clip_of(self, e: VideoEntry, source=None) -> torch.Tensor:
        """The clip of entry `e` as this dataset makes it (a fixed generator), from `source` (bytes) or e.path."""
        return self._clip(e, torch.Generator().manual_seed(0), source)[0]

    def _read_item(self, first: tuple, draw, keys: tuple, skips: SkipLog) -> dict:
        """The item of candidate `first` = (key, entry, source or None); while candidates fail to decode, of the
        replacements `draw(rng)` returns. Attempt a draws its clip from a generator seeded from (*keys, a) (a = 0:
        `keys` alone), and replacements come from a stream of their own: what an item holds never depends on which
        failures this process saw before, so the number of workers (each with its own `skips`) does not change the
        data. "skipped" is 1 when `first` itself failed."""
        replacements = item_generator(*keys, _REPLACEMENT_STREAM)
        (key, e, source), skipped = first, 0
        for attempt in range(self.max_attempts):
            gen = item_generator(*keys, *((attempt,) if attempt else ()))
            if key not in skips.failed:
                skips.tried.add(key)
                try:
                    video, view = self._clip(e, gen, source)
                except VideoDecodeError as err:
                    skips.record(key, e.path, err)
                else:
                    item = {"video": video, "label": torch.tensor(e.label or (-1,), dtype=torch.int64), "index": key,
                            "skipped": skipped}
                    if view is not None:
                        item["view"] = view
                    return item
            skipped = 1
            key, e, source = draw(replacements)
        raise UserError(f"no readable video after {self.max_attempts} draws starting at index {first[0]} "
                        f"({len(skips.failed)} of {len(skips.tried)} videos tried failed)")


class VideoClipDataset(ClipMaker, Dataset):
    """Clips from a list of `VideoEntry` (clip options: `ClipMaker`). Every random draw of item `index` comes
    from generators seeded from (seed, epoch, index); an unreadable video is replaced by another one drawn from
    the seed (`ClipMaker._read_item`; `SkipLog` counts them)."""

    def __init__(self, entries: Sequence[VideoEntry], *, seed: int = 0, max_skip_fraction: float = 0.5,
                 class_names: Optional[List[str]] = None, **clip_options):
        super().__init__(**clip_options)
        if not entries:
            raise UserError("dataset has no videos")
        widths = {len(e.label) for e in entries}
        if len(widths) > 1:
            raise UserError(f"videos carry different numbers of labels {sorted(widths)}")
        self.entries = list(entries)
        self.seed, self.epoch = seed, 0
        self.max_skip_fraction = max_skip_fraction
        self.class_names = class_names
        self.num_labels = widths.pop()
        self.skips = SkipLog(max_skip_fraction, floor=min(len(self.entries), 20))

    def __len__(self):
        return len(self.entries)

    @property
    def labels(self) -> torch.Tensor:
        """int64 (N, L) label matrix ((N, 1) of -1 when unlabeled)."""
        if self.num_labels == 0:
            return torch.full((len(self), 1), -1, dtype=torch.int64)
        return torch.tensor([e.label for e in self.entries], dtype=torch.int64)

    @property
    def num_classes(self) -> List[int]:
        """Classes per label column (max label + 1, or the number of class folders)."""
        if self.num_labels == 0:
            return []
        if self.class_names is not None:
            return [len(self.class_names)]
        return [int(c) + 1 for c in self.labels.max(0).values]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def first_video(self) -> Tuple[VideoEntry, None]:
        """(entry, None) of the first video (pictures of a run show it); a shard dataset's gives its bytes."""
        return self.entries[0], None

    def _load(self, index: int, gen: torch.Generator):
        return self._clip(self.entries[index], gen)

    def __getitem__(self, index: int) -> dict:
        def draw(rng):  # a replacement, drawn deterministically from the seed
            i = int(torch.randint(len(self), (1,), generator=rng))
            return i, self.entries[i], None

        return self._read_item((int(index), self.entries[index], None), draw, (self.seed, self.epoch, int(index)), self.skips)


def collate(batch: List[dict]) -> dict:
    """Stack items; samples/views ((S, C, T, H, W) videos) are flattened into the batch item-major, with
    "label" and "index" repeated per sample. "skipped" becomes the batch's sum (an int)."""
    videos = [b["video"] for b in batch]
    reps = [v.shape[0] if v.dim() == 5 else 1 for v in videos]
    out = {
        "video": torch.cat([v if v.dim() == 5 else v.unsqueeze(0) for v in videos]),
        "label": torch.stack([b["label"] for b in batch]).repeat_interleave(torch.tensor(reps), dim=0),
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.int64).repeat_interleave(torch.tensor(reps)),
        "skipped": int(sum(b.get("skipped", 0) for b in batch)),
    }
    if "view" in batch[0]:
        out["view"] = torch.cat([b["view"] for b in batch])
    return out


# ----------------------------------------------------------------------------------------------
# entry point


def clip_options(data_cfg, split: str = "train", mode: str = "pretrain", num_frames: Optional[int] = None,
                 extra_frames: int = 0, aa: str = "", crop: str = "multiscale", *, neighbor_gap: int = 0,
                 train_short_side: int = 0) -> dict:
    """`ClipMaker` options for `split` ('train' | 'val') in `mode` ('pretrain' | 'finetune' | 'test'), from the
    data config (see `build_dataset`)."""
    if split not in ("train", "val"):
        raise UserError(f"split must be 'train' or 'val', got '{split}'")
    if mode not in ("pretrain", "finetune", "test"):
        raise UserError(f"mode must be 'pretrain', 'finetune' or 'test', got '{mode}'")
    ds_mode = "test" if mode == "test" else ("train" if split == "train" else "val")
    return dict(
        num_frames=(num_frames or data_cfg.num_frames) + extra_frames, sampling_rate=data_cfg.sampling_rate,
        sampling=data_cfg.sampling, mode=ds_mode, input_size=data_cfg.input_size, short_side=data_cfg.short_side,
        scales=data_cfg.scales, flip=data_cfg.flip, num_samples=data_cfg.num_samples if ds_mode == "train" else 1,
        short_video=data_cfg.short_video, test_clips=data_cfg.test_clips, test_crops=data_cfg.test_crops,
        aa=aa if mode == "finetune" and split == "train" else "",
        crop=crop if mode == "finetune" and split == "train" else "multiscale",
        decode_short_side=data_cfg.decode_short_side, neighbor_gap=neighbor_gap,
        train_short_side=train_short_side if mode == "finetune" and split == "train" else 0)


def multilabel_classes(data_cfg) -> int:
    """Classes of `data.list_format=multilabel` lists: the largest class index in data.train or data.val, plus one
    (so both splits have the same width)."""
    top = -1
    for spec in (data_cfg.train, data_cfg.val):
        if spec:
            entries, _ = resolve_source(spec, data_cfg.root, None, "multilabel")
            top = max([top] + [c for e in entries for c in e.label])
    if top < 0:
        raise UserError(f"data.list_format=multilabel: the lists ({data_cfg.train}, {data_cfg.val}) name no class at all")
    return top + 1


def multi_hot(entries: Sequence[VideoEntry], num_classes: int) -> List[VideoEntry]:
    """Entries whose `label` lists class indices -> entries whose `label` is the 0/1 vector over `num_classes` (one
    label column per class, as a list of 0/1 columns gives directly)."""
    out = []
    for e in entries:
        hot = [0] * num_classes
        for c in e.label:
            hot[c] = 1
        out.append(dataclasses.replace(e, label=tuple(hot)))
    return out


def build_dataset(data_cfg, split: str = "train", mode: str = "pretrain", seed: int = 0,
                  num_frames: Optional[int] = None, extra_frames: int = 0, check_files: bool = True,
                  require_labels: Optional[bool] = None, aa: str = "", crop: str = "multiscale", *,
                  neighbor_gap: int = 0, train_short_side: int = 0) -> VideoClipDataset:
    """The dataset for `split` ('train' | 'val') in `mode` ('pretrain' | 'finetune' | 'test').

    train split: random clips and crops (pretrain, finetune); val split: the centre clip and crop; mode 'test':
    K temporal x 3 spatial views (data.test_clips, data.test_crops). `num_frames` overrides data.num_frames and
    `extra_frames` adds frames to it (motion_pad='extra_frame' needs T + gap). finetune/test need labels unless
    `require_labels=False` (feature extraction over several views). `aa` (RandAugment spec, finetune.aa) and
    `crop` (finetune.crop, see `VideoClipDataset`) and `train_short_side` apply to the finetune train split only:
    pretraining clips get the multi-scale crop and are never augmented. `neighbor_gap`: each sampled frame's raw
    neighbour comes too (objective.motion_frames=adjacent, see `ClipMaker`). WebDataset shards:
    `data.shards.build_dataset`.
    """
    options = clip_options(data_cfg, split, mode, num_frames, extra_frames, aa, crop, neighbor_gap=neighbor_gap,
                           train_short_side=train_short_side)
    spec = data_cfg.train if split == "train" else data_cfg.val
    if not spec:
        raise UserError(f"data.{split} is empty: set it to an annotation list, a folder of videos or class folders, or a glob")
    class_names = None
    if split == "val" and data_cfg.train and not _is_glob(data_cfg.train) and Path(data_cfg.train).is_dir():
        class_names = resolve_source(data_cfg.train, data_cfg.root)[1]  # val labels must follow train's classes
    entries, names = resolve_source(spec, data_cfg.root, class_names, data_cfg.list_format)
    if data_cfg.list_format == "multilabel":
        entries = multi_hot(entries, multilabel_classes(data_cfg))
    if check_files:
        check_paths(entries)
    if require_labels is None:
        require_labels = mode in ("finetune", "test")
    if require_labels and not entries[0].label:
        raise UserError(f"data.{split}={spec} has no labels, but mode '{mode}' needs them "
                        "(use 'path label' lines or class folders)")
    return VideoClipDataset(entries, seed=seed, max_skip_fraction=data_cfg.max_skip_fraction, class_names=names, **options)
