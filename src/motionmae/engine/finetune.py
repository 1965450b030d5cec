"""`motionmae finetune`: a pretrained encoder + a linear head, trained for action recognition by the engine's `Trainer`.

VideoMAE's recipe (SPEC.md): mean-pooled tokens -> fc_norm -> (fc dropout) -> head, AdamW (0.9, 0.999), wd 0.05,
layer-wise lr decay 0.75, drop path 0.1, RandAugment rand-m7-n4-mstd0.5-inc1 (finetune.aa) then a random resized
crop (finetune.crop=rrc), mixup 0.8 / cutmix 1.0 with label smoothing 0.1, random erasing 0.25, warm-up + cosine
(lr, min_lr and warmup_lr scaled by the videos per step / 256, as run_class_finetuning.py), bf16, DDP. Each
dataset's values are a preset (finetune-ssv2, -k400, -ucf101, -hmdb51); the clips follow the fine-tuning config,
not the pretraining run (`data_notes` says where they differ). Evaluation with data.test_clips x
data.test_crops views per video, softmax scores averaged: top-1, top-5, per-class accuracy, confusion matrix (PNG)
-> `eval_metrics.json` (engine/evaluate.py). `finetune.task=multilabel`: a 0/1 label column per class (or
`data.list_format=multilabel` lists of class indices), sigmoid + binary cross-entropy on the mixed multi-hot targets,
evaluated by mAP and per-class AP.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from motionmae import config as C
from motionmae.config import FinetuneConfig
from motionmae.data.datasets import check_source
from motionmae.data.shards import build_dataset
from motionmae.data.labels import label_names, resolve_label_column
from motionmae.data.transforms import to_model_input
from motionmae.engine.evaluate import Evaluator
from motionmae.engine.mixup import Mixup, RandomErasing, soft_cross_entropy
from motionmae.engine.trainer import At, Task, Trainer
from motionmae.errors import UserError
from motionmae.models.classifier import build_classifier, load_pretrained_encoder
from motionmae.runtime.checkpoint import load_model_state, read_state
from motionmae.runtime.distributed import derive_seed

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
    C.add_config_arguments(parser, "a preset or YAML file (sections model, data, train, finetune); the encoder architecture "
                                   "and clip format come from --pretrained",
                           "e.g. data.train=train.csv data.val=val.csv finetune.label_column=direction train.epochs=50")
    parser.add_argument("--pretrained", default="", metavar="CKPT",
                        help="pretraining checkpoint (file or run directory) whose encoder is fine-tuned; omit to train from scratch")
    parser.add_argument("--resume", default="auto", metavar="PATH|auto|none",
                        help="continue from a checkpoint file or run directory; auto (default): from OUTPUT_DIR's last checkpoint")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoint given by --resume (default: OUTPUT_DIR's last) on data.val and stop")


def run(args) -> int:
    checkpoint_config = read_state(args.pretrained).get("config") if args.pretrained else None
    if args.pretrained and not checkpoint_config:
        raise UserError(f"{args.pretrained}: carries no config; convert foreign weights with `motionmae convert` first")
    cfg = C.load_config(args.config, args.overrides, FinetuneConfig, checkpoint_config)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    spec_data = C.spec_dict(args.config).get("data") or {}
    summary = finetune(cfg, pretrained=args.pretrained, resume=args.resume, eval_only=args.eval_only,
                       spec_data=spec_data if isinstance(spec_data, dict) else {})
    return 143 if summary.get("stopped") else 0  # 128 + SIGTERM: the run is not finished


def finetune(cfg: FinetuneConfig, pretrained: str = "", resume: str = "auto", eval_only: bool = False,
             spec_data: Optional[dict] = None) -> dict:
    """Fine-tune per `cfg` (from the encoder of `pretrained`, else from a random initialisation); returns a summary
    (step, loss, run dir, checkpoint, and the last eval metrics). `eval_only`: evaluate the checkpoint `resume`
    names instead -> {"step", "eval"}. `spec_data`: the data section of the preset / YAML file the config came from,
    checked against `cfg` (`data_notes`)."""
    trainer = Trainer(cfg, FinetuneTask(cfg, pretrained, None if eval_only else (spec_data or {})))
    return trainer.evaluate(resume) if eval_only else trainer.fit(resume)


SSV2_CLASSES = 174  # Something-Something v2, whose labels say left and right ("pushing something from left to right")


def data_notes(cfg: FinetuneConfig, pretrain_config: Optional[dict], spec_data: dict, num_classes: int = 0) -> List[str]:
    """What to tell about the fine-tuning clips: a warning when they are flipped but the labels depend on left and
    right (the preset or config file says data.flip=false and an override turned it on; or 174 classes, as SSv2),
    and a note where the sampling differs from the pretraining run's (the fine-tuning config decides)."""
    d = cfg.data
    lines = []
    if d.flip and spec_data.get("flip") is False:
        lines.append("warning: data.flip=true, but the preset/config file sets data.flip=false: its labels depend on left "
                     "and right (SSv2: 'pushing something from left to right'), and a flipped clip keeps its label")
    elif d.flip and num_classes == SSV2_CLASSES:
        lines.append(f"warning: data.flip=true with {SSV2_CLASSES} classes, as Something-Something v2, whose labels depend on "
                     "left and right: a flipped clip keeps its label; set data.flip=false (finetune-ssv2 does)")
    saved = (pretrain_config or {}).get("data") or {}
    ours = {"sampling": d.sampling} if d.sampling == "segment" else {"sampling": d.sampling, "sampling_rate": d.sampling_rate}
    changed = [f"data.{k}={v} (pretraining: {saved[k]})" for k, v in ours.items() if k in saved and saved[k] != v]
    if changed:
        lines.append(f"note: fine-tuning clips follow the fine-tuning config: {', '.join(changed)}")
    return lines


