"""WebDataset shards: write them from any data source (`motionmae make-shards`), stream clips from them.

What `make-shards` writes (any WebDataset tar whose samples hold a video member reads too):
- `DIR/shard-000000.tar`, `shard-000001.tar`, ...: per sample `<key>.<ext>` (the video file's bytes, untouched),
  `<key>.json` (`{"label": [...], "path": ..., "start": ..., "total": ...}`) and, when labelled, `<key>.cls`
  (the first label as text, WebDataset's convention). Written shuffled (`--seed`) unless `--no-shuffle`.
- `DIR/shards.json`: samples per shard, label columns and classes, so readers know the epoch's length without
  reading the shards; written last (no index, no finished dataset). `DIR/labels.json`: column and class names
  when known (class folders, or a `labels.json` beside the list), as `make-dataset` writes them.

Reading: a source (`data.train`) that is a brace or glob pattern of `.tar` files, local or any URL the
`webdataset` package opens (`pipe:curl -s https://host/shard-{000000..000099}.tar`), several joined by `::`.
`build_dataset` returns a `ShardDataset` (an IterableDataset) for it and `datasets.build_dataset`'s otherwise.
The sample counts come from `shards.json` beside the shards (for a URL: the URL with the shard's file name
replaced), else from reading the shards once.

One epoch, deterministically:
1. the shards in an order shuffled from (seed, epoch) (evaluation: as listed), their samples concatenated;
2. rank r of W takes the contiguous part [r * L, (r + 1) * L), L = N // W (training: the N % W samples at the
   end of this epoch's order sit out, like DistributedSampler's drop_last; evaluation spreads them);
3. the rank's DataLoader workers split its part into contiguous runs of whole batches, so that batch j comes
   from worker j % workers (the DataLoader's round robin) and every worker reads only its own shards (a run
   that starts inside a shard reads that shard's earlier samples without decoding them);
4. each worker passes its run through a shuffle buffer of `shuffle_buffer` samples seeded from (seed, epoch,
   rank, worker) (evaluation: in order).
A sample's clip is drawn from a generator seeded from (seed, epoch, index), "index" being the sample's position in
the shards as listed, so a sample gives the same clip whatever the number of ranks and workers; with shards
written in list order (`--no-shuffle`) the items equal `VideoClipDataset`'s for the same list, index for index.

Resume (`set_epoch(epoch, start=n)`, n = samples of this rank's epoch already consumed, a multiple of the batch
size): each worker reads its run again up to where the consumed batches end, without decoding, and goes on from
there. Exact (the same remaining samples in the same order, the same clips) when the number of ranks, DataLoader
workers and the batch size are those of the interrupted run; otherwise the epoch still has the right length,
but which samples count as consumed is an approximation (each worker skips the same fraction of its run).

Corrupt samples (undecodable video, no video member, a shard that ends early or cannot be read) are counted and
replaced as with lists (`SkipLog`, `data.max_skip_fraction`): the replacement is drawn from the sample's
generator among the samples in the shuffle buffer and the one before it, so every worker still yields exactly
its share. Samples are kept as undecoded bytes until their turn, so memory is about `shuffle_buffer` videos
per worker.
"""

from __future__ import annotations

import argparse
import glob as globlib
import json
import os
import re
import tarfile
import time
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.writer import TarWriter

from motionmae.data import datasets as D
from motionmae.data.decode import VIDEO_EXTENSIONS, VideoDecodeError
from motionmae.errors import UserError
from motionmae.progress import ProgressBar

SHARD_NAME = "shard-{:06d}.tar"
INDEX_NAME = "shards.json"
LABELS_NAME = "labels.json"
VIDEO_EXTS = tuple(e.lstrip(".") for e in VIDEO_EXTENSIONS)


# ----------------------------------------------------------------------------------------------
# sources


def _is_url(u: str) -> bool:
    return u.startswith("pipe:") or "://" in u


