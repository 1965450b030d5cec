"""Fault injection, the long cases: faults at random moments, repeated, against the real CLI in subprocesses.

tests/test_faults.py holds the fast cases (one of each, at a chosen moment); this script repeats the faults that
depend on timing, at moments drawn from a seed, and checks every time that nothing is lost:

- kill9:   SIGKILL at a random moment (during saves too: every step saves), then the same command again; the
           resumed run must end with exactly the losses and weights of an uninterrupted run, and no temp file left.
- sigterm: SIGTERM at a random moment: exit 143 with `last` saved at the current step; the rerun ends identically.
- disk:    a tmpfs too small for the run as train.output_dir (needs root to mount; skipped otherwise): refused up
           front when one checkpoint does not fit; when the disk fills mid-run (a filler file), one line naming the
           last good checkpoint, exit 2, that checkpoint intact and loadable.
- worker:  a DataLoader worker SIGKILLed at a random moment: one line, no process left, the rerun resumes.
- twice:   a second identical command on the same folder while the first runs: refused at once naming the first's
           pid; the first's metrics have every step once.
- readonly: train.output_dir on a read-only mount (root only): refused before the first step, in one line.

Every case also checks: no Python traceback, no process of the run left behind (a session of its own per run).

    python benchmarks/faults.py                       # 10 trials of each case (~10 min on 2 cores)
    python benchmarks/faults.py --trials 3 --cases kill9,sigterm
    python benchmarks/faults.py --update-docs         # the table into docs/RELIABILITY.md
    python benchmarks/faults.py --quick               # one trial each (seconds; the tests run it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "RELIABILITY.md"
MARKERS = ("<!-- faults.py:begin -->", "<!-- faults.py:end -->")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from common import markdown_table, replace_section  # noqa: E402
from engine_helpers import TINY, session_members, tiny_videos  # noqa: E402

STEPS = 12  # 8 videos, batch 2: 4 steps an epoch, 3 epochs


class Failed(Exception):
    pass


class Skipped(Exception):
    pass


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` for the block (root only: Skipped elsewhere), unmounted after."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        raise Skipped("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


# ----------------------------------------------------------------------------------------------
# running the CLI in a session of its own


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def start(args: List[str], stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "motionmae.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True, env=env(), start_new_session=True)


def finish(p: subprocess.Popen, timeout: float = 120) -> Tuple[int, str]:
    """Wait for `p`; then no process of its session may be left (2 s of grace)."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise Failed(f"still running after {timeout} s (a hang)")
    deadline = time.time() + 2
    while (left := session_members(p.pid)) and time.time() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    check(not left, f"processes left behind: {left}")
    check("Traceback" not in (err or ""), f"a traceback: {(err or '')[-400:]}")
    return p.returncode, err or ""


def run(args: List[str], timeout: float = 120) -> Tuple[int, str]:
    return finish(start(args), timeout)


