"""Classification metrics from class scores: top-1, top-5, per-class accuracy, confusion matrix (+ PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch


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
