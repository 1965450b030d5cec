"""The MotionMAE / VideoMAE pretraining model, top to bottom: targets, encoder on visible tokens, decoder(s), loss.

The reconstruction targets are `objective.targets` (objective/targets.py: appearance, motion, hog, ...); the
decoder layout (`model.decoder`) says how their heads share the decoder:
- 'sha':  one decoder trunk shared by every target; only the last Linear differs, one head per target.
- 'ind':  one independent decoder per target (its own `encoder_to_decoder`, mask token and blocks).
- 'none': one decoder, one target: with appearance and tube masking this is VideoMAE.
Decoder input (VideoMAE order): the visible tokens, then one mask token per masked position, each plus
its own decoder positional embedding; the heads see only the last N_masked tokens, so no unshuffle.
With dual masking (VideoMAE v2, `mask.decoder_ratio`) a `decoder_mask` drops part of the masked positions: the
decoder gets the visible tokens plus the kept masked positions, and the loss is taken on those; whatever the
decoder layout and the targets.

Key names: appearance's modules keep the original VideoMAE names (`encoder.*`, `encoder_to_decoder`, `mask_token`,
`decoder.blocks.N.*`, `decoder.norm`, `decoder.head`); another target's head is `decoder.<name>_head` (sha) and
its decoder `<name>_encoder_to_decoder`, `<name>_mask_token`, `<name>_decoder.*` (ind) -- `branch_prefix` says where.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from motionmae.config import ModelConfig, PretrainConfig
from motionmae.errors import UserError
from motionmae.models.vit import (
    Block,
    PosEmbedMixin,
    VisionTransformer,
    check_clip,
    gather_tokens,
    init_weights,
    run_blocks,
    visible_and_masked_index,
)
from motionmae.objective.loss import reconstruction_loss
from motionmae.objective.targets import build_targets


def _own(name: str) -> str:
    """Attribute prefix of a target's own modules: none for appearance (VideoMAE's names), `<name>_` otherwise."""
    return "" if name == "appearance" else f"{name}_"


def branch_prefix(name: str, decoder: str) -> str:
    """State-dict prefix of the modules that belong to target `name` alone (not for appearance, whose names are
    VideoMAE's): `decoder.<name>_head.` in a shared decoder, `<name>_` for its own decoder (ind)."""
    return f"{_own(name)}" if decoder == "ind" else f"decoder.{_own(name)}head."


def branch_prefixes(cfg: PretrainConfig) -> Tuple[str, ...]:
    """`branch_prefix` of every target but appearance: what VideoMAE / transformers checkpoints do not have."""
    return tuple(branch_prefix(n, cfg.model.decoder) for n in cfg.objective.targets if n != "appearance")


class Decoder(PosEmbedMixin, nn.Module):
    """Light transformer over all N tokens: `pos_embed`, `blocks`, `norm`, and one Linear head per target of
    `heads` ({attribute name: width}): `head` for appearance (VideoMAE) or a single target, `<name>_head` else."""

    def __init__(self, cfg: ModelConfig, heads: Dict[str, int]):
        super().__init__()
        dim = cfg.decoder_embed_dim
        if dim % cfg.decoder_num_heads:
            raise UserError(
                f"model.decoder_embed_dim={dim} is not divisible by model.decoder_num_heads={cfg.decoder_num_heads}"
            )
        self.blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, cfg.qkv_bias, 0.0, cfg.norm_eps, cfg.act_layer)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.head_norm_eps if cfg.head_norm_eps is not None else cfg.norm_eps)
        for attr, width in heads.items():
            setattr(self, attr, nn.Linear(dim, width))
        init_weights(self)
        self._init_pos_embed(cfg.pos_embed, cfg.grid(), dim)


class Branch:
    """One decoder trunk and the targets whose heads sit on it (attribute names on the model)."""

    def __init__(self, embed: str, mask_token: str, decoder: str, heads: List[Tuple[str, str]]):
        self.embed, self.mask_token, self.decoder = embed, mask_token, decoder
        self.heads = heads  # [(target name, head attribute on the decoder)]


