"""Run logs: every logged row, and every picture, goes to each logger of `train.loggers`.

A logger is a small object with `log(step, row)`, `log_image(step, name, path)` and `close()`:
- `jsonl` appends rows to `metrics.jsonl` (numbers only: pictures are files in the run directory already);
- `tensorboard` writes `tb/` (scalars and images);
- `wandb` (Weights & Biases) and `mlflow`: optional imports (`pip install wandb` / `pip install mlflow-skinny`, or the
  package's extras `motionmae[wandb]`, `motionmae[mlflow]`); naming one that is not installed is one error before
  the run starts. They follow their own environment variables (WANDB_MODE=offline, WANDB_PROJECT, WANDB_ENTITY;
  MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME) and log the resolved config once. A resumed run continues the same
  W&B / MLflow run (its id is kept in the run directory: `wandb_run_id`, `mlflow_run_id`).
`MetricLogger` fans a row out to them and is a no-op on ranks other than 0 (`enabled=False`), so callers never branch
on the rank. A run resumed from a checkpoint at step s first drops what an interrupted run logged after s from
`metrics.jsonl` and `tb/`, so each reads as one uninterrupted history (W&B and MLflow keep such rows: they offer no
rewind on an ordinary run). Another backend is one class here, its entry in `LOGGERS` and its name in
`config.LoggerName`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Optional, Sequence


class JsonlLogger:
    """`{"step": s, **metrics}` lines appended to `run_dir/metrics.jsonl`."""

    def __init__(self, run_dir, resume_step: Optional[int], config: Optional[dict] = None):
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

    def log_image(self, step: int, name: str, path) -> None:
        pass  # rows hold numbers; the picture is a file of the run already

    def close(self) -> None:
        self._file.close()


def _quiet_writer_thread_errors() -> None:
    """tensorboard's writer thread re-raises its I/O error (a full disk) only to have it printed; the same error
    reaches the run at its next write or close (`_check_worker_status`), where it becomes one line. The raw
    traceback from the thread would be a second, noisy report of it: that one is not printed."""
    previous = threading.excepthook
    if getattr(previous, "motionmae_quiet", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.motionmae_quiet = True
    threading.excepthook = hook


class TensorBoardLogger:
    """The finite numbers of each row as scalars in `run_dir/tb`, pictures as images (nothing when tensorboard is
    missing)."""

    def __init__(self, run_dir, resume_step: Optional[int], config: Optional[dict] = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but logging must never stop a run
            self._tb = None
            return
        purge = resume_step + 1 if resume_step is not None else None
        self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)
        _quiet_writer_thread_errors()

    def log(self, step: int, row: dict) -> None:
        if self._tb is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def log_image(self, step: int, name: str, path) -> None:
        if self._tb is not None:
            self._tb.add_image(name, _read_rgb(path), step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class WandbLogger:
    """A Weights & Biases run (files under `run_dir/wandb`), named after the run directory; rows as history, pictures
    as `wandb.Image`. WANDB_MODE=offline keeps everything local (`wandb sync` uploads it later)."""

    def __init__(self, run_dir, resume_step: Optional[int], config: Optional[dict] = None):
        import wandb  # installed: `TrainConfig.check` says so before a run starts

        self._wandb = wandb
        run_dir = Path(run_dir)
        run_id = _run_id(run_dir / "wandb_run_id", resume_step, lambda: secrets.token_hex(4))
        self.run = wandb.init(dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "motionmae"), name=run_dir.resolve().name,
                              id=run_id, resume="allow", config=config or {})

    def log(self, step: int, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and _is_number(v)}, step=step)

    def log_image(self, step: int, name: str, path) -> None:
        self.run.log({name: self._wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run in experiment MLFLOW_EXPERIMENT_NAME (default 'motionmae') of the tracking store
    MLFLOW_TRACKING_URI (MLflow's default otherwise), named after the run directory: the config flattened into
    params, rows as metrics, pictures as artifacts under `pictures/`."""

    def __init__(self, run_dir, resume_step: Optional[int], config: Optional[dict] = None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "motionmae")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        run_dir = Path(run_dir)
        id_file = run_dir / "mlflow_run_id"
        old = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else ""
        if old:
            self.run_id = old
            self.client.update_run(old, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_dir.resolve().name).info.run_id
            id_file.write_text(self.run_id + "\n")
            params = [Param(k, str(v)[:6000]) for k, v in _flatten(config or {}).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "step" and _is_number(v) and math.isfinite(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, step: int, name: str, path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=f"pictures/{name}")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


LOGGERS = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


class MetricLogger:
    """Logs a row to every logger named in `names` (see `LOGGERS`).

    `resume_step`: the step of the checkpoint a run continues from (None for a fresh run).
    """

    def __init__(self, run_dir, names: Sequence[str] = ("jsonl", "tensorboard"), enabled: bool = True,
                 resume_step: Optional[int] = None, config: Optional[dict] = None):
        self.loggers = []
        try:
            for n in names if enabled else ():
                self.loggers.append(LOGGERS[n](run_dir, resume_step, config))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: dict, prefix: str = "") -> None:
        row = {"step": int(step)}
        row.update({prefix + k: _plain(v) for k, v in metrics.items()})
        for logger in self.loggers:
            logger.log(step, row)

    def log_image(self, step: int, name: str, path) -> None:
        """A picture (a PNG file) to every logger that shows pictures."""
        for logger in self.loggers:
            logger.log_image(step, name, path)

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


def _run_id(path: Path, resume_step: Optional[int], new) -> str:
    """The id of the external run: the one kept in `path` when resuming, else a new one (written there)."""
    if resume_step is not None and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    rid = new()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rid + "\n")
    return rid


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_rgb(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
