"""Shared pieces of the checkpoint converters: safe reading, key mapping helpers, the imported config.

Every converter maps a foreign state dict to our names (`models/vit.py`, `models/pretrain.py`), then
`models.state.load_matching` puts it into a freshly built model: a key we did not map, a key our model expects but
the file lacks, or a shape that disagrees is a `UserError` naming the key. Nothing is silently left
at its initial value except what the caller names as fresh (the motion head of an imported VideoMAE).
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from motionmae.errors import UserError

StateDict = Dict[str, torch.Tensor]


@dataclass
class Converted:
    """A converted model and what it is: `kind` is 'encoder', 'classifier' or 'pretrain'."""

    model: torch.nn.Module
    cfg: object  # motionmae.config.PretrainConfig
    kind: str
    num_classes: int = 0
    notes: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)  # our keys left at their initial value (not in the source)
    class_names: Optional[List[str]] = None  # classifier label names (transformers' id2label), when known


def pretrain_config(model_cfg):
    """A PretrainConfig around an imported ModelConfig, its data clip shape matching the model's (what
    `motionmae finetune --pretrained` takes from a checkpoint). Frame stride is not stored by either format."""
    from motionmae.config import DataConfig, PretrainConfig, follow_model, preset_dict, update

    data = follow_model(DataConfig(), model_cfg)
    if model_cfg.in_chans != 3:  # no ImageNet statistics: targets from the input as it is (transformers does the same)
        data = replace(data, mean=(0.0,) * model_cfg.in_chans, std=(1.0,) * model_cfg.in_chans)
    cfg = PretrainConfig(model=model_cfg, data=data)
    if model_cfg.decoder == "none":  # a plain VideoMAE: its masking and objective too
        cfg = update(cfg, {k: v for k, v in preset_dict("videomae").items() if k != "model"})
    return cfg


def mlp_ratio_for(inner: int, dim: int) -> float:
    """A ratio r with int(dim * r) == inner (how our blocks size their MLP, as timm / VideoMAE do): inner / dim,
    nudged by half a unit where float rounding would land just below `inner`."""
    r = inner / dim
    return r if int(dim * r) == inner else (inner + 0.5) / dim


def torch_load_weights_only(path) -> object:
    """`torch.load(weights_only=True)`: tensors and plain containers only; an embedded object is refused.

    `argparse.Namespace` is allowed because the research code bases save their command-line `args` in every
    checkpoint; it is rebuilt attribute by attribute, nothing of it is called.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; 2.4 has only add_safe_globals
    if safe is not None:
        ctx = safe([argparse.Namespace])
    else:
        torch.serialization.add_safe_globals([argparse.Namespace])
        ctx = contextlib.nullcontext()
    try:
        with ctx:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "GLOBAL" in ln), lines[-1] if lines else type(e).__name__)
        raise UserError(
            f"{path}: refused to unpickle: the file embeds Python objects, not only tensors ({first}). "
            "Unpickling it could run code from the file. If you trust it, load it in a sandbox with "
            "weights_only=False, re-save only its state dict ('model') with torch.save, and convert that file."
        ) from None
    except Exception as e:  # text, truncated or foreign files fail in many ways (KeyError, EOFError, SafetensorError...)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}{': ' + msg if msg else ''})") from None


def check_motion_branch(cfg, where: str) -> None:
    """A motion branch needs frame differences: a pretraining model of fewer frames than the gap cannot have one."""
    m, o = cfg.model, cfg.objective
    if m.decoder != "none" and m.num_frames <= o.motion_gap:
        raise UserError(f"{where}: a {m.num_frames}-frame model has no frame differences for MotionMAE's motion branch; "
                        "convert it with --decoder none (a plain VideoMAE)")


def check_destination(dst, overwrite: bool) -> None:
    """A conversion never writes over existing files unless asked to: a file, or a non-empty directory, is refused."""
    dst = Path(dst)
    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise UserError(f"{dst}: exists and is not empty; pass --force (overwrite=True) to write over it")


# files transformers reads weights or configs from: a forced export removes stale ones so they cannot shadow ours
_HF_FILES = ("config.json", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
             "pytorch_model.bin.index.json", "preprocessor_config.json", "video_preprocessor_config.json", "README.md")


def publish_dir(tmp: Path, dst: Path) -> None:
    """Move the files of the finished directory `tmp` into `dst` (created if needed), with the modes the user's umask
    gives new files and folders (mkdtemp and safetensors make them private)."""
    from motionmae.files import new_dir_mode, new_file_mode

    for f in tmp.iterdir():
        f.chmod(new_file_mode())
    if not dst.exists():
        tmp.chmod(new_dir_mode())
        tmp.rename(dst)
        return
    for pattern in _HF_FILES:
        for f in dst.glob(pattern):
            f.unlink()
    for f in tmp.iterdir():
        f.replace(dst / f.name)


def block_count(sd: StateDict, prefix: str) -> int:
    """Number of `prefix{i}.` blocks; they must be numbered 0..n-1."""
    idx = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix) and k[len(prefix) :].split(".")[0].isdigit()}
    if idx and idx != set(range(len(idx))):
        raise UserError(f"blocks under '{prefix}' are not numbered 0..{len(idx) - 1}: found {sorted(idx)}")
    return len(idx)


def take(src: StateDict, key: str, where: str) -> torch.Tensor:
    """Remove and return `src[key]`; a missing key is a UserError."""
    if key not in src:
        raise UserError(f"{where}: missing key '{key}'")
    return src.pop(key)


def refuse_leftovers(src: StateDict, where: str) -> None:
    if src:
        keys = sorted(src)
        more = f" (and {len(keys) - 8} more)" if len(keys) > 8 else ""
        raise UserError(f"{where}: {len(keys)} key(s) have no counterpart in our model: {', '.join(keys[:8])}{more}")
