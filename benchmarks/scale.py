"""Scaling features measured on CPU, each its own section of docs/BENCHMARKS.md (`--parts`):

- fsdp: `train.parallel=fsdp` against DDP on 2 gloo ranks, same global batch: the loss of every step side by side
  (memory per rank: benchmarks/memory.py --measure);
- shards: pretraining through the real Trainer (`motionmae pretrain`, one DataLoader worker) from an annotation list,
  from WebDataset shards on local disk and from a `pipe:cat` stream of them: steady-state clips/s (wall, median
  step), the first step of an epoch (worker start, shuffle buffer, first clips), the trainer's clips/s over the
  whole run and CPU seconds per clip (the trainer and its workers); the runs take turns;
- compile: one training step eager vs `torch.compile` (default backend: inductor, C++ on CPU), fp32 and bf16, process
  CPU time with one thread, median over steps taken in turn; and the one-off compile time.

    python benchmarks/scale.py --update-docs             # all parts (~20 min on 2 shared cores)
    python benchmarks/scale.py --parts compile           # one part, printed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, markdown_table, median, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
MARKERS = {p: (f"<!-- scale.py:{p}:begin -->", f"<!-- scale.py:{p}:end -->") for p in ("fsdp", "shards", "compile")}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
SMALL = ["model.size=small", "model.num_frames=16", "model.img_size=112", "data.num_frames=16", "data.input_size=112",
         "train.amp=none", "train.log_every=1", "train.viz_every=-1", "train.save_every=1000", "train.warmup_steps=2"]


def _cli(args, ranks: int = 1) -> float:
    """Run `motionmae ARGS` (under torchrun with ranks > 1); returns the CPU seconds it and its children used."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, *launcher, "-m", "motionmae.cli", *args], capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- fsdp


def fsdp_text(tmp: Path, quick: bool) -> str:
    from loader import write_videos

    (tmp / "videos").mkdir()
    files = write_videos(tmp / "videos", 160, 120, 40, 8)
    steps = 2 if quick else 5
    common = [*SMALL, f"data.train={files[0].parent}", "data.num_workers=0", "train.batch_size=2", f"train.max_steps={steps}",
              "train.clip_grad=1.0", "model.grad_checkpointing=true"]
    if quick:
        common += ["model.size=tiny", "model.num_frames=4", "data.num_frames=4", "model.img_size=32", "data.input_size=32"]
    runs = {}
    for kind in ("ddp", "fsdp"):
        _cli(["pretrain", *common, f"train.parallel={kind}", f"train.output_dir={tmp / kind}"], ranks=2)
        runs[kind] = _metrics(tmp / kind)
    rows = [[a["step"], f"{a['loss']:.6f}", f"{b['loss']:.6f}", f"{abs(a['loss'] - b['loss']) / abs(a['loss']):.1e}",
             f"{a['grad_norm']:.5f}", f"{b['grad_norm']:.5f}"] for a, b in zip(runs["ddp"], runs["fsdp"])]
    return (f"### FSDP vs DDP\n\nMachine: {machine_name()}. Command: `python benchmarks/scale.py --parts fsdp --update-docs`.\n\n"
            f"{'ViT-tiny 4x32' if quick else 'motionmae-sha ViT-S 16x112'}, fp32, 2 gloo ranks x 2 clips, activation "
            "checkpointing, gradient clipping at 1.0, the same seed and data: `train.parallel=ddp` (every rank holds all "
            "weights, gradients and AdamW states) against `train.parallel=fsdp` (each rank a half of them).\n\n"
            + markdown_table(["step", "DDP loss", "FSDP loss", "relative difference", "DDP grad norm", "FSDP grad norm"], rows)
            + "\n")


# ----------------------------------------------------------------------------------------------- shards


