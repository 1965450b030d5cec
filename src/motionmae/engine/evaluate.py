"""The fine-tuning task's evaluation: multi-view testing and classification metrics (VideoMAE's `final_test`).

Each video is seen as K temporal clips x 3 spatial crops, softmax scores averaged (sigmoid for multi-label). The views are cut by the
dataset in mode 'test' (`data/datasets.py`, data.test_clips x data.test_crops) and flattened into the batch by
its `collate`, each row carrying its video's index. Under DDP every rank scores its shard and the per-video sums
are gathered. Then top-1, top-5, per-class accuracy and the confusion matrix (JSON + PNG); for multi-label, mAP and
per-class average precision (scikit-learn's definition).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from motionmae.data.datasets import collate
from motionmae.data.labels import class_names
from motionmae.data.loader import Batches, make_loader
from motionmae.data.transforms import to_model_input
from motionmae.errors import UserError
from motionmae.files import write_json
from motionmae.runtime.amp import autocast
from motionmae.runtime.distributed import DistInfo, PerVideoMean, ShardedSampler, get_world_size


def average_view_scores(logits: torch.Tensor) -> torch.Tensor:
    """(B, V, C) logits -> (B, C): the mean over views of the per-view softmax (VideoMAE's test protocol)."""
    return logits.float().softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def predict_multiview(model: torch.nn.Module, loader, device: torch.device, mean: Sequence[float], std: Sequence[float],
                      amp_dtype: Optional[torch.dtype] = None, progress=None, max_videos: int = 0, activation: str = "softmax"
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every video of `loader`: (scores (N, C) view-averaged probabilities, labels (N, L), indices (N,)).
    `activation`: softmax (single-label) or sigmoid (multi-label: per-class probabilities, averaged over views).

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
            probs = logits.float().sigmoid() if activation == "sigmoid" else logits.float().softmax(-1)
            acc.add(batch["index"], probs.cpu(), batch["label"])
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


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> Optional[float]:
    """AP of one class: scores (N,), 0/1 targets (N,) -> sum over score thresholds of (recall step) x precision, tied
    scores taken together (scikit-learn's `average_precision_score`, what Charades / AVA mAP code uses); None when the
    class has no positive."""
    s, t = scores.double(), targets.double()
    if t.sum() == 0:
        return None
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    tp, fp = t.cumsum(0), (1 - t).cumsum(0)
    last = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1])])  # end of each tie group
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / tp[-1]
    steps = recall - torch.cat([torch.zeros(1, dtype=recall.dtype), recall[:-1]])
    return float((steps * precision).sum())


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """Multi-label metrics of (N, C) scores against (N, C) 0/1 targets: per_class_ap (None for a class without a
    positive), mAP = their mean over classes that have one, num_samples."""
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    present = [a for a in per_class if a is not None]
    return {"mAP": sum(present) / len(present) if present else 0.0, "per_class_ap": per_class, "num_samples": int(scores.shape[0])}


