"""Multi-view testing: each video is seen as K temporal clips x 3 spatial crops, softmax scores averaged.

The views are cut by the dataset in mode 'test' (`data/datasets.py`, data.test_clips x data.test_crops)
and flattened into the batch by its `collate`, each row carrying its video's index. Under DDP every rank
scores its shard and the per-video sums are gathered.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from motionmae.data.loader import Batches
from motionmae.data.transforms import to_model_input
from motionmae.engine.distributed import get_world_size, is_dist


def average_view_scores(logits: torch.Tensor) -> torch.Tensor:
    """(B, V, C) logits -> (B, C): the mean over views of the per-view softmax (VideoMAE's test protocol)."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """bf16 autocast on CPU and CUDA alike; a no-op when `amp_dtype` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


class PerVideoMean:
    """Accumulates per-row values (one row per view) into a per-video mean, keyed by dataset index.

    A video padded in twice by a sampler, or split across batches, still gets the plain mean of its views.
    `result()` gathers over ranks and returns (means (N, ...), labels (N, L), indices (N,)) sorted by index.
    """

    def __init__(self):
        self.sums: dict = {}  # index -> [sum, count, label]

    def add(self, index, values: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.view(values.shape[0], -1)
        for row, idx in enumerate(torch.as_tensor(index).view(-1).tolist()):
            entry = self.sums.setdefault(idx, [0.0, 0, labels[row]])
            entry[0] = entry[0] + values[row]
            entry[1] += 1

    def __len__(self) -> int:
        return len(self.sums)

    def result(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sums = self.sums
        if is_dist():
            gathered = [None] * get_world_size()
            dist.all_gather_object(gathered, sums)
            sums = {}
            for part in gathered:
                for idx, (s, n, lab) in part.items():
                    entry = sums.setdefault(idx, [0.0, 0, lab])
                    entry[0], entry[1] = entry[0] + s, entry[1] + n
        if not sums:
            raise ValueError("no videos were seen")
        index = sorted(sums)
        means = torch.stack([sums[i][0] / sums[i][1] for i in index])
        labels = torch.stack([sums[i][2] for i in index])
        return means, labels, torch.tensor(index, dtype=torch.int64)


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
