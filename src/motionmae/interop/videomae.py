"""Original VideoMAE (MCG-NJU, v1 and v2) `.pth` checkpoints -> ours.

Their key names are ours already (we kept timm/VideoMAE names), so the mapping is mostly a check. The file
does not store the model config: sizes come from tensor shapes (depth = block count, widths from the
weights, tubelet/patch from the Conv3d kernel); what shapes cannot tell (number of heads, clip length, image
size) comes from the standard VideoMAE sizes or from the caller. Files are read with
`torch.load(weights_only=True)` only: an embedded object is refused, never executed.
"""

from __future__ import annotations

from typing import Optional

import torch

from motionmae.errors import UserError
from motionmae.interop.common import (
    Converted,
    StateDict,
    block_count,
    check_motion_branch,
    mlp_ratio_for,
    pretrain_config,
    refuse_leftovers,
    torch_load_weights_only,
)
from motionmae.models.pretrain import branch_prefixes
from motionmae.models.state import load_matching, strip_prefixes

# heads are invisible in weight shapes; VideoMAE's (and v2's) model zoo uses these
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}
VIDEOMAE_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) everywhere, fc_norm and decoder.norm included

_BLOCK_PARAMS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip


def read_state_dict(path) -> StateDict:
    """The model state dict of a VideoMAE checkpoint: top-level `model` or `module` (or a bare state dict),
    `_orig_mod.` / `module.` prefixes removed."""
    obj = torch_load_weights_only(path)
    sd = strip_prefixes(obj) if isinstance(obj, dict) else None
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: no state dict found (expected a 'model' or 'module' entry of tensors; top level has {keys})")
    return sd


def _heads(dim: int, table: dict, given: Optional[int], flag: str, where: str) -> int:
    if given:
        return given
    if dim not in table:
        raise UserError(f"{where}: width {dim} is not a standard VideoMAE size; pass {flag} to say how many attention heads")
    return table[dim]


