"""The run directory's lock (one run per folder, stale locks never block) and the up-front output checks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from motionmae.errors import UserError
from motionmae.runtime.rundir import LOCK_NAME, RunLock, check_output_dir, check_output_file, checkpoint_bytes

HOLD = """
import sys, time
from motionmae.runtime.rundir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_run_on_a_folder_refuses_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"train.output_dir={tmp_path} is in use by another run \(pid {p.pid} on "
                                             rf"{socket.gethostname()}, started .*\)"):
            RunLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    # the holder was killed -9: its record is still in the file, but the lock died with it
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: an empty record


def test_forked_children_do_not_keep_the_lock(tmp_path):
    # DataLoader workers are forked: they outlive a killed run by seconds, and must not hold its lock meanwhile
    lock = RunLock(tmp_path).acquire()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the child lives on after the parent lets go
        os.write(w, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"x"  # the child runs (its copy of the lock file is made and, with the fix, closed)
        lock.release()
        with RunLock(tmp_path):  # free at once, though the child is alive
            assert os.waitpid(child, os.WNOHANG) == (0, 0)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(r)
        os.close(w)


def test_pid_record_decides_where_flock_is_missing(tmp_path, monkeypatch):
    import motionmae.runtime.rundir as R

    monkeypatch.setattr(R, "fcntl", None)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # no such pid
    RunLock(tmp_path).acquire().release()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(UserError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-node"}))
    with pytest.raises(UserError, match="on another-node"):
        RunLock(tmp_path).acquire()


def test_output_checks_name_the_key_path_and_reason(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UserError, match=rf"train.output_dir={f}: is a file, expected a folder"):
        check_output_dir(f, "train.output_dir")
    with pytest.raises(UserError, match=r"cannot create the folder"):
        check_output_dir(f / "sub", "train.output_dir")
    with pytest.raises(UserError, match=r"--out=.*: is a folder, expected a file name"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(UserError, match=r"MiB free, but writing a checkpoint needs about"):
        check_output_dir(tmp_path / "new", "train.output_dir", need_bytes=2**62)
    assert check_output_dir(tmp_path / "new", "train.output_dir", need_bytes=1).is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="cannot write in the folder"):
            check_output_dir(ro, "train.output_dir")


def test_checkpoint_size_estimate_matches_a_real_checkpoint(tmp_path):
    from motionmae.runtime import checkpoint as ck
    from motionmae.engine.optim import build_optimizer

    m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.LayerNorm(512), torch.nn.Linear(512, 10))
    opt = build_optimizer(m, lr=1e-3)
    m(torch.randn(2, 256)).sum().backward()
    opt.step()
    p = ck.save_checkpoint(tmp_path / "c.safetensors", m, opt, {"step": 1})
    est, real = checkpoint_bytes(m), os.path.getsize(p)
    assert 0.97 * real < est <= real  # the header and RNG states are the difference
