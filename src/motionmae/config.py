"""Typed configuration of every command: dataclasses for every knob, named presets, YAML files, `key=value` overrides.

Commands and their sections:
    pretrain   PretrainConfig   model, mask, objective, data, train
    finetune   FinetuneConfig   model, data, train, finetune
    probe      ProbeConfig      model, data, probe
    extract    ExtractConfig    model, data, extract
    vos        VOSConfig        model, data, vos

`load_config(spec, overrides, cls, checkpoint)` builds one: a preset name or YAML file (which may start from
`preset: NAME`) -> its sections -> `section.key=value` overrides; for the commands that read a checkpoint, the
encoder's architecture and clip format come from the checkpoint's config. Everything is checked while the config
is built, before anything runs: an unknown key or an enumerated value that is not one of its choices names the key
and the closest valid spelling ("did you mean"), and plainly invalid values (a batch of 0, a mask ratio that leaves
a time slice without a visible or without a masked token, ...) are one `UserError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Tuple

import yaml

from motionmae.errors import UserError

# Encoder sizes: (embed_dim, depth, num_heads), as in ViT / VideoMAE.
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1408, 40, 16),  # VideoMAE v2's ViT-g/14: MLP 6144 = 48/11 x 1408, patch 14 (GIANT below)
}

# What else makes ViT-g/14 (VideoMAE v2, timm's vit_giant_patch14): applied by the `*-giant` presets, and
# required of `model.size=giant` (an MLP ratio of 4 would silently build another model).
GIANT = {"mlp_ratio": 48 / 11, "patch_size": 14}
# VideoMAE's pretraining decoder per encoder size, (width, depth, heads): widths and heads from modeling_pretrain.py
# (pretrain_videomae_{small,base,large,huge}_patch16_224: 192/3, 384/6, 512/8, 640/8), depths from its pretrain.sh
# scripts (--decoder_depth 4 for small and base, 12 for large and huge). VideoMAE has no tiny model: tiny takes
# small's, the smallest it has; a size missing here takes base's (the paper's ViT-B decoder, SPEC.md).
DECODER_SIZES = {
    "tiny": (192, 4, 3),
    "small": (192, 4, 3),
    "base": (384, 4, 6),
    "large": (512, 12, 8),
    "huge": (640, 12, 8),
    "giant": (512, 4, 8),  # VideoMAE v2's ViT-g pretraining (--decoder_depth 4, decoder 512 wide, 8 heads)
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# enumerated values: each is checked when a config is built
Size = Literal["tiny", "small", "base", "large", "huge", "giant"]
PosEmbed = Literal["sincos3d", "sincos1d", "learnable"]
Pooling = Literal["mean", "first"]
ActLayer = Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu"]  # models/vit.py: ACT_LAYERS
Decoder = Literal["sha", "ind", "none"]
MaskKind = Literal["per_slice", "tube", "random", "motion"]
TargetName = Literal["appearance", "motion", "hog"]  # objective/targets.py: TARGETS
Loss = Literal["mse", "l1", "smooth_l1"]
Amp = Literal["auto", "bf16", "fp16", "none"]
Parallel = Literal["ddp", "fsdp"]  # runtime/parallel.py
LoggerName = Literal["jsonl", "tensorboard", "wandb", "mlflow"]  # runtime/logger.py: LOGGERS
OPTIONAL_LOGGERS = {"wandb": "wandb", "mlflow": "mlflow-skinny"}  # logger -> the package that brings it


@dataclass
class ModelConfig:
    size: Size = "base"  # embed_dim/depth/num_heads override it
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
    pos_embed: PosEmbed = "sincos1d"
    act_layer: ActLayer = "gelu"  # MLP activation (timm names): gelu (exact) | gelu_tanh | quick_gelu | relu | silu
    final_norm: bool = True  # encoder ends with `norm` (false: transformers' VideoMAEModel with use_mean_pooling)
    pooling: Pooling = "mean"  # classifier: mean (tokens -> mean -> fc_norm, encoder norm off) | first (norm -> first token, transformers w/o mean pooling)
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    head_norm_eps: Optional[float] = 1e-5  # eps of fc_norm and decoder.norm, transformers' (VideoMAE: 1e-6); None: norm_eps
    grad_checkpointing: bool = False  # activation checkpointing of encoder/decoder blocks
    # decoder layout, used only in pretraining: which targets are reconstructed is objective.targets
    decoder: Decoder = "sha"  # sha: one shared trunk, a head per target | ind: a decoder per target | none: one decoder, one target (VideoMAE)
    # unset: VideoMAE's decoder for model.size (DECODER_SIZES; base: 384 wide, 4 deep, 6 heads)
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    decoder_mlp_ratio: float = 4.0  # independent of mlp_ratio (transformers: decoder_intermediate_size)

    # a change of these keys re-derives the unset keys that follow them (`update`)
    FOLLOWS = {"size": ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}

    def __post_init__(self):
        width, depth, heads = DECODER_SIZES.get(self.size, DECODER_SIZES["base"])
        if self.decoder_embed_dim is None:
            self.decoder_embed_dim = width
        if self.decoder_depth is None:
            self.decoder_depth = depth
        if self.decoder_num_heads is None:
            self.decoder_num_heads = heads

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

    def check(self) -> None:
        for key in ("patch_size", "tubelet_size", "num_frames", "img_size", "in_chans", "decoder_embed_dim", "decoder_num_heads"):
            _at_least(self, "model", key, 1)
        self.dims()
        self.grid()
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise UserError(f"model.decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                            f"model.decoder_num_heads={self.decoder_num_heads}")
        _need(0.0 <= self.drop_path < 1.0, "model.drop_path", self.drop_path, "must be in [0, 1)")
        _need(self.mlp_ratio > 0, "model.mlp_ratio", self.mlp_ratio, "must be > 0")
        if self.size == "giant" and self.embed_dim is None and int(SIZES["giant"][0] * self.mlp_ratio) != 6144:
            raise UserError(f"model.size=giant is ViT-g/14, whose MLP is 6144 wide: model.mlp_ratio={self.mlp_ratio} gives "
                            f"{int(SIZES['giant'][0] * self.mlp_ratio)}; use a *-giant preset (e.g. motionmae-sha-giant) or set "
                            "model.mlp_ratio=4.363636363636363 (48/11)")


def masked_per_slice(slice_tokens: int, ratio: float) -> int:
    """Masked tokens per temporal slice for every mask kind: floor(ratio * S), VideoMAE's tube rule (a tiny epsilon
    absorbs float error, e.g. 0.29 * 100), at most S - 1."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"mask.ratio={ratio} must be in [0, 1)")
    return min(int(ratio * slice_tokens + 1e-6), slice_tokens - 1)


