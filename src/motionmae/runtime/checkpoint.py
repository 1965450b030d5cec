"""Checkpoints: one safetensors file per checkpoint, written atomically.

Layout of a file: tensors `model.<name>` (the unwrapped model's state dict), `optimizer.<i>.<key>`
(per-parameter optimiser state), `rng.torch` / `rng.cuda.<i>` (generator states); the header's
`__metadata__["motionmae"]` is a JSON document with everything else: step, epoch, data position,
config, optimiser param groups, numpy/python RNG states. One file is replaced by one `os.replace`,
so a checkpoint can never be half old and half new; nothing is unpickled on load.

A run directory holds `checkpoints/last.safetensors` (always the newest) and
`checkpoints/step_00001000.safetensors` every `save_every` steps, the newest `keep_last` of them kept.
Training reads and writes them through `Checkpointer`, the one seam a sharded format would replace.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from motionmae.errors import UserError
from motionmae.models.state import load_matching
from motionmae.runtime.distributed import barrier
from motionmae.runtime.parallel import unwrap_model

META_KEY = "motionmae"
FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"
LAST = "last.safetensors"
_NUMBERED = re.compile(r"^step_(\d+)\.safetensors$")


# ----------------------------------------------------------------------------------------------
# one file


def save_checkpoint(path, model=None, optimizer=None, state: Optional[dict] = None, rng: bool = True) -> Path:
    """Write `path` atomically: temp file in the same directory, fsync, `os.replace`, fsync the directory.

    `model` may be wrapped (DDP, torch.compile); its plain state dict is saved. `state` is any
    JSON-serialisable dict (step, epoch, config, ...); it comes back from `load_checkpoint`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    meta: dict = {"format_version": FORMAT_VERSION, "state": state or {}}
    if model is not None:
        for k, v in unwrap_model(model).state_dict().items():
            tensors["model." + k] = v.detach().to("cpu").contiguous()
    if optimizer is not None:
        opt_t, meta["optimizer"] = _optimizer_to_flat(optimizer.state_dict())
        tensors.update(opt_t)
    if rng:
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        np_state = np.random.get_state()
        meta["rng"] = {"python": _to_json(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    tensors = _unshare(tensors)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", META_KEY: json.dumps(meta)})
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path, model=None, optimizer=None, restore_rng: bool = False, map_location="cpu") -> dict:
    """Load a checkpoint file (or a run directory's `last`) into `model` / `optimizer`; return its `state` dict.

    `restore_rng=True` also restores the global torch / numpy / python generators (exact resume).
    """
    path = resolve_checkpoint(path)
    meta, tensors = _read(path, map_location)
    if model is not None:
        sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        load_matching(unwrap_model(model), sd, str(path))
    if optimizer is not None:
        if "optimizer" not in meta:
            raise UserError(f"{path}: checkpoint has no optimiser state (a weights-only file); cannot resume training from it")
        optimizer.load_state_dict(_optimizer_from_flat(tensors, meta["optimizer"]))
    if restore_rng:
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        if "rng" in meta:
            random.setstate(_from_json(meta["rng"]["python"]))
            n = meta["rng"]["numpy"]
            np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    return meta.get("state", {})


def load_model_state(path) -> Tuple[dict, dict]:
    """`(state_dict, config_dict)` of a checkpoint file or a run directory (its `last`); only model tensors are read."""
    path = resolve_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            sd = {k[len("model.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
    except Exception as e:  # safetensors' own error type differs between versions
        raise UserError(f"{path}: not a readable motionmae checkpoint ({e})") from None
    if not sd:
        raise UserError(f"{path}: holds no model tensors (expected keys 'model.*')")
    return sd, meta.get("state", {}).get("config", {})


def read_state(path) -> dict:
    """The JSON `state` of a checkpoint, without reading any tensor."""
    path = resolve_checkpoint(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}")).get("state", {})


def resolve_checkpoint(path) -> Path:
    """A checkpoint file as given, or for a run directory / its `checkpoints/` directory, the `last` file in it."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / CKPT_DIR / LAST, p / LAST):
            if cand.is_file():
                return cand
        raise UserError(f"{path}: no checkpoint found (expected {p / CKPT_DIR / LAST})")
    if not p.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return p


def _read(path: Path, map_location) -> Tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error type differs between versions
        raise UserError(f"{path}: not a readable motionmae checkpoint ({e})") from None
    return meta, tensors


# ----------------------------------------------------------------------------------------------
# a run directory: last + numbered, keep-k


def find_last(run_dir) -> Optional[Path]:
    """`run_dir/checkpoints/last.safetensors` if it exists (for auto-resume), else None."""
    p = Path(run_dir) / CKPT_DIR / LAST
    return p if p.is_file() else None


def numbered_checkpoints(run_dir) -> list:
    """Numbered checkpoints of a run, oldest first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / name) for name in os.listdir(d) if (m := _NUMBERED.match(name))]
    return [p for _, p in sorted(found)]


def save_run_checkpoint(run_dir, step: int, model, optimizer, state: dict, numbered: bool, keep_last: int = 3) -> Path:
    """Write `last` (and, if `numbered`, `step_<step>` sharing its bytes by a hard link); keep the newest `keep_last` numbered ones.

    The numbered file is written first, then linked over `last` atomically; a crash at any point leaves
    the previous `last` intact. Old numbered files are pruned only after the new `last` is in place.
    """
    d = Path(run_dir) / CKPT_DIR
    last = d / LAST
    if not numbered:
        return save_checkpoint(last, model, optimizer, state)
    target = save_checkpoint(d / f"step_{step:08d}.safetensors", model, optimizer, state)
    fd, tmp = tempfile.mkstemp(prefix=f".{LAST}.", suffix=".tmp", dir=d)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(target, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(target, tmp)
        _fsync_file(tmp)
    os.replace(tmp, last)
    _fsync_dir(d)
    if keep_last > 0:
        for old in numbered_checkpoints(run_dir)[:-keep_last]:
            old.unlink()
    return last


class Checkpointer:
    """A training run's checkpoints (`run_dir/checkpoints`): the one seam through which the engine saves and
    restores the whole training state (model, optimiser, RNG, JSON state). Rank 0 writes a file, every rank
    waits for it; a sharded format (torch.distributed.checkpoint, each rank writing its shard) replaces this class."""

    def __init__(self, run_dir, keep_last: int = 3, is_main: bool = True):
        self.run_dir, self.keep_last, self.is_main = Path(run_dir), keep_last, is_main

    def resume_path(self, resume: str) -> Optional[Path]:
        """'auto': the run's `last` if there is one; 'none' (or '', 'no', 'false'): a fresh run; else a file or run dir."""
        if resume in ("", "none", "no", "false"):
            return None
        if resume == "auto":
            return find_last(self.run_dir)
        return resolve_checkpoint(resume)

    def load(self, path, model, optimizer=None, restore_rng: bool = False) -> dict:
        return load_checkpoint(path, model, optimizer, restore_rng=restore_rng)

    def save(self, step: int, model, optimizer, state: dict, numbered: bool) -> Path:
        """`last` (and `step_<step>` when `numbered`); returns the path of `last` on every rank."""
        if self.is_main:
            save_run_checkpoint(self.run_dir, step, model, optimizer, state, numbered=numbered, keep_last=self.keep_last)
        barrier()
        return self.run_dir / CKPT_DIR / LAST


# ----------------------------------------------------------------------------------------------
# helpers


def _optimizer_to_flat(sd: dict) -> Tuple[dict, dict]:
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": _to_json(sd["param_groups"]), "scalars": scalars}


def _optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in meta.get("scalars", {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = []
    for g in meta["param_groups"]:
        # JSON turned tuples (betas) into lists; `params` / `param_names` are lists in torch too
        groups.append({k: (tuple(v) if isinstance(v, list) and k not in ("params", "param_names") else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def _to_json(x):
    if isinstance(x, (list, tuple)):
        return [_to_json(v) for v in x]
    if isinstance(x, dict):
        return {k: _to_json(v) for k, v in x.items()}
    if torch.is_tensor(x):
        return x.item() if x.numel() == 1 else x.tolist()
    return x


def _from_json(x):
    """python `random` state: nested lists back to nested tuples."""
    return tuple(_from_json(v) for v in x) if isinstance(x, list) else x


def _unshare(tensors: dict) -> dict:
    """safetensors refuses tensors that share memory (tied weights, views): give each its own storage."""
    seen: set = set()
    out = {}
    for k, v in tensors.items():
        ptr = (v.untyped_storage().data_ptr(), v.device.type) if v.numel() else None
        if ptr is not None and ptr in seen:
            v = v.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = v
    return out


def _fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
