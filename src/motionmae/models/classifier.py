"""Fine-tuning / feature-extraction model: the encoder `VisionTransformer` with a pooling head.

The classifier's keys are the original VideoMAE fine-tune layout (`patch_embed.proj`, `blocks.N.*`,
`fc_norm`, `head` with mean pooling; `norm`, `head` with first-token pooling). `forward_grid(x)` returns
the token grid (B, T', H', W', D) for dense tasks; `forward_head(tokens, pre_logits=True)` the pooled feature.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from motionmae.config import ModelConfig
from motionmae.errors import UserError
from motionmae.models.state import load_matching, strip_prefixes
from motionmae.models.vit import Grid, VisionTransformer, check_fixed_table, resize_pos_embed

# keys a freshly initialised classifier may lack in a pretraining checkpoint
_NEW_KEYS = ("fc_norm.", "head.")


def build_classifier(cfg: ModelConfig, num_classes: int, head_drop: float = 0.0, head_init_scale: float = 1.0) -> VisionTransformer:
    """`head_drop`: dropout on the pooled feature before `head` (VideoMAE's fc_drop_rate); `head_init_scale`: the head's
    initial weights (trunc-normal, std 0.02) times this (VideoMAE's init_scale, 0.001 in its fine-tuning)."""
    model = VisionTransformer(cfg, num_classes=num_classes, head_drop=head_drop)
    if num_classes > 0 and head_init_scale != 1.0:
        with torch.no_grad():
            model.head.weight.mul_(head_init_scale)
            model.head.bias.mul_(head_init_scale)
    return model


def encoder_state_dict(
    model: VisionTransformer, pretrain_state_dict: Mapping[str, torch.Tensor], source_grid: Optional[Grid] = None
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map a pretraining state dict (`encoder.*` keys) onto `model`'s keys.

    Decoder keys are dropped; the encoder `norm` is dropped when `model.norm` is Identity (mean pooling,
    as VideoMAE fine-tuning does); a learnable `pos_embed` is resized from `source_grid` (the checkpoint's
    token grid; inferred from the table's length when not given) to the model's grid, a stored sincos3d table is
    checked against that grid's and replaced by the exact table of the model's grid. A state dict
    without `encoder.` keys is taken as already in encoder layout. Returns (state dict, dropped keys).
    """
    sd = strip_prefixes(pretrain_state_dict)
    if any(k.startswith("encoder.") for k in sd):
        dropped = [k for k in sd if not k.startswith("encoder.")]
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    else:
        dropped = []
    own = model.state_dict()
    for k in list(sd):
        if k not in own and k.startswith("norm.") and isinstance(model.norm, torch.nn.Identity):
            dropped.append("encoder." + k)
            del sd[k]
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        n = sd["pos_embed"].shape[1]
        old = tuple(source_grid) if source_grid is not None else _guess_grid(n, model.grid)
        if math.prod(old) != n:
            raise UserError(f"pos_embed has {n} tokens, not the {'x'.join(map(str, old))} token grid of the checkpoint's config")
        if model.pos_kind == "sincos3d":  # a fixed table: check it is the one trained with, then take the exact one for the new grid
            check_fixed_table(sd["pos_embed"], model.pos_kind, old, "pos_embed")
            sd["pos_embed"] = own["pos_embed"]
        else:
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], old, model.grid)
    return sd, dropped


def _guess_grid(n: int, grid: Grid) -> Grid:
    """Token grid T' x S x S of a table with n tokens when the checkpoint does not say: the one with the
    model's T', else the only one there is; several candidates are an error rather than a silent guess."""
    fits = [(t, int(round((n // t) ** 0.5))) for t in range(1, n + 1) if n % t == 0]
    fits = [(t, s, s) for t, s in fits if s * s * t == n]
    same_t = [g for g in fits if g[0] == grid[0]]
    if same_t or len(fits) == 1:
        return (same_t or fits)[0]
    shown = ", ".join("x".join(map(str, g)) for g in fits[:6]) or "none"
    raise UserError(
        f"pos_embed with {n} tokens: cannot tell its token grid (T' x S x S candidates: {shown}); "
        "start from a motionmae checkpoint, which records its model config"
    )


def load_pretrained_encoder(
    model: VisionTransformer,
    pretrain_state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    source_grid: Optional[Grid] = None,
) -> Dict[str, List[str]]:
    """Load a pretraining checkpoint's encoder into a classifier (or a bare encoder).

    Strict: any model key other than the new `fc_norm.*` / `head.*` that the checkpoint lacks, any encoder
    key the model does not have, or any shape mismatch is a `UserError` naming the keys.
    `source_grid`: the checkpoint's token grid, for resizing a learnable pos_embed (see `encoder_state_dict`).
    Returns {'missing': [...], 'unexpected': [...], 'dropped': [...]} (dropped = decoder keys etc. left out on purpose).
    """
    sd, dropped = encoder_state_dict(model, pretrain_state_dict, source_grid)
    report = load_matching(model, sd, "checkpoint encoder", fresh=_NEW_KEYS, strict=strict)
    return {"missing": report["missing"] + report["fresh"], "unexpected": report["unexpected"], "dropped": dropped}