@dataclass
class MaskConfig:
    kind: MaskKind = "per_slice"  # per_slice (MotionMAE) | tube (VideoMAE) | random (MAE-ST) | motion (frame-difference weighted)
    ratio: float = 0.9
    # dual masking (VideoMAE v2): the share of the masked tokens the decoder drops (running cell); 0: off, v2: 0.5
    decoder_ratio: float = 0.0

    def check(self, model: ModelConfig) -> None:
        _, h, w = model.grid()
        k = masked_per_slice(h * w, self.ratio)
        if k < 1:
            raise UserError(f"mask.ratio={self.ratio} masks no token of a time slice ({h}x{w} tokens): "
                            f"raise it to at least {1 / (h * w):.3g}")
        _need(0.0 <= self.decoder_ratio < 1.0, "mask.decoder_ratio", self.decoder_ratio, "must be in [0, 1) (VideoMAE v2: 0.5)")


@dataclass
class ObjectiveConfig:
    targets: Tuple[TargetName, ...] = ("appearance", "motion")  # what the decoder reconstructs at masked tokens
    appearance_norm: bool = True  # per-cube, per-channel (x - mean) / (std + eps), unbiased std (VideoMAE)
    motion_mode: Literal["signed", "abs"] = "signed"
    motion_color: Literal["rgb", "gray"] = "rgb"
    motion_gap: int = 1  # D_t = X_{t+g} - X_t: g sampled frames apart (sampled), or g raw frames (adjacent)
    # sampled: differences of the clip's own frames (data.sampling_rate raw frames apart) | adjacent: each sampled
    # frame's raw neighbour g frames later is decoded too, D_t = R(i_t + g) - R(i_t) (the paper: adjacent-frame differences work best)
    motion_frames: Literal["sampled", "adjacent"] = "sampled"
    motion_pad: Literal["first", "extra_frame"] = "first"  # sampled only; first: repeat the first difference(s) | extra_frame: clip carries T+g frames
    motion_norm: bool = True  # normalise per cube per channel like appearance
    hog_bins: int = 9  # HOG (MaskFeat): unsigned orientation bins over 180 degrees
    hog_cell: int = 8  # HOG: cell side in pixels (MaskFeat: 8, so a 16 px patch holds 2x2 cells)
    loss: Loss = "mse"
    w_appearance: float = 1.0
    w_motion: float = 1.0
    w_hog: float = 1.0
    norm_eps: float = 1e-6

    @property
    def extra_frames(self) -> int:
        """Sampled frames a clip carries beyond the encoder's: the gap with motion_pad='extra_frame'."""
        return self.motion_gap if self.motion_pad == "extra_frame" and self.motion_frames == "sampled" else 0

    @property
    def neighbor_gap(self) -> int:
        """motion_frames='adjacent': each sampled frame's raw neighbour this many frames later follows the clip's
        T frames (the clip carries 2T frames); 0 otherwise."""
        return self.motion_gap if self.motion_frames == "adjacent" else 0

    def encoder_frames(self, clip_frames: int) -> int:
        """The encoder's frames (the first ones) of a clip that carries `clip_frames` frames."""
        return clip_frames // 2 if self.neighbor_gap else clip_frames - self.extra_frames

    def check(self, model: ModelConfig) -> None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise UserError(f"objective.targets={list(self.targets)}: name each target once, at least one")
        if model.decoder == "none" and len(self.targets) > 1:
            raise UserError(f"model.decoder=none is one decoder with one head (VideoMAE); objective.targets={list(self.targets)} "
                            "needs model.decoder=sha or ind, or objective.targets=[appearance]")
        _at_least(self, "objective", "motion_gap", 1)
        if "motion" in self.targets:
            if self.motion_frames == "adjacent" and self.motion_pad != "first":
                raise UserError(f"objective.motion_pad={self.motion_pad} pads the differences of sampled frames; with "
                                "objective.motion_frames=adjacent every frame has its raw neighbour: leave motion_pad=first")
            if self.motion_frames == "sampled" and self.motion_pad == "first" and self.motion_gap >= model.num_frames:
                raise UserError(f"objective.motion_gap={self.motion_gap} must be smaller than the clip's {model.num_frames} frames")
            if self.motion_color == "gray" and model.in_chans != 3:
                raise UserError(f"objective.motion_color=gray needs 3-channel clips, model.in_chans={model.in_chans}")
        if "hog" in self.targets:
            _at_least(self, "objective", "hog_bins", 1)
            _at_least(self, "objective", "hog_cell", 1)
            if model.patch_size % self.hog_cell:
                raise UserError(f"objective.hog_cell={self.hog_cell} does not divide model.patch_size={model.patch_size}")
        for name in self.targets:
            _need(getattr(self, f"w_{name}") >= 0, f"objective.w_{name}", getattr(self, f"w_{name}"), "must be >= 0")
        _need(self.norm_eps > 0, "objective.norm_eps", self.norm_eps, "must be > 0")


