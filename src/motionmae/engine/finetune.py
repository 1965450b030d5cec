"""`motionmae finetune`: a pretrained encoder + a linear head, trained for action recognition.

VideoMAE's recipe (SPEC.md): mean-pooled tokens -> fc_norm -> head, AdamW (0.9, 0.999), wd 0.05, layer-wise
lr decay 0.75, drop path 0.1, RandAugment rand-m7-n4-mstd0.5-inc1 (finetune.aa) then a random resized crop
(finetune.crop=rrc), mixup 0.8 / cutmix 1.0 with
label smoothing 0.1, random erasing 0.25, warm-up + cosine, bf16, DDP. Evaluation with data.test_clips x
data.test_crops views per video, softmax scores averaged: top-1, top-5, per-class accuracy, confusion matrix (PNG)
-> `eval_metrics.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Callable

import torch

from motionmae.config import model_config_from_dict, save_config, to_dict
from motionmae.data.loader import Batches, make_loader
from motionmae.engine import checkpoint as ck
from motionmae.engine import distributed as D
from motionmae.engine.finetune_config import FinetuneConfig, load_finetune_config
from motionmae.engine.logger import MetricLogger, ProgressBar
from motionmae.engine.mixup import Mixup, RandomErasing, soft_cross_entropy
from motionmae.engine.optim import LossScaler, build_optimizer, lr_at, set_lr
from motionmae.errors import UserError

# parameter-name parts that belong to the embedding, "layer 0"
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "mask_token")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """VideoMAE / BEiT layer index of a parameter: embeddings 0, block i -> i + 1, the rest (norm, fc_norm,
    head) depth + 1. Works for names with a prefix (`module.`, `encoder.`)."""
    if any(part in _EMBED_NAMES for part in name.split(".")):
        return 0
    m = _BLOCK.search(name)
    return int(m.group(1)) + 1 if m else depth + 1


def layer_decay_fn(depth: int, decay: float) -> Callable[[str], float]:
    """lr multiplier `decay ** (depth + 1 - layer_id)`: 1 for the head, decay for the last block, ...,
    decay ** (depth + 1) for the embedding. Pass as `lr_scale_fn` to `engine.optim.build_optimizer`."""
    return lambda name: decay ** (depth + 1 - layer_id(name, depth))


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="", metavar="PRESET_OR_YAML",
                        help="a preset or YAML file (sections model, data, train, finetune); the encoder architecture "
                             "and clip format come from --pretrained")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="e.g. data.train=train.csv data.val=val.csv finetune.label_column=direction train.epochs=50")
    parser.add_argument("--pretrained", default="", metavar="CKPT",
                        help="pretraining checkpoint (file or run directory) whose encoder is fine-tuned; omit to train from scratch")
    parser.add_argument("--resume", default="auto", metavar="PATH|auto|none",
                        help="continue from a checkpoint file or run directory; auto (default): from OUTPUT_DIR's last checkpoint")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoint given by --resume (default: OUTPUT_DIR's last) on data.val and stop")


def run(args) -> int:
    from motionmae.engine.checkpoint import read_state

    checkpoint_config = read_state(args.pretrained).get("config") if args.pretrained else None
    if args.pretrained and not checkpoint_config:
        raise UserError(f"{args.pretrained}: carries no config; convert foreign weights with `motionmae convert` first")
    cfg = load_finetune_config(args.config, args.overrides, checkpoint_config)
    finetune(cfg, pretrained=args.pretrained, resume=args.resume, eval_only=args.eval_only)
    return 0


# ----------------------------------------------------------------------------------------------
# the loop


def finetune(cfg: FinetuneConfig, pretrained: str = "", resume: str = "auto", eval_only: bool = False) -> dict:
    """Fine-tune per `cfg`; returns a summary (step, loss, run dir, checkpoint, and the last eval metrics)."""
    info = D.init_distributed(cfg.train.device)
    try:
        return _finetune(cfg, info, pretrained, resume, eval_only)
    finally:
        D.cleanup()


def _finetune(cfg: FinetuneConfig, info: D.DistInfo, pretrained: str, resume: str, eval_only: bool) -> dict:
    from motionmae.data.datasets import build_dataset, collate
    from motionmae.data.transforms import to_model_input
    from motionmae.engine.pretrain import NonFiniteLossError, _resume_path, check_data_source, make_plan, resolve_amp
    from motionmae.eval.probe import label_names, resolve_label_column
    from motionmae.models.classifier import build_classifier, load_pretrained_encoder

    t, ft, device, main = cfg.train, cfg.finetune, info.device, info.is_main
    run_dir = Path(t.output_dir)
    say = print if main else (lambda *a, **k: None)

    # ---- data: the label column and the number of classes come from the lists
    check_data_source(cfg.data)
    train_ds = build_dataset(cfg.data, "train", "finetune", seed=t.seed, aa=ft.aa, crop=ft.crop)
    names = label_names(cfg.data.train, train_ds.num_labels)
    col = resolve_label_column(ft.label_column, names)
    val_ds = build_dataset(cfg.data, "val", "test", seed=t.seed) if cfg.data.val else None
    if val_ds is not None and val_ds.num_labels != train_ds.num_labels:
        raise UserError(f"data.val has {val_ds.num_labels} label column(s), data.train has {train_ds.num_labels}")
    num_classes = max([train_ds.num_classes[col]] + ([val_ds.num_classes[col]] if val_ds is not None else []))
    plan = make_plan(cfg, len(train_ds), info.world_size)
    amp_dtype = resolve_amp(t.amp, device)

    # ---- model and optimiser: identical init on every rank
    torch.manual_seed(t.seed)
    model = build_classifier(cfg.model, num_classes)
    ckpt_path = _resume_path(resume, run_dir)
    if eval_only and ckpt_path is None:
        raise UserError(f"--eval-only: no checkpoint to evaluate in {run_dir} (pass --resume PATH)")
    if pretrained and ckpt_path is None:
        from motionmae.engine.checkpoint import load_model_state

        sd, saved = load_model_state(pretrained)
        source_grid = model_config_from_dict(saved, str(pretrained)).grid() if saved.get("model") else None
        report = load_pretrained_encoder(model, sd, source_grid=source_grid)
        say(f"loaded encoder from {pretrained} (new: {', '.join(report['missing']) or 'nothing'}; "
            f"left out: {len(report['dropped'])} pretraining-only tensors)")
    elif not pretrained and ckpt_path is None:
        say("note: no --pretrained checkpoint: training from a random initialisation")
    model.to(device)
    depth = cfg.model.dims()[1]
    optimizer = build_optimizer(model, lr=plan.lr, weight_decay=t.weight_decay, betas=t.betas,
                                lr_scale_fn=layer_decay_fn(depth, ft.layer_decay))
    scaler = LossScaler(amp_dtype, device)
    torch.manual_seed(D.derive_seed(t.seed, info.rank))  # drop path draws differ per rank

    step, epoch, pos = 0, 0, 0
    if ckpt_path is not None:
        if ck.read_state(ckpt_path).get("kind") != "finetune":
            raise UserError(f"{ckpt_path} is not a fine-tuning checkpoint (a pretraining run?): set train.output_dir to a "
                            "directory of its own, pass the pretraining checkpoint as --pretrained")
        state = ck.load_checkpoint(ckpt_path, model, None if eval_only else optimizer, restore_rng=info.world_size == 1)
        step, epoch, pos = state.get("step", 0), state.get("epoch", 0), state.get("epoch_pos", 0)
        scaler.load_state_dict(state.get("loss_scaler", {}))
        say(f"{'evaluating' if eval_only else 'resumed from'} {ckpt_path} at step {step}")
    evaluator = Evaluator(cfg, val_ds, col, names[col], num_classes, info, amp_dtype, run_dir)
    if eval_only:
        return {"step": step, "eval": evaluator(model, step)}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    D.barrier()

    ddp = info.world_size > 1
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if ddp else model
    sampler = D.ShardedSampler(len(train_ds), info.world_size, info.rank, shuffle=True, seed=t.seed, drop_last=True)
    micro_per_epoch = plan.steps_per_epoch * t.accum_steps
    loader_gen = torch.Generator().manual_seed(D.derive_seed(t.seed, info.rank, 1))
    mixup = Mixup(num_classes, ft.mixup, ft.cutmix, ft.mixup_prob, ft.mixup_switch_prob, ft.label_smoothing)
    erase = RandomErasing(ft.reprob)

    logger = MetricLogger(run_dir, enabled=main, resume_step=step if ckpt_path is not None else None)
    d, n_blocks, _ = cfg.model.dims()
    say(f"fine-tuning ViT (dim {d}, depth {n_blocks}) {cfg.model.num_frames}x{cfg.model.img_size} on column "
        f"'{names[col]}' ({num_classes} classes) on {device} x {info.world_size} rank(s), amp={amp_dtype or 'fp32'}")
    say(f"  {len(train_ds)} train videos; effective batch {plan.global_batch} = {t.batch_size} x {t.accum_steps} accum x "
        f"{info.world_size} ranks; lr = {t.base_lr:g} x {plan.global_batch}/256 = {plan.lr:.3e}, layer decay {ft.layer_decay}")
    say(f"  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), warm-up {plan.warmup_steps}; mixup {ft.mixup} / cutmix "
        f"{ft.cutmix}, label smoothing {ft.label_smoothing}, random erasing {ft.reprob}, RandAugment {ft.aa or 'off'}, "
        f"crop {ft.crop}, "
        f"drop path {cfg.model.drop_path}; run dir {run_dir}")
    bar = ProgressBar(plan.total_steps, "finetune", enabled=main, initial=step)
    params = [p for p in model.parameters() if p.requires_grad]
    last_ckpt = ckpt_path
    summary: dict = {"run_dir": str(run_dir), "label_column": names[col], "num_classes": num_classes}
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    net.train()

    while step < plan.total_steps:
        if pos >= micro_per_epoch:
            epoch, pos = epoch + 1, 0
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch, start=pos * t.batch_size)
        loader = make_loader(train_ds, t.batch_size, cfg.data.num_workers, sampler=sampler, collate_fn=collate, drop_last=True,
                             pin_memory=device.type == "cuda", generator=loader_gen, train=True)
        with Batches(loader) as batches:  # workers are reaped on every way out, errors included
            while pos < micro_per_epoch and step < plan.total_steps:
                sums = torch.zeros(3, dtype=torch.float64)  # loss, correct (vs the dominant label), clips
                for micro in range(t.accum_steps):
                    batch = next(batches)
                    x = to_model_input(batch["video"], cfg.data.mean, cfg.data.std, device)
                    y = batch["label"][:, col].to(device)
                    # batch-level draws, seeded by (seed, rank, step, micro): a resumed run repeats them
                    g = torch.Generator().manual_seed(D.derive_seed(t.seed, info.rank, step, micro))
                    x, soft = mixup(erase(x, g), y, g)
                    sync = micro == t.accum_steps - 1 or not ddp
                    with (contextlib.nullcontext() if sync else net.no_sync()):
                        with autocast():
                            logits = net(x)
                        loss = soft_cross_entropy(logits, soft)
                        scaler.backward(loss / t.accum_steps)
                    sums += torch.tensor([loss.item(), (logits.argmax(-1) == soft.argmax(-1)).sum().item(), y.shape[0]],
                                         dtype=torch.float64)
                    pos += 1
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad if t.clip_grad > 0 else float("inf"))
                red = D.all_reduce_sum(torch.cat([sums, torch.tensor([float(norm)], dtype=torch.float64)])) if ddp else \
                    torch.cat([sums, torch.tensor([float(norm)], dtype=torch.float64)])
                loss_v = float(red[0]) / (t.accum_steps * info.world_size)
                # with fp16 an inf/nan gradient is an overflow: the scaler skips that step and lowers the scale
                if not (math.isfinite(loss_v) and (scaler.enabled or math.isfinite(float(red[3])))):
                    bar.close()
                    logger.close()
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise NonFiniteLossError(f"non-finite loss or gradient at step {step} (epoch {epoch}); stopping, {where}. "
                                             "Lower train.base_lr, set train.clip_grad, or try train.amp=none")
                lr = lr_at(step, plan.total_steps, plan.warmup_steps, plan.lr, t.min_lr, t.warmup_lr)
                set_lr(optimizer, lr)
                scaler.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % t.log_every == 0 or step == plan.total_steps:
                    row = {"loss": loss_v, "train_acc": float(red[1] / red[2]), "lr": lr,
                           "grad_norm": float(red[3]) / info.world_size, "epoch": epoch}
                    if scaler.enabled:
                        row["loss_scale"] = scaler.scale()
                    logger.log(step, row)
                    bar.update(step, loss=loss_v, lr=lr)
                    summary["loss"] = loss_v
                if step % t.save_every == 0 or step == plan.total_steps:
                    state = {"step": step, "epoch": epoch, "epoch_pos": pos, "config": to_dict(cfg), "kind": "finetune",
                             "num_classes": num_classes, "label_column": names[col], "world_size": info.world_size,
                             "loss_scaler": scaler.state_dict()}
                    if main:
                        last_ckpt = ck.save_run_checkpoint(run_dir, step, model, optimizer, state,
                                                           numbered=step % t.save_every == 0, keep_last=t.keep_last)
                    D.barrier()
                if val_ds is not None and ((ft.eval_every > 0 and step % ft.eval_every == 0) or step == plan.total_steps):
                    metrics = evaluator(model, step, bar)
                    logger.log(step, {k: metrics[k] for k in ("top1", "top5", "mean_class_acc")}, prefix="val/")
                    summary["eval"] = metrics
                    net.train()

    bar.close()
    logger.close()
    summary.update(step=step, checkpoint=str(last_ckpt) if last_ckpt else None)
    if main:
        ev = summary.get("eval")
        score = f"; val top-1 {100 * ev['top1']:.1f}% top-5 {100 * ev['top5']:.1f}% ({run_dir / 'eval_metrics.json'})" if ev else ""
        print(f"done: {step} steps; checkpoint {last_ckpt}{score}; log {run_dir / 'metrics.jsonl'}")
    return summary


class Evaluator:
    """Multi-view evaluation on data.val: top-1/5, per-class accuracy, confusion matrix -> JSON + PNG (rank 0)."""

    def __init__(self, cfg: FinetuneConfig, val_ds, col: int, column: str, num_classes: int, info: D.DistInfo, amp_dtype,
                 run_dir: Path):
        from motionmae.eval.probe import class_names

        self.cfg, self.ds, self.col, self.column, self.num_classes = cfg, val_ds, col, column, num_classes
        self.info, self.amp_dtype, self.run_dir = info, amp_dtype, run_dir
        self.class_names = class_names(cfg.data.train, column, num_classes)

    def __call__(self, model, step: int, bar=None) -> dict:
        from motionmae.data.datasets import collate
        from motionmae.eval.metrics import classification_metrics, save_confusion_png
        from motionmae.eval.multiview import predict_multiview

        if self.ds is None:
            raise UserError("no data.val to evaluate on")
        cfg = self.cfg
        sampler = D.ShardedSampler(len(self.ds), self.info.world_size, self.info.rank, shuffle=False, drop_last=False)
        loader = make_loader(self.ds, cfg.finetune.eval_batch_size or cfg.train.batch_size, cfg.data.num_workers,
                             sampler=sampler, collate_fn=collate)
        scores, labels, _ = predict_multiview(model, loader, self.info.device, cfg.data.mean, cfg.data.std,
                                              self.amp_dtype, max_videos=cfg.finetune.eval_max_videos)
        m = classification_metrics(scores, labels[:, self.col], self.num_classes)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        result = {"step": step, "label_column": self.column, "num_classes": self.num_classes,
                  "views": {"temporal": cfg.data.test_clips, "spatial": cfg.data.test_crops}, **m,
                  "per_class_acc": dict(zip(names, m["per_class_acc"])), "class_names": names}
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "eval_metrics.json").write_text(json.dumps(result, indent=1))
            save_confusion_png(m["confusion"], self.run_dir / "confusion.png", names)
            msg = (f"eval step {step}: top-1 {100 * m['top1']:.1f}%  top-5 {100 * m['top5']:.1f}%  mean class "
                   f"{100 * m['mean_class_acc']:.1f}%  ({m['num_samples']} videos x {cfg.data.test_clips * cfg.data.test_crops} views)")
            bar.write(msg) if bar is not None else print(msg)
        return result

