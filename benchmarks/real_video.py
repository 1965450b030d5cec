"""Probe study on real video: labels derived without annotation (docs/RESULTS.md, "Real video").

Source: the OpenCV sample videos (Debian `opencv-doc`, /usr/share/doc/opencv-doc/examples/data/*.avi):
Megamind.avi (animation, 270 frames, with cuts), tree.avi (a tree and a lawn with walkers, 444 frames) and
vtest.avi (a street seen from above, 795 frames). Megamind_bugy.avi is the same film damaged, so it is left out.
Clips of 16 frames, 64x64 px, with four labels that need no annotation:

- source (appearance): which video the clip comes from. Readable from any frame: the control.
- speed (motion): playback speed, frame stride 1 or 3 (the frames of both come from the same videos).
- arrow (motion): played forward or backwards.
- pan (motion): a 64x64 window that moves 1 px per frame to the left or to the right over the (resized) frame: a
  camera pan added by construction. Its direction is the motion label; the window's centre is drawn uniformly, so
  a frame shows the same content either way. (Flipping a clip horizontally would *not* give a valid direction
  label: text, faces and scene layout give the flip away in a single frame, and the true motion in a real clip is
  unknown anyway.)

The observed labels are drawn first and the forward rendering follows from them: a reversed clip is the forward
clip played backwards, so its observed pan is the opposite of the forward one (as in the synthetic set). Train and
val clips come from disjoint time ranges of each video (first 75% / last 25%), so no val frame is seen in training.

    python benchmarks/real_video.py --threads 1            # write the clips, pretrain, probe; prints the table
    python benchmarks/real_video.py --threads 1 --update-docs   # ... and write the table into docs/RESULTS.md

The pretraining runs, probes and their cost go through benchmarks/reproduce.py's functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce as R  # noqa: E402
from common import markdown_table, mean_std, replace_section  # noqa: E402

VIDEO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
VIDEOS = ("Megamind.avi", "tree.avi", "vtest.avi")
COLUMNS = ("source", "speed", "arrow", "pan")
STRIDES = (1, 3)
FRAMES, SIZE, HEIGHT = 16, 64, 72  # clip length; window side; frames are resized to this height first
TRAIN_FRACTION = 0.75


def available(video_dir: Path = VIDEO_DIR) -> List[Path]:
    return [video_dir / v for v in VIDEOS if (video_dir / v).is_file()]


def _frames(path: Path) -> np.ndarray:
    """All frames of a video, resized to HEIGHT (aspect kept), uint8 (T, H, W, 3)."""
    from motionmae.data.decode import VideoReader
    from motionmae.data.transforms import from_numpy_frames, resize

    with VideoReader(path) as r:
        frames = r.get_frames(range(r.num_frames))
    h, w = frames.shape[1:3]
    clip = resize(from_numpy_frames(frames), (HEIGHT, round(w * HEIGHT / h)))  # (C, T, H, W)
    return clip.permute(1, 2, 3, 0).numpy()


def clip_from(frames: np.ndarray, start: int, stride: int, arrow: int, pan: int, x0: int, y0: int) -> np.ndarray:
    """One labelled clip: frames start, start+stride, ...; a window moving right (pan 0) or left (pan 1) in the
    *observed* clip; played backwards when arrow == 1. The window's x at observed frame k is x0 + (k - 7.5) * dir."""
    forward_pan = pan ^ arrow  # the forward rendering pans the other way when the clip is then reversed
    step = 1 if forward_pan == 0 else -1
    out = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    for k in range(FRAMES):
        x = x0 + int(np.floor((k - (FRAMES - 1) / 2) * step))
        out[k] = frames[start + k * stride, y0 : y0 + SIZE, x : x + SIZE]
    return out[::-1] if arrow else out


