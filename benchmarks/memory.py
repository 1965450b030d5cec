"""Per-GPU training memory, DDP vs FSDP, from the model's sizes: a calculator, checked against measured peaks on CPU.

What one rank holds during a pretraining step (AdamW; bytes per parameter P, activations per clip):
- weights: fp32 masters, 4P (FSDP: 4P / W, plus the gathered weights of the blocks in flight: two blocks and the
  root's non-block parameters, in bf16 with mixed precision);
- gradients: 4P (FSDP: 4P / W, plus one unsharded block's); DDP adds its gradient buckets, another 4P (torch's
  default `gradient_as_bucket_view=False`, which motionmae keeps);
- AdamW states: exp_avg and exp_avg_sq, 8P (FSDP: 8P / W);
- with bf16 autocast under DDP, the bf16 copies of the weights that backward needs, 2P;
- activations saved for backward, per block and token (width D, MLP width H): 4 (8D + 2H) bytes in fp32;
  (4 + 2 + 6 + 2 + 4 + 2) D + 4H bytes under bf16 autocast (LayerNorm inputs stay fp32); attention saves
  h x T x T probabilities on paths without fused attention (CPU bf16) and only its output with flash / fused
  SDPA (GPUs, CPU fp32). Activation checkpointing keeps each block's input (4D bytes per token) plus one block's
  activations while it is recomputed. Encoder blocks see the visible tokens, decoder blocks the visible plus the
  decoded ones; the clip, targets and predictions are counted too.
Not counted: the CUDA context and caching-allocator slack (typically 0.5-2 GB per GPU), the data loader.

    python benchmarks/memory.py                  # the table for ViT-S..ViT-g at 16x224 (giant: 16x224 /14)
    python benchmarks/memory.py --measure        # ... and the check: 2 gloo ranks on CPU, peak RSS per rank
    python benchmarks/memory.py --update-docs    # write both into docs/BENCHMARKS.md
    python benchmarks/memory.py --trace 'ViT-S 16x112' fsdp  # RSS and malloc's counts through one check's steps

The check fixes glibc's mmap threshold in its ranks, so that their RSS follows the bytes in use (see `child`):
with glibc's dynamic default FSDP's RSS measured 1.5-2x the calculation from memory malloc had freed but kept.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_name, markdown_table, replace_section  # noqa: E402

from motionmae.config import PretrainConfig, load_config  # noqa: E402
from motionmae.objective.masking import num_decoded, num_visible  # noqa: E402
from motionmae.objective.targets import build_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- memory.py:begin -->", "<!-- memory.py:end -->"
GB = 1e9
SIZES = ("small", "base", "large", "huge", "giant")
GPUS = 8  # FSDP's world size in the table
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


# ----------------------------------------------------------------------------------------------
# the calculator


def param_counts(cfg: PretrainConfig) -> Dict[str, int]:
    """Parameters of the pretraining model, built on the meta device (no memory): total, in blocks, the largest
    block."""
    from motionmae.models.pretrain import PretrainModel
    from motionmae.models.vit import Block

    with torch.device("meta"):
        model = PretrainModel(cfg)
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, Block)]
    return {"total": sum(p.numel() for p in model.parameters()), "blocks": sum(blocks), "block": max(blocks)}


def block_activation_bytes(tokens: int, dim: int, hidden: int, heads: int, bf16: bool, fused_attention: bool) -> int:
    """Bytes one pre-norm block saves for backward, per clip (see the module docstring)."""
    per_token = (20 * dim + 4 * hidden) if bf16 else 4 * (8 * dim + 2 * hidden)
    attention = 0 if fused_attention else heads * tokens * tokens * (2 if bf16 else 4)
    return tokens * per_token + attention


def activation_bytes(cfg: PretrainConfig, batch: int, bf16: bool, checkpointing: bool, fused_attention: bool = True) -> int:
    """Activations of one step's forward, kept for backward, for `batch` clips."""
    m = cfg.model
    d, depth, heads = m.dims()
    grid = m.grid()
    n = grid[0] * grid[1] * grid[2]
    n_vis = num_visible(grid, cfg.mask.ratio)
    n_dec = num_decoded(grid, cfg.mask.ratio, cfg.mask.decoder_ratio)
    dd, ddepth, dheads = m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads
    trunks = len(cfg.objective.targets) if m.decoder == "ind" else 1
    enc = (n_vis, d, int(d * m.mlp_ratio), heads, depth)
    dec = (n_vis + n_dec, dd, int(dd * m.decoder_mlp_ratio), dheads, ddepth * trunks)
    total = 0
    for tokens, width, hidden, h, count in (enc, dec):
        one = block_activation_bytes(tokens, width, hidden, h, bf16, fused_attention)
        total += (tokens * width * 4 * count + one) if checkpointing else one * count
    clip = 3 * (m.num_frames + cfg.objective.extra_frames) * m.img_size**2 * 4
    patch_dim = m.tubelet_size * m.patch_size**2 * m.in_chans
    heads_out = sum(t.dim for t in build_targets(cfg.objective, m)) * n_dec * 4 * 3  # prediction, target, loss terms
    return batch * (total + clip + n_vis * patch_dim * 4 + heads_out)


