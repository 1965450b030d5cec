"""Analytic FLOPs of a training step, the MFU convention: a multiply-add is 2 FLOPs, and only matmuls, convs and
attention count (norms, softmax, activations, targets and the optimiser are free). Checked against torch's
FlopCounterMode in tests/test_benchmarks.py; used by the step benchmark (model FLOP utilisation) and for the GPU-hour
estimates `motionmae reproduce` prints before it runs (pretraining, fine-tuning, multi-view testing, VOS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from motionmae.config import ModelConfig, PretrainConfig, VOSOptions
from motionmae.objective.masking import num_decoded, num_visible
from motionmae.objective.targets import build_targets


def block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0, queries: Optional[int] = None) -> int:
    """Forward FLOPs of one pre-norm ViT block on `tokens` tokens of width `dim` (one clip); `queries`: only
    that many tokens attend and go through proj and the MLP (keys and values still come from all)."""
    hidden = int(dim * mlp_ratio)
    q = tokens if queries is None else queries
    linear = 2 * dim * (tokens * 2 * dim + q * (dim + dim + 2 * hidden))  # kv, then q, proj, fc1, fc2
    attention = 2 * 2 * q * tokens * dim  # q @ k^T and attn @ v over all heads
    return linear + attention


@dataclass
class MAEShape:
    """Sizes that fix the FLOPs of one masked-autoencoder step."""

    embed_dim: int
    depth: int
    decoder_embed_dim: int
    decoder_depth: int
    num_tokens: int  # N
    num_visible: int
    patch_dim: int  # tubelet * p * p * C: the patch-embed input
    head_dims: Tuple[int, ...] = ()  # output width of each reconstruction head (one per target); () = (patch_dim,)
    decoders: int = 1  # decoder trunks (1: videomae / sha, one per target: ind)
    mlp_ratio: float = 4.0
    decoder_mlp_ratio: float = 4.0
    embed_all: bool = True  # the tubelet embedding runs on all N cubes (transformers) or only the visible ones (ours)
    last_block_all: bool = True  # the decoder's last block computes all N outputs (transformers) or the masked ones (ours)
    num_decoded: Optional[int] = None  # dual masking (VideoMAE v2): masked tokens the decoder sees and reconstructs; None: all


def mae_step_flops(s: MAEShape, batch: int) -> Dict[str, int]:
    """FLOPs of one training step (forward + backward) of a VideoMAE-style model, by part.

    Backward costs two forward passes (input and weight gradients) except for the patch embedding,
    whose input (the clip) needs no gradient. Targets, norms and the loss are not counted.
    """
    n_vis = s.num_visible
    n_mask = s.num_tokens - n_vis if s.num_decoded is None else s.num_decoded
    n_dec = n_vis + n_mask  # the decoder's tokens
    d = s.decoder_embed_dim
    fwd = {
        "patch_embed": 2 * (s.num_tokens if s.embed_all else n_vis) * s.patch_dim * s.embed_dim,
        "encoder": s.depth * block_flops(n_vis, s.embed_dim, s.mlp_ratio),
        "decoder": s.decoders
        * (
            2 * n_vis * s.embed_dim * d
            + (s.decoder_depth - 1) * block_flops(n_dec, d, s.decoder_mlp_ratio)
            + block_flops(n_dec, d, s.decoder_mlp_ratio, None if s.last_block_all else n_mask)
        ),
        "heads": sum(2 * n_mask * d * w for w in (s.head_dims or (s.patch_dim,))),
    }
    out = {k: batch * v * (2 if k == "patch_embed" else 3) for k, v in fwd.items()}
    out["forward"] = batch * sum(fwd.values())
    out["total"] = sum(out[k] for k in fwd)
    return out


def pretrain_shape(cfg: PretrainConfig, transformers: bool = False) -> MAEShape:
    """The sizes of `cfg`'s pretraining step. `transformers`: the accounting of transformers' VideoMAE, which embeds
    every cube and runs the decoder's last block on every token; ours embeds the visible cubes and computes the
    masked outputs only. Dual masking (`mask.decoder_ratio`) shrinks the decoder to the visible tokens plus the
    kept masked ones (transformers has no decoder mask: an error there)."""
    m = cfg.model
    if transformers and cfg.mask.decoder_ratio:
        raise ValueError("transformers' VideoMAE has no decoder mask (mask.decoder_ratio)")
    d, depth, _ = m.dims()
    grid = m.grid()
    targets = build_targets(cfg.objective, m)
    return MAEShape(
        embed_dim=d,
        depth=depth,
        decoder_embed_dim=m.decoder_embed_dim,
        decoder_depth=m.decoder_depth,
        num_tokens=grid[0] * grid[1] * grid[2],
        num_visible=num_visible(grid, cfg.mask.ratio),
        patch_dim=m.tubelet_size * m.patch_size**2 * m.in_chans,
        head_dims=tuple(t.dim for t in targets),
        decoders=len(targets) if m.decoder == "ind" else 1,
        mlp_ratio=m.mlp_ratio,
        decoder_mlp_ratio=m.decoder_mlp_ratio,
        embed_all=transformers,
        last_block_all=transformers,
        num_decoded=num_decoded(grid, cfg.mask.ratio, cfg.mask.decoder_ratio) if cfg.mask.decoder_ratio else None,
    )


def pretrain_step_flops(cfg: PretrainConfig, clips: int, transformers: bool = False) -> Dict[str, int]:
    """`mae_step_flops` of `cfg` for `clips` clips."""
    return mae_step_flops(pretrain_shape(cfg, transformers), clips)


# ----------------------------------------------------------------------------------------------
# fine-tuning, multi-view testing, VOS: the encoder on every token


def encoder_forward_flops(model: ModelConfig, grid: Optional[Tuple[int, int, int]] = None) -> Dict[str, int]:
    """Forward FLOPs of the encoder on every token of one clip of `model`'s shape (or of a token `grid` (T', H', W')):
    the tubelet embedding and the blocks (no mask: fine-tuning, testing, features)."""
    d, depth, _ = model.dims()
    n = math.prod(grid or model.grid())
    patch_dim = model.tubelet_size * model.patch_size**2 * model.in_chans
    return {"patch_embed": 2 * n * patch_dim * d, "encoder": depth * block_flops(n, d, model.mlp_ratio)}


def finetune_step_flops(model: ModelConfig, num_classes: int, clips: int) -> Dict[str, int]:
    """FLOPs of one fine-tuning step (forward + backward) on `clips` clips, by part: every token through the encoder,
    the linear head on the pooled feature. Backward costs two forward passes except for the patch embedding (the clip
    needs no gradient); pooling, norms, dropout and the loss are free."""
    fwd = {**encoder_forward_flops(model), "head": 2 * model.dims()[0] * num_classes}
    out = {k: clips * v * (2 if k == "patch_embed" else 3) for k, v in fwd.items()}
    out["forward"] = clips * sum(fwd.values())
    out["total"] = sum(out[k] for k in fwd)
    return out


def multiview_flops(model: ModelConfig, num_classes: int, views: int) -> int:
    """Forward FLOPs of classifying one video seen as `views` clips (temporal clips x spatial crops)."""
    return views * (sum(encoder_forward_flops(model).values()) + 2 * model.dims()[0] * num_classes)


def vos_sequence_flops(model: ModelConfig, frames: int, grid_hw: Tuple[int, int], vos: VOSOptions,
                       objects: int = 2) -> Dict[str, int]:
    """FLOPs of label propagation through one sequence (eval/vos.py): the encoder on each frame (a clip of `tubelet`
    copies, token grid (1, h, w)), and per frame t >= 1 the affinities of its n patches to the n patches of the
    first frame and of up to `vos.context` previous frames (2 n K D) plus the top-k label average (2 n k (objects
    + 1))."""
    n = grid_hw[0] * grid_hw[1]
    d = model.dims()[0]
    keys = [n * (1 + min(t - 1, vos.context)) for t in range(1, frames)]
    return {"encoder": frames * sum(encoder_forward_flops(model, (1, *grid_hw)).values()),
            "propagation": sum(2 * n * k * d + 2 * n * min(vos.topk, k) * (objects + 1) for k in keys)}
