"""Data loader benchmarks, three parts (`--parts`, each its own section of docs/BENCHMARKS.md):

- loader: clips/s and ms/clip for 16x224x224 training clips (dense, stride 4, multi-scale crop, flip) decoded
  from 320x240 and 640x480 H.264 files, with 0/1/2 DataLoader workers and num_samples 1/2/4 (repeated sampling:
  clips drawn from one decoded video per visit); the CPU cost of the train transforms; whether one worker keeps a
  small-model step fed ("Fed": the step's CPU seconds against one worker's CPU seconds per batch).
- decode: CPU ms to decode one 16-frame clip at stride 4 (file opened per clip, as a loader does), ours (the
  fast path and the plain decode-everything path) against decord 0.6.0 (VideoMAE's decoder, `num_threads=1` as
  VideoMAE sets it; skipped when decord is not installed), on the opencv-doc sample videos re-encoded to H.264
  (the first 150 frames at 30 fps, libx264 defaults; synthetic videos when opencv-doc is absent). Side by side:
  for each clip every decoder runs in turn, the order rotating; medians over the clips; the frames compared.
- shards: clips/s and CPU ms/clip from WebDataset shards (`make-shards`, local and through `pipe:cat`) against
  the same videos from an annotation list, 0/1/2 workers; the items are checked to be the same.

The synthetic videos are written at run time with PyAV into a temporary folder: 150 frames at 30 fps (5 s, like
a trimmed Kinetics clip), libx264 defaults (one keyframe per 250 frames, so a clip is decoded from frame 0).
Loader runs are one pass over the dataset, worker start-up included. CPU time (process plus children) barely
depends on other load on the machine, wall time does (`--live` also times steps fed by a real DataLoader).

    python benchmarks/loader.py                 # all parts (~10-15 min on 2 CPU cores), prints the tables
    python benchmarks/loader.py --update-docs   # ... and writes them into docs/BENCHMARKS.md
    python benchmarks/loader.py --parts decode,shards --update-docs   # only those sections
    python benchmarks/loader.py --quick         # tiny sizes, seconds (CI)
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, markdown_table, median, replace_section  # noqa: E402

from motionmae.config import DataConfig  # noqa: E402
from motionmae.data import shards  # noqa: E402
from motionmae.data import transforms as T  # noqa: E402
from motionmae.data.datasets import VideoClipDataset, VideoEntry, collate  # noqa: E402
from motionmae.data.decode import VideoReader, write_video  # noqa: E402
from motionmae.data.loader import Batches, make_loader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
MARKERS = {part: (f"<!-- loader.py{'' if part == 'loader' else ':' + part}:begin -->",
                  f"<!-- loader.py{'' if part == 'loader' else ':' + part}:end -->") for part in ("loader", "decode", "shards")}
OPENCV_VIDEOS = "/usr/share/doc/opencv-doc/examples/data/*.avi"

FULL = dict(resolutions=((320, 240), (640, 480)), video_frames=150, files=4, clip=16, stride=4, px=224,
            workers=(0, 1, 2), samples=(1, 2, 4), visits=32, batch=4, decode_rounds=12, scaled_side=256, shard_videos=64, shard_size=16, shard_rounds=3)
QUICK = dict(resolutions=((64, 48),), video_frames=24, files=2, clip=4, stride=2, px=32,
             workers=(0, 1), samples=(1, 2), visits=4, batch=2, decode_rounds=1, scaled_side=32, shard_videos=6, shard_size=4, shard_rounds=1)


def write_videos(folder: Path, width: int, height: int, frames: int, files: int, seed: int = 0):
    """Moving smooth texture plus mild noise: a realistic bitrate, unlike a flat or pure-noise picture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for k in range(files):
        fy, fx, ph = rng.uniform(0.02, 0.08, 2).astype(np.float32), rng.uniform(0.02, 0.08, 2).astype(np.float32), rng.uniform(0, 6, 3)
        out = np.empty((frames, height, width, 3), np.uint8)
        for t in range(frames):
            base = np.stack([np.sin(xx * fx[0] + yy * fy[0] + t * 0.1 + ph[0]), np.sin(xx * fx[1] - yy * fy[1] + t * 0.07 + ph[1]),
                             np.cos((xx + yy) * 0.03 + t * 0.05 + ph[2])], -1)
            noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
            out[t] = np.clip(128 + 90 * base + noise, 0, 255).astype(np.uint8)
        path = folder / f"{width}x{height}_{k}.mp4"
        write_video(path, out, fps=30, options={"preset": "veryfast"})
        paths.append(path)
    return paths


