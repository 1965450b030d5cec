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
  False -> final norm -> first token -> classifier. In a VideoMAEModel / VideoMAEForPreTraining it only removes the
  final encoder norm (ours: final_norm=False).
- MLP: intermediate_size / decoder_intermediate_size (ours: mlp_ratio / decoder_mlp_ratio, independent);
  hidden_act (ours: act_layer; the exact and tanh GELUs, quick_gelu, relu, silu).
- input: transformers takes (B, T, C, H, W); ours (B, C, T, H, W).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from motionmae.errors import UserError
from motionmae.interop.common import (
    Converted,
    StateDict,
    check_destination,
    check_motion_branch,
    mlp_ratio_for,
    pretrain_config,
    publish_dir,
    refuse_leftovers,
    take,
    torch_load_weights_only,
)
from motionmae.models.pretrain import branch_prefix, branch_prefixes
from motionmae.objective.targets import TARGETS
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


# transformers' hidden_act -> our model.act_layer (same function; the tanh GELUs differ only in rounding)
HF_ACTS = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu", "swish": "silu",
}  # fmt: skip
# ours -> the name written to config.json (transformers computes exactly our function with it)
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}


def cfg_from_hf(hf: dict, where: str = "config.json", decoder: str = "sha", kind: str = "pretrain"):
    """transformers VideoMAEConfig (as a dict) -> our PretrainConfig (model + objective sections).

    `kind` decides what `use_mean_pooling` means: the pooling of a classifier, the absence of the final encoder
    LayerNorm otherwise. The decoder settings are carried over for every kind (so a round trip keeps config.json);
    only a pretraining model builds, and so checks, a decoder."""
    from motionmae.config import SIZES, ModelConfig

    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTS:
        raise UserError(f"{where}: hidden_act='{act}' is not supported; supported: {', '.join(HF_ACTS)}")
    d, n, h = int(hf.get("hidden_size", 768)), int(hf.get("num_hidden_layers", 12)), int(hf.get("num_attention_heads", 12))
    size = next((k for k, v in SIZES.items() if v == (d, n, h)), "base")
    dd = int(hf.get("decoder_hidden_size", 384))
    qkv_bias = hf.get("qv_bias", hf.get("qkv_bias", True))
    mean_pooling = bool(hf.get("use_mean_pooling", True))
    m = ModelConfig(
        size=size,
        embed_dim=d,
        depth=n,
        num_heads=h,
        mlp_ratio=mlp_ratio_for(int(hf.get("intermediate_size", 3072)), d),
        patch_size=_pair_to_int(hf.get("patch_size", 16), "patch_size", where),
        tubelet_size=int(hf.get("tubelet_size", 2)),
        num_frames=int(hf.get("num_frames", 16)),
        img_size=_pair_to_int(hf.get("image_size", 224), "image_size", where),
        in_chans=int(hf.get("num_channels", 3)),
        qkv_bias=bool(qkv_bias),
        pos_embed="sincos1d",
        act_layer=HF_ACTS[act],
        # a classifier pools by mean (-> fc_norm) or takes the first token after `norm`; an encoder has no pooling
        # and use_mean_pooling only removes its final norm
        final_norm=kind == "classifier" or not mean_pooling,
        pooling="mean" if mean_pooling or kind != "classifier" else "first",
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        head_norm_eps=HF_LN_DEFAULT_EPS,
        decoder=decoder,
        decoder_embed_dim=dd,
        decoder_depth=int(hf.get("decoder_num_hidden_layers", 4)),
        decoder_num_heads=int(hf.get("decoder_num_attention_heads", 6)),
        decoder_mlp_ratio=mlp_ratio_for(int(hf.get("decoder_intermediate_size", 1536)), dd),
    )
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
            "table (our default, model.pos_embed=sincos1d); see docs/INTEROP.md"
        )
    if m.act_layer not in ACT_TO_HF:
        raise UserError(f"model.act_layer='{m.act_layer}' has no transformers counterpart")
    if kind == "classifier" and m.pooling == "first" and not m.final_norm:
        raise UserError("a first-token classifier without final norm (model.final_norm=false) cannot be exported: "
                        "transformers' VideoMAEForVideoClassification normalises before taking the first token")
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
        "hidden_act": ACT_TO_HF[m.act_layer],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": m.norm_eps,
        "qkv_bias": m.qkv_bias,  # transformers 4.x name; 5.x maps it to qv_bias
        # a classifier: mean pooling (no final norm, fc_norm) or first token after the final norm; an encoder (also
        # a pretraining one): with or without its final norm
        "use_mean_pooling": m.pooling == "mean" if kind == "classifier" else not m.final_norm,
        "decoder_num_attention_heads": m.decoder_num_heads,
        "decoder_hidden_size": m.decoder_embed_dim,
        "decoder_num_hidden_layers": m.decoder_depth,
        "decoder_intermediate_size": int(m.decoder_embed_dim * m.decoder_mlp_ratio),
        "norm_pix_loss": bool(cfg.objective.appearance_norm),
    }
    if kind == "classifier":
        names = list(class_names) if class_names and len(class_names) == num_classes else [f"LABEL_{i}" for i in range(num_classes)]
        out["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
        out["label2id"] = {str(n): i for i, n in enumerate(names)}
    return out


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
    """Whether our model has the encoder's `norm` (see VisionTransformer): not in a mean-pooling classifier (fc_norm
    follows the mean instead), nor with final_norm=false."""
    return m.final_norm and (kind != "classifier" or m.pooling == "first")


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
    cfg = cfg_from_hf(hf_cfg, where=str(Path(path) / "config.json"), decoder=decoder, kind=kind)
    if kind == "pretrain":
        check_motion_branch(cfg, where)
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
    overwrite: bool = False,
    source: str = "",
) -> dict:
    """Write our model as a transformers VideoMAE directory: config.json, model.safetensors, preprocessor_config.json
    (VideoMAEImageProcessor: resize, centre crop to model.img_size, our mean/std) and a model card (README.md).

    With `verify`, the directory is loaded back with transformers' `from_pretrained` (strict: no missing or
    unexpected keys) and its outputs compared with ours on a random clip; any difference above `atol` is an
    error (with `allow_eps_change` too: the comparison is always with our model as it is). Everything is written
    to a temporary directory next to `dst` and moved into place only once checked. A non-empty `dst` is refused
    unless `overwrite`. `class_names` become config.json's id2label; `source` is named in the model card.
    Returns {'kind', 'dropped', 'max_abs_diff'}.
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    check_destination(dst, overwrite)
    kind, num_classes = model_kind(model)
    hf_cfg = hf_config_from_cfg(cfg, kind, num_classes, class_names, allow_eps_change)
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        model = copy.deepcopy(model).to("cpu", torch.float32)  # written and checked in fp32 on the CPU
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out, dropped = ours_to_hf(sd, cfg, kind)
    report = {"kind": kind, "dropped": dropped, "max_abs_diff": None}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in out.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor_config(cfg), indent=2) + "\n")
        if verify:
            hf_model = load_transformers(tmp, kind)
            report["max_abs_diff"] = check_parity(model, hf_model, kind, cfg, atol, str(dst), check_eps=not allow_eps_change)
        (tmp / "README.md").write_text(model_card(hf_cfg, cfg, report, source, allow_eps_change))
        publish_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def image_processor_config(cfg) -> dict:
    """preprocessor_config.json of a `VideoMAEImageProcessor` for our input: short side resized to img_size, centre
    crop img_size x img_size (the hub's VideoMAE processors), [0, 1], then our mean/std."""
    s = cfg.model.img_size
    return {
        "image_processor_type": "VideoMAEImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": s},
        "resample": 2,  # bilinear
        "do_center_crop": True,
        "crop_size": {"height": s, "width": s},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(cfg.data.mean),
        "image_std": list(cfg.data.std),
    }


