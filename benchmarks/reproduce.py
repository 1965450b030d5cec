"""Small-scale test of MotionMAE's claims on the built-in synthetic dataset (docs/RESULTS.md).

Claims (SPEC.md), tested as hypotheses: reconstructing frame differences as well as pixels (1) helps
motion-sensitive labels (2) without hurting appearance labels, (3) converges faster and (4) gives better
features for video object segmentation. Test: pretrain videomae (tube masking, no motion target), motionmae-sha
and motionmae-ind with the same architecture, steps, data and seeds (the `demo` config: its settings are the
ones shown to learn); probe the frozen encoder (k-NN and linear, every label column) at intermediate
checkpoints; fine-tune briefly on a motion label; label propagation (J&F) on the synthetic VOS set; the
held-out reconstruction loss beside predicting zero. Random init (the step-0 encoder of each seed) is the floor.
Everything goes through the project's own Python APIs: no second code path.

    python benchmarks/reproduce.py --threads 1                      # the three models + random init, 5 seeds
    python benchmarks/reproduce.py --threads 1 --ablation all       # ... and the ablations (3 seeds)
    python benchmarks/reproduce.py --threads 1 --ablation all --update-docs   # write docs/RESULTS.md + PNGs
    python benchmarks/reproduce.py --quick                          # tiny, seconds (CI)

Resumable: a pretraining run continues from its last checkpoint, finished runs are not trained again, probe
features are cached, finished fine-tunes and VOS runs are read back. CPU time of every piece of work is
added to `<out>/cost.json` as it is done (one process, data loading in it: process time is all the work), so
the cost of the whole study survives interruptions. SIGTERM stops the current run at a checkpoint and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import math
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import line_plot, markdown_table, mean_std  # noqa: E402

from motionmae.files import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

COLUMNS = ("class", "direction", "speed", "arrow")  # synthetic label columns; class is appearance, the rest motion
MOTION_COLUMNS = ("direction", "speed", "arrow")


@dataclass
class Setup:
    """Everything that fixes one study: the `demo` config, longer, on the default synthetic data."""

    config: str = "demo"  # pretraining preset (model, clip, mask, optimiser); the kinds below change the objective
    video_size: int = 64  # written frames (the model sees `demo`'s 32 px)
    video_frames: int = 16
    num_train: int = 800
    num_val: int = 200
    style: Dict[str, object] = field(default_factory=dict)  # synthetic.Style overrides ({} = the default data)
    steps: int = 3000
    probe_every: int = 500  # intermediate checkpoints probed (convergence)
    extra: Sequence[str] = ("train.amp=none", "train.warmup_steps=100")  # fp32: tiny models gain nothing from bf16
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    probe: Sequence[str] = ("probe.linear_epochs=100", "probe.batch_size=64")
    finetune_column: str = "direction"
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    vos_sequences: int = 8  # synthetic VOS set (0: no VOS)
    vos_size: int = 64
    vos_scene: str = "glyphs"  # make-dataset --vos-scene: glyphs (shape decides) or sprites (colour decides)


QUICK = Setup(
    video_size=16, video_frames=4, num_train=16, num_val=8, steps=4, probe_every=4, seeds=(0,),
    extra=("train.amp=none", "train.warmup_steps=1", "train.batch_size=4", "model.num_frames=4", "data.num_frames=4", "data.sampling_rate=1", "data.input_size=16",
           "model.img_size=16", "data.short_side=16", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
           "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2"),
    probe=("probe.linear_epochs=5", "probe.batch_size=8", "probe.k=3"), finetune_steps=2, vos_sequences=1, vos_size=16,
)

# name -> overrides of the objective. The three compared models, then the ablations (one change each).
VIDEOMAE = ("model.decoder=none", "mask.kind=tube", "objective.targets=[appearance]")
SHA = ("model.decoder=sha", "mask.kind=per_slice")
KINDS = {
    "videomae": VIDEOMAE,
    "motionmae-sha": SHA,
    "motionmae-ind": ("model.decoder=ind", "mask.kind=per_slice"),
}
ABLATIONS = {
    "sha without motion target": ("model.decoder=none", "mask.kind=per_slice", "objective.targets=[appearance]"),
    # the mask-kind ablation from sha's side too: sha with tube masks is this same configuration (run both ways, the
    # two gave identical numbers, seed for seed)
    "videomae + motion target": (*VIDEOMAE, "model.decoder=sha", "objective.targets=[appearance,motion]"),
    "sha gap 2": (*SHA, "objective.motion_gap=2"),
    "sha abs motion": (*SHA, "objective.motion_mode=abs"),
    "sha motion unnormalised": (*SHA, "objective.motion_norm=false"),
    # VideoMAE-style sampling keeps every `sampling_rate`-th frame; this differences each sampled frame with its raw
    # next frame instead (the paper's frame differences), decoded alongside
    "sha raw adjacent frames": (*SHA, "objective.motion_frames=adjacent"),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# ----------------------------------------------------------------------------------------------
# cost ledger


class Ledger:
    """CPU seconds per category, added as work is done and kept in a JSON file (survives interruptions). Counts
    the data-loader workers too (children, once joined). Each charge re-reads the file under a lock and adds to it,
    so several processes can share one study directory (e.g. seeds split over cores)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: Dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    @contextlib.contextmanager
    def charge(self, key: str):
        t0 = self._cpu()
        try:
            yield
        finally:
            spent = self._cpu() - t0
            with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
                self.data[key] = self.data.get(key, 0.0) + spent
                write_json(self.path, self.data)

    def hours(self, prefix: str = "") -> float:
        return sum(v for k, v in self.data.items() if k.startswith(prefix)) / 3600