@dataclass
class DataConfig:
    train: str = ""  # annotation list, folder of videos / class folders, glob, or WebDataset shards (`dir/shard-{000000..000009}.tar`, pipe:/URLs)
    val: str = ""
    root: str = ""  # prefix for relative paths in annotation lists
    num_frames: int = 16  # follows model.num_frames (see `follow_model`)
    sampling_rate: int = 4  # frame stride (SSv2: 2, K400/UCF101: 4)
    sampling: Literal["dense", "segment"] = "dense"  # segment: TSN, for SSv2
    input_size: int = 224  # follows model.img_size
    short_side: int = 0  # short side of test views, and at most of fine-tuning frames before RandAugment (0: input_size * 256 / 224)
    scales: Tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    flip: bool = True  # off for SSv2 (left/right matters)
    num_samples: int = 1  # clips drawn from one decoded video per visit (repeated sampling)
    num_workers: int = 2
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    max_skip_fraction: float = 0.5  # give up when more than this fraction of videos fail to decode
    short_video: Literal["loop", "clamp"] = "loop"  # dense sampling of a video shorter than the clip span (clamp: hold last frame)
    test_clips: int = 2  # test-time temporal views K (VideoMAE: SSv2 2, K400 5, UCF101 10)
    test_crops: Literal[1, 3] = 3  # test-time spatial crops per temporal view: 3 (along the long side) or 1 (centre)
    # labels: path label.. | v2: path start total | rawframes: dir total label | multilabel: path class class .. (a 0/1 column per class)
    list_format: Literal["auto", "labels", "v2", "rawframes", "multilabel"] = "auto"
    decode_short_side: int = 0  # >0: the decoder's converter scales larger frames to this short side (not bit-identical to resizing later)
    shuffle_buffer: int = 128  # WebDataset shards: samples per worker's shuffle buffer (kept as undecoded bytes)

    def check(self, model: ModelConfig) -> None:
        for key in ("num_frames", "sampling_rate", "input_size", "num_samples", "test_clips"):
            _at_least(self, "data", key, 1)
        _at_least(self, "data", "num_workers", 0)
        _at_least(self, "data", "short_side", 0)
        _at_least(self, "data", "decode_short_side", 0)
        _at_least(self, "data", "shuffle_buffer", 1)
        _need(0.0 <= self.max_skip_fraction <= 1.0, "data.max_skip_fraction", self.max_skip_fraction, "must be in [0, 1]")
        _need(bool(self.scales) and all(s > 0 for s in self.scales), "data.scales", list(self.scales), "must be > 0")
        if len(self.mean) != model.in_chans or len(self.std) != model.in_chans:
            raise UserError(f"data.mean / data.std need {model.in_chans} values (model.in_chans)")


