"""Typed configuration: dataclasses for every knob, named presets, YAML files and `key=value` overrides.

A config is built as: preset (or YAML file, which may name a `preset:` to start from) -> YAML sections
-> command-line `section.key=value` overrides. Any unknown key is a `UserError` that names it and lists
the valid keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

import yaml

from motionmae.errors import UserError

# Encoder sizes: (embed_dim, depth, num_heads), as in ViT / VideoMAE.
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    size: str = "base"  # tiny | small | base | large | huge; embed_dim/depth/num_heads override it
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    img_size: int = 224
    in_chans: int = 3
    qkv_bias: bool = True
    # sincos1d: VideoMAE's / transformers' fixed 1D sin-cos table over all tokens (exports as is) | sincos3d (fixed,
    # factorised t/h/w; stored in checkpoints) | learnable
    pos_embed: str = "sincos1d"
    act_layer: str = "gelu"  # MLP activation (timm names): gelu (exact) | gelu_tanh | quick_gelu | relu | silu
    final_norm: bool = True  # encoder ends with `norm` (false: transformers' VideoMAEModel with use_mean_pooling)
    pooling: str = "mean"  # classifier: mean (tokens -> mean -> fc_norm, encoder norm off) | first (norm -> first token, transformers w/o mean pooling)
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    head_norm_eps: Optional[float] = 1e-5  # eps of fc_norm and decoder.norm, transformers' (VideoMAE: 1e-6); None: norm_eps
    grad_checkpointing: bool = False  # activation checkpointing of encoder/decoder blocks
    # decoder(s), used only in pretraining
    decoder: str = "sha"  # sha: shared trunk, two heads | ind: two decoders | none: appearance only (VideoMAE)
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    decoder_mlp_ratio: float = 4.0  # independent of mlp_ratio (transformers: decoder_intermediate_size)

    def dims(self) -> Tuple[int, int, int]:
        """(embed_dim, depth, num_heads) after applying the size preset and any explicit override."""
        if self.size not in SIZES:
            raise UserError(f"unknown model size '{self.size}'; valid sizes: {', '.join(SIZES)}")
        d, n, h = SIZES[self.size]
        d, n, h = self.embed_dim or d, self.depth or n, self.num_heads or h
        if d % h:
            raise UserError(f"model.embed_dim={d} is not divisible by model.num_heads={h}")
        return d, n, h

    def grid(self) -> Tuple[int, int, int]:
        """Token grid (T', H', W')."""
        if self.num_frames % self.tubelet_size:
            raise UserError(f"model.num_frames={self.num_frames} is not divisible by model.tubelet_size={self.tubelet_size}")
        if self.img_size % self.patch_size:
            raise UserError(f"model.img_size={self.img_size} is not divisible by model.patch_size={self.patch_size}")
        s = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, s, s


@dataclass
class MaskConfig:
    kind: str = "per_slice"  # per_slice (MotionMAE) | tube (VideoMAE) | random (MAE-ST)
    ratio: float = 0.9


@dataclass
class ObjectiveConfig:
    appearance_norm: bool = True  # per-cube, per-channel (x - mean) / (std + eps), unbiased std (VideoMAE)
    motion_mode: str = "signed"  # signed | abs
    motion_color: str = "rgb"  # rgb | gray
    motion_gap: int = 1  # D_t = X_{t+g} - X_t over the sampled frames
    motion_pad: str = "first"  # first: repeat the first difference(s) | extra_frame: clip carries T+g frames
    motion_norm: bool = True  # normalise per cube per channel like appearance
    loss: str = "mse"  # mse | l1 | smooth_l1
    w_appearance: float = 1.0
    w_motion: float = 1.0
    norm_eps: float = 1e-6


@dataclass
class DataConfig:
    train: str = ""  # annotation list, folder of videos / class folders, or glob
    val: str = ""
    root: str = ""  # prefix for relative paths in annotation lists
    num_frames: int = 16
    sampling_rate: int = 4  # frame stride (SSv2: 2, K400/UCF101: 4)
    sampling: str = "dense"  # dense | segment (TSN, for SSv2)
    input_size: int = 224
    short_side: int = 0  # short side of test views, and at most of fine-tuning frames before RandAugment (0: input_size * 256 / 224)
    scales: Tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    flip: bool = True  # off for SSv2 (left/right matters)
    num_samples: int = 1  # clips drawn from one decoded video per visit (repeated sampling)
    num_workers: int = 2
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    max_skip_fraction: float = 0.5  # give up when more than this fraction of videos fail to decode
    short_video: str = "loop"  # dense sampling of a video shorter than the clip span: loop | clamp (hold last frame)
    test_clips: int = 2  # test-time temporal views K (VideoMAE: SSv2 2, K400 5, UCF101 10)
    test_crops: int = 3  # test-time spatial crops per temporal view: 3 (along the long side) or 1 (centre)
    list_format: str = "auto"  # annotation lines: auto | labels (path label..) | v2 (path start total) | rawframes (dir total label)


@dataclass
class TrainConfig:
    init: str = ""  # start from these weights (a motionmae checkpoint, e.g. converted VideoMAE); not a resume
    epochs: int = 400
    max_steps: int = 0  # >0: stop after this many optimiser steps (overrides epochs for the schedule)
    batch_size: int = 8  # per rank, per micro-step
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # lr = base_lr * global_batch / 256
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 40
    warmup_steps: int = 0  # >0: overrides warmup_epochs
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.0  # 0: off
    amp: str = "auto"  # auto (bf16 where fast; fp16 on GPUs without bf16) | bf16 | fp16 (with loss scaling) | none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    output_dir: str = "runs/pretrain"
    log_every: int = 10
    save_every: int = 500  # steps between numbered checkpoints (`last` is written every save_every too)
    keep_last: int = 3
    viz_every: int = 0  # steps between pictures; 0: only at the end


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------
# presets


def _objective_preset(kind: str) -> dict:
    if kind == "videomae":
        return {"model": {"decoder": "none"}, "mask": {"kind": "tube"}, "objective": {"w_motion": 0.0}}
    if kind in ("motionmae-sha", "motionmae-ind"):
        return {"model": {"decoder": kind.split("-")[1]}, "mask": {"kind": "per_slice"}}
    raise KeyError(kind)


# Appended to any preset name: what transformers' VideoMAE can express (its fixed 1D sin-cos table; eps 1e-5 on
# fc_norm and decoder.norm). These are the defaults now, so the suffix only matters for a YAML preset that sets
# other values; kept so that names like `motionmae-sha-base-hf` keep working.
HF_SUFFIX = "-hf"
HF_COMPATIBLE = {"model": {"pos_embed": "sincos1d", "head_norm_eps": 1e-5}}


def preset_names() -> list:
    names = [f"{k}-{s}" for k in ("videomae", "motionmae-sha", "motionmae-ind") for s in SIZES]
    names += ["videomae", "motionmae-sha", "motionmae-ind"]
    names += sorted(p.stem for p in _preset_dir().glob("*.yaml"))
    return names


def _preset_dir() -> Path:
    return Path(__file__).parent / "configs"


def preset_dict(name: str) -> dict:
    """Overrides (nested dict) that a preset applies to the defaults."""
    yaml_path = _preset_dir() / f"{name}.yaml"
    if yaml_path.exists():
        return spec_dict(str(yaml_path))
    if name.endswith(HF_SUFFIX):
        return _merge(preset_dict(name[: -len(HF_SUFFIX)]), HF_COMPATIBLE)
    for kind in ("motionmae-sha", "motionmae-ind", "videomae"):
        if name == kind:
            return _objective_preset(kind)
        if name.startswith(kind + "-") and name[len(kind) + 1 :] in SIZES:
            d = _objective_preset(kind)
            d["model"]["size"] = name[len(kind) + 1 :]
            return d
    raise UserError(f"unknown preset '{name}'; valid presets: {', '.join(preset_names())} "
                    f"(each also with '{HF_SUFFIX}', an alias kept from when only it exported to transformers)")


def spec_dict(spec: str, preset_fn=None) -> dict:
    """Nested overrides of a preset name or a YAML path ('' -> {}). A YAML file may start from `preset: NAME`;
    `preset_fn` (default `preset_dict`) turns a preset name into its dict."""
    preset_fn = preset_fn or preset_dict
    if not spec:
        return {}
    path = Path(spec)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        return preset_fn(spec)
    if not path.exists():
        raise UserError(f"config file not found: {spec}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, train:, ...)")
    base = d.pop("preset", None)
    return _merge(preset_fn(base), d) if base else d


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass, with strict keys and type checks


def from_dict(cls, d: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are UserErrors."""
    return update(cls(), d, where)


def model_config_from_dict(config_dict: Optional[dict], where: str = "checkpoint") -> ModelConfig:
    """The ModelConfig saved in a checkpoint's config (keys unknown to this version are ignored)."""
    model = dict((config_dict or {}).get("model") or {})
    if not model:
        raise UserError(f"{where}: carries no model config; it was not written by motionmae "
                        "(convert foreign weights with `motionmae convert` first)")
    if "pos_embed" not in model:  # the default changed (sincos3d -> sincos1d): never guess which table the weights saw
        raise UserError(f"{where}: its model config does not say which positional table the weights were trained with "
                        "(model.pos_embed): set it in its state.config.model, it is not guessed")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return from_dict(ModelConfig, {k: v for k, v in model.items() if k in known}, "model")


def update(obj, d: dict, where: str = ""):
    """Return a copy of dataclass `obj` with the nested dict `d` applied."""
    if not isinstance(d, dict):
        raise UserError(f"config section '{where or 'top level'}' must be a mapping, got {d!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in d.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UserError(f"unknown config key '{path}'; valid keys{' in ' + repr(where) if where else ''}: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = update(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, hint, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], path)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else float
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise UserError(f"config key '{path}' expects 2 values, got {list(value)}")
        return tuple(_coerce(v, elem, path) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{path}' expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{path}' expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{path}' expects a number, got {value!r}")
    if hint is str:
        return "" if value is None else str(value)
    return value


def to_dict(obj) -> dict:
    d = dataclasses.asdict(obj)
    return _lists(d)


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [_lists(v) for v in x]
    return x


def parse_overrides(items) -> dict:
    """`["train.lr=1e-3", "model.size=tiny"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(spec: str = "", overrides=(), cls=PretrainConfig):
    """`spec`: a preset name or a YAML path ('' = defaults); then `overrides` (`section.key=value`)."""
    d = spec_dict(spec)
    d = _merge(d, parse_overrides(overrides))
    return from_dict(cls, d)


def save_config(cfg, path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