def estimate(cfg: PretrainConfig, batch: int, strategy: str, world: int, bf16: bool, checkpointing: bool,
             fused_attention: bool = True) -> Dict[str, float]:
    """Bytes per rank by part, and "total"."""
    p = param_counts(cfg)
    P, shard = p["total"], (world if strategy == "fsdp" else 1)
    out = {"weights": 4 * P / shard, "grads": 4 * P / shard, "adamw": 8 * P / shard}
    if strategy == "ddp":
        out["ddp buckets"] = 4 * P
        if bf16:
            out["bf16 weight copies"] = 2 * P
    else:  # two blocks gathered (the one running, the one prefetched), the root's own parameters, one block's grads
        wbytes = 2 if bf16 else 4
        out["gathered"] = wbytes * (2 * p["block"] + (P - p["blocks"])) + 4 * p["block"]
    out["activations"] = activation_bytes(cfg, batch, bf16, checkpointing, fused_attention)
    out["total"] = sum(out.values())
    return out


def giant_cfg(size: str, frames: int = 16, px: int = 224) -> PretrainConfig:
    return load_config(f"motionmae-sha-{size}", [f"model.num_frames={frames}", f"model.img_size={px}"])


def table(batches=(8, 32)) -> str:
    rows = []
    for size in SIZES:
        cfg = giant_cfg(size)
        P = param_counts(cfg)["total"]
        for batch in batches:
            line = [size, f"{P / 1e6:.0f} M", batch]
            for strategy, world in (("ddp", GPUS), ("fsdp", GPUS)):
                for ckpt in (False, True):
                    line.append(f"{estimate(cfg, batch, strategy, world, True, ckpt)['total'] / GB:.1f}")
            rows.append(line)
    head = ["size", "params", "clips per GPU", "DDP", "DDP + ckpt", f"FSDP x{GPUS}", f"FSDP x{GPUS} + ckpt"]
    return markdown_table(head, rows)