@dataclass
class TrainConfig:
    init: str = ""  # start from these weights (a motionmae checkpoint, e.g. converted VideoMAE); not a resume
    epochs: int = 400
    max_steps: int = 0  # >0: stop after this many optimiser steps (overrides epochs for the schedule)
    batch_size: int = 8  # per rank, per micro-step
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # lr = base_lr * global_batch / 256; min_lr and warmup_lr are scaled the same way
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 40
    warmup_steps: int = 0  # >0: overrides warmup_epochs
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.0  # 0: off
    amp: Amp = "auto"  # auto (bf16 where fast; fp16 on GPUs without bf16) | bf16 | fp16 (with loss scaling) | none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    parallel: Parallel = "ddp"  # how the model runs on several ranks: ddp | fsdp (FSDP2, sharded checkpoints; runtime/parallel.py)
    async_checkpoint: bool = False  # fsdp: write checkpoints in the background while training goes on
    compile: bool = False  # torch.compile the model (inductor; for GPUs: no speed-up measured on CPU)
    seed: int = 0
    output_dir: str = "runs/pretrain"
    loggers: Tuple[LoggerName, ...] = ("jsonl", "tensorboard")
    log_every: int = 10
    save_every: int = 500  # steps between numbered checkpoints (`last` is written every save_every too)
    keep_last: int = 3
    viz_every: int = 0  # steps between pictures; 0: only at the end; < 0: never

    def check(self) -> None:
        for key in ("batch_size", "accum_steps", "log_every", "save_every"):
            _at_least(self, "train", key, 1)
        for key in ("epochs", "max_steps", "warmup_steps", "keep_last"):
            _at_least(self, "train", key, 0)
        for key in ("base_lr", "min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "clip_grad"):
            _need(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "must be >= 0")
        if self.max_steps == 0 and self.epochs == 0:
            raise UserError("train.epochs=0 and train.max_steps=0: nothing to train")
        if self.async_checkpoint and self.parallel != "fsdp":
            raise UserError("train.async_checkpoint=true writes sharded checkpoints in the background: it needs train.parallel=fsdp")
        _check_device(self.device, "train.device")
        for name in self.loggers:
            if name in OPTIONAL_LOGGERS and not _installed(name):
                raise UserError(f"train.loggers: '{name}' is not installed: pip install {OPTIONAL_LOGGERS[name]} (or pip install "
                                f"'motionmae[{name}]'), or leave it out of train.loggers")


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        self.model.check()
        self.mask.check(self.model)
        self.objective.check(self.model)
        self.data.check(self.model)
        self.train.check()


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
    crop: Literal["rrc", "multiscale"] = "rrc"
    # rrc: train frames with a longer short side are first resized to this (0: data.short_side's value). VideoMAE
    # crops the frames as decoded: its copies have a 240 px (SSv2, UCF101, HMDB51) or 320 px (K400) short side
    train_short_side: int = 0
    fc_drop_rate: float = 0.0  # dropout on the pooled feature before the head (VideoMAE's --fc_drop_rate; timm's head_drop)
    head_init_scale: float = 0.001  # the new head's trunc-normal(0.02) weights times this (VideoMAE's --init_scale)
    eval_every: int = 0  # steps between evaluations on the val list; 0 = at the end only
    eval_batch_size: int = 0  # videos per eval batch (each carries data.test_clips x data.test_crops views); 0 = train.batch_size
    eval_max_videos: int = 0  # evaluate on the first N val videos only; 0 = all
    # single: one class per video from label_column (softmax cross-entropy; top-1/top-5) | multilabel: any number of
    # classes per video, a 0/1 label column per class (data.list_format=multilabel makes them from class lists);
    # sigmoid + binary cross-entropy, mAP and per-class AP (label_smoothing does not apply)
    task: Literal["single", "multilabel"] = "single"
    label_columns: Tuple[str, ...] = ()  # multilabel: the 0/1 columns that are the classes (names or indices); () = all

    def check(self) -> None:
        _need(0.0 < self.layer_decay <= 1.0, "finetune.layer_decay", self.layer_decay, "must be in (0, 1]")
        for key in ("mixup", "cutmix", "eval_every", "eval_batch_size", "eval_max_videos", "train_short_side"):
            _at_least(self, "finetune", key, 0)
        _need(0.0 <= self.fc_drop_rate < 1.0, "finetune.fc_drop_rate", self.fc_drop_rate, "must be in [0, 1)")
        _need(self.head_init_scale > 0, "finetune.head_init_scale", self.head_init_scale, "must be > 0")
        for key in ("mixup_prob", "mixup_switch_prob", "reprob"):
            _need(0.0 <= getattr(self, key) <= 1.0, f"finetune.{key}", getattr(self, key), "must be in [0, 1]")
        _need(0.0 <= self.label_smoothing < 1.0, "finetune.label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if self.task == "single" and self.label_columns:
            raise UserError("finetune.label_columns chooses the classes of finetune.task=multilabel; a single-label run "
                            "trains on one finetune.label_column")
        if self.task == "multilabel" and self.label_column:
            raise UserError("finetune.task=multilabel reads 0/1 columns, one per class: choose them with "
                            "finetune.label_columns=[...] (finetune.label_column is the single-label setting)")


def _finetune_train() -> TrainConfig:
    # VideoMAE fine-tuning: AdamW (0.9, 0.999), wd 0.05, base lr 5e-4 per 256 videos (its SSv2 and UCF101 scripts),
    # warm-up 5 epochs from 1e-6, cosine to 1e-6 (both per 256 too: run_class_finetuning.py); 40 epochs, between
    # its scripts' 30 and 100. The finetune-* presets carry each dataset's values (docs/FIDELITY.md).
    return TrainConfig(epochs=40, base_lr=5e-4, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=5, betas=(0.9, 0.999),
                       weight_decay=0.05, output_dir="runs/finetune", save_every=1000)


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(drop_path=0.1))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_finetune_train)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)

    def check(self) -> None:
        self.model.check()
        self.data.check(self.model)
        self.train.check()
        self.finetune.check()


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
    cache: bool = True  # keep extracted features, keyed by encoder, list and clip settings
    cache_dir: str = ""  # '' = <run dir>/probe_cache for a checkpoint, runs/probe_cache for an encoder object
    amp: Amp = "auto"  # feature extraction autocast
    device: str = "auto"
    seed: int = 0

    def check(self) -> None:
        for key in ("k", "linear_epochs", "linear_batch_size", "batch_size", "views"):
            _at_least(self, "probe", key, 1)
        _need(self.temperature > 0, "probe.temperature", self.temperature, "must be > 0")
        _need(self.linear_lr > 0, "probe.linear_lr", self.linear_lr, "must be > 0")
        _need(self.linear_weight_decay >= 0, "probe.linear_weight_decay", self.linear_weight_decay, "must be >= 0")
        _check_device(self.device, "probe.device")