# ----------------------------------------------------------------------------------------------
# the steps


def make_data(setup: Setup, out: Path, quiet: bool) -> Path:
    from motionmae.data.synthetic import Style, make_dataset

    key = "-".join(f"{k}{v}" for k, v in sorted(setup.style.items()))
    root = out / f"data-{setup.video_size}px-{setup.video_frames}f-{setup.num_train}{'-' + slug(key) if key else ''}"
    if not (root / "labels.json").exists():
        with _quiet(quiet):
            make_dataset(root, num_train=setup.num_train, num_val=setup.num_val, frames=setup.video_frames,
                         size=setup.video_size, seed=0, style=Style.from_dict(setup.style), workers=1)
    return root


def make_vos(setup: Setup, out: Path) -> Optional[Path]:
    from motionmae.data.synthetic_vos import make_vos_dataset

    if not setup.vos_sequences:
        return None
    root = out / f"vos-{setup.vos_sequences}x{setup.vos_size}{'' if setup.vos_scene == 'glyphs' else '-' + setup.vos_scene}"
    if not (root / "ImageSets").exists():
        h = setup.vos_size
        make_vos_dataset(root, setup.vos_sequences, 24, h, max(8, round(h * 4 / 3 / 8) * 8), seed=0, scene=setup.vos_scene)
    return root


def pretrain_cfg(setup: Setup, kind: Sequence[str], data: Path, seed: int, run_dir: Path):
    from motionmae.config import load_config

    over = [f"data.train={data / 'train.csv'}", "data.num_workers=0", f"train.max_steps={setup.steps}",
            f"train.seed={seed}", "train.log_every=10", f"train.save_every={setup.probe_every}", "train.keep_last=1000",
            "train.viz_every=-1", f"train.output_dir={run_dir}", *setup.extra, *kind]
    return load_config(setup.config, over)


def pretrain_run(setup: Setup, kind, data: Path, seed: int, run_dir: Path, quiet: bool, ledger: Ledger) -> list:
    """Train (or continue, or find the finished run); returns [(step, checkpoint)] for every saved step."""
    from motionmae.runtime.checkpoint import numbered_checkpoints
    from motionmae.engine.pretrain import pretrain

    cfg = pretrain_cfg(setup, kind, data, seed, run_dir)
    with _quiet(quiet), ledger.charge(f"pretrain/{run_dir.name}"):
        summary = pretrain(cfg, resume="auto")
    if summary.get("stopped"):
        raise SystemExit(f"stopped by signal in {run_dir}; run the same command again to continue")
    return [(int(p.stem.split("_")[-1]), p) for p in numbered_checkpoints(run_dir)]


def _data_overrides(setup: Setup, data: Path) -> list:
    """Evaluation clips as the pretraining config sees them (the whole frame, no flip, the same stride; the number
    of frames follows the model), one process. The stride matters for fine-tuning, whose clips never come from the
    checkpoint: its default (4) on 16-frame videos loops the clip back to its start, which hides the motion's sign."""
    d = pretrain_cfg(setup, (), data, 0, Path("unused")).data
    return ["data.num_workers=0", "data.flip=false", f"data.short_side={d.short_side}",
            "data.scales=[" + ",".join(map(str, d.scales)) + "]", f"data.sampling_rate={d.sampling_rate}"]


