"""`motionmae finetune`: a pretrained encoder + a linear head, trained for action recognition.

VideoMAE's recipe (SPEC.md): mean-pooled tokens -> fc_norm -> head, AdamW (0.9, 0.999), wd 0.05, layer-wise
lr decay 0.75, drop path 0.1, mixup 0.8 / cutmix 1.0 with label smoothing 0.1, random erasing 0.25,
warm-up + cosine, bf16, DDP. Evaluation with data.test_clips x data.test_crops views per video, softmax
scores averaged: top-1, top-5, per-class accuracy, confusion matrix (PNG) -> `eval_metrics.json`.
"""

from __future__ import annotations

import re
from typing import Callable

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
