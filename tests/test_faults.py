"""Fault injection, fast cases: every error path ends the run promptly, says one line, and leaves no process behind.

Each CLI case runs in a session of its own, so "no process left behind" is checked on the whole process tree
(DataLoader workers included) after the command returns.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_helpers import TINY, tiny_videos


def run_isolated(args, timeout=90, python_code=None):
    """Run `motionmae ARGS` (or `python -c CODE ARGS`) in a new session; returns (rc, stderr, survivors),
    survivors being the pids still in that session 2 s after the leader exited (they are then killed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-c", python_code] if python_code else [sys.executable, "-m", "motionmae.cli"]
    p = subprocess.Popen([*cmd, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"motionmae {' '.join(map(str, args))} still running after {timeout} s: it hangs")
    deadline = time.time() + 2
    while (survivors := session_members(p.pid)) and time.time() < deadline:
        time.sleep(0.1)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return p.returncode, err, survivors


def session_members(sid: int):
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid and (d / "stat").read_text().split()[2] != "Z":
                    pids.append(int(d.name))
            except (OSError, IndexError):
                pass
    return pids


def corrupt_set(folder, n_bad=6, n_good=4):
    tiny_videos(folder, n=n_bad + n_good, frames=10)
    for i, f in enumerate(sorted(Path(folder).glob("*.mp4"))[:n_bad]):
        f.write_bytes(os.urandom(1500))
    return folder


WORKERS = [*TINY, "data.num_workers=2", "train.batch_size=2", "train.max_steps=20"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the process tree")
def test_worker_error_ends_pretrain_promptly_and_reaps_workers(tmp_path):
    data = corrupt_set(tmp_path / "bad")
    rc, err, survivors = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={tmp_path / 'run'}", *WORKERS])
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.startswith("motionmae pretrain: error:")]
    assert len(lines) == 1 and "failed to decode" in lines[0] and "max_skip_fraction" in lines[0], err
    assert "Traceback" not in err
    assert survivors == []


# an exception in the main process while workers are busy (the atexit join used to wait on them forever)
FAIL_IN_STEP = """
import sys
from motionmae.models import pretrain as P
def boom(self, *a, **k):
    raise RuntimeError("injected failure in the training step")
P.PretrainModel.forward = boom
from motionmae.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the process tree")
def test_main_process_error_with_workers_running_does_not_hang(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=8, frames=10)
    rc, err, survivors = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={tmp_path / 'run'}", *WORKERS],
                                      python_code=FAIL_IN_STEP)
    assert rc == 1 and "injected failure in the training step" in err
    assert survivors == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the process tree")
def test_worker_error_in_extract_is_one_line(tmp_path):
    good = tiny_videos(tmp_path / "ok", n=4, frames=10)
    rc, err, _ = run_isolated(["pretrain", f"data.train={good}", f"train.output_dir={tmp_path / 'run'}", *TINY,
                               "train.batch_size=2", "train.max_steps=1"])
    assert rc == 0, err
    data = corrupt_set(tmp_path / "bad", n_bad=9, n_good=1)
    rc, err, survivors = run_isolated(["extract", "--checkpoint", tmp_path / "run", "--data", data, "--out", tmp_path / "f.npy",
                                       "data.num_workers=2", "extract.batch_size=2"])
    assert rc == 2, err
    assert "Traceback" not in err and "failed to decode" in err, err
    assert survivors == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_at_any_moment_is_one_line(tmp_path, delay):
    # SIGINT to the whole process group, as a terminal's Ctrl-C: during the imports, the dataset scan or training
    data = tiny_videos(tmp_path / "ok", n=8, frames=10)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable, "-m", "motionmae.cli", "pretrain", f"data.train={data}",
                          f"train.output_dir={tmp_path / 'run'}", *WORKERS, "train.max_steps=100000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    time.sleep(delay)
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("still running 60 s after Ctrl-C")
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "motionmae pretrain: interrupted", err
    time.sleep(1)
    assert session_members(p.pid) == []


# ---------------------------------------------------------------------------------------------- the run directory


def test_second_run_on_the_same_folder_refuses_and_the_first_is_untouched(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=8, frames=10)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    first = subprocess.Popen([sys.executable, "-m", "motionmae.cli", "pretrain", f"data.train={data}", f"train.output_dir={run}",
                              *TINY, "train.batch_size=2", "train.max_steps=100000", "train.save_every=5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (run / "metrics.jsonl").exists(), "the first run never started"
        rc, err, survivors = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={run}", *TINY,
                                           "train.batch_size=2", "train.max_steps=3", "train.seed=1"])
        assert rc == 2 and f"is in use by another run (pid {first.pid} on" in err, err
        assert "Traceback" not in err and survivors == []
        assert first.poll() is None  # still training
    finally:
        os.killpg(first.pid, signal.SIGTERM)  # preemption: saves `last`, exits 143
        first.communicate(timeout=60)
    assert first.returncode == 143
    # the first run's records are its own: one seed, steps counted once each
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_outputs_are_checked_before_any_step_and_stale_temps_removed(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=4, frames=10)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the checkpoints folder goes")
    rc, err, _ = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={run}", *TINY, "train.batch_size=2",
                               "train.max_steps=2"])
    assert rc == 2 and "its checkpoints folder" in err and "is a file, expected a folder" in err, err
    assert not (run / "metrics.jsonl").exists()  # refused before the first step
    (run / "checkpoints").unlink()
    (run / "checkpoints").mkdir()
    stale = run / "checkpoints" / ".last.safetensors.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    rc, err, _ = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={run}", *TINY, "train.batch_size=2",
                               "train.max_steps=2"])
    assert rc == 0, err
    assert not stale.exists() and (run / "checkpoints" / "last.safetensors").is_file()


def test_a_second_sigterm_ends_a_stuck_run_at_once(tmp_path):
    # the first SIGTERM asks for a save after the current step; if that step never ends, the second one ends the run
    code = """
import sys, time
from motionmae.models import pretrain as P
def stuck(self, *a, **k):
    print("stuck", flush=True)
    time.sleep(600)
P.PretrainModel.forward = stuck
from motionmae.cli import main
sys.exit(main(sys.argv[1:]))
"""
    data = tiny_videos(tmp_path / "ok", n=4, frames=10)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable, "-c", code, "pretrain", f"data.train={data}", f"train.output_dir={tmp_path / 'run'}",
                          *TINY, "train.batch_size=2", "train.max_steps=5"], stdout=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        for line in p.stdout:  # the run's start lines, then the step that never ends
            if line.startswith("stuck"):
                break
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # the first one only asks
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == -signal.SIGTERM
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
