"""Checkpoints: one safetensors file per checkpoint, written atomically.

Layout of a file: tensors `model.<name>` (the unwrapped model's state dict), `optimizer.<i>.<key>`
(per-parameter optimiser state), `rng.torch` / `rng.cuda.<i>` (generator states); the header's
`__metadata__["motionmae"]` is a JSON document with everything else: step, epoch, data position,
config, optimiser param groups, numpy/python RNG states, and a CRC-32 of every tensor's bytes (checked on
every load, so flipped bytes are an error naming the tensor, never silently different weights). One file is
replaced by one `os.replace`, so a checkpoint can never be half old and half new; nothing is unpickled on load.

A run directory holds `checkpoints/last.safetensors` (always the newest) and
`checkpoints/step_00001000.safetensors` every `save_every` steps, the newest `keep_last` of them kept. `last`
is a file of its own (a copy, not a hard link), so damage to one file never reaches another.
Training reads and writes them through `Checkpointer`, the one seam a sharded format would replace.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from motionmae.errors import UserError
from motionmae.files import atomic_path
from motionmae.models.state import load_matching
from motionmae.runtime.distributed import barrier
from motionmae.runtime.parallel import unwrap_model

META_KEY = "motionmae"
FORMAT_VERSION = 2  # 2: per-tensor CRC-32 in the header (files of version 1 load unchecked)
CKPT_DIR = "checkpoints"
LAST = "last.safetensors"
PRETRAINED_WEIGHTS = "model.safetensors"  # in a `save_pretrained` directory, beside its config.json
_NUMBERED = re.compile(r"^step_(\d+)\.safetensors$")
_TEMP = re.compile(r"^\..*\.tmp$")  # what `save_checkpoint` writes before its rename


class CorruptCheckpointError(UserError):
    """A checkpoint whose bytes do not match the checksums it was written with (or that cannot be parsed)."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, permissions); the files already on disk are untouched."""


# ----------------------------------------------------------------------------------------------
# one file


def save_checkpoint(path, model=None, optimizer=None, state: Optional[dict] = None, rng: bool = True) -> Path:
    """Write `path` atomically (`files.atomic_path`): temp file in the same directory, fsync, the umask's mode,
    `os.replace`, fsync the directory.

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
    meta["crc32"] = {k: tensor_crc32(v) for k, v in tensors.items()}
    # temp file, fsync, the umask's mode (mkstemp and safetensors make it 0600: teammates could not read it), rename
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt", META_KEY: json.dumps(meta)})
        except SafetensorError as e:  # its I/O errors (a full disk) are not OSErrors: make them one
            full = "No space left" in str(e)
            raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full else str(e), str(tmp)) from None
    return path


def load_checkpoint(path, model=None, optimizer=None, restore_rng: bool = False, map_location="cpu",
                    allow_nonfinite: bool = False) -> dict:
    """Load a checkpoint file (or a run directory's `last`) into `model` / `optimizer`; return its `state` dict.

    `restore_rng=True` also restores the global torch / numpy / python generators (exact resume).
    Checksums are verified; NaN/inf model weights are an error unless `allow_nonfinite`.
    """
    path = resolve_checkpoint(path)
    meta, tensors = _read(path, map_location)
    if model is not None:
        sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        if not allow_nonfinite:
            check_finite(sd, path)
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


def load_model_state(path, allow_nonfinite: bool = False) -> Tuple[dict, dict]:
    """`(state_dict, config_dict)` of a checkpoint file or a run directory (its `last`); only model tensors are read
    (and checked against their checksums; NaN/inf weights are an error unless `allow_nonfinite`)."""
    path = resolve_checkpoint(path)
    meta, tensors = _read(path, "cpu", keep=lambda k: k.startswith("model."))
    sd = {k[len("model.") :]: v for k, v in tensors.items()}
    if not sd:
        raise UserError(f"{path}: holds no model tensors (expected keys 'model.*')")
    if not allow_nonfinite:
        check_finite(sd, path)
    return sd, meta.get("state", {}).get("config", {})


def read_state(path) -> dict:
    """The JSON `state` of a checkpoint, without reading any tensor."""
    path = resolve_checkpoint(path)
    return _read(path, "cpu", keep=lambda k: False)[0].get("state", {})


def check_finite(sd: dict, where) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{where}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); these weights are "
                        "unusable (the run that wrote them diverged); pass allow_nonfinite=True to load them anyway")


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of a tensor's raw bytes (any dtype, bf16 included)."""
    b = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(b)


def resolve_checkpoint(path) -> Path:
    """A checkpoint file as given, or for a run directory / its `checkpoints/` directory, the `last` file in it."""
    p = Path(path)
    if p.is_dir():
        if is_pretrained_dir(p):
            return p / PRETRAINED_WEIGHTS
        for cand in (p / CKPT_DIR / LAST, p / LAST):
            if cand.is_file():
                return cand
        if find_last(p) is not None:
            return find_last(p)
        raise UserError(f"{path}: no checkpoint found (expected {p / CKPT_DIR / LAST})")
    if not p.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return p


def is_pretrained_dir(path) -> bool:
    """A directory written by `save_pretrained` (`MotionMAE`): `config.json` with model_type 'motionmae' beside
    `model.safetensors`, which is a checkpoint file of this module's format (checksums included)."""
    p = Path(path)
    try:
        return (p / PRETRAINED_WEIGHTS).is_file() and json.loads((p / "config.json").read_text()).get("model_type") == "motionmae"
    except (OSError, ValueError, AttributeError):
        return False


def _read(path: Path, map_location, keep=lambda k: True) -> Tuple[dict, dict]:
    """(JSON metadata, the tensors whose names pass `keep`), each tensor checked against its recorded CRC-32;
    a damaged file's error says where the newest intact checkpoint of its run is."""
    try:
        return _read_verified(path, map_location, keep)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"{e}{_intact_hint(path)}") from None


