"""Typed configuration for `motionmae finetune` and `motionmae probe`, built with config.py's machinery.

A fine-tuning config is composed as: fine-tuning defaults (VideoMAE's recipe, SPEC.md) -> the clip format
stored in the pretrained checkpoint -> `--config`: a preset (only its model and data sections: its train
section is a pretraining recipe) or a YAML file (all its sections; for a `preset:` it names, again only model
and data) -> the encoder architecture stored in the checkpoint (the weights decide it) -> `section.key=value`
overrides. data.num_frames / data.input_size always follow model.num_frames / model.img_size. Pretraining-only
sections (mask, objective) are ignored, so `--config motionmae-sha-small` works for both commands.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

from motionmae.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    _merge,
    from_dict,
    parse_overrides,
    preset_dict,
    spec_dict,
)
from motionmae.errors import UserError

# Model keys that define the encoder's shape: taken from the checkpoint. drop_path, pooling, grad_checkpointing
# are fine-tuning choices and keep the fine-tuning defaults.
ARCH_KEYS = ("size", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size", "num_frames",
             "img_size", "in_chans", "qkv_bias", "pos_embed", "norm_eps", "act_layer", "final_norm")
# Data keys that must match what the encoder was pretrained on.
CLIP_KEYS = ("num_frames", "sampling_rate", "sampling", "input_size", "mean", "std", "flip")
PRETRAIN_ONLY = ("mask", "objective")


@dataclass
class FinetuneOptions:
    label_column: str = ""  # which label column to train on: a name (synthetic: class/direction/speed/arrow) or index; '' = the first
    layer_decay: float = 0.75  # lr scale decay^(depth + 1 - layer): patch_embed/pos_embed layer 0, block i layer i+1, head last
    mixup: float = 0.8  # Beta(alpha) for mixup; 0 = off
    cutmix: float = 1.0  # Beta(alpha) for cutmix; 0 = off
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    label_smoothing: float = 0.1
    reprob: float = 0.25  # random erasing probability per clip
    aa: str = "rand-m7-n4-mstd0.5-inc1"  # RandAugment of train clips (timm spec, same ops on every frame); '' or none: off
    # train crop: 'rrc' = VideoMAE's (frames down to data.short_side, RandAugment, then a random resized crop, area
    # 8-100%, aspect 3/4-4/3); 'multiscale' = the pretraining crop (data.scales), then RandAugment
    crop: str = "rrc"
    eval_every: int = 0  # steps between evaluations on the val list; 0 = at the end only
    eval_batch_size: int = 0  # videos per eval batch (each carries data.test_clips x data.test_crops views); 0 = train.batch_size
    eval_max_videos: int = 0  # evaluate on the first N val videos only; 0 = all


def _finetune_train() -> TrainConfig:
    # VideoMAE fine-tuning: AdamW (0.9, 0.999), wd 0.05, base lr 5e-4 per 256 (SSv2/UCF101), warm-up 5 epochs
    # from 1e-6, cosine to 1e-6, 40 epochs (SSv2).
    return TrainConfig(epochs=40, base_lr=5e-4, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=5, betas=(0.9, 0.999),
                       weight_decay=0.05, output_dir="runs/finetune", save_every=1000)


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(drop_path=0.1))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_finetune_train)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)


@dataclass
class ProbeOptions:
    k: int = 20  # neighbours for k-NN
    temperature: float = 0.07  # k-NN vote weight exp(cos / temperature) (DINO)
    linear_epochs: int = 100
    linear_lr: float = 0.1  # SGD momentum 0.9, cosine
    linear_batch_size: int = 256
    linear_weight_decay: float = 0.0
    batch_size: int = 8  # clips per feature-extraction batch
    views: int = 1  # temporal clips per video averaged into one feature (centre crop)
    cache_dir: str = ""  # '' = <run dir>/probe_cache for a checkpoint, runs/probe_cache for an encoder object
    amp: str = "auto"  # feature extraction autocast: auto (bf16 where fast) | bf16 | fp16 | none
    seed: int = 0


@dataclass
class ProbeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    device: str = "auto"


def _preset_part(name: str) -> dict:
    """A named preset is a pretraining recipe: only its model and data sections apply to fine-tuning / probing
    (its train section would carry the pretraining lr, length and output_dir)."""
    return {k: v for k, v in preset_dict(name).items() if k in ("model", "data")}


def checkpoint_base(config_dict: Optional[dict]) -> dict:
    """The architecture and clip-format part of a checkpoint's saved config, as overrides."""
    if not config_dict:
        return {}
    model = {k: v for k, v in (config_dict.get("model") or {}).items() if k in ARCH_KEYS}
    data = {k: v for k, v in (config_dict.get("data") or {}).items() if k in CLIP_KEYS}
    return {"model": model, "data": data}


def load_finetune_config(spec: str = "", overrides: Sequence[str] = (), checkpoint_config: Optional[dict] = None,
                         cls=FinetuneConfig):
    """Defaults -> checkpoint architecture -> preset/YAML `spec` -> overrides; returns a `cls` instance."""
    base = checkpoint_base(checkpoint_config)
    cli = parse_overrides(overrides)
    user = _merge(spec_dict(spec, _preset_part), cli)
    d = _merge({"data": base.get("data", {})}, user)
    d = _merge(d, {"model": base.get("model", {})})  # the weights define the architecture, whatever the preset says
    d = _merge(d, {"model": cli.get("model", {})})  # ... unless overridden explicitly (e.g. another num_frames)
    for section in PRETRAIN_ONLY:
        d.pop(section, None)
    cfg = from_dict(cls, d)
    # the encoder defines the clip shape: data follows it unless the user set a conflicting value
    for dkey, mkey in (("num_frames", "num_frames"), ("input_size", "img_size")):
        given = (user.get("data") or {}).get(dkey)
        if given is not None and given != getattr(cfg.model, mkey):
            raise UserError(f"data.{dkey}={given} does not match the encoder's model.{mkey}={getattr(cfg.model, mkey)}; "
                            f"set model.{mkey} (the positional embedding is interpolated) and data.{dkey} follows")
    cfg.data = dataclasses.replace(cfg.data, num_frames=cfg.model.num_frames, input_size=cfg.model.img_size)
    return cfg
