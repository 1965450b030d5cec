"""`motionmae reproduce --recipe ssv2|k400|ucf101|hmdb51|davis`: one of the paper's recipes, end to end.

Stages, each a run directory of its own under --out:
  pretrain   the recipe's pretraining preset (pretrain-<dataset>; davis: pretrain-k400) on the train list
  finetune   its fine-tuning preset (finetune-<dataset>) from the pretrained encoder, on the train list
  test       multi-view testing of the fine-tuned model on the test list (data.test_clips x data.test_crops views)
  vos        (davis, instead of finetune and test) label propagation on DAVIS-2017 with the frozen pretrained encoder
then `results.json`, `results.md` and a model card (`README.md`) in --out.

Rerunning the command continues the work: a finished stage (its `done.json`) is skipped, a stopped one resumes from
its last checkpoint (the Trainer's `--resume auto`). A finished stage whose config, or an earlier stage, changed is
refused rather than silently reused. Before anything runs, the plan is printed: per stage the work and the GPU-hours
it needs, estimated from the FLOP model (models/flops.py) at a stated GPU peak and model FLOP utilisation.

Data are inputs, nothing downloads: `--data-root DIR` in VideoMAE's list layout (DIR/train.csv, DIR/test.csv or
DIR/val.csv, `path label` lines), or `data.train=... data.val=...` (data.val: the test list); `--davis-root` for
davis. Overrides: `section.key=value` applies to every stage whose config has that section; `STAGE.section.key=value`
to one stage (e.g. `pretrain.train.epochs=400`, `test.data.test_clips=10`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from motionmae import config as C
from motionmae.data.datasets import read_annotation_list
from motionmae.errors import UserError
from motionmae.models.flops import finetune_step_flops, multiview_flops, pretrain_step_flops, vos_sequence_flops

STAGES = ("pretrain", "finetune", "test", "vos")
STAGE_CONFIGS = {"pretrain": C.PretrainConfig, "finetune": C.FinetuneConfig, "test": C.FinetuneConfig, "vos": C.VOSConfig}
DONE = "done.json"
# keys that change how a stage runs, not what it computes: a finished stage is reused whatever they say
RUN_ONLY_KEYS = {"data.num_workers", "train.device", "train.log_every", "train.save_every", "train.keep_last",
                 "train.viz_every", "train.loggers", "finetune.eval_batch_size", "vos.batch_size", "vos.device"}
DEFAULT_GPU_TFLOPS = 312.0  # A100 bf16 dense peak
DEFAULT_MFU = 0.3


@dataclass(frozen=True)
class Recipe:
    """One of the paper's settings. Video counts are the datasets' (used for the plan until lists are given)."""

    dataset: str
    pretrain: str
    finetune: str  # "" for davis: the frozen encoder goes to VOS instead
    num_classes: int
    train_videos: int
    test_videos: int
    reference: str  # published numbers of the same setting, for the model card


RECIPES = {
    "ssv2": Recipe("Something-Something v2", "pretrain-ssv2", "finetune-ssv2", 174, 168_913, 24_777,
                   "VideoMAE ViT-B, 800 epochs, this fine-tuning: 69.6 top-1 (its MODEL_ZOO.md); MotionMAE reports "
                   "+1.2 top-1 over the prior art on SSv2 (SPEC.md)"),
    "k400": Recipe("Kinetics-400", "pretrain-k400", "finetune-k400", 400, 240_000, 20_000,
                   "VideoMAE ViT-B, 800 epochs, this fine-tuning: 79.4 top-1 (its MODEL_ZOO.md); MotionMAE reports "
                   "+0.6 over VideoMAE at 400 epochs (SPEC.md)"),
    "ucf101": Recipe("UCF101 (split 1)", "pretrain-ucf101", "finetune-ucf101", 101, 9_537, 3_783,
                     "VideoMAE ViT-B, 3200 epochs: 91.3 top-1 (its paper); MotionMAE reports +3.2 over it (SPEC.md)"),
    "hmdb51": Recipe("HMDB51 (split 1)", "pretrain-hmdb51", "finetune-hmdb51", 51, 3_570, 1_530,
                     "VideoMAE ViT-B, 4800 epochs: 62.6 top-1 (its paper)"),
    "davis": Recipe("DAVIS-2017 val, encoder pretrained on Kinetics-400", "pretrain-k400", "", 0, 240_000, 30,
                    "MotionMAE reports +3.0 J&F over VideoMAE with frozen features (SPEC.md)"),
}
DAVIS_VAL = (30, 1999, 480, 854)  # sequences, frames, frame height and width of DAVIS-2017 val at 480p


@dataclass
class Stage:
    name: str
    cfg: object
    run_dir: Path
    work: str = ""  # what the plan says it does
    flops: float = 0.0
    status: str = ""  # done | resume | new
    result: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="the paper's setting to reproduce")
    parser.add_argument("--data-root", default="", metavar="DIR",
                        help="VideoMAE's list layout: DIR/train.csv and DIR/test.csv (or DIR/val.csv), `path label` lines; "
                             "or give data.train=... data.val=...")
    parser.add_argument("--davis-root", default="", metavar="DIR", help="DAVIS-2017 root (the davis recipe)")
    parser.add_argument("--out", default="", metavar="DIR", help="where the stages, results and model card go "
                                                                   "(default: runs/reproduce-RECIPE)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the GPU-hour estimate, run nothing")
    parser.add_argument("--gpu-tflops", type=float, default=DEFAULT_GPU_TFLOPS,
                        help=f"GPU peak for the estimate, TFLOP/s (default {DEFAULT_GPU_TFLOPS:g}: A100 bf16 dense)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOP utilisation assumed for the estimate (default {DEFAULT_MFU:g})")
    parser.add_argument("overrides", nargs="*", metavar="[STAGE.]SECTION.KEY=VALUE",
                        help="e.g. train.batch_size=16 (every stage with a train section), pretrain.train.epochs=400")


def run(args) -> int:
    if not 0 < args.mfu <= 1 or args.gpu_tflops <= 0:
        raise UserError(f"--mfu must be in (0, 1] and --gpu-tflops > 0, got {args.mfu} and {args.gpu_tflops}")
    out = Path(args.out or f"runs/reproduce-{args.recipe}")
    return reproduce(args.recipe, out, args.data_root, args.davis_root, args.overrides, dry_run=args.dry_run,
                     gpu_tflops=args.gpu_tflops, mfu=args.mfu)


def reproduce(recipe: str, out, data_root: str = "", davis_root: str = "", overrides=(), dry_run: bool = False,
              gpu_tflops: float = DEFAULT_GPU_TFLOPS, mfu: float = DEFAULT_MFU, say=print) -> int:
    """Plan, print, then run every stage not done yet; returns 0, or 143 when a stage was stopped by SIGTERM. Under
    torchrun every rank runs the stages (their Trainers share the work); rank 0 alone prints and writes the records."""
    out = Path(out)
    r = RECIPES[recipe]
    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        say = _quiet
    lists = data_lists(data_root, overrides)
    stages = plan(recipe, out, lists, davis_root, overrides)
    for s in stages:
        s.status = stage_status(s, stages)
    say(format_plan(recipe, out, lists, davis_root, stages, gpu_tflops, mfu))
    if dry_run:
        return 0
    check_inputs(recipe, lists, davis_root)
    out.mkdir(parents=True, exist_ok=True)
    for s in stages:
        if s.status == "done":
            s.result = json.loads((s.run_dir / DONE).read_text())["result"]
            continue
        say(f"\n== {s.name}: {s.work}")
        t0 = time.time()
        result = run_stage(s, out, r, davis_root)
        if result.get("stopped"):
            say(f"{s.name} stopped; run the same command again to continue")
            return 143
        s.result = result
        if main:
            write_done(s, stages, time.time() - t0)
    if main:
        write_reports(recipe, out, lists, davis_root, overrides, stages, gpu_tflops, mfu)
    say(f"\nresults: {out / 'results.md'}; model card: {out / 'README.md'}")
    return 0


def _quiet(*args) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# the plan


def data_lists(data_root: str, overrides) -> Dict[str, str]:
    """{"train", "test"}: data.train / data.val from the overrides, else VideoMAE's layout under `data_root`
    (test.csv, else val.csv, as its test.csv is the val list)."""
    given = C.parse_overrides([o for o in overrides if o.split("=", 1)[0] in ("data.train", "data.val")]).get("data", {})
    root = Path(data_root) if data_root else None
    test = root / "test.csv" if root else None
    if test is not None and not test.exists() and (root / "val.csv").exists():
        test = root / "val.csv"
    return {"train": str(given.get("train") or (root / "train.csv" if root else "")),
            "test": str(given.get("val") or (test or ""))}


def _route(overrides) -> Dict[str, List[str]]:
    """Overrides per stage: `STAGE.section.key=value` to that stage, `section.key=value` to every stage whose config
    has the section (an unknown section is an error naming the valid ones)."""
    per = {s: [] for s in STAGES}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form [stage.]section.key=value")
        parts = item.split("=", 1)[0].split(".")
        if len(parts) == 3 and parts[0] in STAGES:
            per[parts[0]].append(item.split(".", 1)[1])
            continue
        if parts[:2] in (["data", "train"], ["data", "val"]):
            continue  # the lists: data_lists
        owners = [s for s, cls in STAGE_CONFIGS.items() if parts[0] in {f.name for f in dataclasses.fields(cls)}]
        if not owners:
            raise UserError(f"override '{item}': no stage has a section '{parts[0]}'; sections: "
                            f"{', '.join(sorted(C.SECTIONS))}, or prefix a stage ({', '.join(STAGES)})")
        for s in owners:
            per[s].append(item)
    return per


def plan(recipe: str, out: Path, lists: Dict[str, str], davis_root: str, overrides) -> List[Stage]:
    """The stages of `recipe` with their resolved configs and their work (FLOPs)."""
    r = RECIPES[recipe]
    per = _route(overrides)
    # the lists first, so that a stage's own data.train (pretrain.data.train=...: another pretraining set) wins
    train = f"data.train={lists['train']}"
    pcfg = C.load_config(r.pretrain, [train, *per["pretrain"], f"train.output_dir={out / 'pretrain'}"])
    saved = C.to_dict(pcfg)  # the checkpoint-to-be's config: the later stages' architecture
    pre = Stage("pretrain", pcfg, out / "pretrain")
    n_train = count_videos(pcfg.data.train, r.train_videos)
    clips = _clips(pcfg, n_train)
    pre.work = f"{_steps_text(pcfg, n_train)} = {_num(clips)} clips (masked {pcfg.mask.ratio:g}, {pcfg.mask.kind})"
    pre.flops = pretrain_step_flops(pcfg, 1)["total"] * clips
    stages = [pre]
    if r.finetune:
        ft_over = [train, *per["finetune"], "data.val="]
        fcfg = C.load_config(r.finetune, [*ft_over, f"train.output_dir={out / 'finetune'}"], C.FinetuneConfig, saved)
        ft = Stage("finetune", fcfg, out / "finetune")
        n_train = count_videos(fcfg.data.train, r.train_videos)
        clips = _clips(fcfg, n_train)
        ft.work = f"{_steps_text(fcfg, n_train)} = {_num(clips)} clips, every token"
        ft.flops = finetune_step_flops(fcfg.model, r.num_classes, 1)["total"] * clips
        tcfg = C.load_config(r.finetune, [*ft_over, f"data.val={lists['test']}", *per["test"],
                                          f"train.output_dir={out / 'test'}"], C.FinetuneConfig, saved)
        test = Stage("test", tcfg, out / "test")
        n_test = count_videos(tcfg.data.val, r.test_videos)
        views = tcfg.data.test_clips * tcfg.data.test_crops
        test.work = f"{n_test:,} videos x {tcfg.data.test_clips}x{tcfg.data.test_crops} views = {_num(n_test * views)} clips"
        test.flops = multiview_flops(tcfg.model, r.num_classes, views) * n_test
        stages += [ft, test]
    else:
        vcfg = C.load_config("", per["vos"], C.VOSConfig, saved)
        vos = Stage("vos", vcfg, out / "vos")
        seqs = davis_sizes(davis_root, vcfg)
        frames = sum(n for n, _ in seqs)
        vos.work = f"{len(seqs)} sequences, {frames:,} frames at {vcfg.vos.size or 'full'} px, frozen encoder"
        vos.flops = sum(sum(vos_sequence_flops(vcfg.model, n, grid, vcfg.vos).values()) for n, grid in seqs)
        stages.append(vos)
    return stages


def count_videos(path: str, default: int) -> int:
    """Videos of an annotation list (its lines), or the dataset's count when the list is not there (yet)."""
    if path and Path(path).is_file():
        return len(read_annotation_list(path))
    return default


