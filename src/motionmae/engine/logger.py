"""Run logs: metrics to `metrics.jsonl` and TensorBoard in the run directory, and a stderr progress bar.

Both are no-ops on ranks other than 0 (`enabled=False`), so callers never branch on the rank.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Optional


class MetricLogger:
    """Append `{"step": s, **metrics}` lines to `run_dir/metrics.jsonl` and the same scalars to TensorBoard.

    `resume_step`: when continuing a run from a checkpoint at that step, lines logged after it (by the
    run that was interrupted) are dropped from the JSONL and purged from TensorBoard, so the log reads
    as one uninterrupted history.
    """

    def __init__(self, run_dir, enabled: bool = True, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in a used directory starts a fresh log
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but logging must never stop a run
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = resume_step + 1 if resume_step is not None else None
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def log(self, step: int, metrics: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({prefix + k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir) -> list:
    """The rows of `run_dir/metrics.jsonl` (or of that file path) as dicts."""
    p = Path(run_dir)
    p = p / "metrics.jsonl" if p.is_dir() else p
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except ValueError:  # a line cut short by a kill
        return math.inf


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return v


class ProgressBar:
    """One stderr line, rewritten in place on a terminal (`\\r`); one line per update otherwise (log files).

    `update(step, loss=..., lr=..., ...)` shows `desc [bar] step/total  k=v ...  ETA`.
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True, stream=None, initial: int = 0):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0, self.step0 = time.perf_counter(), initial
        self._open = False

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = max(step - self.step0, 0)
        eta = elapsed / done * (self.total - step) if done else float("nan")
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        line = f"{self.desc} [{bar}] {step}/{self.total} {text} eta {_fmt_time(eta)}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def write(self, message: str) -> None:
        """Print a message without breaking the bar."""
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        self.stream.flush()


def _fmt(v) -> str:
    v = _plain(v)
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.4f}"
    return str(v)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