def expand_urls(spec: str, root: str = "") -> List[str]:
    """The shards of a spec, in order: brace patterns expanded, local globs matched (sorted), relative local
    paths joined to `root`. Missing local shards are one UserError."""
    urls, missing = [], []
    for part in (p.strip() for p in spec.split("::")):
        for u in braceexpand(part):
            if _is_url(u):
                urls.append(u)
                continue
            p = u if (not root or os.path.isabs(u)) else os.path.join(root, u)
            if any(ch in p for ch in "*?["):
                found = sorted(globlib.glob(p))
                if not found:
                    raise UserError(f"shard pattern '{u}' matches no files")
                urls += found
            elif os.path.isfile(p):
                urls.append(p)
            else:
                missing.append(p)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UserError(f"{len(missing)} of {len(urls) + len(missing)} shards not found: {', '.join(missing[:3])}{more}")
    if not urls:
        raise UserError(f"data source '{spec}' names no shards")
    return urls


def _open(url: str):
    """A binary stream of a local path or of any URL webdataset's gopen handles (pipe:, http(s), ...)."""
    return open(url, "rb") if not _is_url(url) else gopen(url, "rb")


def _shard_name(url: str) -> str:
    found = re.findall(r"[^/\s'\"]+\.tar", url)
    return found[-1] if found else url


def _beside(url: str, name: str) -> str:
    """The URL (or path) of file `name` in the same folder as shard `url`."""
    shard = _shard_name(url)
    i = url.rfind(shard)
    return url[:i] + name + url[i + len(shard):]


# ----------------------------------------------------------------------------------------------
# tar samples


def _members(url: str) -> Iterator[Tuple[str, object]]:
    """(name, read) of a shard's regular files in tar order; `read()` returns the data, and a member whose data
    is not read is skipped (seeked over in a local file, read past in a stream). Call `read` before the next."""
    local = not _is_url(url)
    f = _open(url)
    try:
        with tarfile.open(fileobj=f, mode="r:" if local else "r|") as tar:
            for m in tar:
                if m.isreg():
                    yield m.name, (lambda m=m: tar.extractfile(m).read())
                if not local:
                    tar.members = []  # a stream keeps no index
    finally:
        f.close()