def save_confusion_png(confusion, path, class_names: Optional[Sequence[str]] = None, cell: int = 24) -> Path:
    """Row-normalised confusion matrix as a grey-level grid (white = 0, black = the whole row), with counts. Full class
    names: true classes along the left, predicted classes written upwards along the top. Written atomically."""
    from PIL import Image, ImageDraw

    from motionmae.files import atomic_path

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
        label = Image.new("RGB", (margin - 4, 12), "white")  # predicted class, top: drawn across, turned upwards
        ImageDraw.Draw(label).text((margin - 8 - 7 * len(names[i]), 0), names[i], fill="black")
        img.paste(label.rotate(90, expand=True), (margin + i * cell + (cell - 12) // 2, 0))
        for j in range(c):
            v = int(255 * (1 - frac[i, j].item()))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(v, v, v), outline=(200, 200, 200))
            if conf[i, j] > 0 and cell >= 16:
                draw.text((x0 + 2, y0 + cell // 3), str(int(conf[i, j])), fill="red" if v < 128 else "black")
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


class Evaluator:
    """Multi-view evaluation of a classifier on `val_ds` -> `run_dir/eval_metrics.json` (rank 0). `cfg`: a
    FinetuneConfig. Single-label (`cols` = [the label column]): top-1/5, per-class accuracy, confusion matrix (also
    `confusion.png`). Multi-label (`multilabel`, `cols` = the 0/1 class columns): mAP and per-class AP."""

    def __init__(self, cfg, val_ds, cols, column: str, num_classes: int, info: DistInfo, amp_dtype, run_dir: Path,
                 multilabel: bool = False, names: Optional[Sequence[str]] = None):
        self.cfg, self.ds, self.cols, self.column, self.num_classes = cfg, val_ds, list(cols), column, num_classes
        self.info, self.amp_dtype, self.run_dir, self.multilabel = info, amp_dtype, run_dir, multilabel
        self.class_names = list(names) if names else class_names(cfg.data.train, column, num_classes)

    def __call__(self, model, step: int, write=print) -> dict:
        if self.ds is None:
            raise UserError("no data.val to evaluate on")
        cfg = self.cfg
        streaming = isinstance(self.ds, torch.utils.data.IterableDataset)  # shards: split across ranks by the dataset
        sampler = None if streaming else ShardedSampler(len(self.ds), self.info.world_size, self.info.rank, shuffle=False, drop_last=False)
        loader = make_loader(self.ds, cfg.finetune.eval_batch_size or cfg.train.batch_size, cfg.data.num_workers,
                             sampler=sampler, collate_fn=collate)
        scores, labels, _ = predict_multiview(model, loader, self.info.device, cfg.data.mean, cfg.data.std, self.amp_dtype,
                                              max_videos=cfg.finetune.eval_max_videos,
                                              activation="sigmoid" if self.multilabel else "softmax")
        if self.multilabel:
            return self._multilabel(scores, labels[:, self.cols], step, write)
        m = classification_metrics(scores, labels[:, self.cols[0]], self.num_classes)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        result = {"step": step, "label_column": self.column, "num_classes": self.num_classes,
                  "views": {"temporal": cfg.data.test_clips, "spatial": cfg.data.test_crops}, **m,
                  "per_class_acc": dict(zip(names, m["per_class_acc"])), "class_names": names}
        if self.info.is_main:
            metrics_path = write_json(self.run_dir / "eval_metrics.json", result)
            png = save_confusion_png(m["confusion"], self.run_dir / "confusion.png", names)
            write(f"eval step {step}: top-1 {100 * m['top1']:.1f}%  top-5 {100 * m['top5']:.1f}%  mean class "
                  f"{100 * m['mean_class_acc']:.1f}%  ({m['num_samples']} videos x {cfg.data.test_clips * cfg.data.test_crops} views); "
                  f"wrote {metrics_path} and {png}")
            result["pictures"] = {"confusion": str(png)}
        return result

    def _multilabel(self, scores: torch.Tensor, targets: torch.Tensor, step: int, write) -> dict:
        cfg = self.cfg
        m = multilabel_metrics(scores, targets)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        result = {"step": step, "task": "multilabel", "classes": names, "num_classes": self.num_classes,
                  "views": {"temporal": cfg.data.test_clips, "spatial": cfg.data.test_crops}, **m,
                  "per_class_ap": dict(zip(names, m["per_class_ap"]))}
        if self.info.is_main:
            path = write_json(self.run_dir / "eval_metrics.json", result)
            scored = sum(a is not None for a in m["per_class_ap"])
            write(f"eval step {step}: mAP {100 * m['mAP']:.1f}% over {scored} of {self.num_classes} classes (the others have no "
                  f"positive video)  ({m['num_samples']} videos x {cfg.data.test_clips * cfg.data.test_crops} views); wrote {path}")
        return result