@dataclass
class ProbeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeOptions = field(default_factory=ProbeOptions)

    def check(self) -> None:
        self.model.check()
        self.data.check(self.model)
        self.probe.check()


@dataclass
class ExtractOptions:
    kind: Literal["pooled", "grid"] = "pooled"  # one D-vector per video, or the token grid (T', H', W', D)
    format: Literal["", "npy", "safetensors"] = ""  # '': from the output file's suffix (npy otherwise)
    views: int = 1  # temporal clips per video, features averaged (1: the centre clip)
    batch_size: int = 8  # clips (windows) per encoder call
    amp: Amp = "auto"
    device: str = "auto"
    # sliding windows over long videos (temporal action detection): window > 0 switches it on; --out is then a folder
    # with one array per video and layer (eval/features.py `featurize`)
    window: int = 0  # frames per window (the encoder's clip; model.num_frames is what it was trained on)
    stride: int = 4  # frames between window starts (VideoMAE v2's THUMOS-14 features: 16-frame windows every 4 frames)
    frame_step: int = 1  # stride between the frames of a window (1: consecutive, as VideoMAE v2's TAD features)
    layers: Tuple[int, ...] = (-1,)  # encoder blocks to read (0-based; -1: the last, = today's features; -4: 4th from the end)
    pool: Literal["mean", "time", "none"] = "mean"  # per window: (D,) | mean over space (T', D) | all tokens (T', H', W', D)
    crop: Literal["center", "full"] = "center"  # center: short side + centre crop (the eval view) | full: whole frame resized

    def check(self, model: Optional[ModelConfig] = None) -> None:
        _at_least(self, "extract", "views", 1)
        _at_least(self, "extract", "batch_size", 1)
        _check_device(self.device, "extract.device")
        for key in ("window", "stride", "frame_step"):
            _at_least(self, "extract", key, 0 if key == "window" else 1)
        if not self.layers:
            raise UserError("extract.layers is empty: name at least one encoder block, e.g. extract.layers=[-1]")
        if self.window == 0:
            if tuple(self.layers) != (-1,) or self.pool != "mean" or self.crop != "center":
                raise UserError("extract.layers, extract.pool and extract.crop are settings of sliding-window extraction: "
                                "set extract.window (e.g. extract.window=16 extract.stride=4)")
            return
        if self.kind != "pooled":
            raise UserError(f"extract.kind={self.kind} is for whole clips; with extract.window use extract.pool=none for token grids")
        if model is not None:
            depth = model.dims()[1]
            bad = [i for i in self.layers if not -depth <= i < depth]
            if bad:
                raise UserError(f"extract.layers={list(self.layers)}: {bad} do not exist, the encoder has {depth} blocks "
                                f"(0..{depth - 1}, or -1..-{depth})")
            if self.window % model.tubelet_size:
                raise UserError(f"extract.window={self.window} is not divisible by model.tubelet_size={model.tubelet_size}")


@dataclass
class ExtractConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractOptions = field(default_factory=ExtractOptions)

    def check(self) -> None:
        self.model.check()
        self.data.check(self.model)
        self.extract.check(self.model)