def rows(run_dir: Path) -> List[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def losses(run_dir: Path) -> List[Tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rows(run_dir) if "loss" in r]


def weights(run_dir: Path) -> dict:
    from motionmae.runtime.checkpoint import load_model_state

    return load_model_state(run_dir)[0]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def temps(run_dir: Path) -> List[str]:
    d = run_dir / "checkpoints"
    return [n for n in os.listdir(d) if n.endswith(".tmp")] if d.is_dir() else []


def wait_for(cond: Callable[[], bool], p: subprocess.Popen, timeout: float = 90) -> bool:
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


# ----------------------------------------------------------------------------------------------
# the cases: each returns a short note, or raises Failed


class Bench:
    def __init__(self, work: Path, seed: int):
        self.work, self.rng = work, random.Random(seed)
        self.videos = tiny_videos(work / "videos", n=8, frames=10)
        self.reference: Optional[Path] = None

    def args(self, run_dir: Path, *more: str) -> List[str]:
        return ["pretrain", f"data.train={self.videos}", *TINY, "train.batch_size=2", f"train.max_steps={STEPS}",
                "train.save_every=1", "train.keep_last=2", f"train.output_dir={run_dir}", *more]

    def ref(self) -> Path:
        """The uninterrupted run every resumed one must equal."""
        if self.reference is None:
            self.reference = self.work / "reference"
            rc, err = run(self.args(self.reference))
            check(rc == 0, f"reference run failed: {err[-300:]}")
        return self.reference

    def _interrupt_then_finish(self, name: str, sig: int, want_rc: int) -> str:
        ref = self.ref()
        d = self.work / name
        for attempt in range(1, 6):  # a signal that lands after the last step tests nothing: again, at another moment
            at = self.rng.uniform(0.0, 1.0)  # fraction of the run's steps, then a random extra delay within a step
            p = start(self.args(d))
            wait_for(lambda: (d / "metrics.jsonl").exists() and len(rows(d)) >= int(at * STEPS), p)
            time.sleep(self.rng.uniform(0, 0.05))
            if p.poll() is None:
                os.killpg(p.pid, sig) if sig == signal.SIGKILL else os.kill(p.pid, sig)
            rc, err = finish(p)
            stopped = max((s for s, _ in losses(d)), default=0)
            if rc == 0 or (rc == -sig and stopped == STEPS):  # the run was over (or in its teardown)
                shutil.rmtree(d, ignore_errors=True)
                continue
            check(rc == want_rc, f"exit {rc}, expected {want_rc}: {err[-300:]}")
            note = f"stopped at step {stopped}" + (f" (attempt {attempt}: earlier ones finished first)" if attempt > 1 else "")
            break
        else:
            raise Failed("every attempt finished before the signal arrived: the fault was never injected")
        left = temps(d)
        rc, err = run(self.args(d))
        check(rc == 0, f"the rerun failed: {err[-300:]}")
        check(losses(d) == losses(ref), "the resumed run's losses differ from the uninterrupted run's")
        check(same_weights(d, ref), "the resumed run's weights differ from the uninterrupted run's")
        check(not temps(d), f"temp files left after the rerun: {temps(d)}")
        return note + (f", {len(left)} temp file(s) removed on restart" if left else "")

    def kill9(self, i: int) -> str:
        return self._interrupt_then_finish(f"kill9-{i}", signal.SIGKILL, -signal.SIGKILL)

    def sigterm(self, i: int) -> str:
        return self._interrupt_then_finish(f"sigterm-{i}", signal.SIGTERM, 143)

    def worker(self, i: int) -> str:
        d = self.work / f"worker-{i}"
        p = start(self.args(d, "data.num_workers=2", f"train.max_steps={10 * STEPS}"))
        wait_for(lambda: (d / "checkpoints" / "last.safetensors").exists(), p)
        time.sleep(self.rng.uniform(0, 0.5))
        while p.poll() is None:  # a worker of a finished epoch may be exiting already: until one in use is hit
            for pid in session_members(p.pid):
                if pid != p.pid:
                    os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.1)
        rc, err = finish(p)
        check(rc == 1 and "a data-loading worker died" in err, f"exit {rc}: {err[-300:]}")
        step = max(s for s, _ in losses(d))
        rc, err = run(self.args(d, "data.num_workers=2", f"train.max_steps={step + 2}"))
        check(rc == 0, f"the rerun failed: {err[-300:]}")
        return f"worker killed at step ~{step}; resumed"

    def twice(self, i: int) -> str:
        d = self.work / f"twice-{i}"
        first = start(self.args(d, f"train.max_steps={20 * STEPS}"))
        wait_for(lambda: (d / "metrics.jsonl").exists(), first)
        time.sleep(self.rng.uniform(0, 1.0))
        rc, err = run(self.args(d))
        check(rc == 2 and f"pid {first.pid}" in err, f"the second run was not refused: exit {rc}: {err[-300:]}")
        os.kill(first.pid, signal.SIGTERM)
        rc1, _ = finish(first)
        check(rc1 == 143, f"the first run ended with {rc1}")
        steps = [s for s, _ in losses(d)]
        check(steps == sorted(set(steps)), "duplicate or unordered steps in the first run's metrics")
        return f"refused; the first run kept {len(steps)} steps"

    def disk(self, i: int) -> str:
        with tmpfs(self.work / f"disk-{i}", "size=64m") as mnt:
            d = mnt / "run"
            p = start(self.args(d, f"train.max_steps={20 * STEPS}", "train.save_every=2", "train.keep_last=1"))
            wait_for(lambda: (d / "checkpoints" / "last.safetensors").exists(), p)
            time.sleep(self.rng.uniform(0, 0.5))
            with open(mnt / "filler", "wb") as f:  # another process fills the disk
                try:
                    while True:
                        f.write(b"\0" * 2**20)
                except OSError:
                    pass
            rc, err = finish(p)
            check(rc == 2 and "No space left on device; the last good checkpoint is" in err, f"exit {rc}: {err[-400:]}")
            good = err.split("the last good checkpoint is ", 1)[1].split()[0].rstrip(";")
            from motionmae.runtime.checkpoint import read_state, verify_checkpoint

            check(verify_checkpoint(good), f"the checkpoint named is not intact: {good}")
            (mnt / "filler").unlink()
            rc, err = run(self.args(d, f"train.max_steps={read_state(good)['step'] + 2}", "train.save_every=2",
                                    "train.keep_last=1"))
            check(rc == 0, f"the rerun after freeing space failed: {err[-300:]}")
            return f"stopped with the last good checkpoint at step {read_state(good)['step']}; resumed after freeing space"

    def readonly(self, i: int) -> str:
        with tmpfs(self.work / f"ro-{i}", "size=8m,ro") as mnt:
            t0 = time.time()
            rc, err = run(self.args(mnt / "run"))
            check(rc == 2 and "Read-only file system" in err and "train.output_dir=" in err, f"exit {rc}: {err[-300:]}")
            return f"refused in {time.time() - t0:.1f} s, before the first step"