def parts_table(size: str = "giant", batch: int = 8) -> str:
    cfg = giant_cfg(size)
    cols = [("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)]
    ests = [estimate(cfg, batch, s, GPUS, True, c) for s, c in cols]
    keys = [k for k in ("weights", "grads", "adamw", "ddp buckets", "bf16 weight copies", "gathered", "activations", "total")
            if any(k in e for e in ests)]
    rows = [[k] + [f"{e.get(k, 0) / GB:.2f}" for e in ests] for k in keys]
    head = ["GB per GPU", "DDP", "DDP + ckpt", f"FSDP x{GPUS}", f"FSDP x{GPUS} + ckpt"]
    return markdown_table(head, rows)


# ----------------------------------------------------------------------------------------------
# the check: real steps on CPU, 2 gloo ranks


MEASURE = {  # name -> overrides of a small pretraining config that runs in seconds on CPU
    "ViT-S 16x112": ["model.size=small", "model.num_frames=16", "model.img_size=112"],
    "ViT-B 8x112": ["model.size=base", "model.num_frames=8", "model.img_size=112"],
}


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _malloc_bytes(libc) -> tuple:
    """glibc's (bytes in use, of which mmapped, freed but kept in its heaps), over all arenas (glibc >= 2.33)."""
    libc.mallinfo2.restype = _MallInfo2
    mi = libc.mallinfo2()
    return mi.uordblks + mi.hblkhd, mi.hblkhd, mi.fordblks


def child(spec: dict) -> None:
    """One rank: build, wrap, three AdamW steps; print its peak RSS over the RSS before the model was built.

    With `spec["fixed_mmap"]` glibc's mmap threshold is fixed at 128 KiB (M_MMAP_THRESHOLD, its initial value), so
    every tensor of 128 KiB or more is its own mmap, given back to the kernel when freed, and RSS follows the bytes
    in use. Left at glibc's default the threshold is dynamic: freeing the unsharded model while FSDP shards it
    raises it to the largest weight freed (up to 32 MiB), after which FSDP's per-block buffers (gathered weights,
    unsharded gradients, freed and allocated again for every block of every step) come from the heap, whose freed
    chunks stay resident: RSS then grows from step to step while the bytes in use do not (`--trace`: ViT-S has 207 MiB
    in use after every step either way, and 300, 360, 420 MiB freed but kept after steps 1-3 with the default)."""
    import torch.distributed as dist

    from motionmae.engine.optim import build_optimizer
    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import make_mask
    from motionmae.runtime.distributed import init_distributed
    from motionmae.runtime.parallel import Parallel

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    cfg = load_config("motionmae-sha", spec["overrides"] + [f"model.grad_checkpointing={str(spec['ckpt']).lower()}"])
    m = cfg.model
    b = spec["batch"]
    x = torch.randn(b, 3, m.num_frames, m.img_size, m.img_size)
    mask = make_mask(cfg.mask.kind, b, m.grid(), cfg.mask.ratio, torch.Generator().manual_seed(0))
    libc = ctypes.CDLL("libc.so.6")
    if spec["fixed_mmap"]:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # fixing it also stops glibc adjusting it (and the trim threshold)
    libc.malloc_trim(0)
    base, base_malloc, trace = _rss("VmRSS"), _malloc_bytes(libc), []

    def point(tag: str) -> None:  # with spec["trace"]: RSS, its peak and glibc's counts, MiB over the base
        if spec.get("trace"):
            trace.append([tag, (_rss("VmRSS") - base) >> 20, (_rss("VmHWM") - base) >> 20]
                         + [(v - v0) >> 20 for v, v0 in zip(_malloc_bytes(libc), base_malloc)])

    torch.manual_seed(0)
    model = PretrainModel(cfg)
    net = Parallel(spec["strategy"], info).wrap(model)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    libc.malloc_trim(0)  # the full model FSDP built before sharding it is gone
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS starts again from here
    point("wrapped")
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        loss = net(x, mask)["loss"]
        point(f"step {step + 1} forward")
        loss.backward()
        point(f"step {step + 1} backward")
        opt.step()
        point(f"step {step + 1} optimizer")
    peak = _rss("VmHWM")
    out = [None] * info.world_size
    dist.all_gather_object(out, peak - base)
    if info.rank == 0:
        print("RESULT " + json.dumps(out))
        for row in trace:
            print("TRACE " + json.dumps(row))
    dist.destroy_process_group()
    # the measurement is out: skip the teardown, where freeing DDP's reducer can deadlock with a gloo worker thread
    # that needs the GIL to free a finished all-gather (seen with torch 2.13: one rank hung in ~ProcessGroupGloo)
    sys.stdout.flush()
    os._exit(0)


def measure(name: str, strategy: str, ckpt: bool, batch: int, fixed_mmap: bool = True, trace: bool = False):
    """Mean over the 2 ranks of the peak RSS growth (bytes); `fixed_mmap`: see `child`. With `trace` also rank 0's
    table of RSS and glibc's counts through the steps (markdown)."""
    spec = {"overrides": MEASURE[name], "strategy": strategy, "ckpt": ckpt, "batch": batch, "fixed_mmap": fixed_mmap,
            "trace": trace}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__).resolve()),
           "--child", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {name}/{strategy} failed:\n{p.stderr[-3000:]}")
    peaks = json.loads(lines[-1][len("RESULT "):])
    if not trace:
        return sum(peaks) / len(peaks)
    rows = [json.loads(ln[len("TRACE "):]) for ln in p.stdout.splitlines() if ln.startswith("TRACE ")]
    head = ["rank 0, MiB over the base", "RSS", "peak RSS", "malloc: in use", "of which mmapped", "freed but kept"]
    return sum(peaks) / len(peaks), markdown_table(head, rows)