class PretrainModel(nn.Module):
    """`PretrainModel(cfg)`; `forward(clip, mask)` -> dict of losses, predictions and targets on masked tokens."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        m, o = cfg.model, cfg.objective
        if m.decoder == "none" and len(o.targets) != 1:
            raise UserError(f"model.decoder=none reconstructs one target; objective.targets={list(o.targets)}")
        self.model_cfg, self.objective_cfg = m, o
        self.grad_checkpointing = m.grad_checkpointing
        self.tubelet, self.patch = m.tubelet_size, m.patch_size
        self.targets = build_targets(o, m)
        # the clip arrives normalised; targets are computed on it un-normalised back to [0, 1] (VideoMAE)
        self.register_buffer("mean", torch.tensor(cfg.data.mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.data.std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

        self.encoder = VisionTransformer(m)
        if m.decoder == "ind":
            groups = [[t] for t in self.targets]
        else:
            groups = [self.targets]
        self.branches: List[Branch] = []
        for group in groups:  # VideoMAE's registration order: embed, mask token, decoder, per trunk
            own = _own(group[0].name) if m.decoder == "ind" else ""
            heads = [(t.name, "head" if m.decoder == "ind" or t.name == "appearance" else f"{_own(t.name)}head") for t in group]
            setattr(self, f"{own}encoder_to_decoder", nn.Linear(self.encoder.embed_dim, m.decoder_embed_dim, bias=False))
            setattr(self, f"{own}mask_token", nn.Parameter(torch.zeros(1, 1, m.decoder_embed_dim)))
            by_name = {t.name: t for t in group}
            setattr(self, f"{own}decoder", Decoder(m, {attr: by_name[name].dim for name, attr in heads}))
            self.branches.append(Branch(f"{own}encoder_to_decoder", f"{own}mask_token", f"{own}decoder", heads))
        for p in self.parameters(recurse=False):  # the mask tokens
            nn.init.trunc_normal_(p, std=0.02)
        for branch in self.branches:
            init_weights(getattr(self, branch.embed))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = self.encoder.grad_checkpointing = enable

    @torch.compiler.disable  # eager under torch.compile: cheap, no gradient, and written with out= views
    def compute_targets(self, clip: torch.Tensor, ids_masked: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every target at the masked tokens, {name: (B, M, dim)}, float32, no gradient."""
        clip01 = torch.addcmul(self.mean, clip.float(), self.std)
        return {t.name: t.compute(clip01, ids_masked) for t in self.targets}

    @staticmethod
    @torch.compiler.disable  # the token counts are read on the host: eager, so torch.compile's graph goes on after it
    def token_index(mask: torch.Tensor, decoder_mask: Optional[torch.Tensor], b: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids_visible (B, N_vis), ids_masked (B, N_mask)): the encoder's tokens and the masked ones the decoder
        reconstructs (all masked ones without a decoder mask); both masks checked."""
        for name, m in (("mask", mask), ("decoder_mask", decoder_mask)):
            if m is not None and (m.shape != (b, n) or m.dtype != torch.bool):
                raise UserError(f"{name} must be bool (B, N) = ({b}, {n}) for this clip, got {m.dtype} {tuple(m.shape)}")
        ids_visible, ids_masked = visible_and_masked_index(mask)
        if decoder_mask is not None:
            if bool((decoder_mask & ~mask).any()):
                raise UserError("decoder_mask drops a token the encoder sees: it must be a subset of mask")
            ids_masked = visible_and_masked_index(mask & ~decoder_mask)[1]
        return ids_visible, ids_masked

    def forward_decoder(self, latent: torch.Tensor, ids_visible: torch.Tensor, ids_masked: torch.Tensor, grid,
                        branch: Branch) -> torch.Tensor:
        """Encoder latent (B, N_vis, D) -> the branch's decoder features of the masked tokens (B, N_mask, D_dec)."""
        embed, mask_token, decoder = getattr(self, branch.embed), getattr(self, branch.mask_token), getattr(self, branch.decoder)
        x = embed(latent)
        b, n_mask = x.shape[0], ids_masked.shape[1]
        pos = decoder.pos_embed_for(grid).to(x.dtype).expand(b, -1, -1)
        x = torch.cat([x + gather_tokens(pos, ids_visible), mask_token.to(x.dtype) + gather_tokens(pos, ids_masked)], dim=1)
        return decoder.norm(run_blocks(decoder.blocks, x, self.grad_checkpointing, keep_last=n_mask))

    def forward(self, clip: torch.Tensor, mask: torch.Tensor, decoder_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """clip (B, C, T, H, W) normalised (the encoder's T frames and any more the objective asks for, see
        ObjectiveConfig.encoder_frames); mask bool (B, N), True = masked; decoder_mask (dual masking, VideoMAE v2)
        bool (B, N), True = a masked token the decoder drops: it is neither a decoder input nor reconstructed
        (objective/masking.decoder_mask); None: every masked token is.

        Returns per target `name`: 'pred_<name>' / 'target_<name>' (B, N_mask, dim) and 'loss_<name>'; 'loss' =
        sum of w_<name> * loss_<name> in target order; 'ids_masked' (B, N_mask), the token index of each row
        (N_mask: the masked tokens the decoder reconstructs).
        """
        check_clip(clip, self.encoder.patch_embed.proj.in_channels)
        frames = clip[:, :, : self.objective_cfg.encoder_frames(clip.shape[2])]
        grid = self.encoder.patch_embed.grid(frames)
        ids_visible, ids_masked = self.token_index(mask, decoder_mask, clip.shape[0], grid[0] * grid[1] * grid[2])
        targets = self.compute_targets(clip, ids_masked)

        latent = self.encoder.forward_features(frames, ids_visible=ids_visible)  # (B, N_vis, D)

        preds = {}
        for branch in self.branches:
            feats = self.forward_decoder(latent, ids_visible, ids_masked, grid, branch)
            decoder = getattr(self, branch.decoder)
            preds.update({name: getattr(decoder, attr)(feats) for name, attr in branch.heads})

        out: Dict[str, torch.Tensor] = {}
        loss = None
        for t in self.targets:
            out[f"loss_{t.name}"] = reconstruction_loss(preds[t.name], targets[t.name], self.objective_cfg.loss)
            term = t.weight * out[f"loss_{t.name}"]
            loss = term if loss is None else loss + term
        out["loss"] = loss
        for t in self.targets:
            out[f"pred_{t.name}"], out[f"target_{t.name}"] = preds[t.name], targets[t.name]
        out["ids_masked"] = ids_masked
        return out