def make_dataset(paths, cfg, num_samples: int, seed: int = 0) -> VideoClipDataset:
    entries = [VideoEntry(str(paths[i % len(paths)])) for i in range(cfg["visits"])]
    return VideoClipDataset(entries, num_frames=cfg["clip"], sampling_rate=cfg["stride"], mode="train",
                            input_size=cfg["px"], num_samples=num_samples, seed=seed)


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (DataLoader workers, once joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def loader_rate(ds, workers: int, batch: int, keep: bool = False):
    """(clips/s, CPU ms per clip[, batches]) over one full pass, worker start-up included: timing from the first
    batch instead would credit the batches the workers prefetched during start-up. CPU time (main process plus
    workers, joined at the end of the pass) does not depend on how busy the machine is; wall time does."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with Batches(make_loader(ds, batch, workers, collate_fn=collate)) as batches:
        got = list(batches) if keep else None
        clips = sum(b["video"].shape[0] for b in (got if keep else batches))
        dt = time.perf_counter() - t0
    out = (clips / dt, (cpu_seconds() - cpu0) * 1000 / clips)
    return out + (got,) if keep else out


def measure_loader(cfg, tmp: Path):
    rows = []
    for w, h in cfg["resolutions"]:
        paths = write_videos(tmp, w, h, cfg["video_frames"], cfg["files"])
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        for s in cfg["samples"]:
            for workers in cfg["workers"]:
                rate, cpu_ms = loader_rate(make_dataset(paths, cfg, s), workers, cfg["batch"])
                rows.append([f"{w}x{h}", f"{size:.2f}", s, workers, rate, 1000 / rate, cpu_ms])
                print(f"  {w}x{h} num_samples={s} workers={workers}: {rate:.1f} clips/s, {cpu_ms:.0f} CPU ms/clip", flush=True)
    return rows


def measure_fed(cfg, tmp: Path, quick: bool, live: bool = False):
    """Does one worker keep a small-model pretraining step fed? Compared in CPU time, which (unlike wall
    time) hardly depends on the machine's other load: the step's CPU per batch over its threads is its
    wall time on an idle machine; the loader needs `batch * CPU per clip` of one worker per batch.
    `live`: also time steps fed by a real DataLoader against the cached batch (meaningful on an idle machine)."""
    from motionmae.config import load_config
    from motionmae.data.transforms import to_model_input
    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import make_mask

    size = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2) if quick else {}
    px, frames, batch, steps = (32, 4, 2, 2) if quick else (112, 16, 8, 4)
    over = [f"model.size={'tiny' if quick else 'small'}", f"model.img_size={px}", f"model.num_frames={frames}"]
    over += [f"model.{k}={v}" for k, v in size.items()]
    pcfg = load_config("motionmae-sha", over)
    model = PretrainModel(pcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    w, h = cfg["resolutions"][0]
    paths = sorted(tmp.glob(f"{w}x{h}_*.mp4"))
    entries = [VideoEntry(str(paths[i % len(paths)])) for i in range((steps + 1) * batch)]
    ds = VideoClipDataset(entries, num_frames=frames, sampling_rate=cfg["stride"], input_size=px, seed=0)
    gen = torch.Generator().manual_seed(0)

    def step(video):
        x = to_model_input(video, pcfg.data.mean, pcfg.data.std, "cpu")
        mask = make_mask(pcfg.mask.kind, x.shape[0], pcfg.model.grid(), pcfg.mask.ratio, gen)
        opt.zero_grad(set_to_none=True)
        model(x, mask)["loss"].backward()
        opt.step()

    cached = collate([ds[i] for i in range(batch)])["video"]
    step(cached)  # warm-up
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        step(cached)
    step_wall, step_cpu = (time.perf_counter() - t0) / steps, (cpu_seconds() - cpu0) / steps
    _, clip_cpu_ms = loader_rate(ds, 1, batch)
    load_cpu = clip_cpu_ms * batch / 1000
    threads = torch.get_num_threads()
    idle_step = step_cpu / threads  # the step's wall time with its threads to itself
    workers = max(1, -(-load_cpu // idle_step))
    rows = [["model step (cached batch)", step_cpu, step_wall, "-"],
            ["loader, 1 worker", load_cpu, "-", f"{load_cpu / idle_step:.2f}"]]
    text = (f"The loader needs {load_cpu:.2f} CPU s per batch against {idle_step:.2f} s of step ({step_cpu:.2f} CPU s over "
            f"{threads} threads): **{int(workers)} worker{'s' if workers > 1 else ''} keep{'' if workers > 1 else 's'} the step fed** "
            "and the loader costs "
            f"{100 * load_cpu / (load_cpu + step_cpu):.0f}% of the CPU.")
    print(f"  fed: step {step_cpu:.2f} CPU s ({step_wall:.2f} s wall), loader {load_cpu:.2f} CPU s per batch", flush=True)
    if live:
        base = 1 / step_wall
        for nw in cfg["workers"]:
            it = iter(DataLoader(ds, batch_size=batch, num_workers=nw, collate_fn=collate))
            step(next(it)["video"])  # start-up
            t = time.perf_counter()
            n = sum(1 for b in it if step(b["video"]) is None)
            rate = n / (time.perf_counter() - t)
            rows.append([f"live loader, {nw} worker(s)", "-", 1 / rate, f"{rate / base:.2f} of cached"])
    desc = f"MotionMAE-sha ViT-{'tiny (32-wide, 1 block)' if quick else 'S'}, {frames}x{px}x{px}, batch {batch}, fp32, AdamW"
    return rows, desc, text


def measure_augment(cfg, repeats: int) -> list:
    """CPU ms per clip of the spatial train transforms alone, on random uint8 clips of each source size: the
    pretraining crop, the same + RandAugment, and the fine-tuning pipeline (finetune.crop=rrc: down to the short
    side, RandAugment, random resized crop, flip)."""
    ra = T.RandAugment.from_spec("rand-m7-n4-mstd0.5-inc1", "finetune.aa")
    px, short = cfg["px"], int(round(cfg["px"] * 256 / 224))
    scales = (1.0, 0.875, 0.75, 0.66)

    def rrc(clip, g):
        clip = T.short_side_resize(clip, short) if min(clip.shape[-2:]) > short else clip
        return T.random_flip(T.random_resized_crop(ra(clip, g), px, g), g)

    pipelines = {
        "multi-scale crop + flip (pretraining)": lambda c, g: T.train_transform(c, px, scales, True, g),
        "multi-scale crop + flip, then RandAugment (finetune.crop=multiscale)": lambda c, g: ra(T.train_transform(c, px, scales, True, g), g),
        f"down to {short} px, RandAugment, random resized crop, flip (finetune.crop=rrc)": rrc,
    }
    rows = []
    for w, h in cfg["resolutions"]:
        clip = torch.randint(0, 256, (3, cfg["clip"], h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        for name, fn in pipelines.items():
            times = []
            for i in range(repeats):
                g = torch.Generator().manual_seed(i)
                t = time.process_time()
                fn(clip, g)
                times.append(time.process_time() - t)
            rows.append([f"{w}x{h}", name, 1e3 * sum(times) / len(times)])
    return rows


# ----------------------------------------------------------------------------------------------- decode


def opencv_videos(folder: Path, width: int, height: int, frames: int) -> list:
    """The opencv-doc sample videos, their first `frames` frames resized to width x height and written as H.264
    with `write_video` (30 fps, libx264 defaults); [] when opencv-doc is not installed."""
    import av

    paths = []
    for src in sorted(glob.glob(OPENCV_VIDEOS)):
        with av.open(src) as c:
            rgb = [f.to_ndarray(format="rgb24", width=width, height=height) for _, f in zip(range(frames), c.decode(video=0))]
        path = folder / f"{Path(src).stem}_{width}x{height}.mp4"
        write_video(path, np.stack(rgb), fps=30)
        paths.append(path)
    return paths


def decoders(short_side: int) -> dict:
    """name -> fn(path, indices) -> (uint8 (T, H, W, 3) frames, frames the codec produced or None)."""

    def ours(**kw):
        def fn(path, idx):
            with VideoReader(path, **kw) as r:
                return r.get_frames(idx), r.frames_decoded
        return fn

    out = {"ours (fast path)": ours(), "ours, plain path (every frame of the run, FFmpeg's default threads)": ours(fast=False, threads=0)}
    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        def dec(threads):
            def fn(path, idx):
                vr = decord.VideoReader(str(path), num_threads=threads)
                frames = vr.get_batch(list(map(int, idx))).asnumpy()
                del vr
                return frames, None
            return fn
        out[f"decord {decord.__version__} (num_threads=1, as VideoMAE)"] = dec(1)
        out[f"decord {decord.__version__} (num_threads=0, its default)"] = dec(0)
    if short_side:  # where the transforms shrink frames anyway (fine-tuning's rrc, test views): two ways to get there
        full = ours()

        def then_resize(path, idx):
            frames, count = full(path, idx)
            clip = T.short_side_resize(T.from_numpy_frames(frames), short_side)
            return clip.permute(1, 2, 3, 0).numpy(), count

        out[f"ours (fast path), then torch's short-side resize to {short_side}"] = then_resize
        out[f"ours, scaled to short side {short_side} by the converter (data.decode_short_side={short_side})"] = ours(short_side=short_side)
    return out


def measure_decode(cfg, tmp: Path):
    """CPU ms per clip of each decoder, side by side: every clip is decoded by each in turn, the order rotating.
    Returns (rows, source description, identical-frames summary)."""
    rng = np.random.default_rng(0)
    rows, source, item_rows = [], "", []
    for w, h in cfg["resolutions"]:
        paths = opencv_videos(tmp, w, h, cfg["video_frames"])
        names = ", ".join(sorted({p.stem.rsplit("_", 1)[0] for p in paths}))
        source = f"the opencv-doc sample videos ({names}) re-encoded to H.264"
        if not paths:
            paths = write_videos(tmp, w, h, cfg["video_frames"], cfg["files"], seed=1)
            source = "synthetic textured videos written as H.264 (opencv-doc is not installed)"
        # scaling in the converter can pay where the frames are larger than the short side the transforms want
        scaled = cfg["scaled_side"] if min(w, h) > cfg["scaled_side"] else 0
        fns = decoders(scaled)
        names = list(fns)
        cpu = {n: [] for n in names}
        decoded = {n: [] for n in names}
        same = {n: 0 for n in names}
        diff = {n: [] for n in names}
        clips = 0
        for r in range(cfg["decode_rounds"]):
            for path in paths:
                with VideoReader(path) as probe:
                    n = probe.num_frames
                span = (cfg["clip"] - 1) * cfg["stride"] + 1
                idx = int(rng.integers(0, max(n - span, 0) + 1)) + np.arange(cfg["clip"]) * cfg["stride"]
                idx = np.minimum(idx, n - 1)
                got = {}
                for k in range(len(names)):
                    name = names[(k + clips) % len(names)]
                    t = time.process_time()
                    got[name], count = fns[name](path, idx)
                    cpu[name].append(time.process_time() - t)
                    if count is not None:
                        decoded[name].append(count)
                for name in names:  # the plain path is the reference; the converter's scaling approximates torch's
                    ref = got[names[-2]] if "converter" in name else got[names[1]]
                    same[name] += bool(np.array_equal(got[name], ref))
                    if "converter" in name:
                        diff[name].append(np.abs(got[name].astype(np.float32) - ref).mean())
                clips += 1
        base = next((n for n in names if "num_threads=1" in n), None)
        for name in names:
            ms = 1000 * median(cpu[name])
            ratio = f"{ms / (1000 * median(cpu[base])):.2f}x" if base else "-"
            frames = f"{np.mean(decoded[name]):.0f}" if decoded[name] else "-"
            close = f" (mean abs diff {np.mean(diff[name]):.2f} of 255)" if diff[name] else ""
            identical = "-" if "torch" in name else f"{same[name]}/{clips}{close}"
            rows.append([f"{w}x{h}", name, ms, ratio, frames, identical])
            print(f"  decode {w}x{h} {name}: {ms:.1f} CPU ms/clip ({ratio} of decord), identical {same[name]}/{clips}", flush=True)
        if scaled:
            item_rows = measure_scaled_items(cfg, paths, scaled, f"{w}x{h}")
    return rows, source, item_rows


def measure_scaled_items(cfg, paths, side: int, video: str) -> list:
    """Whole training items (decode + spatial transform), decoded at full size or scaled by the converter
    (data.decode_short_side): does the scaling pay once the transform is counted? Side by side, rotating."""
    cases = [(crop, dss) for crop in ("multiscale", "rrc") for dss in (0, side)]
    cpu = {c: [] for c in cases}
    for r in range(cfg["decode_rounds"]):
        for k in range(len(cases)):
            crop, dss = cases[(k + r) % len(cases)]
            ds = VideoClipDataset([VideoEntry(str(p)) for p in paths], num_frames=cfg["clip"], sampling_rate=cfg["stride"],
                                  input_size=cfg["px"], short_side=side, crop=crop, decode_short_side=dss, seed=r)
            t = time.process_time()
            for i in range(len(ds)):
                ds[i]
            cpu[crop, dss].append((time.process_time() - t) / len(ds))
    names = {"multiscale": "pretraining (multi-scale crop + flip)",
             "rrc": f"fine-tuning, finetune.crop=rrc without RandAugment (down to {side} px, random resized crop, flip)"}
    return [[video, names[crop], f"decode_short_side={dss}" if dss else "full size, then the transform", 1000 * median(v)]
            for (crop, dss), v in cpu.items()]


# ----------------------------------------------------------------------------------------------- shards


def measure_shards(cfg, tmp: Path):
    """Training clips through a DataLoader from an annotation list and from WebDataset shards of the same videos
    (local files, and through a `pipe:cat` stream as from object storage); the items are compared."""
    rows = []
    w, h = cfg["resolutions"][0]
    files = write_videos(tmp, w, h, cfg["video_frames"], cfg["files"], seed=2)
    root = tmp / "shard-source"
    root.mkdir()
    for i in range(cfg["shard_videos"]):  # distinct files (links to a few encodings), as a real list has
        os.link(files[i % len(files)], root / f"{i:05d}.mp4")
    (root / "list.txt").write_text("".join(f"{i:05d}.mp4 {i % 5}\n" for i in range(cfg["shard_videos"])))
    out = tmp / "shards"
    t = time.perf_counter()
    info = shards.write_shards(shards.D.resolve_source(str(root / "list.txt"))[0], out, cfg["shard_size"], seed=None, progress=False)
    write_s = time.perf_counter() - t
    last = info["shards"] - 1
    sources = {"annotation list": str(root / "list.txt"),
               "shards (local files)": str(out / f"shard-{{000000..{last:06d}}}.tar"),
               "shards (pipe:cat, a stream)": f"pipe:cat {out}/shard-{{000000..{last:06d}}}.tar"}
    dc = DataConfig(num_frames=cfg["clip"], sampling_rate=cfg["stride"], input_size=cfg["px"])
    results, names = {}, list(sources)
    for workers in cfg["workers"]:
        rates, cpus = {n: [] for n in names}, {n: [] for n in names}
        for r in range(cfg["shard_rounds"]):  # side by side, the order rotating
            for k in range(len(names)):
                name = names[(k + r) % len(names)]
                dc.train = sources[name]
                ds = shards.build_dataset(dc, "train", "pretrain", seed=0)
                rate, cpu_ms, got = loader_rate(ds, workers, cfg["batch"], keep=True)
                results[name, workers, r] = {int(i): v for b in got for i, v in zip(b["index"], b["video"])}
                rates[name].append(rate)
                cpus[name].append(cpu_ms)
        for name in names:
            rate, cpu_ms = median(rates[name]), median(cpus[name])
            rows.append([name, workers, rate, 1000 / rate, cpu_ms])
            print(f"  {name}, {workers} workers: {rate:.1f} clips/s, {cpu_ms:.0f} CPU ms/clip", flush=True)
    ref = results["annotation list", cfg["workers"][0], 0]
    same = all(r.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in r.items()) for r in results.values())
    mb = info["bytes"] / 1e6
    return rows, same, f"{info['samples']} videos of {w}x{h} ({mb:.1f} MB) in {info['shards']} shards, written in {write_s:.1f} s"


NOTE = ("\nReading it: on a machine shared with other jobs, trust CPU ms/clip; each worker with a core to itself "
        "delivers about 1000 / (CPU ms/clip) clips/s. Repeated sampling (num_samples > 1) amortises decoding. "
        "With several intra-op threads, 0 workers can cost more CPU per clip (the main process's threads wait "
        "on the decoder).\n")


def loader_text(cfg, quick, fed, live, tmp) -> str:
    load = os.getloadavg()[0]
    rows = measure_loader(cfg, tmp)
    aug_rows = measure_augment(cfg, 2 if quick else 30)
    fed_rows, fed_desc, fed_text = measure_fed(cfg, tmp, quick, live) if fed else ([], "", "")
    clip = f"{cfg['clip']}x{cfg['px']}x{cfg['px']}"
    cmd = "python benchmarks/loader.py" + (" --quick" if quick else "") + " --parts loader --update-docs"
    text = (f"## Data loader\n\nMachine: {machine_name()}. Command: `{cmd}`.\n\n"
            f"Training clips of {clip} (dense sampling, stride {cfg['stride']}, multi-scale crop + flip, uint8 out) from "
            f"{cfg['video_frames']}-frame H.264 files at 30 fps (libx264 defaults); batch {cfg['batch']} videos. "
            "num_samples = clips per decoded video (repeated sampling). clips/s and ms/clip are wall time "
            "over one pass of "
            f"{cfg['visits']} videos, worker start-up included; CPU ms/clip sums the main process and its workers and does not depend on other load (1-min load average at the start: {load:.1f}).\n\n")
    text += markdown_table(["video", "MB/file", "num_samples", "workers", "clips/s", "ms/clip", "CPU ms/clip"], rows) + "\n"
    text += NOTE
    text += (f"\nThe train transforms alone (random uint8 clips of {cfg['clip']} frames, one thread, mean over "
             "draws; RandAugment rand-m7-n4-mstd0.5-inc1). Fine-tuning clips cost this on top of decoding:\n\n")
    text += markdown_table(["source", "transform", "CPU ms/clip"], aug_rows) + "\n"
    if fed_rows:
        text += (f"\nIs a small-model training step fed? {fed_desc}; clips decoded from the "
                 f"{cfg['resolutions'][0][0]}x{cfg['resolutions'][0][1]} files, num_samples 1. The worker and the step share "
                 "the cores, so the comparison is in CPU seconds per batch; \"load\" = loader CPU / idle step time.\n\n")
        text += markdown_table(["per batch", "CPU s", "wall s (this run)", "load"], fed_rows) + "\n\n" + fed_text + "\n"
    return text


def header(title: str, part: str, quick: bool) -> str:
    """Section title, machine, load at the start and the command that regenerates the section."""
    cmd = "python benchmarks/loader.py" + (" --quick" if quick else "") + f" --parts {part} --update-docs"
    return (f"### {title}\n\nMachine: {machine_name()}, shared with other jobs (1-min load average at the start: "
            f"{os.getloadavg()[0]:.1f}). Command: `{cmd}`.\n\n")


def decode_text(cfg, quick, tmp) -> str:
    text = header("Decoding one clip: ours vs decord", "decode", quick)
    rows, source, item_rows = measure_decode(cfg, tmp)
    text += (f"One {cfg['clip']}-frame clip at stride {cfg['stride']} (random start), the file opened for each clip as a "
            f"loader does, decoded to uint8 RGB frames; process CPU time (all threads), the median over "
            f"{cfg['decode_rounds']} clips of each of {source} (first {cfg['video_frames']} frames, "
            "30 fps, libx264 defaults). Side by side: each clip goes through every decoder in turn, the order rotating. "
            "\"vs decord\" divides by decord with `num_threads=1` (what VideoMAE's loader uses); \"frames\" is what the "
            "codec output per clip; \"identical\" counts clips whose frames equal the plain path's, bit for bit (the "
            "converter-scaled frames: against the torch-resized ones of the row above, which they approximate).\n\n")
    text += markdown_table(["video", "decoder", "CPU ms/clip", "vs decord", "frames decoded", "identical"], rows) + "\n"
    if item_rows:
        text += ("\nScaling in the converter, counted with the transform that follows: whole training items (decode + "
                 f"spatial transform, {cfg['clip']}x{cfg['px']}x{cfg['px']} out), one process, the same videos; median over "
                 f"{cfg['decode_rounds']} rounds of the per-item mean, the cases taking turns:\n\n")
        text += markdown_table(["video", "item", "frames", "CPU ms/item"], item_rows) + "\n"
    return text


def shards_text(cfg, quick, tmp) -> str:
    text = header("Shards vs a list", "shards", quick)
    rows, same, desc = measure_shards(cfg, tmp)
    text += (f"Training clips of {cfg['clip']}x{cfg['px']}x{cfg['px']} (stride {cfg['stride']}, multi-scale crop + flip), batch "
            f"{cfg['batch']}, num_samples 1, passes over {desc} by `motionmae make-shards`, against the same videos "
            "from an annotation list; the shards read from local files and as a stream (`pipe:cat`, as `pipe:curl` "
            "would from object storage). Medians of "
            f"{cfg['shard_rounds']} passes per row, the sources taking turns; wall time includes worker start-up and "
            "is at the mercy of the other jobs, CPU ms/clip (main process and workers) is not. The items (clips and "
            f"indices) from the shards equal the list's: {'yes' if same else 'NO'}.\n\n")
    text += markdown_table(["source", "workers", "clips/s", "ms/clip", "CPU ms/clip"], rows) + "\n"
    return text


PARTS = ("loader", "decode", "shards")


def run(quick: bool = False, update_docs: bool = False, fed: bool = True, live: bool = False,
        parts: tuple = PARTS) -> str:
    cfg = QUICK if quick else FULL
    torch.manual_seed(0)
    texts = {}
    with tempfile.TemporaryDirectory() as d:
        for part in parts:
            tmp = Path(d) / part
            tmp.mkdir()
            if part == "loader":
                texts[part] = loader_text(cfg, quick, fed, live, tmp)
            elif part == "decode":
                texts[part] = decode_text(cfg, quick, tmp)
            else:
                texts[part] = shards_text(cfg, quick, tmp)
    if update_docs:
        for part, text in texts.items():
            replace_section(DOCS, *MARKERS[part], text, title="Benchmarks")
    return "\n".join(texts.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--update-docs", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    p.add_argument("--no-fed", action="store_true", help="skip the training-step comparison")
    p.add_argument("--live", action="store_true", help="also time steps fed by a live DataLoader (idle machines)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which benchmarks, comma separated: {', '.join(PARTS)}")
    a = p.parse_args(argv)
    parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
    if any(x not in PARTS for x in parts):
        p.error(f"--parts takes {', '.join(PARTS)}")
    print(run(a.quick, a.update_docs, not a.no_fed, a.live, parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
