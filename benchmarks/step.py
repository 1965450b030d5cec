"""Pretraining step throughput: ours vs transformers' VideoMAEForPreTraining, and videomae vs motionmae-sha/-ind.

One timed step = zero_grad + forward (targets and loss included) + backward + AdamW step, on a fixed random
clip batch and a fixed mask (masks come from the data loader in training; both models get the same one).
All models of one setting live in one process and are stepped in turn, A/B/C/D, rotating who goes first
each round; the reported time is the median over rounds. Peak memory is measured separately, one fresh
subprocess per (setting, model, dtype): ru_maxrss after a few steps minus ru_maxrss before the model was
built (so the imports are not counted).

Model FLOPs are counted analytically (benchmarks/common.py: matmuls, convs and attention; backward = 2x
forward) and divided by this machine's matmul peak, measured in the same process at the same dtype.

    python benchmarks/step.py                       # full run (~25 min on 2 CPU cores), prints tables
    python benchmarks/step.py --update-docs         # ... and writes them into docs/BENCHMARKS.md
    python benchmarks/step.py --quick               # tiny sizes, seconds (CI)
    python benchmarks/step.py --profile small       # torch.profiler table of our sha step
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    machine_name,
    markdown_table,
    matmul_peak,
    median,
    replace_section,
    set_clock,
    timed,
)

from motionmae.config import PretrainConfig, load_config  # noqa: E402
from motionmae.models.flops import mae_step_flops, pretrain_shape  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- step.py:begin -->", "<!-- step.py:end -->"

# name -> (size preset, frames, pixels, batch, measured rounds, warm-up rounds)
SETTINGS = {
    "small": dict(size="small", frames=16, px=112, batch=8, repeats=7, warmup=2),
    "base": dict(size="base", frames=16, px=224, batch=2, repeats=6, warmup=1),
    "quick": dict(size="tiny", frames=4, px=32, batch=2, repeats=2, warmup=1, embed_dim=32, depth=1, num_heads=2, decoder=(32, 1, 2)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = ("hf-videomae", "videomae", "motionmae-sha", "motionmae-ind", "videomae-dual", "motionmae-sha-dual")
DUAL = "-dual"  # suffix: dual masking at VideoMAE v2's decoder ratio (its objective, less decoder work than the others)
DECODER_RATIO = 0.5
EXTRA_CASES = ("hf-videomae-eager",  # transformers with its eager attention (its fastest choice for bf16 on CPU)
               "motionmae-sha-compiled")  # ours under torch.compile (default backend: inductor)
COMPILED = "-compiled"
MASK_RATIO = 0.9
H100_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s of an H100 SXM (NVIDIA datasheet)
ASSUMED_MFU = (0.25, 0.40)


def build_cfg(kind: str, setting: str) -> PretrainConfig:
    """Our config for one case; transformers' model is built from the videomae config (same sizes)."""
    s = SETTINGS[setting]
    over = [f"model.size={s['size']}", f"model.num_frames={s['frames']}", f"model.img_size={s['px']}", f"mask.ratio={MASK_RATIO}"]
    for k in ("embed_dim", "depth", "num_heads"):
        if k in s:
            over.append(f"model.{k}={s[k]}")
    if "decoder" in s:
        d, n, h = s["decoder"]
        over += [f"model.decoder_embed_dim={d}", f"model.decoder_depth={n}", f"model.decoder_num_heads={h}"]
    if kind.endswith(DUAL):
        kind = kind[: -len(DUAL)]
        over.append(f"mask.decoder_ratio={DECODER_RATIO}")
    preset = "videomae" if kind.startswith("hf-") else kind
    return load_config(preset, over)


def step_flops(cfg: PretrainConfig, mask: torch.Tensor, batch: int, transformers: bool = False,
               dec_mask: Optional[torch.Tensor] = None) -> int:
    """FLOPs of one step (models/flops.py), for the masks the case times (their counts are the config's)."""
    shape = pretrain_shape(cfg, transformers)
    assert shape.num_visible == int((~mask[0]).sum()), "the timed mask keeps another number of tokens than the config"
    if dec_mask is not None:
        assert shape.num_decoded == int((mask & ~dec_mask)[0].sum()), "the timed decoder mask keeps another count"
    return mae_step_flops(shape, batch)["total"]


# ----------------------------------------------------------------------------------------------
# the two implementations, behind one interface: build -> (model, one training step)