def _read_verified(path: Path, map_location, keep) -> Tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            if not isinstance(meta, dict):
                raise ValueError("its motionmae metadata is not a JSON object")
            tensors = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except Exception as e:  # safetensors' own error type differs between versions; JSON errors land here too
        raise CorruptCheckpointError(f"{path}: not a readable motionmae checkpoint ({_short(e)})") from None
    crcs = meta.get("crc32") or {}
    for k, v in tensors.items():
        if k in crcs and tensor_crc32(v) != crcs[k]:
            raise CorruptCheckpointError(f"{path}: damaged: tensor '{k}' does not match the checksum it was written with")
    return meta, tensors


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def verify_checkpoint(path) -> bool:
    """True when every tensor of `path` reads back and matches its checksum."""
    try:
        _read_verified(Path(path), "cpu", lambda k: True)
        return True
    except CorruptCheckpointError:
        return False


def newest_intact(run_dir, exclude=()) -> Optional[Path]:
    """The newest checkpoint of a run (`last`, then numbered ones newest first) that passes `verify_checkpoint`."""
    d = Path(run_dir) / CKPT_DIR
    candidates = [d / LAST, *reversed(numbered_checkpoints(run_dir))]
    excluded = {Path(p).resolve() for p in exclude}
    for p in candidates:
        if p.is_file() and p.resolve() not in excluded and verify_checkpoint(p):
            return p
    return None


def _intact_hint(path: Path) -> str:
    """For a file inside a run's checkpoints/ folder: where an intact checkpoint is, if any."""
    if path.parent.name != CKPT_DIR:
        return ""
    good = newest_intact(path.parent.parent, exclude=[path])
    if good is None:
        return "; no intact checkpoint of this run is left"
    return f"; the newest intact checkpoint of this run is {good} (resume with --resume {good})"


# ----------------------------------------------------------------------------------------------
# a run directory: last + numbered, keep-k


def find_last(run_dir) -> Optional[Path]:
    """The checkpoint auto-resume continues from: `run_dir/checkpoints/last.safetensors`, or when it is missing the
    newest numbered checkpoint (a run is never silently restarted from scratch while its checkpoints exist)."""
    p = Path(run_dir) / CKPT_DIR / LAST
    if p.is_file():
        return p
    numbered = numbered_checkpoints(run_dir)
    return numbered[-1] if numbered else None


def numbered_checkpoints(run_dir) -> list:
    """Numbered checkpoints of a run, oldest first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / name) for name in os.listdir(d) if (m := _NUMBERED.match(name))]
    return [p for _, p in sorted(found)]


def save_run_checkpoint(run_dir, step: int, model, optimizer, state: dict, numbered: bool, keep_last: int = 3) -> Path:
    """Write `last` (and, if `numbered`, first `step_<step>`, then `last` as a copy of it); keep the newest `keep_last`
    numbered ones.

    Each file is replaced atomically, so a crash at any point leaves the previous `last` intact; old numbered files
    are pruned only after the new `last` is in place. A failed write (disk full, permissions) is a
    `CheckpointWriteError` naming the newest checkpoint still intact on disk.
    """
    d = Path(run_dir) / CKPT_DIR
    last = d / LAST
    try:
        if not numbered:
            return save_checkpoint(last, model, optimizer, state)
        target = save_checkpoint(d / f"step_{step:08d}.safetensors", model, optimizer, state)
        _copy_atomic(target, last)
    except OSError as e:
        good = newest_intact(run_dir)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint of this run is on disk yet"
        raise CheckpointWriteError(f"could not write a checkpoint in {d} at step {step}: {e.strerror or e}; {kept}") from None
    if keep_last > 0:
        for old in numbered_checkpoints(run_dir)[:-keep_last]:
            old.unlink()
    return last


def remove_stale_temps(run_dir) -> list:
    """Delete temp files left in `checkpoints/` by writes that were killed; call it while holding the run's lock."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    stale = [d / n for n in os.listdir(d) if _TEMP.match(n)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:  # `.last.safetensors.<random>.tmp`: what remove_stale_temps cleans up
        shutil.copyfile(src, tmp)


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