def davis_sizes(davis_root: str, cfg: C.VOSConfig):
    """[(frames, token grid (h, w))] per sequence of the DAVIS split, or DAVIS-2017 val's sizes without a root."""
    from motionmae.eval import davis
    from motionmae.eval.vos import frame_grid

    p = cfg.model.patch_size
    if not davis_root or not Path(davis_root).is_dir():
        n_seq, n_frames, h, w = DAVIS_VAL
        return [(n_frames // n_seq + (i < n_frames % n_seq), frame_grid(h, w, cfg.vos.size, p)) for i in range(n_seq)]
    from PIL import Image

    out = []
    for seq in davis.list_sequences(davis_root, cfg.vos.split):
        if cfg.vos.sequences and seq.name not in cfg.vos.sequences:
            continue
        with Image.open(seq.frames[0]) as im:
            w, h = im.size
        out.append((len(seq.frames), frame_grid(h, w, cfg.vos.size, p)))
    return out


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the plan is made before any process group


def _clips(cfg, n_videos: int) -> int:
    """Clips a training stage processes: epochs x videos x samples (train.max_steps: steps x the global batch)."""
    t = cfg.train
    if t.max_steps:
        return t.max_steps * t.batch_size * t.accum_steps * _world() * cfg.data.num_samples
    return t.epochs * n_videos * cfg.data.num_samples


def _steps_text(cfg, n_videos: int) -> str:
    t, s = cfg.train, cfg.data.num_samples
    if t.max_steps:
        return f"{t.max_steps} steps x {t.batch_size * t.accum_steps * _world()} videos x {s} clip{'s' * (s > 1)}"
    return f"{t.epochs} epochs x {n_videos:,} videos x {s} clip{'s' * (s > 1)}"


def _num(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:g}"


def gpu_hours(flops: float, gpu_tflops: float, mfu: float) -> float:
    return flops / (gpu_tflops * 1e12 * mfu) / 3600


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 1 else f"{h:.2g}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"


def _pflop(flops: float) -> str:
    v = flops / 1e15
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def format_plan(recipe: str, out: Path, lists, davis_root, stages: List[Stage], gpu_tflops: float, mfu: float) -> str:
    r = RECIPES[recipe]
    m = stages[0].cfg.model
    d, depth, _ = m.dims()
    lines = [f"reproduce {recipe}: {r.dataset}; ViT (width {d}, depth {depth}) {m.num_frames}x{m.img_size}, presets "
             f"{r.pretrain}{' + ' + r.finetune if r.finetune else ''} -> {out}"]
    data = f"  data: train {lists['train'] or '(not given)'}"
    data += f"; test {lists['test'] or '(not given)'}" if r.finetune else f"; DAVIS {davis_root or '(not given)'}"
    lines.append(data)
    rows = [(s.name, s.work, _pflop(s.flops), _hours(gpu_hours(s.flops, gpu_tflops, mfu)), s.status)
            for s in stages]
    total = sum(s.flops for s in stages)
    rows.append(("total", "", _pflop(total), _hours(gpu_hours(total, gpu_tflops, mfu)), ""))
    head = ("stage", "work", "PFLOP", "GPU-hours (estimate)", "status")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(5)]
    for row in [head, *rows]:
        lines.append("  " + "  ".join(str(v).ljust(w) if i < 2 or i == 4 else str(v).rjust(w)
                                       for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    lines.append(f"  estimate: FLOPs of the model (models/flops.py: matmuls, convolutions, attention; forward + backward "
                 f"in training) / ({gpu_tflops:g} TFLOP/s GPU peak x {mfu:g} MFU); data loading, checkpoints and "
                 f"evaluation during training not counted (--gpu-tflops, --mfu)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# running, resuming, skipping


def _digest(stage: Stage, upstream: List[str]) -> str:
    cfg = _flat(C.to_dict(stage.cfg))
    kept = {k: v for k, v in cfg.items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps([kept, upstream], sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict) -> dict:
    return {f"{sec}.{k}": v for sec, keys in d.items() for k, v in keys.items()}


def _upstream(stage: Stage, stages: List[Stage]) -> List[str]:
    """Digests the stage builds on: every stage before it (test also builds on finetune, which builds on pretrain)."""
    before = stages[: stages.index(stage)]
    return [_read_done(s)["digest"] if _read_done(s) else "" for s in before]


def _read_done(stage: Stage) -> Optional[dict]:
    p = stage.run_dir / DONE
    return json.loads(p.read_text()) if p.is_file() else None


def stage_status(stage: Stage, stages: List[Stage]) -> str:
    """'done' (finished with this config, after the same earlier stages), 'resume' (a checkpoint to continue) or
    'new'. A finished stage that no longer matches is an error naming the keys that changed."""
    done = _read_done(stage)
    if done is None:
        return "resume" if (stage.run_dir / "checkpoints" / "last.safetensors").is_file() else "new"
    if done["digest"] == _digest(stage, _upstream(stage, stages)):
        return "done"
    now, then = _flat(C.to_dict(stage.cfg)), _flat(done["config"])
    changed = sorted(k for k in set(now) | set(then) if k not in RUN_ONLY_KEYS and now.get(k) != then.get(k))
    what = f"its config changed ({', '.join(changed)})" if changed else "an earlier stage was run again"
    raise UserError(f"{stage.run_dir} finished, but {what}: delete {stage.run_dir} (and the stages after it) to run "
                    "it again, or use another --out")


def write_done(stage: Stage, stages: List[Stage], seconds: float) -> None:
    record = {"stage": stage.name, "digest": _digest(stage, _upstream(stage, stages)), "config": C.to_dict(stage.cfg),
              "result": stage.result, "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = stage.run_dir / (DONE + ".tmp")
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, stage.run_dir / DONE)


def check_inputs(recipe: str, lists: Dict[str, str], davis_root: str) -> None:
    need = [("train", "the train list")] + ([("test", "the test list")] if RECIPES[recipe].finetune else [])
    for key, what in need:
        if not lists[key] or not Path(lists[key]).exists():
            raise UserError(f"{what} {'(' + lists[key] + ') ' if lists[key] else ''}is missing: pass --data-root DIR "
                            f"(DIR/train.csv, DIR/test.csv or DIR/val.csv) or data.{'train' if key == 'train' else 'val'}=PATH")
    if recipe == "davis" and not (davis_root and Path(davis_root).is_dir()):
        raise UserError(f"--davis-root {davis_root or ''} is missing: the DAVIS-2017 root (JPEGImages/480p, "
                        "Annotations/480p, ImageSets/2017)")


def run_stage(stage: Stage, out: Path, r: Recipe, davis_root: str) -> dict:
    """Run (or continue) one stage; its summary for results.json ({"stopped": True} after SIGTERM)."""
    from motionmae.engine.finetune import finetune
    from motionmae.engine.pretrain import pretrain

    if stage.name == "pretrain":
        s = pretrain(stage.cfg, resume="auto")
        return {"stopped": True} if s.get("stopped") else {"step": s["step"], "loss": s.get("loss"),
                                                             "checkpoint": s.get("checkpoint")}
    if stage.name == "finetune":
        s = finetune(stage.cfg, pretrained=str(out / "pretrain"), resume="auto",
                     spec_data=C.spec_dict(r.finetune).get("data") or {})
        return {"stopped": True} if s.get("stopped") else {"step": s["step"], "loss": s.get("loss"),
                                                             "checkpoint": s.get("checkpoint")}
    if stage.name == "test":
        s = finetune(stage.cfg, resume=str(out / "finetune"), eval_only=True)
        ev = s["eval"]
        keep = ("top1", "top5", "mean_class_acc", "num_samples", "num_classes", "views", "label_column")
        return {"step": s["step"], **{k: ev[k] for k in keep}}
    from motionmae.eval.features import load_weights
    from motionmae.eval.vos import segment_with_weights

    sd, config_dict = load_weights(out / "pretrain")
    res = segment_with_weights(sd, config_dict, stage.cfg, davis_root, stage.run_dir, where=str(out / "pretrain"))
    return {"split": res["split"], "sequences": res["sequences"], "global": res.get("global", {}),
            "frames": res.get("frames"), "seconds_per_frame": res.get("seconds_per_frame")}


# ----------------------------------------------------------------------------------------------
# results and model card


def results_table(recipe: str, stages: List[Stage]) -> str:
    by = {s.name: s for s in stages}
    rows = ["| metric | value | how |", "|---|---|---|"]
    if "test" in by:
        t = by["test"].result
        views = f"{t['views']['temporal']}x{t['views']['spatial']} views, {t['num_samples']} videos, {t['num_classes']} classes"
        rows += [f"| top-1 | {100 * t['top1']:.2f}% | {views} |", f"| top-5 | {100 * t['top5']:.2f}% | {views} |",
                 f"| mean class accuracy | {100 * t['mean_class_acc']:.2f}% | {views} |"]
    if "vos" in by:
        g, v = by["vos"].result.get("global", {}), by["vos"].result
        how = f"DAVIS-2017 {v.get('split')}, {v.get('sequences')} sequences, frozen encoder"
        rows += [f"| {k} | {100 * g[k]:.2f} | {how} |" for k in ("J&F-Mean", "J-Mean", "F-Mean") if k in g]
    return "\n".join(rows)


def write_reports(recipe: str, out: Path, lists, davis_root, overrides, stages: List[Stage], gpu_tflops, mfu) -> None:
    r = RECIPES[recipe]
    done = {s.name: _read_done(s) or {} for s in stages}
    results = {"recipe": recipe, "dataset": r.dataset, "overrides": list(overrides), "lists": lists,
               "stages": {s.name: {"result": s.result, "seconds": done[s.name].get("seconds"), "flops": s.flops,
                                   "estimated_gpu_hours": gpu_hours(s.flops, gpu_tflops, mfu)} for s in stages},
               "estimate": {"gpu_tflops": gpu_tflops, "mfu": mfu}}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = results_table(recipe, stages)
    (out / "results.md").write_text(f"# {recipe}: {r.dataset}\n\n{table}\n")
    (out / "README.md").write_text(model_card(recipe, out, lists, davis_root, overrides, stages, table, done, gpu_tflops, mfu))


def model_card(recipe, out, lists, davis_root, overrides, stages, table, done, gpu_tflops, mfu) -> str:
    r = RECIPES[recipe]
    pcfg = stages[0].cfg
    m = pcfg.model
    d, depth, heads = m.dims()
    redo = " ".join(["motionmae reproduce --recipe", recipe] + (["--davis-root", str(davis_root)] if davis_root else [])
                    + [f"data.train={lists['train']}"] + ([f"data.val={lists['test']}"] if r.finetune else [])
                    + [o for o in overrides if o.split("=", 1)[0] not in ("data.train", "data.val")] + ["--out", str(out)])
    stage_rows = ["| stage | preset | steps | run directory | wall time | estimated GPU-hours |", "|---|---|---|---|---|---|"]
    presets = {"pretrain": r.pretrain, "finetune": r.finetune, "test": r.finetune, "vos": "(vos defaults)"}
    for s in stages:
        secs = done[s.name].get("seconds")
        stage_rows.append(f"| {s.name} | {presets[s.name]} | {s.result.get('step', '-')} | `{s.run_dir}` | "
                          f"{_duration(secs)} | {_hours(gpu_hours(s.flops, gpu_tflops, mfu))} |")
    given = "\n".join(f"- `{o}`" for o in overrides) or "- none: the presets as shipped"
    weights = (f"- the fine-tuned classifier: `{out / 'finetune'}` (`motionmae finetune --eval-only --resume {out / 'finetune'}`; "
               f"`motionmae convert --from motionmae --to hf {out / 'finetune'} DIR` for transformers)\n" if r.finetune else "")
    return f"""# MotionMAE on {r.dataset}: `motionmae reproduce --recipe {recipe}`

A video ViT pretrained with MotionMAE's objective (masked appearance + motion reconstruction; Yang et al., arXiv
2210.04154){', fine-tuned and tested' if r.finetune else ' and evaluated frozen'} with the recipe of `{r.pretrain}`{' + `' + r.finetune + '`' if r.finetune else ''}
(every value traced to VideoMAE's scripts or the paper in docs/FIDELITY.md).

## Results

{table}

Published numbers of this setting: {r.reference}.

## Model

ViT (width {d}, depth {depth}, {heads} heads), {m.num_frames} frames of {m.img_size} px, tubelet {m.tubelet_size}, patch
{m.patch_size}, positional table `{m.pos_embed}`; pretraining: targets {', '.join(pcfg.objective.targets)}
(motion from {pcfg.objective.motion_frames} frames), decoder `{m.decoder}` ({m.decoder_embed_dim} wide, {m.decoder_depth} deep),
mask `{pcfg.mask.kind}` at {pcfg.mask.ratio:g}.

## Settings given on the command line (not the paper's when any)

{given}

## How it was made

{chr(10).join(stage_rows)}

GPU-hours are estimates: the FLOP model (models/flops.py) at {gpu_tflops:g} TFLOP/s peak and {mfu:g} MFU. Each stage's
resolved config is in its run directory (`config.yaml`, `done.json`). To run it again (finished stages are skipped):

```bash
{redo}
```

## Weights

- the pretrained encoder and decoders: `{out / 'pretrain'}` (`motionmae.load_encoder("{out / 'pretrain'}")`, `motionmae probe`,
  `motionmae vos`)
{weights}
## Deviations from VideoMAE's recipe

See docs/FIDELITY.md: MotionMAE's per-slice mask and motion target; the differences of sampled frames unless
`objective.motion_frames=adjacent`; lr scaled per 256 clips in pretraining and per 256 videos in fine-tuning, as VideoMAE.
"""