def shards_text(tmp: Path, quick: bool) -> str:
    from loader import write_videos

    from motionmae.data import shards

    n, batch, rounds = (8, 4, 1) if quick else (64, 4, 3)
    per_epoch = n // batch
    steps = 2 * per_epoch  # two epochs: the second one's start (new workers, a new shuffle buffer) is measured too
    (tmp / "videos").mkdir()
    files = write_videos(tmp / "videos", 320, 240, 150, 8, seed=2)
    root = tmp / "list"
    root.mkdir()
    for i in range(n):
        os.link(files[i % len(files)], root / f"{i:05d}.mp4")
    (root / "list.txt").write_text("".join(f"{i:05d}.mp4\n" for i in range(n)))
    info = shards.write_shards(shards.D.resolve_source(str(root / "list.txt"))[0], tmp / "shards", 16, progress=False)
    pattern = f"{tmp / 'shards'}/shard-{{000000..{info['shards'] - 1:06d}}}.tar"
    sources = {"annotation list": str(root / "list.txt"), "shards (local files)": pattern,
               "shards (pipe:cat, a stream)": f"pipe:cat {pattern}"}
    over = [*SMALL, "data.num_workers=1", f"train.batch_size={batch}", f"train.max_steps={steps}"]
    if quick:
        over += ["model.size=tiny", "model.num_frames=4", "data.num_frames=4", "model.img_size=32", "data.input_size=32"]
    rate, cpu, steady, first = ({s: [] for s in sources} for _ in range(4))
    load = os.getloadavg()[0]
    names = list(sources)
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            out = tmp / f"run-{r}-{k}"
            seconds = _cli(["pretrain", *over, f"data.train={sources[name]}", f"train.output_dir={out}"])
            rows = _metrics(out)
            times = [row["step_time"] for row in rows]  # wall, data wait included
            rate[name].append(rows[-1]["clips_per_s"])
            cpu[name].append(seconds / (steps * batch))
            first[name].extend(times[::per_epoch])
            steady[name].append(batch / median([t for i, t in enumerate(times) if i % per_epoch]))
    table = [[name, f"{median(steady[name]):.2f}", f"{min(steady[name]):.2f}-{max(steady[name]):.2f}",
              f"{median(first[name]):.2f}", f"{median(rate[name]):.2f}", f"{median(cpu[name]):.2f}"] for name in names]
    overlap = max(min(v) for v in steady.values()) <= min(max(v) for v in steady.values())
    verdict = ("The runs' ranges of steady clips/s overlap, with the same CPU s per clip: the differences between the "
               "rows are the other jobs' load, not the data path." if overlap else
               "The runs' ranges of steady clips/s do not all overlap.")
    return (f"### Training from shards vs a list\n\nMachine: {machine_name()}, shared with other jobs (1-min load average at "
            f"the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}). Command: "
            "`python benchmarks/scale.py --parts shards --update-docs`.\n\n"
            f"`motionmae pretrain` (the Trainer), {'ViT-tiny 4x32' if quick else 'motionmae-sha ViT-S 16x112'}, fp32, one "
            f"intra-op thread, batch {batch}, {steps} steps (2 epochs), one DataLoader worker, from {n} H.264 videos of "
            f"320x240 (150 frames) given as an annotation list, as {info['shards']} local shards, and as a `pipe:cat` "
            f"stream of them (as `pipe:curl` from object storage); median of {rounds} runs each, taking turns. Steady "
            "clips/s: the batch over the median wall time of a step (data wait included), without each epoch's first "
            "step; that first step (the DataLoader worker starting, the shards' shuffle buffer filling, the first clips "
            "decoded) is the next column, median over epochs and runs; then the trainer's clips/s over the whole run "
            "(from the first epoch's worker start to the last step); CPU s per clip counts the whole command "
            "(start-up, trainer and worker).\n\n"
            + markdown_table(["data.train", "steady clips/s", "its range over the runs", "epoch's first step (s)",
                              "trainer's clips/s (whole run)", "CPU s per clip"], table) + f"\n\n{verdict}\n")


# ----------------------------------------------------------------------------------------------- compile


def compile_text(quick: bool) -> str:
    from step import build_case

    torch.set_num_threads(1)
    rows = []
    setting = "quick" if quick else "small"
    rounds = 2 if quick else 6
    for dtype in ("fp32", "bf16"):
        eager = build_case("motionmae-sha", setting, dtype, torch.device("cpu"))
        compiled = build_case("motionmae-sha-compiled", setting, dtype, torch.device("cpu"))
        t = time.process_time()
        compiled.step()  # compiles
        compile_s = time.process_time() - t
        eager.step()
        times = {"eager": [], "compiled": []}
        cases = [("eager", eager), ("compiled", compiled)]
        for r in range(rounds):
            for name, c in cases[r % 2:] + cases[: r % 2]:
                t = time.process_time()
                c.step()
                times[name].append(time.process_time() - t)
        e, c = median(times["eager"]), median(times["compiled"])
        rows.append([dtype, f"{e:.2f}", f"{c:.2f}", f"{e / c:.2f}x", f"{compile_s:.0f}"])
    return (f"### torch.compile on CPU\n\nMachine: {machine_name()}. Command: "
            "`python benchmarks/scale.py --parts compile --update-docs`.\n\n"
            f"One training step of motionmae-sha ({'tiny' if quick else 'ViT-S 16x112, batch 8'}; forward, backward, "
            "AdamW), eager against `torch.compile` with its default backend (inductor, which generates C++ on CPU and "
            "Triton on CUDA), process CPU time, one thread, median of "
            f"{rounds} steps each, taken in turn; the first compiled step (compilation) timed apart.\n\n"
            + markdown_table(["dtype", "eager step (CPU s)", "compiled step (CPU s)", "speed-up", "first step (compile, CPU s)"], rows)
            + "\n")


PARTS = ("fsdp", "shards", "compile")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of: {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--update-docs", action="store_true", help=f"write the sections into {DOCS.relative_to(ROOT)}")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # like the commands it runs (OMP_NUM_THREADS=1): one intra-op thread everywhere
    parts = [x for x in args.parts.split(",") if x]
    texts = {}
    with tempfile.TemporaryDirectory() as d:
        for part in parts:
            tmp = Path(d) / part
            tmp.mkdir()
            t0 = time.time()
            texts[part] = {"fsdp": lambda: fsdp_text(tmp, args.quick), "shards": lambda: shards_text(tmp, args.quick),
                           "compile": lambda: compile_text(args.quick)}[part]()
            print(texts[part], flush=True)
            print(f"[{part}: {time.time() - t0:.0f}s]", file=sys.stderr, flush=True)
    if args.update_docs:
        for part, text in texts.items():
            replace_section(DOCS, *MARKERS[part], text, title="Benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
