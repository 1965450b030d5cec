"""Forward + backward time and peak memory of one pretraining step, per preset and precision.

    python benchmarks/model_step.py                      # small, 16x112x112, batch 4, fp32 + bf16
    python benchmarks/model_step.py --size base --img 224 --device cuda

Times are medians over `--repeats` steps, the configurations interleaved in one process (so machine
load drifts hit them all alike). Peak memory: on CUDA `max_memory_allocated`; on CPU the growth of the
peak RSS over the model + batch, measured in a fresh subprocess per configuration (RSS peaks never go
down, so one process cannot measure several). `--profile PRESET` prints the torch.profiler table instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from motionmae.config import load_config
from motionmae.models.pretrain import PretrainModel
from motionmae.objective.masking import make_mask

PRESETS = ("videomae", "motionmae-sha", "motionmae-ind")


def setup(args, preset):
    cfg = load_config(f"{preset}-{args.size}", [f"model.num_frames={args.frames}", f"model.img_size={args.img}"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = PretrainModel(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(args.batch, 3, args.frames, args.img, args.img, generator=g).to(device)
    mask = make_mask(cfg.mask.kind, args.batch, cfg.model.grid(), cfg.mask.ratio, g).to(device)
    return model, clip, mask


def step(model, clip, mask, amp: str, device):
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    with ctx:
        loss = model(clip, mask)["loss"]
    loss.backward()
    model.zero_grad(set_to_none=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(args):
    device = torch.device(args.device)
    runs = {p: setup(args, p) for p in args.presets}
    times = {(p, a): [] for p in args.presets for a in args.amp}
    for r in range(args.warmup + args.repeats):
        for (p, a), ts in times.items():
            sync(device)
            t0 = time.perf_counter()
            step(*runs[p], a, device)
            sync(device)
            if r >= args.warmup:
                ts.append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def step_flops(args, preset, amp) -> float:
    """GFLOP of one forward + backward (matmuls, convolutions, attention), independent of machine load."""
    from torch.utils.flop_counter import FlopCounterMode

    run = setup(args, preset)
    with FlopCounterMode(display=False) as counter:
        step(*run, amp, torch.device(args.device))
    return counter.get_total_flops() / 1e9


def peak_memory(args, preset, amp) -> float:
    """MiB above the model + batch, in this process (call once per process on CPU)."""
    device = torch.device(args.device)
    run = setup(args, preset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step(*run, amp, device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = peak_rss_kib()
    for _ in range(2):
        step(*run, amp, device)
    return (peak_rss_kib() - base) / 1024


def peak_rss_kib() -> int:
    # VmHWM belongs to this process's memory map; ru_maxrss survives fork+exec, so a child of a big
    # parent would report the parent's peak
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def profile(args, preset):
    device = torch.device(args.device)
    run = setup(args, preset)
    step(*run, args.amp[0], device)
    with torch.profiler.profile() as prof:
        step(*run, args.amp[0], device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--img", type=int, default=112)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--amp", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--profile", metavar="PRESET")
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(peak_memory(args, *args._memory)))
        return
    if args.profile:
        profile(args, args.profile)
        return

    print(f"{args.size}, {args.frames}x{args.img}x{args.img}, batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.repeats} (after {args.warmup} warm-up)")
    med = time_all(args)
    mem = {}
    if not args.no_memory:
        passthrough = [a for a in sys.argv[1:] if a != "--no-memory"] if argv is None else list(argv)
        for key in med:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--_memory", *key],
                                 capture_output=True, text=True, check=True)
            mem[key] = float(out.stdout.strip().splitlines()[-1])
    flops = {p: step_flops(args, p, "fp32") for p in args.presets}
    print(f"{'preset':<16}{'amp':<6}{'step ms':>10}{'vs videomae':>13}{'GFLOP':>9}{'vs videomae':>13}{'peak MiB':>10}")
    for (p, a), t in med.items():
        ref = med.get(("videomae", a))
        ratio = f"{t / ref:.3f}x" if ref else "-"
        fratio = f"{flops[p] / flops['videomae']:.3f}x" if "videomae" in flops else "-"
        m = f"{mem[(p, a)]:.0f}" if (p, a) in mem else "-"
        print(f"{p:<16}{a:<6}{t * 1000:>10.1f}{ratio:>13}{flops[p]:>9.1f}{fratio:>13}{m:>10}")


if __name__ == "__main__":
    main()