def multilabel_columns(spec, names, datasets) -> list:
    """The label columns that are the classes of a multi-label run (`finetune.label_columns`, () = all), checked to
    hold only 0/1 in every dataset."""
    cols = [resolve_label_column(str(c), names, "finetune.label_columns") for c in spec] if spec else list(range(len(names)))
    for ds in datasets:
        values = ds.labels[:, cols]
        bad = values[(values != 0) & (values != 1)]
        if bad.numel():
            j = cols[int(((values != 0) & (values != 1)).any(0).nonzero()[0])]
            raise UserError(f"finetune.task=multilabel reads each label column as one class, 0 or 1; column '{names[j]}' holds "
                            f"{int(bad[0])}: for lists of class indices per video ('path 3 7 12') set data.list_format=multilabel")
    return cols


# ----------------------------------------------------------------------------------------------
# the task


class FinetuneTask(Task):
    """The label column and the number of classes come from the lists; mixup / cutmix / random erasing are drawn
    per batch from (seed, rank, step, micro), so a resumed run repeats them."""

    kind, noun = "finetune", "fine-tuning"
    other_kind_hint = ", and pass a pretraining checkpoint as --pretrained"
    lr_per_video = True  # run_class_finetuning.py: lr x batch_size x update_freq x world / 256, whatever --num_sample

    def __init__(self, cfg: FinetuneConfig, pretrained: str = "", spec_data: Optional[dict] = None):
        super().__init__(cfg)
        self.pretrained = pretrained
        self.spec_data = spec_data  # the preset's / config file's data section, checked by `data_notes`; None: no check
        self.evaluator = None

    def build_dataset(self):
        c, ft = self.cfg, self.cfg.finetune
        check_source(c.data)
        train_ds = build_dataset(c.data, "train", "finetune", seed=c.train.seed, aa=ft.aa, crop=ft.crop,
                                 train_short_side=ft.train_short_side)
        names = label_names(c.data.train, train_ds.num_labels)
        val_ds = build_dataset(c.data, "val", "test", seed=c.train.seed) if c.data.val else None
        if val_ds is not None and val_ds.num_labels != train_ds.num_labels:
            raise UserError(f"data.val has {val_ds.num_labels} label column(s), data.train has {train_ds.num_labels}")
        if ft.task == "multilabel":
            self.cols = multilabel_columns(ft.label_columns, names, [train_ds] + ([val_ds] if val_ds is not None else []))
            self.col, self.column, self.num_classes = self.cols[0], "multilabel", len(self.cols)
            self.class_names = [names[j] for j in self.cols]
        else:
            self.col = resolve_label_column(ft.label_column, names)
            self.cols, self.column, self.class_names = [self.col], names[self.col], None
            self.num_classes = max([train_ds.num_classes[self.col]] + ([val_ds.num_classes[self.col]] if val_ds is not None else []))
        self.val_ds = val_ds
        if self.spec_data is not None and self.info is not None and self.info.is_main:
            saved = read_state(self.pretrained).get("config") if self.pretrained else None
            for line in data_notes(c, saved, self.spec_data, self.num_classes):
                print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
        self.mixup = Mixup(self.num_classes, ft.mixup, ft.cutmix, ft.mixup_prob, ft.mixup_switch_prob, ft.label_smoothing)
        self.erase = RandomErasing(ft.reprob)
        return train_ds

    def build_model(self) -> torch.nn.Module:
        ft = self.cfg.finetune
        return build_classifier(self.cfg.model, self.num_classes, head_drop=ft.fc_drop_rate, head_init_scale=ft.head_init_scale)

    def lr_scale(self):
        return layer_decay_fn(self.cfg.model.dims()[1], self.cfg.finetune.layer_decay)

    def init_weights(self, model: torch.nn.Module, say) -> None:
        if not self.pretrained:
            say("note: no --pretrained checkpoint: training from a random initialisation")
            return
        sd, saved = load_model_state(self.pretrained)
        source_grid = C.model_config_from_dict(saved, str(self.pretrained)).grid() if saved.get("model") else None
        report = load_pretrained_encoder(model, sd, source_grid=source_grid)
        say(f"loaded encoder from {self.pretrained} (new: {', '.join(report['missing']) or 'nothing'}; "
            f"left out: {len(report['dropped'])} pretraining-only tensors)")

    def step(self, net, batch: dict, at: At):
        c, device = self.cfg, self.info.device
        x = to_model_input(batch["video"], c.data.mean, c.data.std, device)
        multilabel = c.finetune.task == "multilabel"
        y = batch["label"][:, self.cols if multilabel else self.col].to(device)
        g = torch.Generator().manual_seed(derive_seed(c.train.seed, self.info.rank, at.step, at.micro))
        x, soft = self.mixup(self.erase(x, g), y.float() if multilabel else y, g)
        logits = net(x)
        if multilabel:  # each class its own yes/no: sigmoid + binary cross-entropy on the (mixed) multi-hot targets
            return {"loss": F.binary_cross_entropy_with_logits(logits.float(), soft)}
        loss = soft_cross_entropy(logits, soft)
        return {"loss": loss, "train_acc": (logits.argmax(-1) == soft.argmax(-1)).float().mean()}

    def describe(self) -> str:
        m = self.cfg.model
        d, n, _ = m.dims()
        if self.cfg.finetune.task == "multilabel":
            return f"ViT (dim {d}, depth {n}) {m.num_frames}x{m.img_size}, multi-label over {self.num_classes} classes"
        return f"ViT (dim {d}, depth {n}) {m.num_frames}x{m.img_size} on column '{self.column}' ({self.num_classes} classes)"

    def details(self) -> str:
        ft = self.cfg.finetune
        return (f"layer decay {ft.layer_decay}; mixup {ft.mixup} / cutmix {ft.cutmix}, label smoothing {ft.label_smoothing}, "
                f"random erasing {ft.reprob}, RandAugment {ft.aa or 'off'}, crop {ft.crop}, drop path {self.cfg.model.drop_path}, "
                f"fc dropout {ft.fc_drop_rate}")

    def state(self) -> dict:
        out = {"num_classes": self.num_classes, "label_column": self.column}
        if self.class_names:
            out.update(task="multilabel", class_names=self.class_names)
        return out

    def evaluate(self, trainer: Trainer, step: int) -> dict:
        if self.evaluator is None:
            self.evaluator = Evaluator(self.cfg, self.val_ds, self.cols, self.column, self.num_classes, trainer.info,
                                       trainer.amp_dtype, Path(self.cfg.train.output_dir),
                                       multilabel=self.cfg.finetune.task == "multilabel", names=self.class_names)
        write = trainer.bar.write if trainer.bar is not None else print
        return self.evaluator(trainer.eval_model(), step, write)

    def after_step(self, trainer: Trainer, step: int, final: bool) -> None:
        every = self.cfg.finetune.eval_every
        if self.val_ds is None or not (final or (every > 0 and step % every == 0)):
            return
        metrics = self.evaluate(trainer, step)
        keys = ("mAP",) if self.cfg.finetune.task == "multilabel" else ("top1", "top5", "mean_class_acc")
        trainer.log(step, {k: metrics[k] for k in keys}, prefix="val/")
        for name, path in metrics.get("pictures", {}).items():
            trainer.log_image(step, f"val/{name}", path)
        trainer.summary["eval"] = metrics
        trainer.model.train()

    def done(self, summary: dict) -> str:
        run_dir = Path(summary["run_dir"])
        ev = summary.get("eval")
        if ev and "mAP" in ev:
            return (f"done: {summary['step']} steps; checkpoint {summary.get('checkpoint')}; val mAP {100 * ev['mAP']:.1f}% "
                    f"({run_dir / 'eval_metrics.json'}); log {run_dir / 'metrics.jsonl'}")
        score = (f"; val top-1 {100 * ev['top1']:.1f}% top-5 {100 * ev['top5']:.1f}% ({run_dir / 'eval_metrics.json'}, "
                 f"{run_dir / 'confusion.png'})") if ev else ""
        return f"done: {summary['step']} steps; checkpoint {summary.get('checkpoint')}{score}; log {run_dir / 'metrics.jsonl'}"