@dataclass
class VOSOptions:
    """Label propagation; the defaults are DINO's eval_video_segmentation.py (docs/BENCHMARKS.md, VOS protocol)."""

    topk: int = 5  # --topk 5: neighbours kept per query patch, over all context frames together
    context: int = 7  # --n_last_frames 7: previous predicted frames used besides the first frame
    radius: int = 12  # --size_mask_neighborhood 12: window (in patches) for every context frame, the first too; 0: none
    temperature: float = 0.1  # exp(cos / 0.1)
    size: int = 480  # read_frame(scale_size=[480]): short side fed to the encoder; 0: the frames' own
    split: str = "val"  # ImageSets/2017/<split>.txt
    sequences: Tuple[str, ...] = ()  # only these sequences of the split; () = all
    batch_size: int = 8  # frames per encoder call
    amp: Amp = "auto"
    device: str = "auto"

    def check(self, model: ModelConfig) -> None:
        _at_least(self, "vos", "topk", 1)
        _at_least(self, "vos", "batch_size", 1)
        for key in ("context", "radius", "size"):
            _at_least(self, "vos", key, 0)
        _need(self.temperature > 0, "vos.temperature", self.temperature, "must be > 0")
        if 0 < self.size < model.patch_size:
            raise UserError(f"vos.size={self.size} is smaller than one patch (model.patch_size={model.patch_size})")
        _check_device(self.device, "vos.device")


@dataclass
class VOSConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vos: VOSOptions = field(default_factory=VOSOptions)

    def check(self) -> None:
        self.model.check()
        self.data.check(self.model)
        self.vos.check(self.model)


COMMAND_CONFIGS = (PretrainConfig, FinetuneConfig, ProbeConfig, ExtractConfig, VOSConfig)
SECTIONS = {f.name for cls in COMMAND_CONFIGS for f in dataclasses.fields(cls)}


def _need(ok: bool, key: str, value, what: str) -> None:
    if not ok:
        raise UserError(f"{key}={value} {what}")


