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
import inspect
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
from motionmae.files import atomic_path, fsync_dir
from motionmae.models.state import load_matching
from motionmae.runtime.distributed import all_reduce_sum, barrier, on_main_then_share
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
    tensors: dict = {}
    meta: dict = {"state": state or {}}
    if model is not None:
        for k, v in unwrap_model(model).state_dict().items():
            tensors["model." + k] = v.detach().to("cpu").contiguous()
    if optimizer is not None:
        opt_t, meta["optimizer"] = _optimizer_to_flat(optimizer.state_dict())
        tensors.update(opt_t)
    if rng:
        rng_t, meta["rng"] = rng_snapshot()
        tensors.update(rng_t)
    return write_checkpoint_file(path, tensors, meta)


def rng_snapshot() -> Tuple[dict, dict]:
    """The global generators now: ({"rng.torch", "rng.cuda.<i>": state tensors}, {"python", "numpy": JSON})."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    return tensors, {"python": _to_json(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def write_checkpoint_file(path, tensors: dict, meta: dict) -> Path:
    """One checkpoint file (format of the module docstring) from its tensors and JSON metadata, written atomically,
    with the CRC-32 of every tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _unshare(tensors)
    meta = {**meta, "format_version": FORMAT_VERSION, "crc32": {k: tensor_crc32(v) for k, v in tensors.items()}}
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
        _restore_rng(tensors, meta)
    return meta.get("state", {})


