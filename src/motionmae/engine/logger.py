"""Run logs: metrics to `metrics.jsonl` and TensorBoard in the run directory, and a stderr progress bar.

Both are no-ops on ranks other than 0 (`enabled=False`), so callers never branch on the rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from motionmae.progress import ProgressBar, _plain  # noqa: F401 (ProgressBar moved to motionmae.progress; imported from here too)


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