def probe(setup: Setup, encoder, data: Path, out: Path, quiet: bool, ledger: Ledger, key: str) -> Dict[str, Dict[str, float]]:
    from motionmae.eval.probe import run_probe

    over = [*setup.probe, *_data_overrides(setup, data), f"probe.cache_dir={out / 'probe_cache'}"]
    with _quiet(quiet), ledger.charge(f"probe/{key}"):
        return run_probe(encoder, str(data / "train.csv"), str(data / "val.csv"), overrides=over, verbose=False)


def random_encoder_for(setup: Setup, data: Path, seed: int):
    """Step 0: the encoder every run of this seed starts from (the pretraining model builds its encoder first)."""
    from motionmae.eval.probe import random_encoder

    return random_encoder(pretrain_cfg(setup, VIDEOMAE, data, seed, Path("unused")).model, seed)


def finetune_run(setup: Setup, checkpoint: Optional[Path], data: Path, seed: int, run_dir: Path, quiet: bool,
                 ledger: Ledger) -> float:
    """Short fine-tune on `setup.finetune_column` (from `checkpoint`, or from a random init); returns val top-1."""
    from motionmae import config as C
    from motionmae.engine.finetune import finetune
    from motionmae.runtime.checkpoint import load_model_state

    done = run_dir / "eval_metrics.json"
    if done.exists():
        return json.loads(done.read_text())["top1"]
    base = pretrain_cfg(setup, VIDEOMAE, data, seed, Path("unused"))
    over = [
        f"data.train={data / 'train.csv'}", f"data.val={data / 'val.csv'}", *_data_overrides(setup, data),
        "data.test_clips=1", "data.test_crops=1", f"finetune.label_column={setup.finetune_column}",
        "finetune.mixup=0", "finetune.cutmix=0", "finetune.reprob=0", "finetune.label_smoothing=0", "finetune.aa=none",
        "finetune.crop=multiscale", "finetune.layer_decay=0.75", "model.drop_path=0",
        f"train.max_steps={setup.finetune_steps}", f"train.batch_size={base.train.batch_size}",
        f"train.base_lr={setup.finetune_lr * 256 / base.train.batch_size}", f"train.warmup_steps={max(1, setup.finetune_steps // 10)}",
        "train.amp=none", f"train.seed={seed}", f"train.save_every={10 * setup.finetune_steps}", f"train.output_dir={run_dir}",
    ]
    # the architecture of the checkpoint, or (from scratch) of the pretraining config
    arch = load_model_state(checkpoint)[1] if checkpoint else C.to_dict(base)
    cfg = C.load_config("", over, C.FinetuneConfig, checkpoint=arch)
    with _quiet(quiet), ledger.charge(f"finetune/{run_dir.name}"):
        summary = finetune(cfg, pretrained=str(checkpoint) if checkpoint else "", resume="none")
    return summary["eval"]["top1"]


def vos_run(encoder, vos_root: Optional[Path], run_dir: Path, size: int, ledger: Ledger, quiet: bool) -> Optional[dict]:
    """J&F of label propagation with the frozen encoder on the synthetic VOS set (read back when done). `encoder`: a
    module, a checkpoint, or features with no encoder (anything `segment_davis` takes, e.g. vos_sets' references)."""
    from motionmae import config as C
    from motionmae.eval.features import encoder_from_state
    from motionmae.eval.vos import EncoderFeatures, segment_davis

    if vos_root is None:
        return None
    done = run_dir / "results-val.json"
    if not done.exists():
        features = encoder
        if not hasattr(encoder, "input_size"):  # an encoder
            kw = {}
            if not hasattr(encoder, "patch_embed"):  # a checkpoint
                from motionmae.runtime.checkpoint import load_model_state

                sd, config_dict = load_model_state(encoder)
                encoder, d = encoder_from_state(sd, config_dict, str(encoder)), C.checkpoint_data(C.DataConfig(), config_dict)
                kw = {"mean": d.mean, "std": d.std}
            features = EncoderFeatures(encoder, size=size, **kw)
        with _quiet(quiet), ledger.charge(f"vos/{run_dir.name}"):
            segment_davis(features, vos_root, run_dir, "val", C.VOSOptions(size=size), log=lambda *_: None)
    g = json.loads(done.read_text())["global"]
    return {"J&F": g["J&F-Mean"], "J": g["J-Mean"], "F": g["F-Mean"]}


