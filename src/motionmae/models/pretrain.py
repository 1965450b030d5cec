"""The MotionMAE / VideoMAE pretraining model, top to bottom: targets, encoder on visible tokens, decoder(s), loss.

Decoder designs (`model.decoder`):
- 'none': one decoder, appearance head only. With tube masking this is VideoMAE.
- 'sha':  one decoder trunk shared by both targets; only the last Linear differs (`decoder.head` for
          appearance, `decoder.motion_head` for motion). Costs one extra Linear.
- 'ind':  two independent decoders: (`encoder_to_decoder`, `mask_token`, `decoder`) for appearance and
          (`motion_encoder_to_decoder`, `motion_mask_token`, `motion_decoder`) for motion.
Decoder input (VideoMAE order): the visible tokens, then one mask token per masked position, each plus
its own decoder positional embedding; the heads see only the last N_masked tokens, so no unshuffle.
The key names of the appearance branch are the original VideoMAE ones (`encoder.*`, `encoder_to_decoder`,
`mask_token`, `decoder.blocks.N.*`, `decoder.norm`, `decoder.head`).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from motionmae.config import ModelConfig, PretrainConfig
from motionmae.errors import UserError
from motionmae.models.vit import (
    Block,
    PosEmbedMixin,
    VisionTransformer,
    gather_tokens,
    init_weights,
    run_blocks,
    visible_and_masked_index,
)
from motionmae.objective.loss import reconstruction_loss
from motionmae.objective.targets import appearance_target, motion_channels, motion_target, num_appearance_frames

DECODERS = ("sha", "ind", "none")


class Decoder(PosEmbedMixin, nn.Module):
    """Light transformer over all N tokens: `pos_embed`, `blocks`, `norm`, `head` (+ `motion_head` for sha)."""

    def __init__(self, cfg: ModelConfig, out_dim: int, motion_dim: int = 0):
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
        self.head = nn.Linear(dim, out_dim)
        self.motion_head = nn.Linear(dim, motion_dim) if motion_dim else None
        init_weights(self)
        self._init_pos_embed(cfg.pos_embed, cfg.grid(), dim)


class PretrainModel(nn.Module):
    """`PretrainModel(cfg)`; `forward(clip, mask)` -> dict of losses, predictions and targets on masked tokens."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        m, o = cfg.model, cfg.objective
        if m.decoder not in DECODERS:
            raise UserError(f"unknown model.decoder '{m.decoder}'; valid: {', '.join(DECODERS)}")
        if len(cfg.data.mean) != m.in_chans or len(cfg.data.std) != m.in_chans:
            raise UserError(f"data.mean / data.std need {m.in_chans} values (model.in_chans)")
        self.model_cfg, self.objective_cfg = m, o
        self.grad_checkpointing = m.grad_checkpointing
        self.tubelet, self.patch = m.tubelet_size, m.patch_size
        # the clip arrives normalised; targets are computed on it un-normalised back to [0, 1] (VideoMAE)
        self.register_buffer("mean", torch.tensor(cfg.data.mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.data.std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

        self.encoder = VisionTransformer(m)
        cube = m.tubelet_size * m.patch_size**2
        appearance_dim, motion_dim = cube * m.in_chans, cube * motion_channels(o, m.in_chans)

        self.encoder_to_decoder = nn.Linear(self.encoder.embed_dim, m.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, m.decoder_embed_dim))
        self.decoder = Decoder(m, appearance_dim, motion_dim if m.decoder == "sha" else 0)
        if m.decoder == "ind":
            self.motion_encoder_to_decoder = nn.Linear(self.encoder.embed_dim, m.decoder_embed_dim, bias=False)
            self.motion_mask_token = nn.Parameter(torch.zeros(1, 1, m.decoder_embed_dim))
            self.motion_decoder = Decoder(m, motion_dim)
        for p in self.parameters(recurse=False):  # the mask tokens
            nn.init.trunc_normal_(p, std=0.02)
        init_weights(self.encoder_to_decoder)
        if m.decoder == "ind":
            init_weights(self.motion_encoder_to_decoder)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = self.encoder.grad_checkpointing = enable

    @property
    def has_motion(self) -> bool:
        return self.model_cfg.decoder != "none"

    def targets(self, clip: torch.Tensor, ids_masked: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Appearance and motion targets of the masked tokens, (B, M, P), float32, no gradient."""
        o = self.objective_cfg
        with torch.no_grad():
            clip01 = torch.addcmul(self.mean, clip.float(), self.std)
            appearance = appearance_target(clip01, o, self.tubelet, self.patch, ids_masked)
            motion = motion_target(clip01, o, self.tubelet, self.patch, ids_masked) if self.has_motion else None
        return appearance, motion

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_visible: torch.Tensor,
        ids_masked: torch.Tensor,
        grid,
        embed: nn.Linear,
        mask_token: torch.Tensor,
        decoder: Decoder,
    ) -> torch.Tensor:
        """Encoder latent (B, N_vis, D) -> decoder features of the masked tokens (B, N_mask, D_dec)."""
        x = embed(latent)
        b, n_mask = x.shape[0], ids_masked.shape[1]
        pos = decoder.pos_embed_for(grid).to(x.dtype).expand(b, -1, -1)
        x = torch.cat([x + gather_tokens(pos, ids_visible), mask_token.to(x.dtype) + gather_tokens(pos, ids_masked)], dim=1)
        return decoder.norm(run_blocks(decoder.blocks, x, self.grad_checkpointing, keep_last=n_mask))

    def forward(self, clip: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """clip (B, C, T, H, W) normalised (T+g frames with motion_pad='extra_frame'); mask bool (B, N), True = masked.

        Returns 'loss' (w_a * loss_appearance + w_m * loss_motion), 'loss_appearance', 'loss_motion' (0 with
        decoder 'none'), 'pred_appearance' / 'target_appearance' (B, N_mask, tubelet*p*p*C), 'pred_motion' /
        'target_motion' (B, N_mask, tubelet*p*p*C'; None with decoder 'none') and 'ids_masked' (B, N_mask),
        the token index of each prediction row.
        """
        o = self.objective_cfg
        frames = clip[:, :, : num_appearance_frames(clip, o)]
        grid = self.encoder.patch_embed.grid(frames)
        n = grid[0] * grid[1] * grid[2]
        if mask.shape != (clip.shape[0], n) or mask.dtype != torch.bool:
            raise UserError(f"mask must be bool (B, N) = ({clip.shape[0]}, {n}) for this clip, got {mask.dtype} {tuple(mask.shape)}")
        ids_visible, ids_masked = visible_and_masked_index(mask)
        target_appearance, target_motion = self.targets(clip, ids_masked)

        latent = self.encoder.forward_features(frames, mask)  # (B, N_vis, D)

        feats = self.forward_decoder(latent, ids_visible, ids_masked, grid, self.encoder_to_decoder, self.mask_token, self.decoder)
        pred_appearance = self.decoder.head(feats)
        pred_motion = None
        if self.model_cfg.decoder == "sha":
            pred_motion = self.decoder.motion_head(feats)
        elif self.model_cfg.decoder == "ind":
            feats_m = self.forward_decoder(
                latent, ids_visible, ids_masked, grid, self.motion_encoder_to_decoder, self.motion_mask_token, self.motion_decoder
            )
            pred_motion = self.motion_decoder.head(feats_m)

        loss_appearance = reconstruction_loss(pred_appearance, target_appearance, o.loss)
        loss = o.w_appearance * loss_appearance
        if pred_motion is not None:
            loss_motion = reconstruction_loss(pred_motion, target_motion, o.loss)
            loss = loss + o.w_motion * loss_motion
        else:
            loss_motion = torch.zeros((), device=clip.device)
        return {
            "loss": loss,
            "loss_appearance": loss_appearance,
            "loss_motion": loss_motion,
            "pred_appearance": pred_appearance,
            "pred_motion": pred_motion,
            "target_appearance": target_appearance,
            "target_motion": target_motion,
            "ids_masked": ids_masked,
        }