def _at_least(section, name: str, key: str, low: int) -> None:
    _need(getattr(section, key) >= low, f"{name}.{key}", getattr(section, key), f"must be >= {low}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules (None)
        return False


def _check_device(name: str, key: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", name):
        raise UserError(f"{key}='{name}' is not a device; expected auto, cpu, cuda or cuda:N")


# ----------------------------------------------------------------------------------------------
# presets


def _objective_preset(kind: str) -> dict:
    if kind == "videomae":
        return {"model": {"decoder": "none"}, "mask": {"kind": "tube"},
                "objective": {"targets": ["appearance"], "w_motion": 0.0}}
    if kind in ("motionmae-sha", "motionmae-ind"):
        return {"model": {"decoder": kind.split("-")[1]}, "mask": {"kind": "per_slice"}}
    raise KeyError(kind)


# Appended to any preset name: what transformers' VideoMAE can express (its fixed 1D sin-cos table; eps 1e-5 on
# fc_norm and decoder.norm). These are the defaults now, so the suffix only matters for a YAML preset that sets
# other values; kept so that names like `motionmae-sha-base-hf` keep working.
HF_SUFFIX = "-hf"
HF_COMPATIBLE = {"model": {"pos_embed": "sincos1d", "head_norm_eps": 1e-5}}


# Presets named finetune-* are fine-tuning recipes (every section of a FinetuneConfig); all others are pretraining
# recipes, of which the other commands take the model and data sections.
FINETUNE_PREFIX = "finetune-"
_SIZE_TAGS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g"}
_KIND_TEXT = {
    "videomae": "VideoMAE: tube masking, appearance target",
    "motionmae-sha": "MotionMAE: per-slice masking, appearance + motion, one shared decoder",
    "motionmae-ind": "MotionMAE: per-slice masking, appearance + motion, a decoder per target",
}


def is_finetune_preset(name: str) -> bool:
    return name.startswith(FINETUNE_PREFIX)


def preset_names(kind: str = "") -> list:
    """Every preset; `kind` 'pretrain' or 'finetune': only that command's."""
    names = [f"{k}-{s}" for k in ("videomae", "motionmae-sha", "motionmae-ind") for s in SIZES]
    names += ["videomae", "motionmae-sha", "motionmae-ind"]
    names += sorted(p.stem for p in _preset_dir().glob("*.yaml"))
    if kind:
        names = [n for n in names if is_finetune_preset(n) == (kind == "finetune")]
    return names


def preset_description(name: str) -> str:
    """One line: a YAML preset's first comment line; for the generated ones, the objective and the encoder and
    decoder sizes."""
    yaml_path = _preset_dir() / f"{name}.yaml"
    if yaml_path.exists():
        first = next((ln for ln in yaml_path.read_text().splitlines() if ln.strip()), "")
        return first.lstrip("#").strip()
    base = name[: -len(HF_SUFFIX)] if name.endswith(HF_SUFFIX) else name
    m = from_dict(ModelConfig, preset_dict(base).get("model", {}), "model")
    kind = base[: -len(m.size) - 1] if base.endswith("-" + m.size) else base
    d, n, _ = m.dims()
    return (f"{_KIND_TEXT[kind]}; ViT-{_SIZE_TAGS.get(m.size, m.size)} (width x depth {d}x{n}), "
            f"decoder {m.decoder_embed_dim}x{m.decoder_depth}")


def _preset_dir() -> Path:
    return Path(__file__).parent / "configs"


def preset_dict(name: str, chain: Tuple[str, ...] = ()) -> dict:
    """Overrides (nested dict) that a preset applies to the defaults. `chain`: the presets and files being read
    (a preset that comes back to itself is an error naming the loop)."""
    yaml_path = _preset_dir() / f"{name}.yaml"
    if yaml_path.exists():
        return spec_dict(str(yaml_path), chain)
    if name.endswith(HF_SUFFIX):
        return merge(preset_dict(name[: -len(HF_SUFFIX)], chain), HF_COMPATIBLE)
    for kind in ("motionmae-sha", "motionmae-ind", "videomae"):
        if name == kind:
            return _objective_preset(kind)
        if name.startswith(kind + "-") and name[len(kind) + 1 :] in SIZES:
            d = _objective_preset(kind)
            d["model"]["size"] = name[len(kind) + 1 :]
            if d["model"]["size"] == "giant":
                d["model"].update(GIANT)
            return d
    raise UserError(f"unknown preset '{name}'{_did_you_mean(name, preset_names())}; valid presets: {', '.join(preset_names())} "
                    f"(each also with '{HF_SUFFIX}', an alias kept from when only it exported to transformers)")


def spec_dict(spec: str, chain: Tuple[str, ...] = (), preset_fn=None) -> dict:
    """Nested overrides of a preset name or a YAML path ('' -> {}). A YAML file may start from `preset: NAME` or
    `preset: other.yaml` (relative to its own folder); `preset_fn(name, chain)` turns a name into its dict
    (default `preset_dict`). `chain`: the files being read, so a file that leads back to itself is named."""
    preset_fn = preset_fn or preset_dict
    if not spec:
        return {}
    path = Path(spec)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        return preset_fn(spec, chain)
    if not path.exists():
        raise UserError(f"config file not found: {spec}")
    me = str(path.resolve())
    if me in chain:
        loop = [Path(c).name for c in chain[chain.index(me):]] + [path.name]
        raise UserError(f"{path}: config recursion: {' -> '.join(loop)} (each `preset:` leads to the next)")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, train:, ...)")
    base = d.pop("preset", None)
    if not base:
        return d
    base = str(base)
    if base.endswith((".yaml", ".yml")):
        parent = spec_dict(str(path.parent / base), chain + (me,), preset_fn)
    else:
        parent = preset_fn(base, chain + (me,))
    return merge(parent, d)


def merge(a: dict, b: dict) -> dict:
    """`a` updated by `b`, nested dicts merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass, with strict keys and types


def from_dict(cls, d: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types or values are UserErrors."""
    return update(cls(), d, where)


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
            raise UserError(f"unknown config key '{path}'{_did_you_mean(str(key), names)}; "
                            f"valid keys{' in ' + repr(where) if where else ''}: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = update(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    # derived defaults follow a changed key, unless given here or set to another value than derived before
    for key, followers in getattr(obj, "FOLLOWS", {}).items():
        if key in changes and changes[key] != getattr(obj, key):
            derived = type(obj)(**{key: getattr(obj, key)})
            for follower in followers:
                if getattr(obj, follower) == getattr(derived, follower):
                    changes.setdefault(follower, None)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, hint, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], path)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        shown = ", ".join(repr(a) if a == "" else str(a) for a in args)
        raise UserError(f"config key '{path}' expects one of {shown}; got {value!r}{_did_you_mean(str(value), [str(a) for a in args])}")
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


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def to_dict(obj) -> dict:
    return _lists(dataclasses.asdict(obj))


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
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{p}' is a key, not a section")
        node[parts[-1]] = value
    return out


# ----------------------------------------------------------------------------------------------
# the clip shape, and what a checkpoint decides


# Model keys that define the encoder's shape: a checkpoint's. drop_path, pooling, grad_checkpointing are choices
# of the command that reads it.
ARCH_KEYS = ("size", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size", "num_frames",
             "img_size", "in_chans", "qkv_bias", "pos_embed", "norm_eps", "act_layer", "final_norm")
# Data keys that must match what the encoder was pretrained on (frames and size follow the model): what the commands
# that use frozen features (probe, extract, vos) take from a checkpoint.
CLIP_KEYS = ("sampling_rate", "sampling", "mean", "std", "flip")
# Fine-tuning takes only the input normalisation the weights expect: its sampling, flip and test views are the
# fine-tuning config's (a preset's), as VideoMAE's fine-tuning script sets them whatever the pretraining did.
FINETUNE_CLIP_KEYS = ("mean", "std")