def model_card(hf_cfg: dict, cfg, report: dict, source: str = "", eps_changed: bool = False) -> str:
    """README.md for an exported directory: what the model is, where it came from, how it was checked, how to load it."""
    from motionmae.version import __version__

    arch, m = hf_cfg["architectures"][0], cfg.model
    tags = ["video", "videomae", "motionmae"]
    task = {"VideoMAEForVideoClassification": "video-classification"}.get(arch, "feature-extraction")
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    lines += [f"# {arch} (exported by motionmae {__version__})", ""]
    if source:
        lines += [f"Converted from `{source}` with `motionmae convert --to hf`.", ""]
    lines += [
        "| | |", "|---|---|",
        f"| architecture | `{arch}` |",
        f"| encoder | ViT, width {hf_cfg['hidden_size']}, depth {hf_cfg['num_hidden_layers']}, {hf_cfg['num_attention_heads']} heads, "
        f"MLP {hf_cfg['intermediate_size']} ({hf_cfg['hidden_act']}), LayerNorm eps {hf_cfg['layer_norm_eps']} |",
        f"| input | {m.num_frames} frames x {m.img_size} x {m.img_size} px, {m.in_chans} channels, tubelet {m.tubelet_size} x "
        f"{m.patch_size} x {m.patch_size}; mean {list(cfg.data.mean)}, std {list(cfg.data.std)} |",
        "| positional embedding | fixed 1D sin-cos table over all tokens (VideoMAE) |",
    ]
    if arch == "VideoMAEForVideoClassification":
        lines.append(f"| head | {'mean pooling -> fc_norm' if hf_cfg['use_mean_pooling'] else 'first token'} -> "
                     f"{len(hf_cfg['id2label'])} classes |")
    if arch == "VideoMAEForPreTraining":
        lines.append(f"| decoder | width {hf_cfg['decoder_hidden_size']}, depth {hf_cfg['decoder_num_hidden_layers']}, "
                     f"{hf_cfg['decoder_num_attention_heads']} heads; appearance head only |")
    lines.append("")
    if report.get("max_abs_diff") is not None:
        lines += [f"Checked against transformers on export: the same random clip through motionmae and through this "
                  f"directory loaded with `from_pretrained` (no missing or unexpected keys), largest absolute difference "
                  f"of the outputs {report['max_abs_diff']:.3g} (fp32).", ""]
    if eps_changed:
        lines += ["The eps of `fc_norm` / `decoder.norm` changed to transformers' fixed 1e-5 on export (measured above).", ""]
    if report.get("dropped"):
        lines += [f"MotionMAE's motion branch ({len(report['dropped'])} tensors) has no transformers counterpart and is not "
                  "included: this is the appearance (VideoMAE) part of the model.", ""]
    loader = {"VideoMAEForVideoClassification": "VideoMAEForVideoClassification", "VideoMAEForPreTraining": "VideoMAEForPreTraining"}
    cls = loader.get(arch, "VideoMAEModel")
    lines += ["```python", f"from transformers import AutoImageProcessor, {cls}", "",
              'processor = AutoImageProcessor.from_pretrained("THIS_DIR")', f'model = {cls}.from_pretrained("THIS_DIR")',
              f"inputs = processor(list_of_{m.num_frames}_frames, return_tensors=\"pt\")  # frames: HxWx3 uint8 arrays",
              "outputs = model(**inputs)", "```", ""]
    return "\n".join(lines)


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
    """A random (B, N) bool mask, True = masked, the same count in every row (transformers requires it), with at
    least one masked and one visible token whatever the grid (a 1 x 1 x 2 grid too)."""
    t, h, w = cfg.model.grid()
    n = t * h * w
    if n < 2:
        raise UserError(f"a pretraining model needs at least 2 tokens to mask some and keep some; this one has {n}")
    count = min(max(int(ratio * n), 1), n - 1)
    order = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    return torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, :count], True)


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
    """eps of every LayerNorm, in registration order (ours and transformers' register them in the same order);
    our branches of targets other than appearance (no transformers counterpart) left out."""
    ours = tuple(branch_prefix(t, d) for t in TARGETS if t != "appearance" for d in ("sha", "ind"))
    return [m.eps for name, m in module.named_modules() if isinstance(m, torch.nn.LayerNorm) and not name.startswith(ours)]


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