@dataclass
class Case:
    name: str
    cfg: PretrainConfig
    model: torch.nn.Module
    step: Callable[[], float]  # one optimiser step; returns the loss
    mask: torch.Tensor
    transformers: bool = False  # FLOP accounting: transformers' implementation (see models/flops.pretrain_shape)
    dec_mask: Optional[torch.Tensor] = None  # dual masking: the masked tokens the decoder drops


def _autocast(dtype: str, device: torch.device):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model):
    from motionmae.engine.optim import build_optimizer

    return build_optimizer(model, lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))


def make_mask(cfg: PretrainConfig, batch: int, seed: int = 0) -> torch.Tensor:
    return make_masks(cfg, batch, seed)[0]


def make_masks(cfg: PretrainConfig, batch: int, seed: int = 0):
    """The encoder's mask and, with dual masking, the decoder's (else None), drawn as the engine draws them."""
    from motionmae.objective.masking import decoder_mask
    from motionmae.objective.masking import make_mask as _make_mask

    g = torch.Generator().manual_seed(seed)
    mask = _make_mask(cfg.mask.kind, batch, cfg.model.grid(), cfg.mask.ratio, g)
    return mask, (decoder_mask(mask, cfg.model.grid(), cfg.mask.decoder_ratio, g) if cfg.mask.decoder_ratio else None)


def build_hf(cfg: PretrainConfig, batch: int, dtype: str, device: torch.device, seed: int = 0, attn: str = "sdpa") -> Case:
    import transformers

    from motionmae.interop.hf import hf_config_from_cfg

    # what transformers can express (the fixed 1D table, eps 1e-5 on the decoder norm): no effect on speed
    extra = {"head_norm_eps": 1e-5} if hasattr(cfg.model, "head_norm_eps") else {}
    cfg = replace(cfg, model=replace(cfg.model, pos_embed="sincos1d", pooling="first", **extra))
    hf_cfg = transformers.VideoMAEConfig(**hf_config_from_cfg(cfg, "pretrain"))
    torch.manual_seed(seed)
    model = transformers.VideoMAEForPreTraining._from_config(hf_cfg, attn_implementation=attn).to(device).train()
    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, m.num_frames, m.in_chans, m.img_size, m.img_size, generator=g).to(device)  # (B, T, C, H, W)
    mask = make_mask(cfg, batch, seed).to(device)
    opt = _optimizer(model)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype, device):
            loss = model(pixel_values=x, bool_masked_pos=mask).loss
        loss.backward()
        opt.step()
        return loss.item()

    name = "transformers VideoMAE" + (f" ({attn} attention)" if attn != "sdpa" else "")
    return Case(name, cfg, model, step, mask, transformers=True)


def build_ours(cfg: PretrainConfig, batch: int, dtype: str, device: torch.device, seed: int = 0, compiled: bool = False) -> Case:
    from motionmae.models.pretrain import PretrainModel

    torch.manual_seed(seed)
    model = PretrainModel(cfg).to(device).train()
    net = torch.compile(model) if compiled else model
    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, m.in_chans, m.num_frames, m.img_size, m.img_size, generator=g).to(device)  # (B, C, T, H, W)
    mask, dec_mask = make_masks(cfg, batch, seed)
    mask, dec_mask = mask.to(device), (dec_mask.to(device) if dec_mask is not None else None)
    opt = _optimizer(model)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype, device):
            loss = net(x, mask, dec_mask)["loss"]
        loss.backward()
        opt.step()
        return loss.item()

    return Case(f"ours {cfg_label(cfg)}{', torch.compile' if compiled else ''}", cfg, model, step, mask, dec_mask=dec_mask)


def cfg_label(cfg: PretrainConfig) -> str:
    name = "videomae" if cfg.model.decoder == "none" else f"motionmae-{cfg.model.decoder}"
    if cfg.mask.decoder_ratio:
        name += f", dual masking {cfg.mask.decoder_ratio:g} (VideoMAE v2's objective)"
    return name


def build_case(kind: str, setting: str, dtype: str, device: torch.device) -> Case:
    compiled = kind.endswith(COMPILED)
    cfg = build_cfg(kind[: -len(COMPILED)] if compiled else kind, setting)
    batch = SETTINGS[setting]["batch"]
    if kind == "hf-videomae-eager":
        return build_hf(cfg, batch, dtype, device, attn="eager")
    if kind == "hf-videomae":
        return build_hf(cfg, batch, dtype, device)
    return build_ours(cfg, batch, dtype, device, compiled=compiled)


