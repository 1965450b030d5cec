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

from engine_helpers import TINY, session_members, tiny_videos


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


# ---------------------------------------------------------------------------------------------- odd videos


def _gray_video(path, frames=10, size=32):
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width = s.height = size
        s.pix_fmt = "gray"
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size), dtype=np.uint8), format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_odd_videos_are_trained_on_with_one_warning_naming_each(tmp_path):
    import warnings

    import numpy as np

    from motionmae.config import DataConfig
    from motionmae.data.datasets import build_dataset
    from motionmae.data.decode import write_video

    rng = np.random.default_rng(0)
    write_video(tmp_path / "one_frame.mp4", rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8))
    write_video(tmp_path / "small.mp4", rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8))
    _gray_video(tmp_path / "gray.mkv", size=64)
    write_video(tmp_path / "cut.mkv", rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8))  # matroska: opens when cut
    cut = (tmp_path / "cut.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(cut[: len(cut) // 2])
    write_video(tmp_path / "fine.mp4", rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8), pix_fmt="yuv444p")
    ds = build_dataset(DataConfig(train=str(tmp_path), num_frames=4, sampling_rate=2, input_size=32, num_workers=0),
                       "train", "pretrain")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for epoch in range(2):  # the second pass names nothing again
            ds.set_epoch(epoch)
            items = [ds[i] for i in range(len(ds))]
    assert all(it["video"].shape == (3, 4, 32, 32) and it["skipped"] == 0 for it in items)  # all trained on
    said = {Path(str(r.message).split(":", 1)[0]).name: str(r.message) for r in rec}
    assert len(rec) == 4 and set(said) == {"one_frame.mp4", "small.mp4", "gray.mkv", "cut.mkv"}
    assert "has 1 frame(s), fewer than a clip spans" in said["one_frame.mp4"]
    assert "is 16x16, smaller than data.input_size=32" in said["small.mp4"]
    assert "is grayscale (gray)" in said["gray.mkv"]
    assert "only its first" in said["cut.mkv"] and "frames decode" in said["cut.mkv"]


# ---------------------------------------------------------------------------------------------- corrupt data, resumed


def test_corrupt_data_same_run_with_any_worker_count_and_after_a_resume(tmp_path):
    """A quarter of the videos is unreadable. The uninterrupted run with 0 workers, the same run with 2 workers, and
    a run stopped mid-epoch by SIGTERM then resumed: the same losses and the same per-epoch skip counts, step by step."""
    from engine_helpers import metric_rows

    data = corrupt_set(tmp_path / "data", n_bad=3, n_good=9)
    over = [f"data.train={data}", *TINY, "train.batch_size=2", "train.max_steps=10", "train.save_every=100",
            "data.max_skip_fraction=0.6"]

    def rows(run):
        return [(r["step"], r["loss"], r["skipped_videos_epoch"]) for r in metric_rows(run)]

    for name, workers in (("w0", 0), ("w2", 2)):
        rc, err, _ = run_isolated(["pretrain", *over, f"data.num_workers={workers}", f"train.output_dir={tmp_path / name}"])
        assert rc == 0, err
    full = rows(tmp_path / "w0")
    assert [s for s, *_ in full] == list(range(1, 11)) and full[-1][2] > 0  # 5 steps an epoch; skips counted
    assert rows(tmp_path / "w2") == full

    run = tmp_path / "stopped"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable, "-m", "motionmae.cli", "pretrain", *over, "data.num_workers=0",
                          f"train.output_dir={run}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        if (run / "metrics.jsonl").exists() and any(r["step"] >= 2 for r in metric_rows(run)):
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.002)
    assert p.wait(timeout=60) == 143, "the run ended before it could be stopped"
    stopped_at = max(s for s, *_ in rows(run))
    assert stopped_at < 5  # inside the first epoch
    rc, err, _ = run_isolated(["pretrain", *over, "data.num_workers=0", f"train.output_dir={run}"])
    assert rc == 0, err
    assert rows(run) == full


