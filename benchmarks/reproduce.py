"""Small-scale reproduction of MotionMAE's claim on the built-in synthetic dataset.

Claim (SPEC.md): reconstructing frame differences as well as pixels helps motion-sensitive labels and
converges faster, without hurting appearance labels. Test: pretrain videomae (tube masking, no motion
target), motionmae-sha and motionmae-ind with the same architecture, steps, data and seed, for several seeds;
probe the frozen encoder (k-NN and linear, every label column) at intermediate checkpoints; fine-tune briefly
on a motion label. Everything goes through the project's own Python APIs (`data.synthetic.make_dataset`,
`engine.pretrain.pretrain`, `eval.probe.run_probe`, `engine.finetune.finetune`): no second code path.

    python benchmarks/reproduce.py                  # full run (~25 min of CPU time on 2 cores)
    python benchmarks/reproduce.py --update-docs    # ... and write docs/RESULTS.md + docs/results_*.png
    python benchmarks/reproduce.py --ablation all   # also the ablations (target normalisation / masking / gap)
    python benchmarks/reproduce.py --quick          # tiny, seconds (CI)

Runs are resumable: a finished run (its final checkpoint exists) is not trained again; probe features are cached.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import line_plot, markdown_table, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

COLUMNS = ("class", "direction", "speed", "arrow")  # synthetic label columns; class is appearance, the rest motion
MOTION_COLUMNS = ("direction", "speed", "arrow")


@dataclass
class Setup:
    """Everything that fixes one reproduction (sizes chosen so the full run fits ~25 min on 2 CPU cores)."""

    size: int = 32  # frame side of the synthetic videos and of the model input
    video_frames: int = 16  # frames per synthetic video
    frames: int = 8  # clip length (sampled with stride `sampling_rate`)
    sampling_rate: int = 2
    num_train: int = 800
    num_val: int = 200
    model: Sequence[str] = (
        "model.size=tiny", "model.embed_dim=128", "model.depth=4", "model.num_heads=4", "model.patch_size=8",
        "model.decoder_embed_dim=64", "model.decoder_depth=2", "model.decoder_num_heads=4",
    )
    mask_ratio: float = 0.75  # 4 visible tokens of 16 per time slice (0.9 would leave 2 at this tiny grid)
    steps: int = 600
    probe_every: int = 200  # intermediate checkpoints probed
    batch_size: int = 16
    lr: float = 1e-3  # peak lr (base_lr = lr * 256 / batch)
    warmup: int = 40
    amp: str = "none"  # tiny models: fp32 is as fast as bf16 on CPU and removes one variable
    workers: int = 1
    seeds: Sequence[int] = (0, 1, 2)
    probe: Sequence[str] = ("probe.linear_epochs=100", "probe.batch_size=64")
    finetune_column: str = "direction"
    finetune_steps: int = 150
    finetune_lr: float = 2e-3


QUICK = Setup(
    size=16, video_frames=4, frames=4, sampling_rate=1, num_train=16, num_val=8,
    model=("model.size=tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.patch_size=4",
           "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2"),
    steps=4, probe_every=4, batch_size=4, warmup=1, workers=0, seeds=(0,),
    probe=("probe.linear_epochs=5", "probe.batch_size=8", "probe.k=3"), finetune_steps=2,
)

# name -> (preset, extra overrides). The three compared models, then the ablations (one change each).
KINDS = {
    "videomae": ("videomae", ()),
    "motionmae-sha": ("motionmae-sha", ()),
    "motionmae-ind": ("motionmae-ind", ()),
}
ABLATIONS = {
    "videomae raw-pixel target": ("videomae", ("objective.appearance_norm=false",)),
    "sha raw targets": ("motionmae-sha", ("objective.appearance_norm=false", "objective.motion_norm=false")),
    "sha tube mask": ("motionmae-sha", ("mask.kind=tube",)),
    "videomae per-slice mask": ("videomae", ("mask.kind=per_slice",)),
    "sha gap 2": ("motionmae-sha", ("objective.motion_gap=2",)),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# ----------------------------------------------------------------------------------------------
# the steps


def make_data(setup: Setup, out: Path, quiet: bool) -> Path:
    from motionmae.data.synthetic import make_dataset

    root = out / f"data-{setup.size}px-{setup.video_frames}f-{setup.num_train}"
    if not (root / "labels.json").exists():
        with _quiet(quiet):
            make_dataset(root, num_train=setup.num_train, num_val=setup.num_val, frames=setup.video_frames, size=setup.size, seed=0)
    return root


def pretrain_cfg(setup: Setup, preset: str, extra: Sequence[str], data: Path, seed: int, run_dir: Path):
    from motionmae.config import load_config

    over = list(setup.model) + [
        f"model.num_frames={setup.frames}", f"model.img_size={setup.size}",
        f"data.train={data / 'train.csv'}", f"data.num_frames={setup.frames}", f"data.input_size={setup.size}",
        f"data.sampling_rate={setup.sampling_rate}", "data.flip=false", f"data.num_workers={setup.workers}",
        f"mask.ratio={setup.mask_ratio}", f"train.max_steps={setup.steps}", f"train.batch_size={setup.batch_size}", f"train.base_lr={setup.lr * 256 / setup.batch_size}",
        f"train.warmup_steps={setup.warmup}", f"train.amp={setup.amp}", f"train.seed={seed}", "train.log_every=5",
        f"train.save_every={setup.probe_every}", "train.keep_last=1000", "train.viz_every=-1", f"train.output_dir={run_dir}",
    ] + list(extra)
    return load_config(preset, over)


def pretrain_run(setup: Setup, preset: str, extra, data: Path, seed: int, run_dir: Path, quiet: bool) -> list:
    """Train (or find the finished run); returns [(step, checkpoint)] for every saved (probed) step."""
    from motionmae.runtime.checkpoint import numbered_checkpoints
    from motionmae.engine.pretrain import pretrain

    cfg = pretrain_cfg(setup, preset, extra, data, seed, run_dir)
    with _quiet(quiet):
        pretrain(cfg, resume="auto")
    return [(int(p.stem.split("_")[-1]), p) for p in numbered_checkpoints(run_dir)]


def probe(setup: Setup, encoder, data: Path, quiet: bool) -> Dict[str, Dict[str, float]]:
    from motionmae.eval.probe import run_probe

    over = list(setup.probe) + [f"data.num_workers={setup.workers}", "data.flip=false"]
    with _quiet(quiet):
        return run_probe(encoder, str(data / "train.csv"), str(data / "val.csv"), overrides=over, verbose=False)


def random_probe(setup: Setup, data: Path, seed: int, quiet: bool) -> Dict[str, Dict[str, float]]:
    """Step 0: the encoder every run starts from (the pretraining model builds its encoder first, from the seed)."""
    from motionmae.eval.probe import random_encoder

    cfg = pretrain_cfg(setup, "videomae", (), data, seed, Path("unused"))
    return probe(setup, random_encoder(cfg.model, seed), data, quiet)


def finetune_run(setup: Setup, checkpoint: Optional[Path], data: Path, seed: int, run_dir: Path, quiet: bool) -> float:
    """Short fine-tune on `setup.finetune_column` (from `checkpoint`, or from a random init); returns val top-1."""
    from motionmae.config import FinetuneConfig, load_config
    from motionmae.engine.finetune import finetune
    from motionmae.runtime.checkpoint import load_model_state

    done = run_dir / "eval_metrics.json"
    if done.exists():
        return json.loads(done.read_text())["top1"]
    over = [
        f"data.train={data / 'train.csv'}", f"data.val={data / 'val.csv'}", "data.flip=false", f"data.num_workers={setup.workers}",
        "data.test_clips=1", "data.test_crops=1", f"finetune.label_column={setup.finetune_column}",
        "finetune.mixup=0", "finetune.cutmix=0", "finetune.reprob=0", "finetune.label_smoothing=0", "finetune.aa=none",
        "finetune.crop=multiscale", "finetune.layer_decay=0.75",
        "model.drop_path=0", f"train.max_steps={setup.finetune_steps}", f"train.batch_size={setup.batch_size}",
        f"train.base_lr={setup.finetune_lr * 256 / setup.batch_size}", f"train.warmup_steps={max(1, setup.finetune_steps // 10)}",
        f"train.amp={setup.amp}", f"train.seed={seed}", f"train.save_every={10 * setup.finetune_steps}", f"train.output_dir={run_dir}",
    ]
    if checkpoint is None:  # the same architecture, randomly initialised
        over += list(setup.model) + [f"model.num_frames={setup.frames}", f"model.img_size={setup.size}",
                                     f"data.sampling_rate={setup.sampling_rate}"]
    cfg = load_config("", over, FinetuneConfig, load_model_state(checkpoint)[1] if checkpoint else None)
    with _quiet(quiet):
        summary = finetune(cfg, pretrained=str(checkpoint) if checkpoint else "", resume="none")
    return summary["eval"]["top1"]


@contextlib.contextmanager
def _quiet(quiet: bool):
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def read_metrics(run_dir: Path) -> List[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ----------------------------------------------------------------------------------------------
# the whole experiment


@dataclass
class Result:
    name: str
    seed: int
    probes: Dict[int, dict] = field(default_factory=dict)  # step -> {column: {knn, linear, chance}}
    finetune_top1: float = float("nan")
    metrics: List[dict] = field(default_factory=list)
    minutes: float = 0.0


RANDOM = "random init (no pretraining)"


def run_all(setup: Setup, out: Path, names: Dict[str, tuple], quiet: bool, log=print, baseline: bool = True) -> Dict[str, List[Result]]:
    """Every (seed, name) run; with `baseline`, also the random-init encoder (probe and fine-tune from scratch)."""
    data = make_data(setup, out, quiet)
    results: Dict[str, List[Result]] = ({RANDOM: []} if baseline else {}) | {n: [] for n in names}
    step0 = {seed: random_probe(setup, data, seed, quiet) for seed in setup.seeds}
    for seed in setup.seeds if baseline else ():
        r = Result(RANDOM, seed, probes={0: step0[seed]})
        r.finetune_top1 = finetune_run(setup, None, data, seed, out / "finetune" / f"random-init-seed{seed}", quiet)
        results[RANDOM].append(r)
    for seed in setup.seeds:
        for name, (preset, extra) in names.items():
            t0 = time.time()
            run_dir = out / "runs" / f"{slug(name)}-seed{seed}"
            ckpts = pretrain_run(setup, preset, extra, data, seed, run_dir, quiet)
            r = Result(name, seed, probes={0: step0[seed]})
            for step, path in ckpts:
                r.probes[step] = probe(setup, path, data, quiet)
            r.finetune_top1 = finetune_run(setup, ckpts[-1][1], data, seed, out / "finetune" / f"{slug(name)}-seed{seed}", quiet)
            r.metrics = read_metrics(run_dir)
            r.minutes = (time.time() - t0) / 60
            final = r.probes[max(r.probes)]
            log(f"[{name} seed {seed}] {r.minutes:.1f} min; linear probe "
                + " ".join(f"{c} {100 * final[c]['linear']:.1f}" for c in final)
                + f"; fine-tune {setup.finetune_column} {100 * r.finetune_top1:.1f}")
            results[name].append(r)
            seeds = "-".join(map(str, setup.seeds))
            (out / f"partial-seeds{seeds}.json").write_text(json.dumps(to_json(results, setup), indent=1))
    return results


def to_json(results: Dict[str, List[Result]], setup: Setup) -> dict:
    from dataclasses import asdict

    return {"setup": asdict(setup), "results": {n: [asdict(r) for r in rs] for n, rs in results.items()}}


# ----------------------------------------------------------------------------------------------
# report


def pm(xs: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std([scale * x for x in xs])
    return "-" if m != m else f"{m:.{digits}f} ± {s:.{digits}f}"


def final_step(rs: List[Result]) -> int:
    return max(max(r.probes) for r in rs)


def summary_table(results: Dict[str, List[Result]], setup: Setup, method: str = "linear") -> str:
    names = [n for n, rs in results.items() if rs]
    columns = [c for c in COLUMNS if any(c in r.probes[final_step(results[n])] for n in names for r in results[n])]
    head = ["model"] + [f"{c} ({'appearance' if c == 'class' else 'motion'})" for c in columns]
    head += ["motion mean", f"fine-tune {setup.finetune_column}", "final appearance loss"]
    rows = []
    for n in names:
        rs, step = results[n], final_step(results[n])
        row = [n] + [pm([r.probes[step][c][method] for r in rs if c in r.probes[step]]) for c in columns]
        row.append(pm([sum(r.probes[step][c][method] for c in MOTION_COLUMNS if c in r.probes[step]) / len(MOTION_COLUMNS) for r in rs]))
        row.append(pm([r.finetune_top1 for r in rs]))
        row.append(pm([_last(r.metrics, "loss_appearance") for r in rs], scale=1.0, digits=3))
        rows.append(row)
    any_r = results[names[0]][0].probes[final_step(results[names[0]])]
    rows.append(["chance"] + [f"{100 * any_r[c]['chance']:.1f}" for c in columns] + ["", "", ""])
    return markdown_table(head, rows)


def convergence_table(results: Dict[str, List[Result]], method: str = "linear") -> str:
    """Mean motion-column and class accuracy at every probed step."""
    names = [n for n, rs in results.items() if rs]
    steps = sorted({s for n in names for r in results[n] for s in r.probes})
    head = ["model"] + [f"step {s}: motion / class" for s in steps]
    rows = []
    for n in names:
        row = [n]
        for s in steps:
            rs = [r for r in results[n] if s in r.probes]
            mot = [sum(r.probes[s][c][method] for c in MOTION_COLUMNS) / len(MOTION_COLUMNS) for r in rs]
            cls = [r.probes[s]["class"][method] for r in rs]
            row.append(f"{pm(mot)} / {pm(cls)}")
        rows.append(row)
    return markdown_table(head, rows)


def _last(metrics: List[dict], key: str) -> float:
    vals = [m[key] for m in metrics if key in m]
    return vals[-1] if vals else float("nan")


def curves(results: Dict[str, List[Result]], key: str):
    """{name: (steps, mean, std)} of a logged metric over seeds."""
    out = {}
    for n, rs in results.items():
        if not rs:
            continue
        steps = sorted({m["step"] for m in rs[0].metrics if key in m})
        if not steps:
            continue
        means, stds = [], []
        for s in steps:
            m, sd = mean_std([x[key] for r in rs for x in r.metrics if x.get("step") == s and key in x])
            means.append(m)
            stds.append(sd)
        out[n] = (steps, means, stds)
    return out


def probe_curves(results: Dict[str, List[Result]], columns: Sequence[str], method: str = "linear"):
    out = {}
    for n, rs in results.items():
        if not rs:
            continue
        steps = sorted({s for r in rs for s in r.probes})
        if len(steps) < 2:  # the random-init baseline is every curve's first point
            continue
        means, stds = [], []
        for s in steps:
            m, sd = mean_std([100 * sum(r.probes[s][c][method] for c in columns) / len(columns) for r in rs if s in r.probes])
            means.append(m)
            stds.append(sd)
        out[n] = (steps, means, stds)
    return out


def plots(results: Dict[str, List[Result]], out_dir: Path, prefix: str = "results") -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out_dir / f"{prefix}_loss.png"
    line_plot(p, curves(results, "loss_appearance"), "appearance reconstruction loss (mean ± std over seeds)", "step", "MSE")
    paths.append(p)
    motion = {n: c for n, c in curves(results, "loss_motion").items() if n != "videomae" and any(v > 0 for v in c[1])}
    if motion:
        p = out_dir / f"{prefix}_motion_loss.png"
        line_plot(p, motion, "motion (frame difference) reconstruction loss", "step", "MSE")
        paths.append(p)
    for tag, cols in (("motion", MOTION_COLUMNS), ("class", ("class",))):
        p = out_dir / f"{prefix}_probe_{tag}.png"
        title = "linear probe, mean of " + ("direction / speed / arrow" if tag == "motion" else "class (appearance)")
        line_plot(p, probe_curves(results, cols), title + " (%)", "pretraining step", "accuracy %")
        paths.append(p)
    return paths


def report(results: Dict[str, List[Result]], setup: Setup, command: str, pictures: Sequence[Path], rel_to: Path,
           ablation: Optional[Dict[str, List[Result]]] = None, seconds: float = 0.0) -> str:
    lines = [
        "# Results: does the motion target help? (small-scale reproduction)",
        "",
        f"Command: `{command}`. Finished runs are reused (runs are resumable), so the time of the last invocation "
        f"({seconds / 60:.0f} min) is not the cost of the experiment: see the end of this page. Every number is "
        "mean ± std over seeds " + ", ".join(map(str, setup.seeds)) + " (same data, steps and seed for every model)"
        + (", ablation rows over seeds " + ", ".join(map(str, sorted({r.seed for rs in ablation.values() for r in rs})))
           if ablation else "") + ".",
        "",
        f"- Data: the built-in synthetic set (`motionmae make-dataset`), {setup.num_train} train / {setup.num_val} val videos, "
        f"{setup.video_frames} frames at {setup.size}x{setup.size}; labels: class (glyph shape: appearance), direction, "
        "speed, arrow of time (motion: not readable from one frame).",
        f"- Model: {' '.join(setup.model)}; clips {setup.frames} frames (stride {setup.sampling_rate}), tubelet 2, "
        f"mask ratio {setup.mask_ratio}; videomae = tube masking + no motion head; motionmae = per-slice masking + motion head.",
        f"- Pretraining: {setup.steps} steps x batch {setup.batch_size}, AdamW, peak lr {setup.lr:g}, warm-up {setup.warmup}, "
        f"cosine, {setup.amp if setup.amp != 'none' else 'fp32'}.",
        f"- Evaluation: frozen encoder, mean-pooled features; k-NN (DINO weighting) and linear probe "
        f"({', '.join(setup.probe)}) at steps 0 (random init) and every {setup.probe_every} steps; fine-tune "
        f"{setup.finetune_steps} steps on `{setup.finetune_column}` (layer decay 0.75; the multi-scale crop; no mixup, "
        "cutmix, random erasing, label smoothing or RandAugment), val top-1.",
        "",
        f"## Linear probe at the last step ({setup.steps}), and fine-tuning (%)",
        "",
        summary_table(results, setup, "linear"),
        "",
        "## k-NN at the last step (%)",
        "",
        summary_table(results, setup, "knn"),
        "",
        "## Convergence: linear probe at every probed step (%), motion mean / class",
        "",
        convergence_table(results, "linear"),
        "",
    ]
    if ablation:
        lines += ["## Ablation (one change each from the models above)", "", summary_table(ablation, setup, "linear"), "",
                  convergence_table(ablation, "linear"), ""]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(rel_to).as_posix()})" for p in pictures]
    lines += ["", "## What we find", "", "FINDINGS", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="work directory (data, runs, probe caches, results.json)")
    p.add_argument("--quick", action="store_true", help="tiny everything, one seed (CI smoke test)")
    p.add_argument("--seeds", default="", help="comma list (default 0,1,2)")
    p.add_argument("--steps", type=int, default=0, help="pretraining steps (default 600)")
    p.add_argument("--ablation", default="", help="'all' or a comma list of ablation names (" + ", ".join(ABLATIONS) + ")")
    p.add_argument("--ablation-seeds", default="0")
    p.add_argument("--only", default="", help="comma list of model / ablation names to run (default: the three models)")
    p.add_argument("--update-docs", action="store_true", help="write docs/RESULTS.md and docs/results_*.png")
    p.add_argument("--verbose", action="store_true", help="show the training progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default). Seeds can run in parallel "
                   "processes (--seeds 1 --threads 1 ...); a last run over all seeds then only reads what they left")
    args = p.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else Setup()
    if args.seeds:
        setup.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        setup.steps = args.steps
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    known = {**KINDS, **ABLATIONS}
    for n in args.only.split(",") if args.only else ():
        if n not in known:
            p.error(f"--only: unknown name '{n}'; valid: {', '.join(known)}")
    names = {n: known[n] for n in args.only.split(",")} if args.only else dict(KINDS)
    quiet = not args.verbose
    t0 = time.time()
    log = lambda msg: print(f"[{(time.time() - t0) / 60:5.1f} min] {msg}", flush=True)  # noqa: E731
    results = run_all(setup, out, names, quiet, log)
    ablation = None
    if args.ablation:
        chosen = list(ABLATIONS) if args.ablation == "all" else args.ablation.split(",")
        for n in chosen:
            if n not in ABLATIONS:
                p.error(f"--ablation: unknown name '{n}'; valid: {', '.join(ABLATIONS)}")
        ab_setup = Setup(**{**setup.__dict__, "seeds": tuple(int(s) for s in args.ablation_seeds.split(","))})
        ablation = run_all(ab_setup, out, {n: ABLATIONS[n] for n in chosen}, quiet, log, baseline=False)
    seconds = time.time() - t0
    command = shlex.join(["python", "benchmarks/reproduce.py"] + list(argv if argv is not None else sys.argv[1:]))
    docs_dir = DOCS if args.update_docs else out
    pictures = plots(results, docs_dir)
    text = report(results, setup, command, pictures, docs_dir, ablation, seconds)
    target = docs_dir / "RESULTS.md"
    findings = ""
    if target.exists() and "## What we find" in target.read_text():  # keep the hand-written reading of the numbers
        findings = target.read_text().split("## What we find", 1)[1].strip()
    target.write_text(text.replace("FINDINGS", findings or "(to be written after reading the tables)"))
    (out / "results.json").write_text(json.dumps({**to_json(results, setup), "ablation": to_json(ablation, setup) if ablation else None}, indent=1))
    print(summary_table(results, setup, "linear"))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
