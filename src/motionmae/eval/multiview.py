"""Multi-view testing: each video is seen as K temporal clips x 3 spatial crops, softmax scores averaged.

The views are cut by the dataset in mode 'test' (`data/datasets.py`): an item's "video" is uint8
(V, C, T, H, W) with V = K * 3, so one batch is (B, V, C, T, H, W). Under DDP every rank scores its
shard and the (index, scores) pairs are gathered, so each video is counted once whatever the padding.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist

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


@torch.no_grad()
def predict_multiview(model: torch.nn.Module, loader, device: torch.device, mean: Sequence[float], std: Sequence[float],
                      amp_dtype: Optional[torch.dtype] = None, progress=None, max_videos: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every video of `loader`: (scores (N, C) view-averaged probabilities, labels (N, L), indices (N,)).

    Results are gathered over ranks and sorted by dataset index; duplicates (sampler padding) are dropped.
    `progress(i, n)` is called after each batch when given; `max_videos` > 0 stops early.
    """
    was_training = model.training
    model.eval()
    scores, labels, index = [], [], []
    seen = 0
    for i, batch in enumerate(loader):
        video = batch["video"]
        if video.dim() == 5:  # a single view per video
            video = video[:, None]
        b, v = video.shape[:2]
        x = to_model_input(video.flatten(0, 1), mean, std, device)
        with autocast(device, amp_dtype):
            logits = model(x)
        scores.append(average_view_scores(logits.view(b, v, -1)).cpu())
        labels.append(batch["label"].view(b, -1).cpu())
        index.append(torch.as_tensor(batch["index"]).view(b).cpu())
        seen += b
        if progress is not None:
            progress(i + 1, len(loader))
        if max_videos and seen * get_world_size() >= max_videos:
            break
    model.train(was_training)
    out = torch.cat(scores), torch.cat(labels), torch.cat(index)
    if is_dist():
        gathered = [None] * get_world_size()
        dist.all_gather_object(gathered, out)
        out = tuple(torch.cat([g[k] for g in gathered]) for k in range(3))
    s, lab, idx = out
    order = torch.argsort(idx, stable=True)
    s, lab, idx = s[order], lab[order], idx[order]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    return s[first], lab[first], idx[first]
