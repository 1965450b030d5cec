"""Run logs: every logged row goes to each logger of `train.loggers` in the run directory.

A logger is a small object with `log(step, row)` and `close()`: `jsonl` appends to `metrics.jsonl`, `tensorboard`
writes `tb/`. `MetricLogger` fans a row out to them and is a no-op on ranks other than 0 (`enabled=False`), so
callers never branch on the rank. A run resumed from a checkpoint at step s first drops what an interrupted run
logged after s, so each log reads as one uninterrupted history. Another backend (wandb, mlflow) is one class
here, its entry in `LOGGERS` and its name in `config.LoggerName`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence


class JsonlLogger:
    """`{"step": s, **metrics}` lines appended to `run_dir/metrics.jsonl`."""

    def __init__(self, run_dir, resume_step: Optional[int]):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in a used directory starts a fresh log
        self._file = open(self.path, "a")

    def log(self, step: int, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """The finite numbers of each row as scalars in `run_dir/tb` (nothing when tensorboard is missing)."""

    def __init__(self, run_dir, resume_step: Optional[int]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but logging must never stop a run
            self._tb = None
            return
        purge = resume_step + 1 if resume_step is not None else None
        self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def log(self, step: int, row: dict) -> None:
        if self._tb is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


LOGGERS = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger}


class MetricLogger:
    """Logs a row to every logger named in `names` (see `LOGGERS`).

    `resume_step`: the step of the checkpoint a run continues from (None for a fresh run).
    """

    def __init__(self, run_dir, names: Sequence[str] = ("jsonl", "tensorboard"), enabled: bool = True,
                 resume_step: Optional[int] = None):
        self.loggers = [LOGGERS[n](run_dir, resume_step) for n in names] if enabled else []

    def log(self, step: int, metrics: dict, prefix: str = "") -> None:
        row = {"step": int(step)}
        row.update({prefix + k: _plain(v) for k, v in metrics.items()})
        for logger in self.loggers:
            logger.log(step, row)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


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
