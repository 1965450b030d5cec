"""Output files that teammates can read: written atomically, with the mode the user's umask gives a new file.

`tempfile.mkstemp` creates its file with mode 0600 whatever the umask, so a file written to a temp name and then
renamed into place (checkpoints, feature files, the probe cache) would stay private to its owner on a shared file
system. `atomic_path` gives such a temp file the mode `open()` would have given the final file (0666 & ~umask:
0644 under the usual umask 022, 0664 under 002), then renames it. It sits at the bottom layer (it imports nothing
of motionmae), so every layer writes files the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux /proc); else set and reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe for an instant, hence the /proc path first
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """The mode `mkdir` gives a new folder: 0777 minus the umask."""
    return 0o777 & ~current_umask()


def fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path) -> None:
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


@contextlib.contextmanager
def atomic_path(path):
    """`with atomic_path(p) as tmp:` write `tmp` (a hidden `.<name>.<random>.tmp` beside `p`); on success it is
    fsynced, given the umask's mode and renamed to `p` in one `os.replace`; on any error it is removed and `p` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text(path, text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj, indent: int = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_npy(path, array) -> Path:
    """`numpy.save` to exactly `path` (no `.npy` appended), atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


def folder_problem(p, name: str = "the folder") -> Optional[str]:
    """Why no file can be written in folder `p` (created if missing), or None."""
    p = Path(p)
    if p.exists() and not p.is_dir():
        return f"{name} is a file, expected a folder" if name != "the folder" else "is a file, expected a folder"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {name} ({e.strerror or e})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write in {name} ({e.strerror or e})"
    return None
