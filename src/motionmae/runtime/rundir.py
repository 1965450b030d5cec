"""A run directory before any work starts: one run at a time (an advisory lock), and outputs that can be written.

`RunLock(run_dir)` holds `run_dir/.lock` for the life of a run: a second run on the same folder refuses at once,
naming the holder's pid and host. The lock is `flock` on an open file, so it dies with its process: a lock
left by a killed run is stale by construction and never blocks. Forked children (DataLoader workers) close their
copy of the file at once: they would otherwise hold the lock for the seconds they outlive a killed run. On file systems without `flock` the file's
pid/host record decides (a dead pid on this host is stale; another host's record is trusted).

`check_output_dir` / `check_output_file` fail before the compute is spent, with the path and the reason: not a
folder, cannot be created, not writable, not enough free space for one checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from motionmae.errors import UserError
from motionmae.files import folder_problem

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # Windows: only the pid record
    fcntl = None

_HELD: set = set()  # the lock files this process holds open


def _close_held_in_child() -> None:
    # closing a copy drops the child's reference only; the parent's flock stays (no LOCK_UN here)
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """`with RunLock(dir):` or `acquire()` / `release()`. `where` names the config key in messages."""

    def __init__(self, run_dir, where: str = "train.output_dir"):
        self.dir, self.where = Path(run_dir), where
        self.path = self.dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        problem = folder_problem(self.dir, "the folder")
        if problem:
            raise UserError(f"{self.where}={self.dir}: {problem}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not self._lock(fd):
                raise UserError(f"{self.where}={self.dir} is in use by another run ({_describe(_read_record(self.path))}); "
                                f"wait for it to finish, stop it, or choose another {self.where}")
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_record()).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD.add(fd)
        return self

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        return not _record_is_live(_read_record(self.path))  # no flock here: the pid record decides

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # an empty record: nobody holds it (also where flock is missing)
            except OSError:
                pass
            _HELD.discard(self._fd)
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_record(path: Path) -> dict:
    try:
        d = json.loads(path.read_text() or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_is_live(rec: dict) -> bool:
    if not rec.get("pid"):
        return False
    if rec.get("host") != socket.gethostname():
        return True  # cannot see another host's processes: trust the record
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _describe(rec: dict) -> str:
    if not rec:
        return "holder unknown"
    return f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}, started {rec.get('started', '?')}"


# ----------------------------------------------------------------------------------------------
# outputs


def check_output_dir(path, where: str, need_bytes: int = 0) -> Path:
    """Create `path` if needed and make sure a file can be written in it (and `need_bytes` fit); else a UserError
    naming `where` (the config key or option), the path and the reason."""
    p = Path(path)
    problem = folder_problem(p, "the folder")
    if problem:
        raise UserError(f"{where}={path}: {problem}")
    if need_bytes > 0:
        free = shutil.disk_usage(p).free
        if free < need_bytes:
            raise UserError(f"{where}={path}: {free / 2**20:.0f} MiB free, but writing a checkpoint needs about "
                            f"{need_bytes / 2**20:.0f} MiB; free some space or choose another {where}")
    return p


def check_output_file(path, where: str) -> Path:
    """The file `path` can be created or replaced: not a folder itself, and its folder can be created and written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{where}={path}: is a folder, expected a file name")
    problem = folder_problem(p.parent, f"its folder {p.parent}")
    if problem:
        raise UserError(f"{where}={path}: {problem}")
    return p


def checkpoint_bytes(model, optimizer_slots: int = 2) -> int:
    """About how many bytes one training checkpoint of `model` takes: its state dict plus `optimizer_slots` fp32
    tensors per trainable parameter (AdamW's two moments)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad) * optimizer_slots
    return weights + moments