def _split(name: str) -> Tuple[str, str]:
    """WebDataset's key and extension: the key runs to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (d + "/" + key if d else key), ext.lower()


def _video_ext(parts: dict) -> Optional[str]:
    return next((e for e in parts if e in VIDEO_EXTS), None)


def _samples(url: str, read_video=lambda pos: True) -> Iterator[Tuple[str, dict]]:
    """(key, {ext: data}) of a shard: consecutive members with one key form a sample. Samples without a video
    member are yielded too but take no position; the video's data is read only if `read_video(position)`
    (None otherwise), the small members always."""
    key, parts, pos = None, {}, 0
    for name, read in _members(url):
        k, ext = _split(name)
        if k != key:
            if key is not None:
                yield key, parts
                pos += _video_ext(parts) is not None
            key, parts = k, {}
        parts[ext] = read() if ext not in VIDEO_EXTS or read_video(pos) else None
    if key is not None:
        yield key, parts


def _labels_of(parts: dict) -> Tuple[Tuple[int, ...], dict]:
    """Labels (from .json "label", else .cls) and the .json metadata of one sample; ValueError if unreadable."""
    meta = json.loads(parts["json"]) if parts.get("json") is not None else {}
    label = meta.get("label")
    if label is None and parts.get("cls") is not None:
        label = int(parts["cls"].decode().strip())
    if label is None:
        return (), meta
    return (tuple(int(v) for v in label) if isinstance(label, (list, tuple)) else (int(label),)), meta


# ----------------------------------------------------------------------------------------------
# the index: samples per shard, labels


def _scan(url: str) -> Tuple[int, List[Tuple[int, ...]]]:
    """Samples (those with a video member) and their labels, reading only the small members where it can."""
    n, labels = 0, []
    for key, parts in _samples(url, read_video=lambda pos: False):
        if _video_ext(parts) is None:
            continue
        n += 1
        try:
            labels.append(_labels_of(parts)[0])
        except ValueError as e:
            warnings.warn(f"{_shard_name(url)}:{key}: unreadable label ({e})", RuntimeWarning, stacklevel=2)
    return n, labels


def read_index(urls: Sequence[str]) -> Tuple[List[int], dict]:
    """Samples per shard and the label summary {"num_labels", "num_classes", "labels"}, from the `shards.json`
    beside each shard; shards that no index lists are read once to count (with a warning)."""
    counts: List[Optional[int]] = [None] * len(urls)
    summary = {"num_labels": None, "num_classes": [], "labels": {}}
    indexes: dict = {}
    for i, url in enumerate(urls):
        where = _beside(url, INDEX_NAME)
        if where not in indexes:
            try:
                with _open(where) as f:
                    indexes[where] = json.loads(f.read())
            except Exception:  # no index there (or unreadable): count instead
                indexes[where] = None
        index = indexes[where]
        if index is None:
            continue
        per = {s["name"]: int(s["samples"]) for s in index.get("shards", [])}
        counts[i] = per.get(_shard_name(url))
        if counts[i] is not None:
            _merge(summary, index.get("num_labels"), index.get("num_classes") or [], index.get("labels") or {})
    todo = [i for i, c in enumerate(counts) if c is None]
    if todo:
        warnings.warn(f"{len(todo)} of {len(urls)} shards have no {INDEX_NAME} beside them (write shards with "
                      f"`motionmae make-shards`): reading them once to count their samples", RuntimeWarning, stacklevel=2)
    for i in todo:
        try:
            counts[i], labels = _scan(urls[i])
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{urls[i]}: cannot read the shard: {e}") from None
        widths = {len(lab) for lab in labels}
        if len(widths) > 1:
            raise UserError(f"{urls[i]}: samples carry different numbers of labels {sorted(widths)}")
        if labels:
            width = widths.pop()
            top = np.array(labels).max(0).tolist() if width else []
            _merge(summary, width, [int(t) + 1 for t in top], {})
    summary["num_labels"] = summary["num_labels"] or 0
    return [int(c) for c in counts], summary


def _merge(summary: dict, num_labels, num_classes: list, labels: dict) -> None:
    if num_labels is None:
        return
    if summary["num_labels"] is not None and summary["num_labels"] != num_labels:
        raise UserError(f"shards carry different numbers of labels ({summary['num_labels']} and {num_labels})")
    summary["num_labels"] = num_labels
    old = summary["num_classes"]
    summary["num_classes"] = [max(a, b) for a, b in zip(old, num_classes)] if old else list(num_classes)
    summary["labels"] = summary["labels"] or labels


# ----------------------------------------------------------------------------------------------
# the dataset


class ShardDataset(D.ClipMaker, IterableDataset):
    """Clips streamed from WebDataset shards (the module docstring gives the order and the resume guarantee).

    Items are `VideoClipDataset`'s dicts ("video", "label", "index", "skipped", "view" in test mode). `len()` is
    what this rank yields in the current epoch from `start` on; `num_videos` counts all shards (plan epochs with
    it, as with `len()` of a map-style dataset). `set_batching(batch_size, drop_last)` must match the DataLoader's
    (`data.loader.make_loader` calls it) so that workers split the epoch into whole batches.
    """

    def __init__(self, urls: Sequence[str], counts: Sequence[int], *, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 128, world_size: Optional[int] = None, rank: Optional[int] = None,
                 num_labels: int = 0, num_classes: Sequence[int] = (), label_names: Optional[dict] = None,
                 max_skip_fraction: float = 0.5, **clip_options):
        super().__init__(**clip_options)
        if len(urls) != len(counts) or not urls:
            raise UserError("a shard dataset needs one sample count per shard, and at least one shard")
        if shuffle_buffer < 1:
            raise UserError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.urls, self.counts = list(urls), [int(c) for c in counts]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # position of each shard's first sample
        self.num_videos = int(self.offsets[-1])
        if self.num_videos == 0:
            raise UserError(f"the shards hold no samples ({', '.join(self.urls[:3])})")
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        if world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if dist else (1, 0)
        self.world_size, self.rank = int(world_size), int(rank or 0)
        self.num_labels, self._num_classes, self.label_names = num_labels, list(num_classes), label_names or {}
        names = self.label_names.get(self.label_names.get("columns", [None])[0]) if self.label_names else None
        self.class_names = names if num_labels == 1 and names else None
        self.max_skip_fraction = max_skip_fraction
        self.skips = D.SkipLog(max_skip_fraction, floor=min(self.num_videos, 20))
        self.epoch, self.start, self.batch_size, self.drop_last = 0, 0, 1, False

    @property
    def num_classes(self) -> List[int]:
        """Classes per label column (from the index: max label + 1, or the number of class names)."""
        if self.class_names is not None:
            return [len(self.class_names)]
        return list(self._num_classes)

    def first_video(self) -> Tuple[D.VideoEntry, bytes]:
        """(entry, video bytes) of the first sample of the first shard as listed (pictures of a run show it)."""
        for index, e, data in self._shard_records(0, 0, 1):
            if isinstance(data, Exception):
                raise UserError(f"cannot read the first video of the shards: {data}")
            return e, data
        raise UserError(f"{self.urls[0]}: holds no video")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`, resuming after `start` samples of this rank's part were consumed."""
        self.epoch, self.start = int(epoch), int(start)

    def set_batching(self, batch_size: int, drop_last: bool) -> None:
        self.batch_size, self.drop_last = max(int(batch_size or 1), 1), bool(drop_last)

    # -- the epoch's order
    def rank_part(self) -> Tuple[int, int]:
        """(first position, length) of this rank's part of the epoch's order."""
        n, w, r = self.num_videos, self.world_size, self.rank
        if self.shuffle:
            return r * (n // w), n // w
        return r * (n // w) + min(r, n % w), n // w + (r < n % w)

    def worker_runs(self, workers: int) -> List[Tuple[int, int, int]]:
        """(first position, length, samples already consumed) of each worker's run, in whole batches."""
        first, length = self.rank_part()
        b = self.batch_size
        batches = length // b if self.drop_last else -(-length // b)
        sizes = [len(range(w, batches, workers)) * b for w in range(workers)]
        if not self.drop_last and length % b:
            sizes[(batches - 1) % workers] -= b - length % b  # the last, partial batch
        done = self.start // b  # batches consumed
        runs, at = [], first
        for w, size in enumerate(sizes):
            runs.append((at, size, min(len(range(w, done, workers)) * b, size)))
            at += size
        return runs

    def __len__(self) -> int:
        return max(self.rank_part()[1] - self.start, 0)

    def _shard_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.urls))
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5EED]).permutation(len(self.urls))

    def _records(self, first: int, size: int) -> Iterator[tuple]:
        """(index, entry, bytes or the error) of epoch positions [first, first + size)."""
        order = self._shard_order()
        at = 0  # epoch position of the current shard's first sample
        for s in order:
            n = self.counts[s]
            lo, hi = max(first - at, 0), min(first + size - at, n)
            at += n
            if lo < hi:
                yield from self._shard_records(int(s), lo, hi)

    def _shard_records(self, s: int, lo: int, hi: int) -> Iterator[tuple]:
        url, base, name = self.urls[s], int(self.offsets[s]), _shard_name(self.urls[s])
        pos = 0
        try:
            for key, parts in _samples(url, read_video=lambda p: lo <= p < hi):
                ext = _video_ext(parts)
                if ext is None:
                    continue
                if pos >= lo:
                    where = f"{name}:{key}.{ext}"
                    try:
                        label, meta = _labels_of(parts)
                    except (ValueError, UnicodeDecodeError) as err:  # a damaged sample: skipped like a bad video
                        yield base + pos, D.VideoEntry(where, (-1,) * self.num_labels, where=where), \
                            VideoDecodeError(f"{where}: unreadable label: {err}")
                    else:
                        if len(label) != self.num_labels:
                            raise UserError(f"{where}: {len(label)} label(s), but the shards' index says {self.num_labels}")
                        e = D.VideoEntry(where, label, int(meta.get("start", 0)), int(meta.get("total", -1)), where)
                        yield base + pos, e, parts[ext]
                pos += 1
                if pos >= hi:
                    return
            error = VideoDecodeError(f"{name}: ends after {pos} samples, its index says {self.counts[s]}")
        except UserError:
            raise
        except Exception as e:  # a truncated or damaged tar, or a stream that failed
            error = VideoDecodeError(f"{name}: unreadable after {pos} samples: {e}")
        for p in range(max(pos, lo), hi):  # what the shard could not deliver counts as unreadable samples
            yield base + p, D.VideoEntry(f"{name}:#{p}", (-1,) * self.num_labels, where=name), error

    def _buffer(self, records: Iterator[tuple], rng: np.random.Generator) -> Iterator[Tuple[tuple, list]]:
        """(record, records still buffered): a shuffle buffer (training) or a small look-ahead (evaluation),
        whose contents are the candidates to replace an unreadable sample."""
        size = self.shuffle_buffer if self.shuffle else 4
        buf: list = []

        def pop():
            k = int(rng.integers(len(buf))) if self.shuffle else 0
            if self.shuffle:
                buf[k], buf[-1] = buf[-1], buf[k]
                return buf.pop()
            return buf.pop(0)

        for rec in records:
            buf.append(rec)
            if len(buf) >= size:
                yield pop(), buf
        while buf:
            yield pop(), buf

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # A DataLoader's first batch comes from worker 0: after `start`, that must be the run whose batch is due.
        run = (worker + self.start // self.batch_size) % workers
        first, size, done = self.worker_runs(workers)[run]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, self.rank, run, workers])
        prev = None
        for pos, (rec, buf) in enumerate(self._buffer(self._records(first, size), rng)):
            if pos >= done:
                yield self._item(rec, buf, prev)
            prev = rec

    def _item(self, rec: tuple, buf: list, prev: Optional[tuple]) -> dict:
        pool = None

        def draw(rng):  # a replacement among the buffered samples and the one before, drawn from the seed
            nonlocal pool
            if pool is None:
                pool = list(buf) + ([prev] if prev is not None else []) or [rec]
            return pool[int(torch.randint(len(pool), (1,), generator=rng))]

        return self._read_item(rec, draw, (self.seed, self.epoch, rec[0]), self.skips)


