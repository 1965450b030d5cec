"""transformers' VideoMAE (`VideoMAEModel`, `VideoMAEForVideoClassification`, `VideoMAEForPreTraining`) <-> ours.

Reading a transformers directory needs only safetensors / torch (config.json + model.safetensors or
pytorch_model.bin); transformers itself is imported only to check an export against it.

Conventions carried over exactly (see docs/INTEROP.md):
- q, k, v: three Linears in transformers, one `attn.qkv` Linear (no bias) + `q_bias`/`v_bias` in ours;
  the k bias is zero in both. transformers 4.x names the biases `attention.attention.q_bias`/`v_bias`,
  5.x `attention.attention.query.bias`/`value.bias`; both are read, the 4.x names are written (what the
  hub checkpoints use; 5.x renames them on load, and every export is verified by comparing logits).
- position embedding: the fixed 1D sinusoid table over all tokens (ours: pos_embed='sincos1d'), in the
  encoder and in the decoder; nothing is stored in the file.
- LayerNorm eps: `layer_norm_eps` (default 1e-12) in every block and in the final `videomae.layernorm`;
  `fc_norm` and the decoder's final `norm` use PyTorch's default 1e-5 whatever layer_norm_eps says.
- pooling: use_mean_pooling=True -> no final encoder norm, mean over tokens -> fc_norm -> classifier;
  False -> final norm -> first token -> classifier.
- input: transformers takes (B, T, C, H, W); ours (B, C, T, H, W).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional, Tuple

import torch

from motionmae.errors import UserError
from motionmae.interop.common import (
    Converted,
    StateDict,
    pretrain_config,
    refuse_leftovers,
    take,
    torch_load_weights_only,
)
from motionmae.models.pretrain import branch_prefixes
from motionmae.models.state import load_matching

HF_LN_DEFAULT_EPS = 1e-5  # nn.LayerNorm default: transformers' fc_norm and decoder.norm
ARCH = {
    "encoder": "VideoMAEModel",
    "classifier": "VideoMAEForVideoClassification",
    "pretrain": "VideoMAEForPreTraining",
}

# per-block names: ours <-> transformers (under encoder.layer.N / decoder.decoder_layers.N)
_BLOCK_LINEAR = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV = "attention.attention."


# ----------------------------------------------------------------------------------------------
# config


def _pair_to_int(v, key: str, where: str) -> int:
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or v[0] != v[1]:
            raise UserError(f"{where}: {key}={v}: only square images/patches are supported")
        v = v[0]
    return int(v)


def _ratio(inner: int, dim: int, key: str, where: str) -> float:
    r = inner / dim
    if int(dim * r) != inner:
        raise UserError(f"{where}: {key}={inner} is not representable as int({dim} * mlp_ratio)")
    return r


def cfg_from_hf(hf: dict, where: str = "config.json", decoder: str = "sha"):
    """transformers VideoMAEConfig (as a dict) -> our PretrainConfig (model + objective sections)."""
    from motionmae.config import SIZES, ModelConfig

    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise UserError(f"{where}: hidden_act='{act}' is not supported (ours is exact GELU, transformers' 'gelu')")
    d, n, h = int(hf.get("hidden_size", 768)), int(hf.get("num_hidden_layers", 12)), int(hf.get("num_attention_heads", 12))
    size = next((k for k, v in SIZES.items() if v == (d, n, h)), "base")
    mlp_ratio = _ratio(int(hf.get("intermediate_size", 3072)), d, "intermediate_size", where)
    dd = int(hf.get("decoder_hidden_size", 384))
    dec_ratio = _ratio(int(hf.get("decoder_intermediate_size", 1536)), dd, "decoder_intermediate_size", where)
    qkv_bias = hf.get("qv_bias", hf.get("qkv_bias", True))
    m = ModelConfig(
        size=size,
        embed_dim=d,
        depth=n,
        num_heads=h,
        mlp_ratio=mlp_ratio,
        patch_size=_pair_to_int(hf.get("patch_size", 16), "patch_size", where),
        tubelet_size=int(hf.get("tubelet_size", 2)),
        num_frames=int(hf.get("num_frames", 16)),
        img_size=_pair_to_int(hf.get("image_size", 224), "image_size", where),
        in_chans=int(hf.get("num_channels", 3)),
        qkv_bias=bool(qkv_bias),
        pos_embed="sincos1d",
        pooling="mean" if hf.get("use_mean_pooling", True) else "first",
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        head_norm_eps=HF_LN_DEFAULT_EPS,
        decoder=decoder,
        decoder_embed_dim=dd,
        decoder_depth=int(hf.get("decoder_num_hidden_layers", 4)),
        decoder_num_heads=int(hf.get("decoder_num_attention_heads", 6)),
    )
    m = _set_decoder_mlp_ratio(m, dec_ratio, where)
    cfg = pretrain_config(m)
    cfg.objective.appearance_norm = bool(hf.get("norm_pix_loss", True))
    return cfg


def hf_config_from_cfg(cfg, kind: str, num_classes: int = 0, class_names: Optional[list] = None, allow_eps_change: bool = False) -> dict:
    """Our config -> a transformers VideoMAEConfig dict; refuses what transformers cannot express.

    `allow_eps_change`: accept that transformers computes fc_norm / decoder.norm with eps 1e-5 instead of ours
    (original VideoMAE: 1e-6; transformers' own conversion of the MCG-NJU weights made the same change)."""
    m = cfg.model
    d, n, h = m.dims()
    if m.pos_embed != "sincos1d":
        raise UserError(
            f"model.pos_embed='{m.pos_embed}' cannot be exported: transformers' VideoMAE only has the fixed 1D sinusoid "
            "table. Train (or fine-tune) with model.pos_embed=sincos1d to export, e.g. from a '-hf' preset such as "
            "motionmae-sha-base-hf; see docs/INTEROP.md"
        )
    head_eps = m.norm_eps if m.head_norm_eps is None else m.head_norm_eps
    uses_head_norm = (kind == "classifier" and m.pooling == "mean") or (kind == "pretrain")
    if uses_head_norm and head_eps != HF_LN_DEFAULT_EPS and not allow_eps_change:
        raise UserError(
            f"model.head_norm_eps={head_eps}: transformers' VideoMAE fixes the eps of fc_norm and decoder.norm at 1e-5, "
            "so this model cannot be exported with identical outputs (--allow-eps-change exports anyway and reports "
            "the measured output difference)"
        )
    out = {
        "architectures": [ARCH[kind]],
        "model_type": "videomae",
        "image_size": m.img_size,
        "patch_size": m.patch_size,
        "num_channels": m.in_chans,
        "num_frames": m.num_frames,
        "tubelet_size": m.tubelet_size,
        "hidden_size": d,
        "num_hidden_layers": n,
        "num_attention_heads": h,
        "intermediate_size": int(d * m.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": m.norm_eps,
        "qkv_bias": m.qkv_bias,  # transformers 4.x name; 5.x maps it to qv_bias
        # our encoders (and pretraining encoders) always end with `norm`: transformers' layernorm, no mean pooling
        "use_mean_pooling": kind == "classifier" and m.pooling == "mean",
        "decoder_num_attention_heads": m.decoder_num_heads,
        "decoder_hidden_size": m.decoder_embed_dim,
        "decoder_num_hidden_layers": m.decoder_depth,
        "decoder_intermediate_size": int(m.decoder_embed_dim * _decoder_mlp_ratio(m)),
        "norm_pix_loss": bool(cfg.objective.appearance_norm),
    }
    if kind == "classifier":
        names = list(class_names) if class_names and len(class_names) == num_classes else [f"LABEL_{i}" for i in range(num_classes)]
        out["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
        out["label2id"] = {str(n): i for i, n in enumerate(names)}
    return out


def _decoder_mlp_ratio(m) -> float:
    v = getattr(m, "decoder_mlp_ratio", None)
    return m.mlp_ratio if v is None else v


def _set_decoder_mlp_ratio(m, ratio: float, where: str):
    if hasattr(m, "decoder_mlp_ratio"):
        m.decoder_mlp_ratio = ratio
    elif ratio != m.mlp_ratio:
        raise UserError(f"{where}: decoder MLP ratio {ratio} differs from the encoder's {m.mlp_ratio}; our decoder shares it")
    return m


# ----------------------------------------------------------------------------------------------
# state dicts


def _blocks_from_hf(src: StateDict, hf_prefix: str, our_prefix: str, depth: int, qkv_bias: bool, where: str) -> StateDict:
    out = {}
    for i in range(depth):
        s, o = f"{hf_prefix}{i}.", f"{our_prefix}{i}."
        for ours, theirs in _BLOCK_LINEAR.items():
            for p in ("weight", "bias"):
                out[o + f"{ours}.{p}"] = take(src, s + f"{theirs}.{p}", where)
        q, k, v = (take(src, s + _QKV + f"{n}.weight", where) for n in ("query", "key", "value"))
        out[o + "attn.qkv.weight"] = torch.cat([q, k, v], 0)
        for ours, new, old in (("q_bias", "query.bias", "q_bias"), ("v_bias", "value.bias", "v_bias")):
            key = next((s + _QKV + n for n in (new, old) if s + _QKV + n in src), None)
            if qkv_bias:
                if key is None:
                    raise UserError(f"{where}: missing '{s + _QKV + old}' (or '{new}'): config says qkv_bias/qv_bias=true")
                out[o + f"attn.{ours}"] = src.pop(key)
    return out


def _blocks_to_hf(src: StateDict, our_prefix: str, hf_prefix: str, depth: int, qkv_bias: bool, where: str) -> StateDict:
    out = {}
    for i in range(depth):
        o, s = f"{our_prefix}{i}.", f"{hf_prefix}{i}."
        for ours, theirs in _BLOCK_LINEAR.items():
            for p in ("weight", "bias"):
                out[s + f"{theirs}.{p}"] = take(src, o + f"{ours}.{p}", where)
        q, k, v = take(src, o + "attn.qkv.weight", where).chunk(3, 0)
        for n, w in (("query", q), ("key", k), ("value", v)):
            out[s + _QKV + f"{n}.weight"] = w.contiguous()
        if qkv_bias:
            out[s + _QKV + "q_bias"] = take(src, o + "attn.q_bias", where)
            out[s + _QKV + "v_bias"] = take(src, o + "attn.v_bias", where)
    return out


def _pair(src: StateDict, a: str, b: str, where: str, params=("weight", "bias")) -> StateDict:
    return {f"{b}.{p}": take(src, f"{a}.{p}", where) for p in params}


def detect_hf_kind(sd: StateDict, hf_cfg: dict) -> str:
    archs = hf_cfg.get("architectures") or []
    for kind, arch in ARCH.items():
        if arch in archs:
            return kind
    if any(k.startswith("decoder.decoder_layers.") for k in sd):
        return "pretrain"
    if "classifier.weight" in sd:
        return "classifier"
    return "encoder"


def hf_to_ours(sd: StateDict, cfg, kind: str, where: str = "checkpoint") -> StateDict:
    """transformers keys -> our keys (for `VisionTransformer` or `PretrainModel`); every key must be used."""
    src = dict(sd)
    m = cfg.model
    _, depth, _ = m.dims()
    pre = "videomae." if kind in ("classifier", "pretrain") else ""
    enc = {}
    enc.update(_pair(src, f"{pre}embeddings.patch_embeddings.projection", "patch_embed.proj", where))
    enc.update(_blocks_from_hf(src, f"{pre}encoder.layer.", "blocks.", depth, m.qkv_bias, where))
    if _has_final_norm(kind, m):
        enc.update(_pair(src, f"{pre}layernorm", "norm", where))
    out = {}
    if kind == "classifier":
        if m.pooling == "mean":
            enc.update(_pair(src, "fc_norm", "fc_norm", where))
        enc.update(_pair(src, "classifier", "head", where))
        out = enc
    elif kind == "encoder":
        out = enc
    else:
        out = {f"encoder.{k}": v for k, v in enc.items()}
        out["encoder_to_decoder.weight"] = take(src, "encoder_to_decoder.weight", where)
        out["mask_token"] = take(src, "mask_token", where)
        out.update(_blocks_from_hf(src, "decoder.decoder_layers.", "decoder.blocks.", m.decoder_depth, m.qkv_bias, where))
        out.update(_pair(src, "decoder.norm", "decoder.norm", where))
        out.update(_pair(src, "decoder.head", "decoder.head", where))
    refuse_leftovers(src, where)
    return out


def ours_to_hf(sd: StateDict, cfg, kind: str, where: str = "model") -> Tuple[StateDict, list]:
    """Our keys -> transformers keys. Returns (state dict, names of our keys dropped on purpose)."""
    src = {k: v for k, v in sd.items() if not k.endswith("pos_embed") or not _is_fixed_pos(cfg)}
    m = cfg.model
    _, depth, _ = m.dims()
    out = {}
    enc_pre = "encoder." if kind == "pretrain" else ""
    pre = "videomae." if kind in ("classifier", "pretrain") else ""
    out.update(_pair(src, f"{enc_pre}patch_embed.proj", f"{pre}embeddings.patch_embeddings.projection", where))
    out.update(_blocks_to_hf(src, f"{enc_pre}blocks.", f"{pre}encoder.layer.", depth, m.qkv_bias, where))
    if _has_final_norm(kind, m):
        out.update(_pair(src, f"{enc_pre}norm", f"{pre}layernorm", where))
    if kind == "classifier":
        if m.pooling == "mean":
            out.update(_pair(src, "fc_norm", "fc_norm", where))
        out.update(_pair(src, "head", "classifier", where))
    dropped = []
    if kind == "pretrain":
        out["encoder_to_decoder.weight"] = take(src, "encoder_to_decoder.weight", where)
        out["mask_token"] = take(src, "mask_token", where)
        out.update(_blocks_to_hf(src, "decoder.blocks.", "decoder.decoder_layers.", m.decoder_depth, m.qkv_bias, where))
        out.update(_pair(src, "decoder.norm", "decoder.norm", where))
        out.update(_pair(src, "decoder.head", "decoder.head", where))
        # the other targets' heads / decoders have no transformers counterpart
        dropped = sorted(k for k in src if k.startswith(branch_prefixes(cfg)))
        for k in dropped:
            src.pop(k)
    refuse_leftovers(src, where)
    return out, dropped


def _has_final_norm(kind: str, m) -> bool:
    """Our encoder ends with `norm` unless it is a mean-pooling classifier (then fc_norm follows the mean)."""
    return kind != "classifier" or m.pooling == "first"


def _is_fixed_pos(cfg) -> bool:
    return cfg.model.pos_embed != "learnable"


# ----------------------------------------------------------------------------------------------
# files


def read_hf_dir(path) -> Tuple[dict, StateDict]:
    """(config dict, state dict) of a transformers model directory, without importing transformers."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: expected a transformers model directory (config.json + model.safetensors or pytorch_model.bin)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{path}: no config.json")
    try:
        hf_cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: not valid JSON: {e}") from None
    if hf_cfg.get("model_type", "videomae") != "videomae":
        raise UserError(f"{cfg_path}: model_type='{hf_cfg.get('model_type')}', expected 'videomae'")
    sd: StateDict = {}
    shards = sorted(path.glob("model*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        for f in shards:
            sd.update(load_file(str(f)))
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise UserError(f"{path}: no model.safetensors or pytorch_model.bin")
        for f in bins:
            obj = torch_load_weights_only(f)
            if not isinstance(obj, dict):
                raise UserError(f"{f}: expected a state dict")
            sd.update(obj)
    return hf_cfg, sd


def load_hf(path, decoder: str = "sha", kind: Optional[str] = None) -> Converted:
    """A transformers VideoMAE directory -> our model (eval mode, fp32, CPU).

    `kind` is taken from config.json's `architectures` (or the keys): VideoMAEModel -> encoder
    (`VisionTransformer`, no head), VideoMAEForVideoClassification -> classifier, VideoMAEForPreTraining ->
    `PretrainModel` whose motion head (decoder='sha') or motion decoder ('ind') starts fresh; decoder='none'
    gives a plain VideoMAE.
    """
    hf_cfg, sd = read_hf_dir(path)
    kind = kind or detect_hf_kind(sd, hf_cfg)
    where = str(path)
    cfg = cfg_from_hf(hf_cfg, where=str(Path(path) / "config.json"), decoder=decoder)
    if kind != "classifier":
        if cfg.model.pooling == "mean":
            raise UserError(
                f"{where}: {ARCH[kind]} with use_mean_pooling=true has no final LayerNorm, while our encoders always end "
                "with one; convert the VideoMAEForVideoClassification checkpoint it came from instead"
            )
        cfg.model.pooling = "mean"  # an encoder has no pooling; keep the fine-tuning default (VideoMAE)
    num_classes = int(sd["classifier.weight"].shape[0]) if kind == "classifier" and "classifier.weight" in sd else 0
    ours = hf_to_ours(sd, cfg, kind, where)
    model = build_model(cfg, kind, num_classes)
    fresh = load_matching(model, ours, where, fresh=branch_prefixes(cfg))["fresh"]
    notes = [fresh_note(cfg, fresh)] if fresh else []
    return Converted(model.eval(), cfg, kind, num_classes, notes, fresh, _class_names(hf_cfg, num_classes))


def fresh_note(cfg, fresh: list) -> str:
    """What a VideoMAE checkpoint did not have: the heads / decoders of our other targets."""
    names = [n for n in cfg.objective.targets if n != "appearance"]
    return f"{' and '.join(names)} branch initialised fresh ({len(fresh)} tensors)"


def _class_names(hf_cfg: dict, num_classes: int) -> Optional[list]:
    id2label = hf_cfg.get("id2label") or {}
    try:
        names = [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(num_classes)]
    except KeyError:
        return None
    return names if num_classes and names != [f"LABEL_{i}" for i in range(num_classes)] else None


def build_model(cfg, kind: str, num_classes: int = 0) -> torch.nn.Module:
    if kind == "pretrain":
        from motionmae.models.pretrain import PretrainModel

        return PretrainModel(cfg)
    from motionmae.models.vit import VisionTransformer

    return VisionTransformer(cfg.model, num_classes=num_classes if kind == "classifier" else 0)


def model_kind(model: torch.nn.Module) -> Tuple[str, int]:
    """('encoder' | 'classifier' | 'pretrain', num_classes) of one of our models."""
    if hasattr(model, "encoder") and hasattr(model, "decoder"):
        return "pretrain", 0
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Linear):
        return "classifier", head.out_features
    return "encoder", 0


def export_hf(
    model: torch.nn.Module,
    cfg,
    dst,
    verify: bool = True,
    atol: float = 1e-4,
    class_names: Optional[list] = None,
    allow_eps_change: bool = False,
) -> dict:
    """Write our model as a transformers VideoMAE directory (config.json + model.safetensors).

    With `verify`, the directory is loaded back with transformers' `from_pretrained` (strict: no missing or
    unexpected keys) and its outputs compared with ours on a random clip; any difference above `atol` is an
    error (with `allow_eps_change` too: the comparison is always with our model as it is). `class_names` become
    config.json's id2label. Returns {'kind', 'dropped', 'max_abs_diff'}.
    """
    from safetensors.torch import save_file

    kind, num_classes = model_kind(model)
    hf_cfg = hf_config_from_cfg(cfg, kind, num_classes, class_names, allow_eps_change)
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        model = copy.deepcopy(model).to("cpu", torch.float32)  # written and checked in fp32 on the CPU
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out, dropped = ours_to_hf(sd, cfg, kind)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    report = {"kind": kind, "dropped": dropped, "max_abs_diff": None}
    if verify:
        hf_model = load_transformers(dst, kind)
        report["max_abs_diff"] = check_parity(model, hf_model, kind, cfg, atol, str(dst), check_eps=not allow_eps_change)
    return report


# ----------------------------------------------------------------------------------------------
# checks against transformers itself


def load_transformers(path, kind: str):
    """transformers' model from a directory, refusing any missing / unexpected / mismatched key."""
    try:
        import transformers
    except ImportError:
        raise UserError("checking against transformers needs it installed: pip install 'motionmae[hf]' (or pass --no-verify)") from None
    cls = getattr(transformers, ARCH[kind])
    transformers.utils.logging.disable_progress_bar()
    hf_model, info = cls.from_pretrained(str(path), output_loading_info=True, attn_implementation="eager")
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise UserError(f"{path}: transformers {transformers.__version__} {ARCH[kind]}.from_pretrained reports {bad}")
    return hf_model.eval().float()


def _clip(cfg, seed: int = 0, batch: int = 2) -> torch.Tensor:
    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, m.in_chans, m.num_frames, m.img_size, m.img_size, generator=g)


def parity_mask(cfg, batch: int = 2, ratio: float = 0.75, seed: int = 0) -> torch.Tensor:
    """A random (B, N) bool mask, True = masked, the same count in every row (transformers requires it)."""
    from motionmae.objective.masking import make_mask

    return make_mask("random", batch, cfg.model.grid(), ratio, torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_outputs(hf_model, kind: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """transformers' output for our (B, C, T, H, W) clip: logits (classifier / pretrain) or last hidden state."""
    px = x.permute(0, 2, 1, 3, 4)  # transformers takes (B, T, C, H, W)
    if kind == "pretrain":
        return hf_model(pixel_values=px, bool_masked_pos=mask).logits
    out = hf_model(pixel_values=px)
    return out.logits if kind == "classifier" else out.last_hidden_state


@torch.no_grad()
def our_outputs(model, kind: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Our counterpart of `hf_outputs`: classifier logits, encoder tokens, or the decoder's appearance
    prediction on the masked tokens (in token order, as transformers returns them)."""
    if kind == "classifier":
        return model(x)
    if kind == "encoder":
        return model.forward_features(x)
    return model(x, mask)["pred_appearance"]


def layernorm_eps(module: torch.nn.Module) -> list:
    """eps of every LayerNorm, in registration order (ours and transformers' register them in the same order)."""
    return [m.eps for m in module.modules() if isinstance(m, torch.nn.LayerNorm)]


def check_parity(model, hf_model, kind: str, cfg, atol: float = 1e-4, where: str = "", check_eps: bool = True) -> float:
    """Max |ours - transformers| on a random clip (and mask); a UserError above `atol`.

    fp32 outputs at 1e-4 cannot tell a LayerNorm eps of 1e-5 from 1e-12, so with `check_eps` the eps of every
    LayerNorm must also be identical."""
    if check_eps and layernorm_eps(model) != layernorm_eps(hf_model):
        raise UserError(f"{where}: LayerNorm eps differ: ours {layernorm_eps(model)}, transformers {layernorm_eps(hf_model)}")
    model_was_training = model.training
    model.eval()
    x = _clip(cfg)
    mask = parity_mask(cfg) if kind == "pretrain" else None
    a = our_outputs(model, kind, x, mask).float()
    b = hf_outputs(hf_model, kind, x, mask).float()
    model.train(model_was_training)
    if a.shape != b.shape:
        raise UserError(f"{where}: output shapes differ: ours {tuple(a.shape)}, transformers {tuple(b.shape)}")
    diff = (a - b).abs().max().item()
    if not diff <= atol:
        raise UserError(f"{where}: outputs differ from transformers' by {diff:.3g} (> {atol}); the conversion is not exact")
    return diff