def cfg_from_videomae(
    sd: StateDict,
    where: str = "checkpoint",
    num_frames: Optional[int] = None,
    img_size: Optional[int] = None,
    num_heads: Optional[int] = None,
    decoder_num_heads: Optional[int] = None,
    decoder: str = "sha",
):
    """Infer our PretrainConfig from a VideoMAE state dict (already prefix-stripped, in either layout)."""
    from motionmae.config import SIZES, ModelConfig

    pre = "encoder." if _is_pretrain(sd) else ""
    w = sd.get(pre + "patch_embed.proj.weight")
    if w is None or w.ndim != 5:
        raise UserError(f"{where}: no Conv3d '{pre}patch_embed.proj.weight'; not a VideoMAE video checkpoint")
    d, in_chans, tubelet, p, p2 = w.shape
    if p != p2:
        raise UserError(f"{where}: non-square patch {p}x{p2} is not supported")
    depth = block_count(sd, pre + "blocks.")
    if depth == 0:
        raise UserError(f"{where}: no '{pre}blocks.N.*' keys")
    if any(".gamma_1" in k or ".gamma_2" in k for k in sd):
        raise UserError(f"{where}: the checkpoint uses layer scale (blocks.N.gamma_1/gamma_2), which our ViT does not have")
    h = _heads(d, ENCODER_HEADS, num_heads, "--num-heads", where)
    mlp_ratio = mlp_ratio_for(sd[pre + "blocks.0.mlp.fc1.weight"].shape[0], d)
    pos = sd.get(pre + "pos_embed")
    n_frames, size = num_frames or 16, img_size or 224
    if pos is not None:  # learnable: its length pins T'*H'*W'
        n = pos.shape[1]
        if (n_frames // tubelet) * (size // p) ** 2 != n:
            raise UserError(
                f"{where}: learnable pos_embed has {n} tokens, but num_frames={n_frames}, img_size={size} give "
                f"{(n_frames // tubelet) * (size // p) ** 2}; pass --num-frames / --img-size"
            )
    size_name = next((k for k, v in SIZES.items() if v == (d, depth, h)), "base")
    m = ModelConfig(
        size=size_name,
        embed_dim=d,
        depth=depth,
        num_heads=h,
        mlp_ratio=mlp_ratio,
        patch_size=p,
        tubelet_size=tubelet,
        num_frames=n_frames,
        img_size=size,
        in_chans=in_chans,
        qkv_bias=(pre + "blocks.0.attn.q_bias") in sd,
        pos_embed="learnable" if pos is not None else "sincos1d",
        # 'first' only for a fine-tuned model without mean pooling (its final norm is kept); encoders ignore it
        pooling="first" if not pre and "fc_norm.weight" not in sd and "norm.weight" in sd and "head.weight" in sd else "mean",
        final_norm=bool(pre) or "head.weight" in sd or "norm.weight" in sd,  # a fine-tuned encoder without `norm`
        norm_eps=VIDEOMAE_EPS,
        head_norm_eps=VIDEOMAE_EPS,
        decoder=decoder,
    )
    if pre:
        dd = sd["encoder_to_decoder.weight"].shape[0] if "encoder_to_decoder.weight" in sd else 384
        m.decoder_embed_dim = dd
        m.decoder_depth = block_count(sd, "decoder.blocks.")
        m.decoder_num_heads = _heads(dd, DECODER_HEADS, decoder_num_heads, "--decoder-num-heads", where)
        if "decoder.blocks.0.mlp.fc1.weight" in sd:
            m.decoder_mlp_ratio = mlp_ratio_for(sd["decoder.blocks.0.mlp.fc1.weight"].shape[0], dd)
    m.grid()  # validates divisibility
    return pretrain_config(m)


def _is_pretrain(sd: StateDict) -> bool:
    return any(k.startswith("encoder.") for k in sd)


def videomae_to_ours(sd: StateDict, cfg, where: str = "checkpoint"):
    """Check every key and return (our state dict, kind). Names match; only presence/absence is checked."""
    src = dict(sd)
    m = cfg.model
    _, depth, _ = m.dims()
    pretrain = _is_pretrain(src)
    pre = "encoder." if pretrain else ""
    out = {}

    def mv(key):
        if key not in src:
            raise UserError(f"{where}: missing key '{key}'")
        out[key] = src.pop(key)

    mv(pre + "patch_embed.proj.weight")
    mv(pre + "patch_embed.proj.bias")
    if m.pos_embed == "learnable":
        mv(pre + "pos_embed")
    for prefix, n in [(pre + "blocks.", depth)] + ([("decoder.blocks.", m.decoder_depth)] if pretrain else []):
        for i in range(n):
            for name in _BLOCK_PARAMS:
                mv(f"{prefix}{i}.{name}")
            if m.qkv_bias:
                mv(f"{prefix}{i}.attn.q_bias")
                mv(f"{prefix}{i}.attn.v_bias")
    if pretrain:
        for key in ("encoder.norm.weight", "encoder.norm.bias", "encoder_to_decoder.weight", "mask_token",
                    "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight", "decoder.head.bias"):  # fmt: skip
            mv(key)
        kind = "pretrain"
    else:
        kind = "classifier" if "head.weight" in src else "encoder"
        if (kind == "encoder" and m.final_norm) or (kind == "classifier" and m.pooling == "first"):
            mv("norm.weight")
            mv("norm.bias")
        elif kind == "classifier":
            mv("fc_norm.weight")
            mv("fc_norm.bias")
        if kind == "classifier":
            mv("head.weight")
            mv("head.bias")
    refuse_leftovers(src, where)
    return out, kind


def load_videomae(
    path,
    num_frames: Optional[int] = None,
    img_size: Optional[int] = None,
    num_heads: Optional[int] = None,
    decoder_num_heads: Optional[int] = None,
    decoder: str = "sha",
) -> Converted:
    """An original VideoMAE `.pth` -> our model (eval mode, CPU): pretraining layout -> `PretrainModel` (motion
    branch fresh unless decoder='none'); fine-tuned layout -> classifier (or encoder when it has no head)."""
    from motionmae.interop.hf import build_model, fresh_note

    where = str(path)
    sd = read_state_dict(path)
    cfg = cfg_from_videomae(sd, where, num_frames, img_size, num_heads, decoder_num_heads, decoder)
    ours, kind = videomae_to_ours(sd, cfg, where)
    if kind == "pretrain":
        check_motion_branch(cfg, where)
    num_classes = int(ours["head.weight"].shape[0]) if kind == "classifier" else 0
    model = build_model(cfg, kind, num_classes)
    fresh = load_matching(model, ours, where, fresh=branch_prefixes(cfg))["fresh"]
    notes = []
    if num_heads is None:
        notes.append(f"heads inferred from the width: {cfg.model.num_heads}")
    if num_frames is None or img_size is None:
        notes.append(f"clip size assumed {cfg.model.num_frames} frames x {cfg.model.img_size} px (override with --num-frames / --img-size)")
    if fresh:
        notes.append(fresh_note(cfg, fresh))
    return Converted(model.eval(), cfg, kind, num_classes, notes, fresh)
