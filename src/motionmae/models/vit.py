"""Video Vision Transformer: tubelet embedding, positional embeddings, pre-norm blocks, pooling head.

One class serves as the pretraining encoder (`num_classes=0`) and as the fine-tuning classifier, with
the key layout of the original VideoMAE (`patch_embed.proj`, `blocks.N.*`, `norm` / `fc_norm`, `head`),
so checkpoints from either side map one to one. Tokens are ordered t-major, then h, then w: the order in
which the Conv3d output is flattened.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from motionmae.config import ModelConfig
from motionmae.errors import UserError

Grid = Tuple[int, int, int]

POS_EMBED_KINDS = ("sincos3d", "sincos1d", "learnable")


# ----------------------------------------------------------------------------------------------
# positional embeddings


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's / transformers' `get_sinusoid_encoding_table(n, dim)`, over the flattened token index.

    angle[pos, i] = pos / 10000 ** (2 * (i // 2) / dim); sin on even dims, cos on odd dims. (n, dim) float32.
    """
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.empty(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def _sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE's 1D sin-cos embedding: (len(pos), dim), first half sin, second half cos."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos3d_table(grid: Grid, dim: int) -> torch.Tensor:
    """Fixed factorised 3D sin-cos embedding, (T'*H'*W', dim) in t-major token order.

    `dim` is split into a temporal part (about dim/4, as MAE-ST) and two equal-ish spatial parts; each part
    is an MAE 1D sin-cos embedding of its integer coordinate, concatenated [t | h | w].
    """
    if dim % 2:
        raise UserError(f"model.embed_dim={dim}: the 3D sin-cos positional embedding needs an even width")
    dt = 2 * (dim // 8)
    dh = 2 * ((dim - dt) // 4)
    dw = dim - dt - dh
    t, h, w = grid
    gt, gh, gw = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    parts = [_sincos_1d(g.reshape(-1), d) for g, d in ((gt, dt), (gh, dh), (gw, dw)) if d > 0]
    return torch.cat(parts, dim=1).float()


def resize_pos_embed(pos: torch.Tensor, old: Grid, new: Grid) -> torch.Tensor:
    """(1, N_old, D) table laid out on grid `old` -> (1, N_new, D) on grid `new`, trilinear."""
    if tuple(old) == tuple(new):
        return pos
    d = pos.shape[-1]
    x = pos.reshape(1, *old, d).permute(0, 4, 1, 2, 3)
    x = F.interpolate(x.float(), size=tuple(new), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(pos.dtype)


def fixed_table(kind: str, grid: Grid, dim: int) -> torch.Tensor:
    """The (1, N, D) table of a fixed kind ('sincos1d' | 'sincos3d') on `grid`."""
    n = grid[0] * grid[1] * grid[2]
    return (sincos3d_table(grid, dim) if kind == "sincos3d" else sinusoid_table(n, dim))[None]


def check_fixed_table(stored: torch.Tensor, kind: str, grid: Grid, where: str) -> None:
    """A stored fixed table must be exactly the one `kind` computes on `grid`: the weights were trained with it,
    and loading them under another table would silently change the function."""
    expect = fixed_table(kind, grid, stored.shape[-1])
    if stored.shape != expect.shape or not torch.allclose(stored.detach().float().cpu(), expect, rtol=0, atol=1e-6):
        raise UserError(f"{where}: the stored positional table is not the model.pos_embed='{kind}' table of the "
                        f"{'x'.join(map(str, grid))} token grid; the weights were trained with another table")


class PosEmbedMixin:
    """`pos_embed` (1, N, D) built for `self.grid`, and its version for any other grid.

    sincos3d is recomputed exactly for the new grid (integer coordinates); sincos1d and learnable tables
    are laid out on the configured grid and resized trilinearly (the 1D table indexes flattened tokens, so
    recomputing it for another W would move every position).

    What the weights carry follows the original VideoMAE layout, where a state dict without `pos_embed` means
    the fixed 1D sinusoid table: sincos1d is not stored, a learnable table is a parameter, and the sincos3d table
    is stored too (a persistent buffer), so that no VideoMAE-layout reader takes a 3D-table model for a 1D one.
    A stored sincos3d table is checked on load against the one this model computes.
    """

    def _init_pos_embed(self, kind: str, grid: Grid, dim: int) -> None:
        if kind not in POS_EMBED_KINDS:
            raise UserError(f"unknown model.pos_embed '{kind}'; valid: {', '.join(POS_EMBED_KINDS)}")
        self.pos_kind, self.grid = kind, tuple(grid)
        if kind == "learnable":
            n = grid[0] * grid[1] * grid[2]
            self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", fixed_table(kind, grid, dim), persistent=kind == "sincos3d")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_embed"
        if self.pos_kind == "sincos3d" and key in state_dict and state_dict[key].shape == self.pos_embed.shape:
            check_fixed_table(state_dict[key], self.pos_kind, self.grid, key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pos_embed_for(self, grid: Grid) -> torch.Tensor:
        grid = tuple(grid)
        if grid == self.grid:
            return self.pos_embed
        if self.pos_kind == "sincos3d":
            return sincos3d_table(grid, self.pos_embed.shape[-1])[None].to(self.pos_embed)
        return resize_pos_embed(self.pos_embed, self.grid, grid)


# ----------------------------------------------------------------------------------------------
# building blocks


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


def visible_and_masked_index(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """bool (B, N) True = masked -> (ids_visible (B, N_vis), ids_masked (B, N_mask)), each ascending.

    Same order as VideoMAE's `x[~mask]` / `x[mask]`; every row must mask the same count.
    """
    b, n = mask.shape
    n_mask = int(mask[0].sum())
    ids = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, then masked
    return ids[:, : n - n_mask], ids[:, n - n_mask :]


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, M) -> (B, M, D)."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


PREPROCESS_HINT = ("decoded uint8 frames (T, H, W, C) become model input with the preprocessing helper: model.preprocess(frames) "
                   "on a MotionMAE, or motionmae.data.transforms.preprocess(frames, input_size, mean, std)")


def check_clip(x, in_chans: int) -> None:
    """A clip the model cannot take is one UserError that names the layout and dtype expected and how to convert:
    float (B, C, T, H, W), normalised with the mean/std the model was trained with."""
    want = f"expected a float clip (B, C, T, H, W) with C={in_chans}, normalised with the model's mean/std"
    if not torch.is_tensor(x):
        raise UserError(f"{want}; got a {type(x).__name__}: torch.as_tensor(...), or {PREPROCESS_HINT}")
    shape = tuple(x.shape)
    if not x.is_floating_point():
        raise UserError(f"{want}; got {str(x.dtype).replace('torch.', '')} {shape}: {PREPROCESS_HINT}")
    if x.dim() == 4 and shape[0] == in_chans:
        raise UserError(f"{want}; got {shape}, one clip without the batch dimension: x[None] (or x.unsqueeze(0))")
    if x.dim() != 5:
        raise UserError(f"{want}; got {x.dim()} dimensions {shape}")
    if shape[1] != in_chans:
        if shape[2] == in_chans:
            raise UserError(f"{want}; got {shape}, which looks like transformers' (B, T, C, H, W): x.permute(0, 2, 1, 3, 4)")
        if shape[4] == in_chans:
            raise UserError(f"{want}; got {shape}, which looks like channels-last (B, T, H, W, C) frames: "
                            f"x.permute(0, 4, 1, 2, 3), or {PREPROCESS_HINT}")
        raise UserError(f"{want}; got {shape}")


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, p, p); (B, C, T, H, W) -> (B, N, D)."""

    def __init__(self, in_chans: int, dim: int, tubelet: int, patch: int):
        super().__init__()
        self.tubelet, self.patch = tubelet, patch
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def grid(self, x: torch.Tensor) -> Grid:
        _, _, t, h, w = x.shape
        if t % self.tubelet or h % self.patch or w % self.patch:
            raise UserError(
                f"input of {t} frames x {h}x{w} px is not divisible by the tubelet {self.tubelet} x {self.patch}x{self.patch}"
            )
        return t // self.tubelet, h // self.patch, w // self.patch

    def forward(self, x: torch.Tensor, ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, D); with `ids` (B, M) only those tokens (B, M, D), embedding just them."""
        if ids is None:
            return self.proj(x).flatten(2).transpose(1, 2)
        # the same Conv3d as a Linear over the chosen cubes, laid out (C, tubelet, p, p) like its weight
        b, c, t, h, w = x.shape
        k, p = self.tubelet, self.patch
        cubes = x.reshape(b, c, t // k, k, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        cubes = gather_tokens(cubes.reshape(b, -1, c * k * p * p), ids)
        return F.linear(cubes, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention. One bias-free `qkv` Linear plus separate `q_bias` / `v_bias` (k bias fixed
    at zero), the original VideoMAE convention, so its and transformers' checkpoints map exactly."""

    fused_attn = True  # False: hand-written softmax path (tests compare the two)

    @staticmethod
    def use_sdpa(q: torch.Tensor) -> bool:
        """SDPA everywhere except bf16/fp16 on CPU, where its kernels ran 1.5-4x slower than the explicit
        path (benchmarks/step.py, torch 2.13, AVX512-BF16); the explicit path keeps softmax in q's dtype,
        as flash attention does for P @ V."""
        return not (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16))

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, queries: Optional[int] = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with `queries`, only the last `queries` tokens attend (to all N) and
        only their outputs are computed: (B, queries, D)."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        heads = (self.num_heads, self.head_dim)
        if queries is None:
            qkv = F.linear(x, self.qkv.weight, bias)
            q, k, v = qkv.reshape(b, n, 3, *heads).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # the same projection, split: q for the kept tokens only, k and v for all
            w = self.qkv.weight
            q = F.linear(x[:, n - queries :], w[:d], None if bias is None else bias[:d])
            kv = F.linear(x, w[d:], None if bias is None else bias[d:])
            q = q.reshape(b, queries, *heads).transpose(1, 2)
            k, v = kv.reshape(b, n, 2, *heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn and self.use_sdpa(q):
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, q.shape[2], d))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) (CLIP; transformers' 'quick_gelu')."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


# model.act_layer (timm's names; config.ActLayer) -> the activation
ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown model.act_layer '{name}'; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, eps: float,
                 act: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, queries: Optional[int] = None) -> torch.Tensor:
        """`queries`: compute the outputs of the last `queries` tokens only (see `Attention`)."""
        y = self.drop_path(self.attn(self.norm1(x), queries))
        x = x + y if queries is None else x[:, x.shape[1] - queries :] + y
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool, keep_last: Optional[int] = None) -> torch.Tensor:
    """`keep_last`: only the last `keep_last` tokens' outputs are wanted; the last block then computes
    just those (the MAE decoder reads only the masked tokens: at mask 0.9 this skips 10% of its last block)."""
    for i, blk in enumerate(blocks):
        queries = keep_last if i == len(blocks) - 1 else None
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, queries, use_reentrant=False)
        else:
            x = blk(x, queries)
    if keep_last is not None and not len(blocks):
        x = x[:, x.shape[1] - keep_last :]
    return x


def init_weights(module: nn.Module) -> None:
    """The one weight-init routine (MAE): xavier-uniform Linear / tubelet embedding, zero biases, LayerNorm 1/0.
    Positional embeddings, mask tokens and classifier heads are initialised where they are created."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear over the flattened cube
            nn.init.zeros_(m.proj.bias)


# ----------------------------------------------------------------------------------------------
# the model


class VisionTransformer(PosEmbedMixin, nn.Module):
    """Video ViT. `num_classes=0`: encoder (final `norm`, no head; Identity with `final_norm=False`). `num_classes>0`:
    classifier with pooling 'mean' (VideoMAE fine-tuning: `norm` = Identity, mean of tokens -> `fc_norm` -> `head`) or
    'first' (`norm` -> first token -> `head`, transformers' VideoMAEForVideoClassification without mean pooling).
    `head_drop`: dropout on the pooled feature before `head` in training (timm's name; VideoMAE's fc_drop_rate).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = 0, head_drop: float = 0.0):
        super().__init__()
        dim, depth, heads = cfg.dims()
        if cfg.pooling not in ("mean", "first"):
            raise UserError(f"unknown model.pooling '{cfg.pooling}'; valid: mean, first")
        self.cfg, self.num_classes, self.embed_dim = cfg, num_classes, dim
        self.grad_checkpointing = cfg.grad_checkpointing
        self.patch_embed = PatchEmbed(cfg.in_chans, dim, cfg.tubelet_size, cfg.patch_size)
        dpr = [cfg.drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linearly increasing
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, dpr[i], cfg.norm_eps, cfg.act_layer) for i in range(depth)
        )
        mean_pool = num_classes > 0 and cfg.pooling == "mean"
        self.norm = nn.Identity() if mean_pool or not cfg.final_norm else nn.LayerNorm(dim, eps=cfg.norm_eps)
        # interop: transformers' fc_norm uses eps 1e-5 whatever layer_norm_eps says, hence head_norm_eps
        head_eps = cfg.norm_eps if cfg.head_norm_eps is None else cfg.head_norm_eps
        self.fc_norm = nn.LayerNorm(dim, eps=head_eps) if mean_pool else nn.Identity()
        self.head_drop = nn.Dropout(head_drop) if head_drop > 0 else nn.Identity()  # VideoMAE's fc_dropout
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        init_weights(self)
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self._init_pos_embed(cfg.pos_embed, cfg.grid(), dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """(B, C, T, H, W) -> tokens plus positional embedding (B, N, D), and the token grid."""
        grid = self.patch_embed.grid(x)
        x = self.patch_embed(x)
        return x + self.pos_embed_for(grid).to(x.dtype), grid

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                         ids_visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, T, H, W) normalised; mask bool (B, N), True = masked -> normed visible tokens (B, N_vis, D).
        `ids_visible` (B, N_vis): the visible tokens' indices, when the caller has them (instead of `mask`)."""
        check_clip(x, self.patch_embed.proj.in_channels)
        if mask is None and ids_visible is None:
            x, _ = self.embed(x)
        else:  # embed only the visible cubes
            grid = self.patch_embed.grid(x)
            ids = visible_and_masked_index(mask)[0] if ids_visible is None else ids_visible
            x = self.patch_embed(x, ids)
            x = x + gather_tokens(self.pos_embed_for(grid).to(x.dtype).expand(x.shape[0], -1, -1), ids)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens as a grid (B, T', H', W', D), for dense tasks (after `norm`, which is Identity for a
        mean-pooling classifier)."""
        tokens = self.forward_features(x)
        return tokens.reshape(x.shape[0], *self.patch_embed.grid(x), tokens.shape[-1])

    def forward_intermediates(self, x: torch.Tensor, indices) -> list:
        """The tokens (B, N, D) after each block in `indices` (0-based; negative counts from the end, -1 = the last),
        in the order given, each through the final `norm` -- so layer -1 is exactly `forward_features(x)` and an
        earlier layer is what the encoder would output if it ended there (DINOv2's `get_intermediate_layers`
        with norm). Blocks after the deepest one asked for are not run."""
        check_clip(x, self.patch_embed.proj.in_channels)
        depth = len(self.blocks)
        wanted = []
        for i in indices:
            if not -depth <= int(i) < depth:
                raise UserError(f"layer {i} does not exist: the encoder has {depth} blocks (layers 0..{depth - 1}, or -1..-{depth})")
            wanted.append(int(i) % depth)
        x, _ = self.embed(x)
        outs = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = checkpoint(blk, x, None, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else blk(x)
            if i in wanted:
                outs[i] = self.norm(x)
        return [outs[i] for i in wanted]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x.mean(dim=1)) if self.cfg.pooling == "mean" else x[:, 0]
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_encoder(cfg: ModelConfig) -> VisionTransformer:
    return VisionTransformer(cfg, num_classes=0)
