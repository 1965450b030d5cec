"""Shared by the engine tests: tiny real mp4 videos in a temp dir and the overrides of a tiny model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from motionmae.data.decode import write_video

# embed 32, depth 1, 4 frames of 32 px (2x2x2 tokens of 16 px), 1-block decoder; fp32 so runs are exactly repeatable
TINY = [
    "model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
    "model.num_frames=4", "model.img_size=32", "model.patch_size=16",
    "data.num_frames=4", "data.input_size=32", "data.sampling_rate=2", "data.num_workers=0",
    "train.amp=none", "train.warmup_steps=2", "train.log_every=1", "train.base_lr=0.05", "train.viz_every=-1",
]


def tiny_videos(folder, n=8, frames=10, size=40, seed=0) -> Path:
    """`n` mp4 files of a coloured square moving over a dark background."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        clip = np.full((frames, size, size, 3), 30, np.uint8)
        x, y = rng.integers(0, size - 12, 2)
        vx, vy = rng.integers(-3, 4, 2)
        colour = rng.integers(90, 256, 3)
        for t in range(frames):
            cx, cy = (x + vx * t) % (size - 12), (y + vy * t) % (size - 12)
            clip[t, cy : cy + 12, cx : cx + 12] = colour
        write_video(folder / f"v{i:02d}.mp4", clip)
    return folder


def cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """Run the real `motionmae` CLI in a subprocess (one thread, so runs are comparable)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "motionmae.cli", *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)


def spawn(*args, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """Start the real `motionmae` CLI in a subprocess (one thread), without waiting for it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "motionmae.cli", *map(str, args)], stdout=stdout,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def signal_when_logged(proc, run_dir, sig, step, timeout=120) -> None:
    """Send `sig` to `proc` as soon as its run has logged step `step` (or give up when it ends or times out)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (Path(run_dir) / "metrics.jsonl").exists() and any(r["step"] >= step for r in metric_rows(run_dir)):
            proc.send_signal(sig)
            break
        time.sleep(0.002)


def metric_rows(run_dir) -> list:
    """The rows of a run's metrics.jsonl so far; a line being written by a running process is skipped."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def session_members(sid: int) -> list:
    """Live processes (zombies left out) of the session `sid`: a CLI run started with start_new_session=True and
    everything it started, DataLoader workers included."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid and (d / "stat").read_text().split()[2] != "Z":
                    pids.append(int(d.name))
            except (OSError, IndexError):
                pass
    return pids