def _restore_rng(tensors: dict, meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "rng" in meta:
        random.setstate(_from_json(meta["rng"]["python"]))
        n = meta["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


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
    """The JSON `state` of a checkpoint, without reading any tensor (of a sharded one: rank 0's, unchecked)."""
    path = resolve_checkpoint(path)
    if is_sharded(path):
        path = path / RANK_FILE.format(0)
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
    if is_sharded(p):
        return p
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
    if is_sharded(path):
        return _read_sharded(path, keep)
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
    candidates = [d / LAST, *reversed(numbered_checkpoints(run_dir)), *reversed(sharded_checkpoints(run_dir))]
    excluded = {Path(p).resolve() for p in exclude}
    for p in candidates:
        if p.exists() and p.resolve() not in excluded and verify_checkpoint(p):
            return p
    return None


def _intact_hint(path: Path) -> str:
    """For a checkpoint inside a run's checkpoints/ folder: where an intact checkpoint is, if any."""
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
    newest numbered checkpoint, or else the newest sharded one (a run is never silently restarted from scratch while
    its checkpoints exist)."""
    p = Path(run_dir) / CKPT_DIR / LAST
    if p.is_file():
        return p
    numbered = numbered_checkpoints(run_dir) or sharded_checkpoints(run_dir)
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
        if p.is_dir():  # a sharded checkpoint that was being written
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:  # `.last.safetensors.<random>.tmp`: what remove_stale_temps cleans up
        shutil.copyfile(src, tmp)


class Checkpointer:
    """A training run's checkpoints (`run_dir/checkpoints`): the one seam through which the engine saves and
    restores the whole training state (model, optimiser, RNG, JSON state). Rank 0 writes a file, every rank
    waits for it; a sharded format (torch.distributed.checkpoint, each rank writing its shard) replaces this class."""

    def __init__(self, run_dir, keep_last: int = 3, is_main: bool = True, world_size: int = 1):
        self.run_dir, self.keep_last, self.is_main, self.world = Path(run_dir), keep_last, is_main, world_size

    def resume_path(self, resume: str) -> Optional[Path]:
        """'auto': the run's `last` if there is one; 'none' (or '', 'no', 'false'): a fresh run; else a file or run dir."""
        if resume in ("", "none", "no", "false"):
            return None
        if resume == "auto":
            return find_last(self.run_dir)
        return resolve_checkpoint(resume)

    def load(self, path, model, optimizer=None, restore_rng: bool = False) -> dict:
        """Into `model` / `optimizer`; `restore_rng`: the global generators too, where that is exact (one file holds
        one process's: a single-process run)."""
        return load_checkpoint(path, model, optimizer, restore_rng=restore_rng and self.world == 1)

    def save(self, step: int, model, optimizer, state: dict, numbered: bool) -> Path:
        """`last` (and `step_<step>` when `numbered`); returns the path of `last` on every rank."""
        if self.is_main:
            save_run_checkpoint(self.run_dir, step, model, optimizer, state, numbered=numbered, keep_last=self.keep_last)
        barrier()
        return self.run_dir / CKPT_DIR / LAST

    def poll(self) -> None:
        """Complete a checkpoint written in the background once it is (none here: every save is finished when it
        returns). Every rank calls it after each step."""

    def close(self) -> None:
        """Wait for a checkpoint still being written (none here)."""


# ----------------------------------------------------------------------------------------------
# sharded checkpoints (train.parallel=fsdp): torch.distributed.checkpoint
#
# A sharded checkpoint is a folder `checkpoints/step_<step>` (every save_every steps; the newest keep_last kept) or
# `checkpoints/last_<step>` (the end of a run, SIGTERM; replaced by the next save), written as `.<name>.tmp` and
# renamed when complete, so a folder with one of these names is never half written. It holds:
# - torch.distributed.checkpoint's files (`.metadata`, `__<rank>_<i>.distcp`): tensors `model.<name>` and
#   `optimizer.<parameter name>.<key>`, each rank writing its shards (any number of ranks reads them back);
# - `rank_<r>.safetensors` per rank, in this module's single-file format (no model tensors): that rank's generator
#   states, the JSON `state`, the optimiser's param groups (parameter names) and scalars, and the CRC-32 of the
#   folder's files (each rank checksums a share), verified before anything is read.
# Resume is exact (each rank's generators too) with the same number of ranks; `convert --consolidate` (`consolidate`)
# turns one into the usual single file, which keeps its CRC-32s. Note: torch.distributed.checkpoint's `.metadata` is
# a pickle; it is read only after its checksum matched, so only load sharded checkpoints you trust.

_SHARDED = re.compile(r"^(step|last)_(\d+)$")
RANK_FILE = "rank_{:05d}.safetensors"


def is_sharded(path) -> bool:
    """A sharded checkpoint folder (by its name `step_<n>` / `last_<n>`, or its rank file)."""
    p = Path(path)
    return p.is_dir() and (bool(_SHARDED.match(p.name)) or (p / RANK_FILE.format(0)).is_file())


def sharded_checkpoints(run_dir) -> list:
    """A run's sharded checkpoints, oldest first (at one step, `last_` before `step_`)."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(2)), m.group(1) == "step", d / name) for name in os.listdir(d)
             if (m := _SHARDED.match(name)) and (d / name).is_dir()]
    return [p for *_, p in sorted(found)]


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _verify_sharded(path: Path) -> dict:
    """Every file of a sharded checkpoint against the CRC-32s its rank files recorded; rank 0's metadata."""
    rank0 = path / RANK_FILE.format(0)
    if not rank0.is_file():
        raise CorruptCheckpointError(f"{path}: not a complete sharded checkpoint (no {rank0.name})")
    meta, _ = _read_verified(rank0, "cpu", lambda k: False)
    world = int(meta.get("world_size", 1))
    crcs: dict = {}
    for r in range(world):
        f = path / RANK_FILE.format(r)
        if not f.is_file():
            raise CorruptCheckpointError(f"{path}: incomplete: {f.name} of {world} ranks is missing")
        crcs.update(_read_verified(f, "cpu", lambda k: False)[0].get("files", {}))
    if ".metadata" not in crcs:
        raise CorruptCheckpointError(f"{path}: incomplete: no checksum of torch.distributed.checkpoint's .metadata")
    for name, crc in sorted(crcs.items()):
        f = path / name
        if not f.is_file():
            raise CorruptCheckpointError(f"{path}: incomplete: {name} is missing")
        if _file_crc32(f) != crc:
            raise CorruptCheckpointError(f"{path}: damaged: {name} does not match the checksum it was written with")
    return meta


def _dcp():
    import torch.distributed.checkpoint as dcp

    return dcp


def _read_sharded(path: Path, keep) -> Tuple[dict, dict]:
    """(metadata, full tensors whose names pass `keep`) of a sharded checkpoint, read in this process alone, in the
    single-file layout: optimiser tensors renumbered `optimizer.<i>.<key>` as `optimizer.state_dict()` numbers them."""
    dcp = _dcp()
    meta = _verify_sharded(path)
    _, rng = _read_verified(path / RANK_FILE.format(0), "cpu", lambda k: k.startswith("rng."))
    index = _param_index(meta["optimizer"]["param_groups"]) if "optimizer" in meta else {}

    def flat_name(key: str) -> str:  # `optimizer.<name>.<key>` -> `optimizer.<i>.<key>`
        if not key.startswith("optimizer."):
            return key
        name, k = key[len("optimizer.") :].rsplit(".", 1)
        return f"optimizer.{index[name]}.{k}"

    try:
        stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        want = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in stored.items()
                if keep(flat_name(k)) and isinstance(m, dcp.TensorStorageMetadata)}
        if want:
            _load_here(want, path)
    except Exception as e:
        raise CorruptCheckpointError(f"{path}: not a readable sharded checkpoint ({_short(e)})") from None
    tensors = {flat_name(k): v for k, v in want.items()}
    tensors.update({k: v for k, v in rng.items() if keep(k)})
    if "optimizer" in meta:
        meta = {**meta, "optimizer": _numbered_groups(meta["optimizer"])}
    return meta, tensors


def _load_here(state_dict: dict, path: Path) -> None:
    """torch.distributed.checkpoint.load in this process alone, whether or not it belongs to a process group."""
    dcp = _dcp()
    if "no_dist" in inspect.signature(dcp.load).parameters:
        dcp.load(state_dict, checkpoint_id=str(path), no_dist=True)
    else:  # older torch: reading commands run without a process group
        dcp.load(state_dict, checkpoint_id=str(path))


def _param_index(groups: list) -> dict:
    """{parameter name: i}, i counting the params of the groups in order (as `optimizer.state_dict()` does)."""
    return {name: i for i, name in enumerate(n for g in groups for n in g["params"])}


def _numbered_groups(opt: dict) -> dict:
    """Optimiser metadata with parameter names -> with numbers (the single-file layout)."""
    index = _param_index(opt["param_groups"])
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in opt["param_groups"]]
    scalars = {f"{index[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in opt.get("scalars", {}).items()}
    return {"param_groups": groups, "scalars": scalars}


def _sharded_model(model) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def _state_dicts(model, optimizer):
    """(model state dict, optimiser state dict keyed by parameter name) as torch.distributed.checkpoint.state_dict
    gives them: this rank's shards under FSDP, plain tensors otherwise."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return get_model_state_dict(model), None
    return get_state_dict(model, optimizer)


def _flatten(msd: dict, osd: Optional[dict]) -> Tuple[dict, dict]:
    """The tensors to store (`model.<name>`, `optimizer.<parameter name>.<key>`) and the optimiser's JSON part."""
    flat = {"model." + k: v for k, v in msd.items()}
    if osd is None:
        return flat, {}
    scalars = {}
    for name, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                flat[f"optimizer.{name}.{k}"] = v
            else:
                scalars[f"{name}.{k}"] = v
    return flat, {"param_groups": _to_json(osd["param_groups"]), "scalars": scalars}


def _load_sharded_into(path: Path, model, optimizer, world: int, rank: int) -> dict:
    """Every rank reads its own shards of a sharded checkpoint into `model` / `optimizer` (sharded or not)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    dcp = _dcp()
    on_main_then_share(lambda: _read(path, "cpu", lambda k: False))  # rank 0 checks every file; each rank then reads
    meta, _ = _read_verified(path / RANK_FILE.format(0), "cpu", lambda k: False)
    msd, osd = _state_dicts(model, optimizer)
    flat, _ = _flatten(msd, osd)
    stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    want_model = {k for k in flat if k.startswith("model.")}
    have_model = {k for k in stored if k.startswith("model.")}
    if want_model != have_model:
        missing, unexpected = sorted(want_model - have_model), sorted(have_model - want_model)
        raise UserError(f"{path}: does not match the model: missing keys {[k[6:] for k in missing][:5]}, unexpected keys "
                        f"{[k[6:] for k in unexpected][:5]}")
    if optimizer is not None and "optimizer" not in meta:
        raise UserError(f"{path}: checkpoint has no optimiser state (a weights-only file); cannot resume training from it")
    try:
        dcp.load(flat, checkpoint_id=str(path))
    except Exception as e:
        raise UserError(f"{path}: cannot load the sharded checkpoint into this model ({_short(e)})") from None
    if optimizer is not None:
        state: dict = {}
        for name, st in osd["state"].items():
            state[name] = {k: flat[f"optimizer.{name}.{k}"] if torch.is_tensor(v) else meta["optimizer"]["scalars"][f"{name}.{k}"]
                           for k, v in st.items()}
        groups = [{k: (tuple(v) if isinstance(v, list) and k not in ("params", "param_names") else v) for k, v in g.items()}
                  for g in meta["optimizer"]["param_groups"]]
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict={"state": state, "param_groups": groups})
    return meta


def _load_file_into_sharded(path: Path, model, optimizer) -> dict:
    """A single-file checkpoint into an FSDP-sharded model / optimiser: every rank reads the full tensors and keeps
    its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    meta, tensors = _read(path, "cpu")
    msd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_finite(msd, path)
    osd = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise UserError(f"{path}: checkpoint has no optimiser state (a weights-only file); cannot resume training from it")
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        flat = _optimizer_from_flat(tensors, meta["optimizer"])
        osd = {"state": {order[i]: st for i, st in flat["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in flat["param_groups"]]}
    options = StateDictOptions(full_state_dict=True, strict=True)
    try:
        if optimizer is None:
            set_model_state_dict(model, msd, options=options)
        else:
            set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=options)
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path}: does not match the model ({_short(e)})") from None
    return meta


class ShardedCheckpointer(Checkpointer):
    """`Checkpointer` for FSDP runs (train.parallel=fsdp): every rank writes its own shards with
    torch.distributed.checkpoint (see the comment above for the layout). `async_save`: the tensors are written in
    the background while training goes on (torch's `async_save`); the folder is completed (checksums, rename) at the
    next save or `close()`. Reads single files too (a run continued with FSDP)."""

    def __init__(self, run_dir, keep_last: int = 3, is_main: bool = True, world_size: int = 1, rank: int = 0,
                 async_save: bool = False):
        super().__init__(run_dir, keep_last, is_main, world_size)
        self.rank, self.async_save = rank, async_save
        self._gloo = None
        self.pending = None  # (future, temp folder, final folder, rank file tensors, rank file metadata)

    def resume_path(self, resume: str) -> Optional[Path]:
        if resume == "auto":
            found = sharded_checkpoints(self.run_dir)
            return found[-1] if found else find_last(self.run_dir)
        return super().resume_path(resume)

    def load(self, path, model, optimizer=None, restore_rng: bool = False) -> dict:
        """Into `model` / `optimizer` (FSDP-sharded, or plain in a single process); `restore_rng`: this rank's
        generators, when the checkpoint was written by as many ranks."""
        path = Path(path)
        if not is_sharded(path):
            if _sharded_model(model):
                return _load_file_into_sharded(path, model, optimizer).get("state", {})
            return load_checkpoint(path, model, optimizer, restore_rng=restore_rng and self.world == 1)
        meta = _load_sharded_into(path, model, optimizer, self.world, self.rank)
        if restore_rng and int(meta.get("world_size", 1)) == self.world:
            rng_meta, rng = _read_verified(path / RANK_FILE.format(self.rank), "cpu", lambda k: k.startswith("rng."))
            _restore_rng(rng, rng_meta)
        return meta.get("state", {})

    def save(self, step: int, model, optimizer, state: dict, numbered: bool) -> Path:
        """`step_<step>` when `numbered`, else `last_<step>`; returns its path (being written until the next save or
        `close()` with async_save)."""
        self.close()
        d = self.run_dir / CKPT_DIR
        final = d / f"{'step' if numbered else 'last'}_{step:08d}"
        tmp = d / f".{final.name}.tmp"
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        msd, osd = _state_dicts(model, optimizer)
        flat, opt_meta = _flatten(msd, osd)
        rng_t, rng_meta = rng_snapshot()  # now, not when the files are complete
        meta = {"state": state, "rng": rng_meta, "world_size": self.world, "rank": self.rank}
        if self.rank == 0 and opt_meta:
            meta["optimizer"] = opt_meta
        dcp = _dcp()
        try:
            if self.async_save and self.world > 1:
                future = dcp.async_save(flat, checkpoint_id=str(tmp), process_group=self._cpu_group())
            else:
                dcp.save(flat, checkpoint_id=str(tmp))
                future = None
        except OSError as e:
            raise CheckpointWriteError(f"could not write a checkpoint in {d} at step {step}: {e.strerror or e}") from None
        self.pending = (future, tmp, final, rng_t, meta)
        if future is None:
            self.close()
        return final

    def poll(self) -> None:
        if self.pending is None or self.pending[0] is None:
            return
        done = torch.tensor([float(self.pending[0].done())])
        if float(all_reduce_sum(done)) == self.world:  # every rank's part is written
            self.close()

    def _cpu_group(self):
        """async_save's collectives run on a CPU (gloo) group of their own: in the background, they must not meet
        the training step's collectives on the default group."""
        import torch.distributed as dist

        if self._gloo is None:
            self._gloo = dist.new_group(backend="gloo")
        return self._gloo

    def close(self) -> None:
        if self.pending is None:
            return
        future, tmp, final, rng_t, meta = self.pending
        self.pending = None
        if future is not None:
            future.result()
        barrier()  # every rank's files are in place
        files = sorted(n for n in os.listdir(tmp) if not (n.startswith("rank_") or _TEMP.match(n)))  # not the rank files
        meta["files"] = {n: _file_crc32(tmp / n) for n in files[self.rank :: self.world]}
        write_checkpoint_file(tmp / RANK_FILE.format(self.rank), rng_t, meta)
        barrier()
        if self.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            self._prune(final)
        barrier()

    def _prune(self, newest: Path) -> None:
        """Keep `newest` and the newest `keep_last` numbered ones (0: all); `last_` folders only until a newer save."""
        found = [p for p in sharded_checkpoints(self.run_dir) if p != newest]
        numbered = [p for p in found if p.name.startswith("step_")]
        keep = set(numbered[-self.keep_last :]) if self.keep_last > 0 else set(numbered)
        for p in found:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)


def consolidate(src, dst) -> Path:
    """A sharded checkpoint (its folder, or a run directory's newest) as the usual single file at `dst`: model and
    optimiser tensors in full, rank 0's generators, the JSON state; every tensor's CRC-32 recorded anew."""
    p = Path(src)
    if not is_sharded(p):
        found = sharded_checkpoints(p)
        if not found:
            raise UserError(f"{src}: no sharded checkpoint (a folder checkpoints/step_<n> written with train.parallel=fsdp)")
        p = found[-1]
    meta, tensors = _read(p, "cpu")
    meta = {k: v for k, v in meta.items() if k in ("state", "optimizer", "rng")}
    return write_checkpoint_file(dst, tensors, meta)


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