def heldout(run_dir: Path, data: Path, ledger: Ledger) -> dict:
    """Held-out reconstruction loss of the final checkpoint beside predicting zero (cached in the run dir)."""
    from motionmae.demo import reconstruction_vs_zero

    path = run_dir / "heldout.json"
    if not path.exists():
        with ledger.charge(f"heldout/{run_dir.name}"):
            path.write_text(json.dumps(reconstruction_vs_zero(run_dir, str(data / "val.csv"))))
    return json.loads(path.read_text())


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
    cpu_s: float = 0.0  # pretraining CPU seconds (all invocations)
    heldout: dict = field(default_factory=dict)
    vos: Optional[dict] = None


RANDOM = "random init (no pretraining)"


def run_all(setup: Setup, out: Path, names: Dict[str, tuple], quiet: bool, ledger: Ledger, log=print,
            baseline: bool = True) -> Dict[str, List[Result]]:
    """Every (seed, name) run; with `baseline`, also the random-init encoder (probe, fine-tune from scratch, VOS)."""
    data, vos_root = make_data(setup, out, quiet), make_vos(setup, out)
    results: Dict[str, List[Result]] = ({RANDOM: []} if baseline else {}) | {n: [] for n in names}
    step0 = {}
    for seed in setup.seeds:
        enc = random_encoder_for(setup, data, seed)
        step0[seed] = probe(setup, enc, data, out, quiet, ledger, f"random-seed{seed}")
        if baseline:
            r = Result(RANDOM, seed, probes={0: step0[seed]})
            r.finetune_top1 = finetune_run(setup, None, data, seed, out / "finetune" / f"random-init-seed{seed}", quiet, ledger)
            r.vos = vos_run(enc, vos_root, out / "vos" / f"random-init-seed{seed}", setup.vos_size, ledger, quiet)
            results[RANDOM].append(r)
    for seed in setup.seeds:
        for name, kind in names.items():
            t0 = time.time()
            run_dir = out / "runs" / f"{slug(name)}-seed{seed}"
            ckpts = pretrain_run(setup, kind, data, seed, run_dir, quiet, ledger)
            r = Result(name, seed, probes={0: step0[seed]}, cpu_s=ledger.data.get(f"pretrain/{run_dir.name}", 0.0))
            for step, path in ckpts:
                r.probes[step] = probe(setup, path, data, out, quiet, ledger, run_dir.name)
            r.finetune_top1 = finetune_run(setup, ckpts[-1][1], data, seed, out / "finetune" / run_dir.name, quiet, ledger)
            r.vos = vos_run(ckpts[-1][1], vos_root, out / "vos" / run_dir.name, setup.vos_size, ledger, quiet)
            r.heldout = heldout(run_dir, data, ledger)
            r.metrics = read_metrics(run_dir)
            final = r.probes[max(r.probes)]
            log(f"[{name} seed {seed}] {(time.time() - t0) / 60:.1f} min; loss {r.heldout['ratio_appearance']:.3f} of "
                f"predict-zero; linear probe " + " ".join(f"{c} {100 * final[c]['linear']:.1f}" for c in final)
                + f"; fine-tune {setup.finetune_column} {100 * r.finetune_top1:.1f}"
                + (f"; VOS J&F {r.vos['J&F']:.3f}" if r.vos else ""))
            results[name].append(r)
            # one file per (models, seeds): processes that split seeds or ablations over cores do not overwrite
            # each other's results
            tag = f"{'_'.join(slug(n) for n in names)}-seeds{'-'.join(map(str, setup.seeds))}"
            write_json(out / f"partial-{tag}.json", to_json(results, setup))
    return results


def to_json(results: Dict[str, List[Result]], setup: Setup) -> dict:
    return {"setup": asdict(setup), "results": {n: [asdict(r) for r in rs] for n, rs in results.items()}}


# ----------------------------------------------------------------------------------------------
# report


