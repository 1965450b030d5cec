"""Data loader throughput: clips/s and ms/clip for 16x224x224 training clips (dense, stride 4, multi-scale crop,
flip) decoded from 320x240 and 640x480 H.264 files, with 0/1/2 DataLoader workers and num_samples 1/2/4
(repeated sampling: clips drawn from one decoded video per visit).

The videos are written at run time with PyAV into a temporary folder: 150 frames at 30 fps (5 s, like a
trimmed Kinetics clip), libx264 defaults (one keyframe per 250 frames, so a clip is decoded from frame 0).
Each run is one pass over the dataset, worker start-up included.

"Fed": the CPU seconds of a small-model pretraining step (MotionMAE-sha, ViT-S at 16x112x112, batch 8, AdamW)
against the CPU seconds one worker spends producing its batch; CPU time barely depends on other load on the
machine, wall time does (`--live` also times steps fed by a real DataLoader).

    python benchmarks/loader.py                 # full run (~5-10 min on 2 CPU cores), prints the tables
    python benchmarks/loader.py --update-docs   # ... and writes them into docs/BENCHMARKS.md ("Data loader")
    python benchmarks/loader.py --quick         # tiny sizes, seconds (CI)
"""

from __future__ import annotations

import argparse
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
from common import machine_name, markdown_table, replace_section  # noqa: E402

from motionmae.data.datasets import VideoClipDataset, VideoEntry, collate  # noqa: E402
from motionmae.data.decode import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- loader.py:begin -->", "<!-- loader.py:end -->"

FULL = dict(resolutions=((320, 240), (640, 480)), video_frames=150, files=4, clip=16, stride=4, px=224,
            workers=(0, 1, 2), samples=(1, 2, 4), visits=32, batch=4)
QUICK = dict(resolutions=((64, 48),), video_frames=24, files=2, clip=4, stride=2, px=32,
             workers=(0, 1), samples=(1, 2), visits=4, batch=2)


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


def loader_rate(ds, workers: int, batch: int):
    """(clips/s, CPU ms per clip) over one full pass, worker start-up included: timing from the first batch
    instead would credit the batches the workers prefetched during start-up. CPU time (main process plus
    workers) does not depend on how busy the machine is; wall time does."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    clips = sum(b["video"].shape[0] for b in loader)
    dt = time.perf_counter() - t0
    del loader  # join the workers so their CPU time is counted
    return clips / dt, (cpu_seconds() - cpu0) * 1000 / clips


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
    from motionmae.data import transforms as T

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


NOTE = ("\nReading it: on a machine shared with other jobs, trust CPU ms/clip; each worker with a core to itself "
        "delivers about 1000 / (CPU ms/clip) clips/s. Repeated sampling (num_samples > 1) amortises decoding; "
        "0 workers costs more CPU per clip because the main process's intra-op threads spin while they wait.\n")


def run(quick: bool = False, update_docs: bool = False, fed: bool = True, live: bool = False) -> str:
    cfg = QUICK if quick else FULL
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = measure_loader(cfg, tmp)
        aug_rows = measure_augment(cfg, 2 if quick else 30)
        fed_rows, fed_desc, fed_text = measure_fed(cfg, tmp, quick, live) if fed else ([], "", "")
    clip = f"{cfg['clip']}x{cfg['px']}x{cfg['px']}"
    cmd = "python benchmarks/loader.py" + (" --quick" if quick else "") + " --update-docs"
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
    if update_docs:
        replace_section(DOCS, BEGIN, END, text, title="Benchmarks")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--update-docs", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    p.add_argument("--no-fed", action="store_true", help="skip the training-step comparison")
    p.add_argument("--live", action="store_true", help="also time steps fed by a live DataLoader (idle machines)")
    a = p.parse_args(argv)
    print(run(a.quick, a.update_docs, not a.no_fed, a.live))
    return 0


if __name__ == "__main__":
    sys.exit(main())