def follow_model(data: DataConfig, model: ModelConfig, given: Optional[dict] = None) -> DataConfig:
    """The clip shape, from one source: data.num_frames / data.input_size follow model.num_frames / model.img_size.
    `given`: the data keys the user set; one that disagrees with the model is a UserError."""
    for dkey, mkey in (("num_frames", "num_frames"), ("input_size", "img_size")):
        value, want = (given or {}).get(dkey), getattr(model, mkey)
        if value is not None and value != want:
            raise UserError(f"data.{dkey}={value} does not match model.{mkey}={want}; set model.{mkey} (data.{dkey} follows it"
                            f"{'; the positional embedding is interpolated' if model.pos_embed == 'learnable' else ''})")
    return dataclasses.replace(data, num_frames=model.num_frames, input_size=model.img_size)


def checkpoint_sections(config_dict: Optional[dict], clip_keys: Sequence[str] = CLIP_KEYS) -> dict:
    """The architecture (model) and the `clip_keys` of the clip format (data) of a checkpoint's saved config, as
    overrides."""
    if not config_dict:
        return {}
    model = {k: v for k, v in (config_dict.get("model") or {}).items() if k in ARCH_KEYS}
    data = {k: v for k, v in (config_dict.get("data") or {}).items() if k in clip_keys}
    return {"model": model, "data": data}


def checkpoint_data(data: DataConfig, config_dict: Optional[dict]) -> DataConfig:
    """`data` for the clips a checkpoint's encoder takes: its clip format (CLIP_KEYS) from the saved config, frames
    and size following its model (`follow_model`); the rest (lists, root, workers) stays `data`'s."""
    saved = checkpoint_sections(config_dict).get("data", {})
    return follow_model(update(data, saved, "data"), model_config_from_dict(config_dict))


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


def saved_pretrain_config(config_dict: dict) -> PretrainConfig:
    """The PretrainConfig a pretraining checkpoint was written with. Configs from before `objective.targets`
    meant appearance alone by model.decoder=none."""
    d = dict(config_dict)
    if (d.get("model") or {}).get("decoder") == "none" and "targets" not in (d.get("objective") or {}):
        d["objective"] = dict(d.get("objective") or {}, targets=["appearance"])
    cfg = from_dict(PretrainConfig, d)
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------------------------
# building a command's config


def load_config(spec: str = "", overrides: Sequence[str] = (), cls=PretrainConfig, checkpoint: Optional[dict] = None):
    """A `cls` config: defaults -> `spec` (a preset name or YAML path; '' = defaults) -> `overrides`
    (`section.key=value`); checked before it is returned.

    Pretraining takes every section of a pretraining preset, fine-tuning every section of a fine-tuning preset
    (`finetune-*`). Otherwise a command takes a named preset's model and data sections only (a pretraining preset's
    train section carries the pretraining lr and length). Sections of a YAML file that belong to other commands are
    ignored, so one file can describe a whole experiment.
    `checkpoint`: the saved config of the checkpoint the command reads; the encoder's architecture comes from it, and
    its clip format (CLIP_KEYS; for fine-tuning only its input normalisation, FINETUNE_CLIP_KEYS) under the spec's
    and the overrides' values."""
    names = {f.name for f in dataclasses.fields(cls)}
    from_spec = spec_dict(spec, preset_fn=_command_presets(cls))
    from_spec = {k: v for k, v in from_spec.items() if k in names or k not in SECTIONS}
    cli = parse_overrides(overrides)
    user = merge(from_spec, cli)
    d = user
    if checkpoint is not None:
        base = checkpoint_sections(checkpoint, FINETUNE_CLIP_KEYS if cls is FinetuneConfig else CLIP_KEYS)
        d = merge({"data": base.get("data", {})}, user)
        d = merge(d, {"model": base.get("model", {})})  # the weights define the architecture, whatever the preset says
        d = merge(d, {"model": cli.get("model", {})})  # ... unless overridden explicitly (e.g. another num_frames)
    cfg = from_dict(cls, d)
    given = user.get("data") if isinstance(user.get("data"), dict) else {}
    cfg = dataclasses.replace(cfg, data=follow_model(cfg.data, cfg.model, given))
    cfg.check()
    return cfg


def _command_presets(cls):
    """`preset_fn` for `spec_dict`: what a named preset gives command config `cls` (see FINETUNE_PREFIX)."""

    def sections(name: str, chain: Tuple[str, ...] = ()) -> dict:
        d = preset_dict(name, chain)
        if is_finetune_preset(name):
            if cls is PretrainConfig:
                raise UserError(f"'{name}' is a fine-tuning preset: use it with `motionmae finetune --config {name}` "
                                "(`motionmae presets` lists the pretraining ones)")
            if cls is FinetuneConfig:
                return d
        elif cls is PretrainConfig:
            return d
        return {k: v for k, v in d.items() if k in ("model", "data")}

    return sections


def save_config(cfg, path) -> None:
    Path(path).write_text(config_text(cfg))


def config_text(cfg) -> str:
    """The resolved config as YAML (what `--print-config` prints and `config.yaml` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def add_config_arguments(parser, config_help: str, overrides_help: str) -> None:
    """The arguments every training and evaluation command shares: --config, overrides, --print-config."""
    parser.add_argument("--config", default="", metavar="PRESET_OR_YAML", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help=overrides_help)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