# ----------------------------------------------------------------------------------------------
# entry point


def build_dataset(data_cfg, split: str = "train", mode: str = "pretrain", seed: int = 0,
                  num_frames: Optional[int] = None, extra_frames: int = 0, check_files: bool = True,
                  require_labels: Optional[bool] = None, aa: str = "", crop: str = "multiscale", *,
                  neighbor_gap: int = 0, train_short_side: int = 0):
    """`datasets.build_dataset` (same arguments), plus WebDataset shards: a `ShardDataset` when data.<split> names
    `.tar` shards (training splits shuffle, evaluation modes stream in order)."""
    spec = data_cfg.train if split == "train" else data_cfg.val
    more = dict(neighbor_gap=neighbor_gap, train_short_side=train_short_side)
    if not D.is_shard_spec(spec):
        return D.build_dataset(data_cfg, split, mode, seed, num_frames, extra_frames, check_files, require_labels, aa, crop,
                               **more)
    options = D.clip_options(data_cfg, split, mode, num_frames, extra_frames, aa, crop, **more)
    urls = expand_urls(spec, data_cfg.root)
    counts, summary = read_index(urls)
    if (mode in ("finetune", "test") if require_labels is None else require_labels) and not summary["num_labels"]:
        raise UserError(f"data.{split}={spec} has no labels, but mode '{mode}' needs them")
    return ShardDataset(urls, counts, seed=seed, shuffle=options["mode"] == "train",
                        shuffle_buffer=data_cfg.shuffle_buffer, num_labels=summary["num_labels"],
                        num_classes=summary["num_classes"], label_names=summary["labels"],
                        max_skip_fraction=data_cfg.max_skip_fraction, **options)


