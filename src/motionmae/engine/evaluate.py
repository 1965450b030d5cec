"""The fine-tuning task's evaluation: multi-view testing and classification metrics (VideoMAE's `final_test`).

Each video is seen as K temporal clips x 3 spatial crops, softmax scores averaged. The views are cut by the
dataset in mode 'test' (`data/datasets.py`, data.test_clips x data.test_crops) and flattened into the batch by
its `collate`, each row carrying its video's index. Under DDP every rank scores its shard and the per-video sums
are gathered. Then top-1, top-5, per-class accuracy and the confusion matrix (JSON + PNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from motionmae.data.datasets import collate
from motionmae.data.labels import class_names
from motionmae.data.loader import Batches, make_loader
from motionmae.data.transforms import to_model_input
from motionmae.errors import UserError
from motionmae.runtime.amp import autocast
from motionmae.runtime.distributed import DistInfo, PerVideoMean, ShardedSampler, get_world_size


def average_view_scores(logits: torch.Tensor) -> torch.Tensor:
    """(B, V, C) logits -> (B, C): the mean over views of the per-view softmax (VideoMAE's test protocol)."""
    return logits.float().softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def predict_multiview(model: torch.nn.Module, loader, device: torch.device, mean: Sequence[float], std: Sequence[float],
                      amp_dtype: Optional[torch.dtype] = None, progress=None, max_videos: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every video of `loader`: (scores (N, C) view-averaged probabilities, labels (N, L), indices (N,)).

    A batch is `data.datasets.collate`'s: views flattened into the batch, "index" naming each row's video; the
    per-view softmax is averaged per video (`PerVideoMean`). `progress(i, n)` is called after each batch when
    given; `max_videos` > 0 stops early.
    """
    was_training = model.training
    model.eval()
    acc = PerVideoMean()
    with Batches(loader) as batches:
        for i, batch in enumerate(batches):
            x = to_model_input(batch["video"], mean, std, device)
            with autocast(device, amp_dtype):
                logits = model(x)
            acc.add(batch["index"], logits.float().softmax(-1).cpu(), batch["label"])
            if progress is not None:
                progress(i + 1, len(loader))
            if max_videos and len(acc) * get_world_size() >= max_videos:
                break
    model.train(was_training)
    return acc.result()


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> dict:
    """Metrics of (N, C) scores against (N,) labels (rows with label < 0 are skipped).

    Returns a JSON-ready dict: top1, top5 (top-k with k = min(5, C)), mean_class_acc (over classes that occur),
    per_class_acc (None for a class with no samples), confusion (list of rows), num_samples.
    """
    scores, labels = scores.float().cpu(), labels.long().cpu()
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep]
    c = num_classes or scores.shape[1]
    n = labels.shape[0]
    topk = scores.topk(min(5, c), dim=1).indices
    conf = confusion_matrix(topk[:, 0], labels, c)
    per_class = [(conf[i, i] / conf[i].sum()).item() if conf[i].sum() > 0 else None for i in range(c)]
    present = [a for a in per_class if a is not None]
    return {
        "top1": (topk[:, 0] == labels).float().mean().item() if n else 0.0,
        "top5": (topk == labels[:, None]).any(1).float().mean().item() if n else 0.0,
        "mean_class_acc": sum(present) / len(present) if present else 0.0,
        "per_class_acc": per_class,
        "confusion": conf.tolist(),
        "num_samples": n,
    }


def save_confusion_png(confusion, path, class_names: Optional[Sequence[str]] = None, cell: int = 24) -> Path:
    """Row-normalised confusion matrix as a grey-level grid (white = 0, black = the whole row), with counts."""
    from PIL import Image, ImageDraw

    conf = torch.as_tensor(confusion, dtype=torch.float64)
    c = conf.shape[0]
    names = [str(n) for n in (class_names or range(c))]
    margin = 8 + 7 * max(len(n) for n in names)  # the default bitmap font is ~6-7 px per character
    size = margin + c * cell + 4
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    rows = conf.sum(1, keepdim=True).clamp(min=1)
    frac = conf / rows
    for i in range(c):
        draw.text((4, margin + i * cell + cell // 3), names[i], fill="black")  # true class, left
        draw.text((margin + i * cell + 2, 4), names[i][: max(cell // 7, 1)], fill="black")  # predicted, top
        for j in range(c):
            v = int(255 * (1 - frac[i, j].item()))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(v, v, v), outline=(200, 200, 200))
            if conf[i, j] > 0 and cell >= 16:
                draw.text((x0 + 2, y0 + cell // 3), str(int(conf[i, j])), fill="red" if v < 128 else "black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


class Evaluator:
    """Multi-view evaluation of a classifier on `val_ds`: top-1/5, per-class accuracy, confusion matrix ->
    `run_dir/eval_metrics.json` and `confusion.png` (rank 0). `cfg`: a FinetuneConfig; `col`: the label column."""

    def __init__(self, cfg, val_ds, col: int, column: str, num_classes: int, info: DistInfo, amp_dtype, run_dir: Path):
        self.cfg, self.ds, self.col, self.column, self.num_classes = cfg, val_ds, col, column, num_classes
        self.info, self.amp_dtype, self.run_dir = info, amp_dtype, run_dir
        self.class_names = class_names(cfg.data.train, column, num_classes)

    def __call__(self, model, step: int, write=print) -> dict:
        if self.ds is None:
            raise UserError("no data.val to evaluate on")
        cfg = self.cfg
        streaming = isinstance(self.ds, torch.utils.data.IterableDataset)  # shards: split across ranks by the dataset
        sampler = None if streaming else ShardedSampler(len(self.ds), self.info.world_size, self.info.rank, shuffle=False, drop_last=False)
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
            write(f"eval step {step}: top-1 {100 * m['top1']:.1f}%  top-5 {100 * m['top5']:.1f}%  mean class "
                  f"{100 * m['mean_class_acc']:.1f}%  ({m['num_samples']} videos x {cfg.data.test_clips * cfg.data.test_crops} views)")
        return result