CASES = ("kill9", "sigterm", "worker", "twice", "disk", "readonly")
WHAT = {
    "kill9": "SIGKILL at a random moment (saves included), rerun",
    "sigterm": "SIGTERM at a random moment, rerun",
    "worker": "a DataLoader worker SIGKILLed mid-epoch, rerun",
    "twice": "a second run on the same folder while the first runs",
    "disk": "the disk fills mid-run (tmpfs + filler file), free space, rerun",
    "readonly": "train.output_dir on a read-only mount",
}
CHECKS = {
    "kill9": "resumed losses and weights equal the uninterrupted run's; no temp file left; no process left",
    "sigterm": "exit 143; resumed losses and weights equal the uninterrupted run's; no process left",
    "worker": "one line, exit 1; no process left; the rerun resumes",
    "twice": "the second refused at once (exit 2, names the first's pid); the first's steps each logged once",
    "disk": "one line, exit 2, naming the last good checkpoint; it verifies; the rerun resumes",
    "readonly": "one line, exit 2, naming the key and the reason, before any training step",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one trial of each case")
    ap.add_argument("--update-docs", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args(argv)
    trials = 1 if a.quick else a.trials
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; valid: {', '.join(CASES)}")
    work = Path(tempfile.mkdtemp(prefix="motionmae-faults-"))
    results: Dict[str, List[Tuple[str, str]]] = {c: [] for c in cases}
    t0 = time.time()
    try:
        bench = Bench(work, a.seed)
        for c in cases:
            for i in range(trials):
                try:
                    note = getattr(bench, c)(i)
                    results[c].append(("passed", note))
                except Skipped as e:
                    results[c].append(("skipped", str(e)))
                    break
                except Failed as e:
                    results[c].append(("FAILED", str(e)))
                print(f"{c} #{i}: {results[c][-1][0]}: {results[c][-1][1]}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(["case", "what", "checked every time", "tried", "passed", "notes"], [
        [c, WHAT[c], CHECKS[c], sum(r != "skipped" for r, _ in results[c]), sum(r == "passed" for r, _ in results[c]),
         "; ".join(sorted({" ".join(n.split())[:160] for r, n in results[c] if r != "passed"})) or "-"] for c in cases])
    print(table)
    print(f"{time.time() - t0:.0f} s")
    if a.update_docs:
        cmd = f"python benchmarks/faults.py --trials {trials} --seed {a.seed}" + (f" --cases {a.cases}" if a.cases != ",".join(CASES) else "")
        replace_section(DOCS, *MARKERS, f"`{cmd}` ({time.time() - t0:.0f} s):\n\n{table}", title="Reliability")
    return 0 if all(r != "FAILED" for v in results.values() for r, _ in v) else 1


if __name__ == "__main__":
    sys.exit(main())