def check_table(batch: int = 4) -> str:
    rows = []
    for name, over in MEASURE.items():
        cfg = load_config("motionmae-sha", over)
        for strategy in ("ddp", "fsdp"):
            for ckpt in (False, True):
                est = estimate(cfg, batch, strategy, 2, False, ckpt)
                got = measure(name, strategy, ckpt, batch)
                dyn = measure(name, strategy, ckpt, batch, fixed_mmap=False)
                rows.append([name, batch, strategy.upper() + (" + ckpt" if ckpt else ""), f"{est['total'] / 2**20:.0f}",
                             f"{got / 2**20:.0f}", f"{got / est['total']:.2f}", f"{dyn / 2**20:.0f}",
                             f"{dyn / est['total']:.2f}"])
                print(rows[-1], file=sys.stderr)
    head = ["model", "clips per rank", "2 ranks", "calculated (MiB)", "measured peak RSS growth (MiB)",
            "measured / calculated", "glibc's dynamic mmap threshold (MiB)", "its ratio"]
    return markdown_table(head, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", action="store_true", help="also run the CPU check (2 gloo ranks, a few minutes)")
    p.add_argument("--update-docs", action="store_true", help=f"write the tables into {DOCS.relative_to(ROOT)}")
    p.add_argument("--trace", nargs=2, metavar=("MODEL", "STRATEGY"), help="RSS and malloc's counts through the "
                   "steps of one check, e.g. --trace 'ViT-S 16x112' fsdp, with glibc's default and fixed mmap threshold")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.trace:
        for fixed in (False, True):
            print(f"{'fixed' if fixed else 'dynamic (glibc default)'} mmap threshold:")
            print(measure(args.trace[0], args.trace[1], False, 4, fixed_mmap=fixed, trace=True)[1])
        return 0
    t0 = time.time()
    report = [
        f"Command: `python benchmarks/memory.py{' --measure' if args.measure else ''}`, {time.strftime('%Y-%m-%d')}. "
        f"**Calculated, not measured on GPUs**: GB (1e9 bytes) per GPU for one pretraining step of motionmae-sha (decoder "
        f"sha, mask 0.9) at 16x224 (ViT-g: patch 14, 2048 tokens), bf16 autocast (FSDP: bf16 MixedPrecisionPolicy), "
        f"AdamW, fused attention; FSDP over {GPUS} GPUs; without the CUDA context and allocator slack.",
        table(),
        "Where it goes for ViT-g/14, 8 clips per GPU:",
        parts_table(),
    ]
    if args.measure:
        report += [
            f"The check (machine: {machine_name()}): the same calculation for fp32 on CPU (where SDPA is fused in "
            "fp32), against real steps: 2 gloo ranks, each building the model, wrapping it, and taking 3 AdamW steps "
            "on random clips; the peak RSS (VmHWM, reset after wrapping) over the RSS before the model was built, mean "
            "of the ranks. glibc's mmap threshold is fixed at 128 KiB in these processes (`mallopt(M_MMAP_THRESHOLD)`), "
            "so that RSS follows the bytes in use, as `torch.cuda.max_memory_allocated` does on a GPU. The last two "
            "columns are the same steps with glibc's default, a dynamic threshold: FSDP frees the unsharded model "
            "while sharding it, which raises the threshold to the largest weight freed (up to 32 MiB); from then on "
            "the per-block buffers FSDP allocates and frees for every block of every step (gathered weights, "
            "unsharded gradients) come from malloc's heap, whose freed chunks stay resident, and RSS grows from step "
            "to step while the bytes in use stay the same. `python benchmarks/memory.py --trace 'ViT-S 16x112' fsdp` "
            "shows it on rank 0: after each step malloc has the same 207 MiB in use (over the base) with either threshold, "
            "but with the dynamic one none of it is mmapped from the wrap on, and 300, 360, 420 MiB are freed but kept "
            "after steps 1-3 (fixed threshold: under 1 MiB). That retention is the CPU "
            "allocator's (on a GPU the caching allocator's slack, not counted above); it was the whole of the 1.5-2x "
            "by which FSDP measured over the calculation before the threshold was fixed. The calculation is an upper "
            "bound in one respect: it adds all gradients to all activations, while backward frees activations as it "
            "makes gradients, and the RSS includes ~85 MiB that every rank's first step adds whatever the strategy "
            "(torch's thread pools and kernel caches, library pages).",
            check_table(),
        ]
    text = "\n\n".join(report)
    print(text)
    print(f"[{time.time() - t0:.0f}s]", file=sys.stderr)
    if args.update_docs:
        replace_section(DOCS, BEGIN, END, text, title="Benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