def test_a_damaged_last_names_the_newest_intact_checkpoint_and_resuming_from_it_works(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=4, frames=10)
    run = tmp_path / "run"
    over = [f"data.train={data}", *TINY, "train.batch_size=2", "train.save_every=2", f"train.output_dir={run}"]
    rc, err, _ = run_isolated(["pretrain", *over, "train.max_steps=4"])
    assert rc == 0, err
    last, step4 = run / "checkpoints" / "last.safetensors", run / "checkpoints" / "step_00000004.safetensors"
    with open(last, "r+b") as f:  # one flipped byte in the first tensor's data
        f.seek(8 + int.from_bytes(f.read(8), "little") + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    rc, err, survivors = run_isolated(["pretrain", *over, "train.max_steps=6"])
    assert rc == 2 and "damaged: tensor" in err and f"the newest intact checkpoint of this run is {step4}" in err, err
    assert "Traceback" not in err and survivors == []
    rc, err, _ = run_isolated(["pretrain", *over, "train.max_steps=6", "--resume", step4])
    assert rc == 0, err


# ---------------------------------------------------------------------------------------------- one line per mistake

MISTAKES = [
    # (what, argv after `motionmae`, text the one line must hold)
    ("extract into a path that cannot exist", ["extract", "--checkpoint", "{run}", "--data", "{data}", "--out", "/proc/nope/f.npy"],
     "--out=/proc/nope/f.npy: cannot create its folder"),
    ("extract onto a folder", ["extract", "--checkpoint", "{run}", "--data", "{data}", "--out", "{tmp}"], "is a folder, expected a file name"),
    ("convert a text file", ["convert", "--from", "videomae", "--to", "motionmae", "{text}", "{tmp}/out1"], "not a readable PyTorch checkpoint"),
    ("convert a safetensors header of 1 TB", ["convert", "--from", "videomae", "--to", "motionmae", "{huge}", "{tmp}/out2"],
     "not a readable PyTorch checkpoint"),
    ("a glob under data.root that matches nothing", ["pretrain", "data.train=nope/*.mp4", "data.root={tmp}", *TINY,
                                                     "train.output_dir={tmp}/r"], "the glob matches no files (under data.root="),
    ("probe.k=0", ["probe", "--checkpoint", "{run}", "--train", "{data}", "--val", "{data}", "probe.k=0"], "probe.k=0 must be >= 1"),
    ("probe.temperature=0", ["probe", "--checkpoint", "{run}", "--train", "{data}", "--val", "{data}", "probe.temperature=0"],
     "probe.temperature=0.0 must be > 0"),
    ("extract.batch_size=0", ["extract", "--checkpoint", "{run}", "--data", "{data}", "--out", "{tmp}/f.npy", "extract.batch_size=0"],
     "extract.batch_size=0 must be >= 1"),
    ("vos.size below a patch", ["vos", "--checkpoint", "{run}", "--davis-root", "{tmp}", "vos.size=7"], "vos.size=7 is smaller than one patch"),
    ("mask.ratio=0", ["pretrain", "data.train={data}", *TINY, "mask.ratio=0", "train.output_dir={tmp}/r"], "masks no token of a time slice"),
    ("mask.ratio=0.01 with tube masks", ["pretrain", "data.train={data}", *TINY, "mask.ratio=0.01", "mask.kind=tube",
                                         "train.output_dir={tmp}/r"], "masks no token of a time slice"),
    ("a mask kind with a typo", ["pretrain", "data.train={data}", *TINY, "mask.kind=tubes", "train.output_dir={tmp}/r"],
     "did you mean 'tube'"),
    ("a preset that names itself", ["pretrain", "--config", "{selfref}", "data.train={data}"], "config recursion"),
    ("make-dataset onto a file", ["make-dataset", "--out", "{text}"], "--out {text}: is a file, expected a folder"),
    ("make-dataset where no folder can be made", ["make-dataset", "--out", "/proc/nope/d"], "cannot create the folder"),
    ("make-dataset with a negative count", ["make-dataset", "--out", "{tmp}/ds", "--num-train", "-5"],
     "--num-train and --num-val must be >= 1, got -5"),
    ("demo with a negative count", ["demo", "--out", "{tmp}/demo1", "--num-train", "-5"], "must be >= 1, got -5"),
    ("demo with a bad config value (before the dataset is written)", ["demo", "--out", "{tmp}/demo2", "mask.ratio=1.5"],
     "mask.ratio=1.5 must be in"),
]


@pytest.fixture(scope="module")
def mistake_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mistakes")
    data = tiny_videos(tmp / "videos", n=4, frames=10)
    rc, err, _ = run_isolated(["pretrain", f"data.train={data}", f"train.output_dir={tmp / 'run'}", *TINY,
                               "train.batch_size=2", "train.max_steps=1"])
    assert rc == 0, err
    (tmp / "text.pth").write_text("just text\n")
    (tmp / "huge.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    (tmp / "self.yaml").write_text("preset: self.yaml\n")
    return {"tmp": str(tmp), "run": str(tmp / "run"), "data": str(data), "text": str(tmp / "text.pth"),
            "huge": str(tmp / "huge.safetensors"), "selfref": str(tmp / "self.yaml")}


@pytest.mark.parametrize("what,argv,says", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_user_mistake_is_one_line_exit_2_naming_it(mistake_env, what, argv, says):
    rc, err, survivors = run_isolated([a.format(**mistake_env) for a in argv])
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"motionmae {argv[0]}: error:") and says.format(**mistake_env) in lines[0], err
    assert survivors == []
    if argv[0] == "demo":  # refused before any minute went into writing its dataset
        assert not list(Path(argv[2].format(**mistake_env)).glob("data/*/*.mp4"))


def test_a_killed_data_worker_ends_the_run_in_one_line_and_it_resumes(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=8, frames=10)
    run = tmp_path / "run"
    over = [f"data.train={data}", *TINY, "data.num_workers=2", "train.batch_size=2", "train.save_every=2",
            f"train.output_dir={run}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable, "-m", "motionmae.cli", "pretrain", *over, "train.max_steps=100000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.time() + 90
        while p.poll() is None and time.time() < deadline:  # a worker of a finished epoch may be gone already: repeat
            if (run / "checkpoints" / "last.safetensors").exists():
                for pid in session_members(p.pid):
                    if pid != p.pid:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("pretrain [")]  # not the progress lines
    assert p.returncode == 1 and "Traceback" not in err, err
    assert len(lines) == 1 and "a data-loading worker died" in lines[0] and "rerun the same command to resume" in lines[0]
    time.sleep(1)
    assert session_members(p.pid) == []
    rc, err, _ = run_isolated(["pretrain", *over, f"train.max_steps={max(4, _step_of(run) + 2)}"])
    assert rc == 0, err


def _step_of(run) -> int:
    from motionmae.runtime.checkpoint import read_state

    return int(read_state(run)["step"])


def test_a_full_disk_met_by_a_log_line_is_one_error_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    from motionmae import config as C
    from motionmae.engine.pretrain import pretrain
    from motionmae.errors import UserError
    from motionmae.runtime import logger as L

    data = tiny_videos(tmp_path / "ok", n=4, frames=10)
    cfg = C.load_config("", [*TINY, f"data.train={data}", f"train.output_dir={tmp_path / 'run'}", "train.batch_size=2",
                             "train.max_steps=6", "train.save_every=2"])
    real = L.MetricLogger.log

    def log(self, step, metrics, prefix=""):
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))
        return real(self, step, metrics, prefix)

    monkeypatch.setattr(L.MetricLogger, "log", log)
    with pytest.raises(UserError, match=r"could not write .*metrics.jsonl: No space left on device; the last good "
                                        r"checkpoint is ") as e:
        pretrain(cfg)
    from motionmae.runtime.checkpoint import read_state

    assert read_state(str(e.value).rsplit(" ", 1)[1])["step"] == 2


def test_the_long_fault_script_runs():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import faults

    assert faults.main(["--quick", "--cases", "twice"]) == 0


def test_a_rejected_config_leaves_the_run_directory_as_it_was(tmp_path):
    data = tiny_videos(tmp_path / "ok", n=4, frames=10)
    over = [f"data.train={data}", *TINY, "train.batch_size=2", "train.max_steps=2", f"train.output_dir={tmp_path / 'run'}"]
    rc, err, _ = run_isolated(["pretrain", *over])
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    rc, err, _ = run_isolated(["pretrain", *over, "mask.ratio=1.5"])
    assert rc == 2 and "mask.ratio=1.5" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