def pm(xs: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std([scale * x for x in xs])
    return "-" if m != m else f"{m:.{digits}f} ± {s:.{digits}f}"


def final_step(rs: List[Result]) -> int:
    return max(max(r.probes) for r in rs)


def motion_mean(probes: dict, method: str = "linear") -> float:
    return sum(probes[c][method] for c in MOTION_COLUMNS) / len(MOTION_COLUMNS)


def _vos(r: Result) -> float:
    return r.vos["J&F"] if r.vos else float("nan")


def summary_table(results: Dict[str, List[Result]], setup: Setup, method: str = "linear") -> str:
    names = [n for n, rs in results.items() if rs]
    head = ["model"] + [f"{c} ({'appearance' if c == 'class' else 'motion'})" for c in COLUMNS]
    head += ["motion mean", f"fine-tune {setup.finetune_column}", "VOS J&F", "appearance loss / predict-zero",
             "motion loss / predict-zero", "CPU-h / run"]
    rows = []
    for n in names:
        rs, step = results[n], final_step(results[n])
        row = [n] + [pm([r.probes[step][c][method] for r in rs]) for c in COLUMNS]
        row.append(pm([motion_mean(r.probes[step], method) for r in rs]))
        row.append(pm([r.finetune_top1 for r in rs]))
        row.append(pm([_vos(r) for r in rs], scale=1.0, digits=3))
        row += [pm([r.heldout.get(f"ratio_{t}", float("nan")) for r in rs], scale=1.0, digits=3) for t in ("appearance", "motion")]
        row.append(pm([r.cpu_s / 3600 for r in rs], scale=1.0, digits=2) if n != RANDOM else "-")
        rows.append(row)
    any_r = results[names[0]][0].probes[final_step(results[names[0]])]
    rows.append(["chance"] + [f"{100 * any_r[c]['chance']:.1f}" for c in COLUMNS] + [""] * 6)
    return markdown_table(head, rows)


def per_seed_table(results: Dict[str, List[Result]]) -> str:
    head = ["model", "seed"] + list(COLUMNS) + ["fine-tune", "VOS J&F", "appearance loss / predict-zero", "motion loss / predict-zero"]
    rows = []
    for n, rs in results.items():
        for r in rs:
            p = r.probes[max(r.probes)]
            rows.append([n, r.seed] + [f"{100 * p[c]['linear']:.1f}" for c in COLUMNS]
                        + [f"{100 * r.finetune_top1:.1f}", f"{_vos(r):.3f}",
                           *(f"{r.heldout[f'ratio_{t}']:.3f}" if f"ratio_{t}" in r.heldout else "-" for t in ("appearance", "motion"))])
    return markdown_table(head, rows)


def convergence_table(results: Dict[str, List[Result]], method: str = "linear") -> str:
    """Mean motion-column and class accuracy at every probed step, and the CPU-hours to get there."""
    names = [n for n, rs in results.items() if rs]
    steps = sorted({s for n in names for r in results[n] for s in r.probes})
    head = ["model"] + [f"step {s}: motion / class" for s in steps]
    rows = []
    for n in names:
        row = [n]
        for s in steps:
            rs = [r for r in results[n] if s in r.probes]
            row.append(f"{pm([motion_mean(r.probes[s], method) for r in rs])} / {pm([r.probes[s]['class'][method] for r in rs])}"
                       if rs else "-")
        rows.append(row)
    return markdown_table(head, rows)


def paired(results: Dict[str, List[Result]], a: str, b: str, value) -> tuple:
    """Per-seed differences value(a) - value(b) over the seeds both have: (mean, std, t, wins, n, diffs)."""
    rb = {r.seed: r for r in results.get(b, [])}
    diffs = [value(r) - value(rb[r.seed]) for r in results.get(a, []) if r.seed in rb]
    diffs = [d for d in diffs if d == d]
    if not diffs:
        return (float("nan"),) * 3 + (0, 0, [])
    m, s = mean_std(diffs)
    t = m / (s / math.sqrt(len(diffs))) if s > 0 else float("inf") * (1 if m > 0 else -1 if m < 0 else 0)
    return m, s, t, sum(d > 0 for d in diffs), len(diffs), diffs


def hypotheses_table(results: Dict[str, List[Result]], setup: Setup) -> str:
    """The claims, as paired per-seed differences (motionmae minus videomae; same seed = same init and data order)."""
    def final(r, col):
        return 100 * r.probes[max(r.probes)][col]["linear"]

    def early(col):
        steps = sorted({s for r in results.get("videomae", []) for s in r.probes if s > 0})
        s0 = steps[0] if steps else 0
        return s0, lambda r: 100 * (motion_mean(r.probes[s0]) if col == "motion" else r.probes[s0][col]["linear"]) if s0 in r.probes else float("nan")

    s_early, early_motion = early("motion")
    tests = [
        ("motion labels: linear probe, motion mean", lambda r: 100 * motion_mean(r.probes[max(r.probes)]), "points"),
        ("motion labels: linear probe, direction", lambda r: final(r, "direction"), "points"),
        (f"motion labels: fine-tune {setup.finetune_column}", lambda r: 100 * r.finetune_top1, "points"),
        ("appearance not hurt: linear probe, class", lambda r: final(r, "class"), "points"),
        (f"faster: motion mean at step {s_early}", early_motion, "points"),
        ("VOS: J&F", lambda r: 100 * _vos(r), "J&F x 100"),
    ]
    rows = []
    for other in ("motionmae-sha", "motionmae-ind"):
        for what, fn, unit in tests:
            m, s, t, wins, n, diffs = paired(results, other, "videomae", fn)
            if not n:
                continue
            rows.append([f"{other} - videomae", what, f"{m:+.1f} ± {s:.1f} {unit}", f"{t:+.1f}", f"{wins}/{n}",
                         " ".join(f"{d:+.1f}" for d in diffs)])
    return markdown_table(["comparison", "claim", "mean difference ± std", "t (paired)", "seeds ahead", "per seed"], rows)


def _last(metrics: List[dict], key: str) -> float:
    vals = [m[key] for m in metrics if key in m]
    return vals[-1] if vals else float("nan")


def curves(results: Dict[str, List[Result]], key: str, every: int = 1):
    """{name: (steps, mean, std)} of a logged metric over seeds."""
    out = {}
    for n, rs in results.items():
        if not rs or not rs[0].metrics:
            continue
        steps = sorted({m["step"] for m in rs[0].metrics if key in m})[::every]
        means, stds = [], []
        for s in steps:
            m, sd = mean_std([x[key] for r in rs for x in r.metrics if x.get("step") == s and key in x])
            means.append(m)
            stds.append(sd)
        out[n] = (steps, means, stds)
    return out


def probe_curves(results: Dict[str, List[Result]], columns: Sequence[str], cpu_hours: bool = False, method: str = "linear"):
    """{name: (x, mean, std)}: x = pretraining step, or the CPU-hours of pretraining to reach it."""
    out = {}
    for n, rs in results.items():
        steps = sorted({s for r in rs for s in r.probes})
        if not rs or len(steps) < 2:  # the random-init baseline is every curve's first point
            continue
        means, stds = [], []
        for s in steps:
            m, sd = mean_std([100 * sum(r.probes[s][c][method] for c in columns) / len(columns) for r in rs if s in r.probes])
            means.append(m)
            stds.append(sd)
        per_step_h = mean_std([r.cpu_s / 3600 / max(steps) for r in rs])[0]
        out[n] = ([s * per_step_h for s in steps] if cpu_hours else steps, means, stds)
    return out


def plots(results: Dict[str, List[Result]], out_dir: Path, prefix: str = "results") -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    zero = mean_std([r.heldout["zero_appearance"] for rs in results.values() for r in rs if r.heldout])[0]
    for key, title in (("loss_appearance", "appearance"), ("loss_motion", "motion (frame difference)")):
        series = {n: c for n, c in curves(results, key, every=5).items() if any(v > 0 for v in c[1])}
        if not series:
            continue
        if zero == zero:  # the trivial line: predicting zero for every masked cube (held out, mean over runs)
            xs = sorted({x for c in series.values() for x in c[0]})
            series["predict zero"] = ([xs[0], xs[-1]], [zero, zero], None)
        p = out_dir / f"{prefix}{'' if key == 'loss_appearance' else '_motion'}_loss.png"  # the names docs link to
        line_plot(p, series, f"{title} reconstruction loss (training, mean ± std over seeds)", "step", "MSE")
        paths.append(p)
    for tag, cols in (("motion", MOTION_COLUMNS), ("class", ("class",))):
        title = "linear probe, mean of " + ("direction / speed / arrow" if tag == "motion" else "class (appearance)")
        for cpu in (False, True):
            p = out_dir / f"{prefix}_probe_{tag}{'_cpu' if cpu else ''}.png"
            line_plot(p, probe_curves(results, cols, cpu), title + " (%)", "pretraining CPU-hours" if cpu else "pretraining step",
                      "accuracy %")
            paths.append(p)
    return paths


STUDY_MARK = "<!-- the study: written by benchmarks/reproduce.py from here on -->"


def report(results: Dict[str, List[Result]], setup: Setup, command: str, pictures: Sequence[Path], rel_to: Path,
           ledger: Ledger, ablation: Optional[Dict[str, List[Result]]] = None, ablation_seeds=()) -> str:
    from motionmae.config import load_config

    cfg = pretrain_cfg(setup, SHA, Path("data"), 0, Path("run"))
    m = cfg.model
    lines = [
        "# Results: does the motion target help? (small-scale study)",
        "",
        f"Command: `{command}` (runs resume; a finished run is read back, so the command also just rebuilds this page). "
        f"Every number is mean ± std over seeds {', '.join(map(str, setup.seeds))} (same data, steps and seed for every model)"
        + (f"; ablation rows over seeds {', '.join(map(str, ablation_seeds))}" if ablation else "") + ". "
        f"CPU time of the whole study so far: **{ledger.hours():.1f} CPU-hours** (pretraining {ledger.hours('pretrain/'):.1f}, "
        f"probes {ledger.hours('probe/'):.1f}, fine-tuning {ledger.hours('finetune/'):.1f}, VOS {ledger.hours('vos/'):.2f}), "
        "one thread per process, the data-loader workers' CPU included.",
        "",
        f"- Data: the built-in synthetic set (`motionmae make-dataset`, default settings{', style ' + str(setup.style) if setup.style else ''}), "
        f"{setup.num_train} train / {setup.num_val} val videos, {setup.video_frames} frames at {setup.video_size}x{setup.video_size}; "
        "labels: class (glyph shape: appearance), direction, speed, arrow of time (motion: not readable from one frame).",
        f"- Model (config `{setup.config}`): ViT {m.dims()[0]}x{m.dims()[1]}, patch {m.patch_size}, tubelet {m.tubelet_size}, "
        f"{m.num_frames} frames (stride {cfg.data.sampling_rate}) at {m.img_size} px, pos-embed {m.pos_embed}; decoder "
        f"{m.decoder_embed_dim}x{m.decoder_depth}; mask ratio {cfg.mask.ratio}. videomae = tube masking + no motion target; "
        "motionmae = per-slice masking + motion target (sha: shared decoder, ind: two decoders).",
        f"- Pretraining: {setup.steps} steps x batch {cfg.train.batch_size}, AdamW, peak lr {cfg.train.base_lr * cfg.train.batch_size / 256:g}, "
        f"warm-up {cfg.train.warmup_steps}, cosine, {'fp32' if cfg.train.amp == 'none' else cfg.train.amp}.",
        f"- Evaluation: frozen encoder, mean-pooled features, whole frames; k-NN (DINO weighting) and linear probe "
        f"({', '.join(setup.probe)}) at step 0 (random init) and every {setup.probe_every} steps; fine-tune "
        f"{setup.finetune_steps} steps on `{setup.finetune_column}` (layer decay 0.75, no mixup / cutmix / random erasing / "
        "label smoothing / RandAugment), val top-1; label propagation on the synthetic VOS set "
        f"(`make-dataset --kind vos`, {setup.vos_sequences} sequences, frames at {setup.vos_size} px, default DINO settings); "
        "held-out reconstruction loss of the final checkpoint / the loss of predicting zero for every masked cube, "
        "appearance and (for the models with a motion target) motion (200 val clips, one seeded mask each).",
        "",
        f"## Linear probe at the last step ({setup.steps}), fine-tuning, VOS, reconstruction (%)",
        "",
        summary_table(results, setup, "linear"),
        "",
        "## The claims, seed by seed (paired: motionmae minus videomae)",
        "",
        hypotheses_table(results, setup),
        "",
        "## k-NN at the last step (%)",
        "",
        summary_table(results, setup, "knn"),
        "",
        "## Convergence: linear probe at every probed step (%), motion mean / class",
        "",
        convergence_table(results, "linear"),
        "",
        "## Per seed (linear probe at the last step)",
        "",
        per_seed_table(results),
        "",
    ]
    if ablation:
        lines += ["## Ablations (one change each from the models above)", "",
                  summary_table(ablation, setup, "linear"), "",
                  convergence_table(ablation, "linear"), "", per_seed_table(ablation), ""]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(rel_to).as_posix()})" for p in pictures]
    lines += ["", "## What we find", "", "FINDINGS", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="work directory (data, runs, probe caches, results.json)")
    p.add_argument("--quick", action="store_true", help="tiny everything, one seed (CI smoke test)")
    p.add_argument("--seeds", default="", help="comma list (default 0,1,2,3,4)")
    p.add_argument("--steps", type=int, default=0, help="pretraining steps (default 3000)")
    p.add_argument("--ablation", default="", help="'all' or a comma list of ablation names (" + ", ".join(ABLATIONS) + ")")
    p.add_argument("--ablation-seeds", default="0,1,2")
    p.add_argument("--only", default="", help="comma list of model names to run (default: the three models)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init rows")
    p.add_argument("--report-only", action="store_true", help="train nothing new: report the runs that are finished")
    p.add_argument("--update-docs", action="store_true", help="write docs/RESULTS.md and docs/results_*.png")
    p.add_argument("--verbose", action="store_true", help="show the training progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; the study uses 1)")
    p.add_argument("--style", default="", metavar="KEY=VALUE;...", help="synthetic.Style fields of the data (default: the default data)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = Setup(**asdict(QUICK)) if args.quick else Setup()
    if args.seeds:
        setup.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        setup.steps = args.steps
    if args.style:
        from motionmae.data.synthetic import Style

        setup.style = Style.parse(args.style)
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "cost.json")
    for n in args.only.split(",") if args.only else ():
        if n not in KINDS:
            p.error(f"--only: unknown name '{n}'; valid: {', '.join(KINDS)}")
    names = {n: KINDS[n] for n in args.only.split(",")} if args.only else dict(KINDS)
    chosen = list(ABLATIONS) if args.ablation == "all" else [a for a in args.ablation.split(",") if a]
    for n in chosen:
        if n not in ABLATIONS:
            p.error(f"--ablation: unknown name '{n}'; valid: {', '.join(ABLATIONS)}")
    quiet = not args.verbose
    t0 = time.time()
    log = lambda msg: print(f"[{(time.time() - t0) / 60:6.1f} min] {msg}", flush=True)  # noqa: E731
    if args.report_only:
        results = reread(out, setup, names, not args.no_baseline)
    else:
        results = run_all(setup, out, names, quiet, ledger, log, baseline=not args.no_baseline)
    ablation, ab_seeds = None, tuple(int(s) for s in args.ablation_seeds.split(","))
    if chosen:
        ab_setup = Setup(**{**asdict(setup), "seeds": ab_seeds})
        ablation = (reread(out, ab_setup, {n: ABLATIONS[n] for n in chosen}, False) if args.report_only else
                    run_all(ab_setup, out, {n: ABLATIONS[n] for n in chosen}, quiet, ledger, log, baseline=False))
    # the page shows the command that trains and reports (it reads finished runs back): without --report-only
    command = shlex.join(["python", "benchmarks/reproduce.py"]
                         + [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"])
    docs_dir = DOCS if args.update_docs else out
    pictures = plots(results, docs_dir)
    text = report(results, setup, command, pictures, docs_dir, ledger, ablation, ab_seeds)
    target = docs_dir / "RESULTS.md"
    findings, preamble = "", ""
    old = target.read_text() if target.exists() else ""
    if "## What we find" in old:  # keep the hand-written reading of the numbers
        findings = old.split("## What we find", 1)[1].strip()
    if STUDY_MARK in old:  # and the hand-written sections above the study (the diagnosis)
        preamble = old.split(STUDY_MARK, 1)[0] + STUDY_MARK + "\n"
    target.write_text(preamble + text.replace("FINDINGS", findings or "(to be written after reading the tables)"))
    (out / "results.json").write_text(json.dumps({**to_json(results, setup), "ablation": to_json(ablation, setup) if ablation else None,
                                                  "cpu_seconds": ledger.data}, indent=1))
    print(summary_table(results, setup, "linear"))
    print(f"wrote {target}")
    return 0


def reread(out: Path, setup: Setup, names: Dict[str, tuple], baseline: bool) -> Dict[str, List[Result]]:
    """The results of runs that are finished (no training; a run without its final checkpoint is left out)."""
    data = make_data(setup, out, True)
    got = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    stored = {}
    for block in (got.get("results") or {}, (got.get("ablation") or {}).get("results") or {}):
        for n, rs in block.items():
            for r in rs:
                stored[(n, r["seed"])] = r
    for f in sorted(out.glob("partial-*.json")):
        for n, rs in json.loads(f.read_text())["results"].items():
            for r in rs:
                stored.setdefault((n, r["seed"]), r)
    results: Dict[str, List[Result]] = ({RANDOM: []} if baseline else {}) | {n: [] for n in names}
    for n in results:
        for seed in setup.seeds:
            r = stored.get((n, seed))
            if r is not None:
                r = Result(**{**r, "probes": {int(k): v for k, v in r["probes"].items()}})
                results[n].append(r)
    del data
    return {n: rs for n, rs in results.items() if rs}


if __name__ == "__main__":
    sys.exit(main())