# ----------------------------------------------------------------------------------------------
# measurements


def time_cases(cases: List[Case], repeats: int, warmup: int, probe: Optional[Callable[[], float]] = None):
    """Step every case in turn for warmup + repeats rounds, rotating the order.

    Returns per-case step times (s) and, if `probe` is given (a matmul returning GFLOP/s), one probe per
    round: the machine is shared, so its throughput during the run is measured alongside the steps."""
    times: Dict[str, List[float]] = {c.name: [] for c in cases}
    probes: List[float] = []
    for r in range(warmup + repeats):
        k = r % len(cases)
        for c in cases[k:] + cases[:k]:
            t = timed(c.step)
            if r >= warmup:
                times[c.name].append(t)
        if probe is not None and r >= warmup:
            probes.append(probe())
    return times, probes


def _peak_rss_mib() -> float:
    """Peak RSS of this process so far. Linux: VmHWM, which starts afresh at exec (ru_maxrss does not: a child
    of a big benchmark process would inherit the parent's peak); elsewhere ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def peak_memory_child(kind: str, setting: str, dtype: str, device: str) -> dict:
    """Run in a fresh process: build one case, take a few steps, report the peak RSS and its growth (MiB)."""
    before = _peak_rss_mib()  # torch and the imports
    dev = torch.device(device)
    case = build_case(kind, setting, dtype, dev)
    for _ in range(3):
        case.step()
    out = {"rss_peak_mib": _peak_rss_mib()}
    out["rss_growth_mib"] = out["rss_peak_mib"] - before
    if dev.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def peak_memory(kind: str, setting: str, dtype: str, device: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", json.dumps([kind, setting, dtype, device])]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {kind}/{setting}/{dtype}:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_setting(setting: str, dtype: str, device: torch.device, memory: bool, matmul_n: int = 2048, cases=CASES) -> List[dict]:
    s = SETTINGS[setting]
    built = [build_case(k, setting, dtype, device) for k in cases]
    probe = lambda: matmul_peak(DTYPES[dtype], n=matmul_n, repeats=2, device=str(device))  # noqa: E731
    times, probes = time_cases(built, s["repeats"], s["warmup"], probe)
    rows = []
    for kind, c in zip(cases, built):
        t = median(times[c.name])
        flops = step_flops(c.cfg, c.mask, s["batch"], c.transformers, c.dec_mask)
        row = dict(
            setting=setting, dtype=dtype, case=kind, name=c.name, batch=s["batch"], step_s=t, clips_per_s=s["batch"] / t,
            times=times[c.name], gflop_per_step=flops / 1e9, achieved_gflops=flops / t / 1e9, matmul_probes=probes,
        )
        if memory and kind in CASES:
            row.update(peak_memory(kind, setting, dtype, str(device)))
        rows.append(row)
    del built
    return rows


def profile(setting: str, dtype: str, kind: str = "motionmae-sha", rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile as _profile

    case = build_case(kind, setting, dtype, torch.device("cpu"))
    for _ in range(2):
        case.step()
    with _profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            case.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ----------------------------------------------------------------------------------------------
# report


def tables(rows: List[dict], peaks: Dict[str, float], memory: bool) -> str:
    out = []
    by = {(r["setting"], r["dtype"], r["case"]): r for r in rows}
    head = ["setting", "dtype", "model", "batch", "step (s)", "clips/s", "vs transformers", "GFLOP/step", "GFLOP/s",
            "of matmul peak", "of concurrent matmul"]
    if memory:
        head.append("memory (MiB)")
    body = []
    for r in rows:
        hf = by.get((r["setting"], r["dtype"], "hf-videomae"))
        line = [
            r["setting"], r["dtype"], r["name"], r["batch"], r["step_s"], r["clips_per_s"],
            f"{r['clips_per_s'] / hf['clips_per_s']:.2f}x" if hf else "-",
            r["gflop_per_step"], r["achieved_gflops"], f"{100 * r['achieved_gflops'] / peaks[r['dtype']]:.0f}%",
            f"{100 * r['achieved_gflops'] / median(r['matmul_probes']):.0f}%",
        ]
        if memory:
            line.append(r.get("rss_growth_mib", float("nan")))
        body.append(line)
    out.append(markdown_table(head, body))
    # the goals, as ratios
    goal = []
    for setting, dtype in dict.fromkeys((r["setting"], r["dtype"]) for r in rows):
        g = lambda k: by.get((setting, dtype, k))  # noqa: E731
        hf, vm, sha, ind = g("hf-videomae"), g("videomae"), g("motionmae-sha"), g("motionmae-ind")
        if not (hf and vm and sha and ind):
            continue
        ratio = lambda r: f"{r['clips_per_s'] / hf['clips_per_s']:.2f}x" if r else "-"  # noqa: E731
        goal.append([
            setting, dtype, ratio(sha), ratio(vm),
            f"{100 * (sha['step_s'] / vm['step_s'] - 1):+.0f}%", f"{100 * (ind['step_s'] / vm['step_s'] - 1):+.0f}%",
            ratio(g("motionmae-sha" + DUAL)), ratio(g("videomae" + DUAL)),
        ])
    if goal:
        out.append(
            "Goals: sha / transformers >= 1.0x (aim 1.3x); sha step time over videomae <= +5%; ind <= +45%; with dual "
            f"masking (mask.decoder_ratio={DECODER_RATIO}, VideoMAE v2's objective: less decoder work than transformers' "
            "VideoMAE, so not the same objective) sha / transformers >= 1.3x in fp32.\n\n"
            + markdown_table(["setting", "dtype", "sha / transformers", "videomae / transformers", "sha over videomae",
                              "ind over videomae", "sha dual / transformers", "videomae dual / transformers"], goal)
        )
    out.append(
        "Matmul peak: the best (n x n) @ (n x n) GFLOP/s measured in the same run, before and between rounds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
        + ". 'of concurrent matmul' divides by the median matmul probe taken between the rounds of the same setting "
        "instead (the machine is shared; this corrects for load from other processes during the timing)."
    )
    return "\n\n".join(out)


def h100_estimate() -> str:
    """ViT-B 16x224 bf16 step time on one H100 from the FLOP count at assumed MFUs: an estimate, not a measurement."""
    lines = []
    for kind in ("videomae", "motionmae-sha", "motionmae-ind", "videomae" + DUAL, "motionmae-sha" + DUAL):
        c = build_cfg(kind, "base")
        mask, dec_mask = make_masks(c, 1)
        per_clip = step_flops(c, mask, 1, dec_mask=dec_mask)
        line = [cfg_label(c), f"{per_clip / 1e9:.0f}"]
        for mfu in ASSUMED_MFU:
            clips = mfu * H100_BF16_PEAK / per_clip
            line += [f"{clips:.0f}", f"{64 / clips * 1000:.0f}"]
        lines.append(line)
    head = ["model", "GFLOP per clip (fwd+bwd)"]
    for mfu in ASSUMED_MFU:
        head += [f"clips/s at {mfu:.0%} MFU", f"ms per batch of 64 at {mfu:.0%}"]
    return (
        f"**Estimate, not a measurement** (no GPU was available): ViT-B 16x224, mask 0.9, bf16, one H100 SXM "
        f"({H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16), at an assumed {' or '.join(f'{m:.0%}' for m in ASSUMED_MFU)} "
        "model-FLOP utilisation; FLOPs counted as above (the encoder sees 160 tokens, the decoder 1568, or 864 with dual "
        f"masking at {DECODER_RATIO}). To run at "
        "these rates the data loader must deliver as many decoded clips per second (see the loader section).\n\n"
        + markdown_table(head, lines)
    )


K400_CLIPS = 240_436  # Kinetics-400 training videos (one clip per video and epoch)


def sizes_estimate(mfu: float = 0.40) -> str:
    """GPU cost per preset size from the FLOP model (models/flops.py): an estimate, not a measurement."""
    from motionmae.models.flops import pretrain_step_flops

    lines = []
    for size in ("small", "base", "large", "huge", "giant"):
        for ratio in (0.0, DECODER_RATIO):
            cfg = load_config(f"motionmae-sha-{size}", [f"mask.decoder_ratio={ratio}"])
            per_clip = pretrain_step_flops(cfg, 1)["total"]
            clips = mfu * H100_BF16_PEAK / per_clip
            m = cfg.model
            lines.append([size, f"{m.num_frames}x{m.img_size} /{m.patch_size}", f"{ratio:g}", f"{per_clip / 1e9:.0f}",
                          f"{clips:.0f}", f"{100 * K400_CLIPS / clips / 3600:.1f}"])
    head = ["size (motionmae-sha)", "clip", "mask.decoder_ratio", "GFLOP per clip (fwd+bwd)", f"H100 clips/s at {mfu:.0%} MFU",
            "H100-hours per 100 K400 epochs"]
    return (
        "**Estimate, not a measurement** (no GPU was available): the `*-giant`..`*-small` presets at their clip size "
        f"(mask 0.9), bf16 on H100 SXM at an assumed {mfu:.0%} MFU, from the FLOP count of models/flops.py (checked "
        f"against FlopCounterMode); 100 epochs of Kinetics-400 = {100 * K400_CLIPS / 1e6:.0f} M clips. Divide by the "
        "number of GPUs for wall time, if the data loader keeps up.\n\n" + markdown_table(head, lines)
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="small,base", help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a shared machine)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round (CI smoke test)")
    p.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES + EXTRA_CASES))
    p.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    p.add_argument("--json", default="", help="also write all rows (with every step time) to this file")
    p.add_argument("--update-docs", action="store_true", help=f"write the tables into {DOCS.relative_to(ROOT)}")
    p.add_argument("--profile", default="", metavar="SETTING", help="print a torch.profiler table of one case's step and exit")
    p.add_argument("--profile-case", default="motionmae-sha", choices=CASES + EXTRA_CASES)
    p.add_argument("--from-json", default="", help="no timing: rebuild the report from a --json file (re-measuring memory unless --no-memory)")
    p.add_argument("--child-memory", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    if args.child_memory:
        print(json.dumps(peak_memory_child(*json.loads(args.child_memory))))
        return 0
    if args.profile:
        for dtype in args.dtypes.split(","):
            print(f"## {args.profile} {dtype} {args.profile_case}\n" + profile(args.profile, dtype, args.profile_case))
        return 0

    device = torch.device(args.device)
    settings = ["quick"] if args.quick else args.settings.split(",")
    dtypes = args.dtypes.split(",")
    for s in settings:
        if s not in SETTINGS:
            p.error(f"unknown setting '{s}'; valid: {', '.join(SETTINGS)}")
    n = 256 if args.quick else 2048
    t0 = time.time()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows, peaks = saved["rows"], saved["peaks"]
        for r in rows:
            if not args.no_memory and r["case"] in CASES:
                r.update(peak_memory(r["case"], r["setting"], r["dtype"], args.device))
    else:
        peaks = {d: matmul_peak(DTYPES[d], n=n, device=args.device) for d in dtypes}
        rows = []
        for s in settings:
            for d in dtypes:
                rows += run_setting(s, d, device, memory=not args.no_memory, matmul_n=n, cases=tuple(args.cases.split(",")))
                print(f"[{time.time() - t0:.0f}s] {s} {d} done", file=sys.stderr)
    for r in rows:
        peaks[r["dtype"]] = max([peaks[r["dtype"]]] + r["matmul_probes"])
    report = tables(rows, peaks, memory=any("rss_growth_mib" in r for r in rows))
    command = " ".join(["python benchmarks/step.py"] + list(argv if argv is not None else sys.argv[1:]))
    clock = saved.get("clock", args.clock) if args.from_json else args.clock
    clock = "elapsed time" if clock == "wall" else "process CPU time (so other load on the machine does not count)"
    date = time.strftime("%Y-%m-%d")
    if args.from_json:  # the timings come from the run that wrote the file
        timed = f"`{saved.get('command', '?')}`"
        commands = timed if args.no_memory else f"{timed} (timings), then `{command}` (memory)"
        header = f"Machine: {saved.get('machine', machine_name())}; times are {clock}. Commands: {commands}, {date}."
    else:
        header = f"Machine: {machine_name()}; times are {clock}. Command: `{command}`, {date}."
    report = header + "\n\n" + report
    if not args.quick:
        report += "\n\n" + h100_estimate() + "\n\n" + sizes_estimate()
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_name(), "command": command, "clock": args.clock, "peaks": peaks, "rows": rows}, indent=1))
    if args.update_docs:
        replace_section(DOCS, BEGIN, END, report, title="Benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