def make_real_dataset(out: Path, num_train: int = 600, num_val: int = 240, seed: int = 0, video_dir: Path = VIDEO_DIR) -> Path:
    """Write the clips (mp4) and lists `train.csv` / `val.csv` (path,source,speed,arrow,pan) + labels.json."""
    from motionmae.data.decode import write_video

    if (out / "labels.json").exists():
        return out
    paths = available(video_dir)
    if not paths:
        raise FileNotFoundError(f"no OpenCV sample videos in {video_dir}")
    videos = [_frames(p) for p in paths]
    rng = np.random.default_rng(seed)
    for split, num in (("train", num_train), ("val", num_val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(num):
            src, stride, arrow, pan = int(rng.integers(len(videos))), int(rng.integers(2)), int(rng.integers(2)), int(rng.integers(2))
            frames = videos[src]
            n, h, w = frames.shape[:3]
            span = (FRAMES - 1) * STRIDES[stride] + 1
            cut = int(n * TRAIN_FRACTION)
            lo, hi = (0, cut - span) if split == "train" else (cut, n - span)
            start = int(rng.integers(lo, hi + 1))
            half = FRAMES // 2
            x0 = int(rng.integers(half, w - SIZE - half + 1))  # the window stays inside the frame either way
            y0 = int(rng.integers(0, h - SIZE + 1))
            clip = clip_from(frames, start, STRIDES[stride], arrow, pan, x0, y0)
            rel = f"{split}/{i:06d}.mp4"
            write_video(out / rel, clip, fps=10, options={"crf": "18", "preset": "fast", "x264-params": "no-asm=1"})
            rows.append(",".join(map(str, (rel, src, stride, arrow, pan))))
        (out / f"{split}.csv").write_text("\n".join(rows) + "\n")
    meta = {"columns": list(COLUMNS), "source": [p.stem for p in paths], "speed": [f"stride {s}" for s in STRIDES],
            "arrow": ["forward", "reversed"], "pan": ["right", "left"], "frames": FRAMES, "size": SIZE,
            "num_train": num_train, "num_val": num_val, "seed": seed}
    (out / "labels.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/real_video")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1500)  # the budget docs/RESULTS.md reports (~25 CPU-min, 3 seeds)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--update-docs", action="store_true", help="write the table into docs/RESULTS.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if not available():
        print(f"the OpenCV sample videos are not installed ({VIDEO_DIR}): nothing to do")
        return 0
    out = Path(args.out)
    data = make_real_dataset(out / "data")
    setup = R.Setup(steps=args.steps, probe_every=args.steps, seeds=tuple(int(s) for s in args.seeds.split(",")),
                    vos_sequences=0, finetune_steps=0)
    ledger = R.Ledger(out / "cost.json")
    names = {"videomae": R.KINDS["videomae"], "motionmae-sha": R.KINDS["motionmae-sha"]}
    results: Dict[str, list] = {"random init": [], **{n: [] for n in names}}
    for seed in setup.seeds:
        results["random init"].append(R.probe(setup, R.random_encoder_for(setup, data, seed), data, out, True, ledger,
                                              f"random-seed{seed}"))
        for name, kind in names.items():
            run_dir = out / "runs" / f"{name}-seed{seed}"
            ckpts = R.pretrain_run(setup, kind, data, seed, run_dir, True, ledger)
            res = R.probe(setup, ckpts[-1][1], data, out, True, ledger, run_dir.name)
            res["loss / predict-zero"] = R.heldout(run_dir, data, ledger)["ratio_appearance"]
            results[name].append(res)
            print(f"[{name} seed {seed}] " + " ".join(f"{c} {100 * res[c]['linear']:.1f}" for c in COLUMNS)
                  + f"; loss {res['loss / predict-zero']:.3f} of predict-zero", flush=True)
    head = ["encoder"] + [f"{c} ({'appearance' if c == 'source' else 'motion'})" for c in COLUMNS] + ["loss / predict-zero"]
    rows = []
    for name, rs in results.items():
        rows.append([name] + [R.pm([r[c]["linear"] for r in rs]) for c in COLUMNS]
                    + [R.pm([r["loss / predict-zero"] for r in rs], 1.0, 3) if "loss / predict-zero" in rs[0] else "-"])
    rows.append(["chance"] + [f"{100 * results['random init'][0][c]['chance']:.1f}" for c in COLUMNS] + [""])
    for name in names:  # paired by seed: a run starts from the random init of its seed
        diffs = {c: [100 * (r[c]["linear"] - b[c]["linear"]) for r, b in zip(results[name], results["random init"])]
                 for c in COLUMNS}
        rows.append([f"{name} - random init (per seed)"]
                    + ["{:+.1f} ± {:.1f} ({})".format(*mean_std(d), " ".join(f"{x:+.1f}" for x in d)) for d in diffs.values()] + [""])
    table = markdown_table(head, rows)
    cmd = f"python benchmarks/real_video.py --threads {args.threads} --seeds {args.seeds} --steps {args.steps}"
    text = (f"Command: `{cmd}` ({60 * ledger.hours():.0f} CPU-min in all, one thread: pretraining "
            f"{60 * ledger.hours('pretrain/'):.0f}, probes {60 * ledger.hours('probe/'):.1f}, held-out loss "
            f"{60 * ledger.hours('heldout/'):.1f}; writing the clips is not counted). Linear probe (%) on frozen "
            f"mean-pooled features, mean ± std over seeds {args.seeds}; {len(list((data / 'train').glob('*.mp4')))} "
            f"train / {len(list((data / 'val').glob('*.mp4')))} val clips. loss / predict-zero: held-out appearance "
            f"loss of the final checkpoint over the loss of predicting zero for every masked cube (val clips).\n\n{table}\n")
    print(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.update_docs:
        replace_section(R.DOCS / "RESULTS.md", "<!-- real_video.py:begin -->", "<!-- real_video.py:end -->", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