# ----------------------------------------------------------------------------------------------
# writing


def write_shards(entries: Sequence[D.VideoEntry], out_dir, shard_size: int = 1000, seed: Optional[int] = 0,
                 label_names: Optional[dict] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Write `entries` (video files) as WebDataset shards of `shard_size` samples into `out_dir`, in an order
    shuffled with `seed` (None: as given), then `shards.json` (and `labels.json` with `label_names`).
    Each shard is written to a temporary name and renamed when complete."""
    out = Path(out_dir)
    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    folders = [e for e in entries if os.path.isdir(e.path)]
    if folders:
        raise UserError(f"{folders[0].where}: {folders[0].path} is a frame folder; shards hold video files "
                        f"({len(folders)} frame folder(s) in the source)")
    D.check_paths(entries)
    old = sorted(out.glob("shard-*.tar")) + [p for p in (out / INDEX_NAME, out / LABELS_NAME) if p.exists()]
    if old and not overwrite:
        raise UserError(f"{out} already holds shards ({old[0].name}, ...): choose an empty --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for p in old:
        p.unlink()
    order = list(range(len(entries))) if seed is None else np.random.default_rng(seed).permutation(len(entries)).tolist()
    widths = {len(e.label) for e in entries}
    if len(widths) > 1:
        raise UserError(f"videos carry different numbers of labels {sorted(widths)}")
    num_labels = widths.pop() if widths else 0
    shards, nbytes, t0 = [], 0, time.time()
    bar = ProgressBar(len(order), "make-shards", enabled=progress)
    for first in range(0, len(order), shard_size):
        name, chunk = SHARD_NAME.format(len(shards)), order[first:first + shard_size]
        tmp = out / (name + ".tmp")
        with open(tmp, "wb") as f:
            writer = TarWriter(f, mtime=0)  # a fixed mtime: the same input gives the same bytes
            for done, k in enumerate(chunk, first + 1):
                e = entries[k]
                data = Path(e.path).read_bytes()
                ext = Path(e.path).suffix.lower().lstrip(".") or "mp4"
                meta = {"label": list(e.label), "path": e.path, "start": e.start, "total": e.total}
                sample = {"__key__": f"{k:09d}", ext: data, "json": json.dumps(meta).encode()}
                if e.label:
                    sample["cls"] = str(e.label[0]).encode()
                writer.write(sample)
                nbytes += len(data)
                bar.update(done, shard=name, MB=round(nbytes / 1e6, 1))
            writer.close()
        os.replace(tmp, out / name)
        shards.append({"name": name, "samples": len(chunk)})
    bar.close()
    labels = [e.label for e in entries if e.label]
    num_classes = (np.array(labels).max(0) + 1).tolist() if labels and num_labels else []
    if label_names:
        cols = label_names.get("columns", [])
        num_classes = [len(label_names[c]) if isinstance(label_names.get(c), list) else n
                       for c, n in zip(cols, num_classes)] if len(cols) == num_labels else num_classes
        (out / LABELS_NAME).write_text(json.dumps(label_names, indent=1) + "\n")
    index = {"format": "webdataset", "writer": "motionmae make-shards", "num_samples": len(order),
             "num_labels": num_labels, "num_classes": num_classes, "labels": label_names or {},
             "shuffled_with_seed": seed, "shards": shards}
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX_NAME)  # last: an index means every shard it lists is complete
    return {"out": str(out), "shards": len(shards), "samples": len(order), "bytes": nbytes, "seconds": time.time() - t0}


def _label_names_of(spec: str, class_names) -> Optional[dict]:
    """Column and class names: class folders, or `labels.json` beside a list (what `make-dataset` writes)."""
    if class_names is not None:
        return {"columns": ["class"], "class": list(class_names)}
    p = Path(spec)
    meta = (p.parent if p.is_file() else p) / LABELS_NAME
    try:
        names = json.loads(meta.read_text()) if meta.is_file() else None
    except ValueError:
        return None
    return names if isinstance(names, dict) and isinstance(names.get("columns"), list) else None


# ----------------------------------------------------------------------------------------------
# CLI: motionmae make-shards


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="annotation list, folder of videos or class folders, or a glob")
    p.add_argument("--out", required=True, help="output folder for shard-000000.tar ... and shards.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--root", default="", help="prefix for relative paths in the list (data.root)")
    p.add_argument("--list-format", default="auto", choices=D.LIST_FORMATS, help="how to read list lines (data.list_format)")
    p.add_argument("--seed", type=int, default=0, help="shuffle the samples across shards with this seed")
    p.add_argument("--no-shuffle", action="store_true", help="keep the source's order")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")


def run(args) -> int:
    entries, class_names = D.resolve_source(args.data, args.root, list_format=args.list_format)
    info = write_shards(entries, args.out, args.shard_size, None if args.no_shuffle else args.seed,
                        _label_names_of(args.data, class_names), args.overwrite)
    order = "in the source's order" if args.no_shuffle else f"shuffled with seed {args.seed}"
    print(f"wrote {info['samples']} videos ({info['bytes'] / 1e6:.1f} MB) into {info['shards']} shard(s) in {info['out']}, "
          f"{order}, in {info['seconds']:.1f} s")
    last = SHARD_NAME.format(info["shards"] - 1)[len("shard-"):-len(".tar")]
    print(f"read them with data.train='{Path(info['out']) / 'shard-'}{{000000..{last}}}.tar'")
    return 0
