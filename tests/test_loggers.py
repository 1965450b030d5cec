"""train.loggers: every row and every picture reaches each logger. W&B and MLflow are optional packages: their offline
modes are tested where they are installed (WANDB_MODE=offline; an MLflow file store under tmp), skipped otherwise;
naming one that is absent is one clear error before anything runs."""

import subprocess
import sys

import pytest

from engine_helpers import TINY, tiny_videos
from motionmae import config as C
from motionmae.cli import main as cli_main
from motionmae.engine.pretrain import pretrain
from motionmae.errors import UserError
from motionmae.runtime.logger import read_metrics


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return tiny_videos(tmp_path_factory.mktemp("videos"), n=4)


def _cfg(videos, out, loggers):
    return C.load_config("", [*TINY, f"data.train={videos}", f"train.output_dir={out}", "train.batch_size=2",
                              "train.max_steps=2", "train.viz_every=0", f"train.loggers=[{','.join(loggers)}]"])


def test_tensorboard_gets_scalars_and_pictures(videos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pretrain(_cfg(videos, tmp_path, ["jsonl", "tensorboard"]))
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in read_metrics(tmp_path)])
    (img,) = acc.Images("reconstruction")
    assert img.step == 2 and img.width > 0


def test_an_optional_logger_that_is_not_installed_is_one_error(monkeypatch, videos, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, as on a machine without it
    with pytest.raises(UserError, match=r"train.loggers: 'wandb' is not installed: pip install wandb"):
        _cfg(videos, tmp_path, ["jsonl", "wandb"])
    assert cli_main(["pretrain", *TINY, f"data.train={videos}", f"train.output_dir={tmp_path}", "train.loggers=[wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0] and not (tmp_path / "checkpoints").exists()


def test_wandb_offline_and_mlflow_file_store(videos, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for such uses behind this flag
    run = tmp_path / "run"
    pretrain(_cfg(videos, run, ["jsonl", "wandb", "mlflow"]))
    rows = read_metrics(run)

    client = MlflowClient(store)
    run_id = (run / "mlflow_run_id").read_text().strip()
    r = client.get_run(run_id)
    assert r.info.run_name == "run" and r.info.status == "FINISHED" and r.data.params["model.embed_dim"] == "32"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(x["step"], pytest.approx(x["loss"])) for x in rows]
    (pic,) = client.list_artifacts(run_id, "pictures/reconstruction")
    assert pic.path.endswith("step_00000002.png")

    (offline,) = (run / "wandb").glob("offline-run-*")
    (history,) = offline.glob("run-*.wandb")
    assert offline.name.endswith((run / "wandb_run_id").read_text().strip())
    data = history.read_bytes()
    for key in ("loss", "loss_motion", "lr", "grad_norm"):  # the rows' keys are in its history records
        assert key.encode() in data
    assert list((offline / "files" / "media" / "images").glob("reconstruction_2_*.png"))

    # a resumed run continues the same MLflow and W&B runs
    pretrain(C.load_config("", [*TINY, f"data.train={videos}", f"train.output_dir={run}", "train.batch_size=2",
                                "train.max_steps=4", "train.viz_every=-1", "train.loggers=[jsonl,wandb,mlflow]"]))
    assert (run / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]


def test_a_tensorboard_write_error_is_raised_to_the_run_once_and_not_printed_by_its_thread(tmp_path):
    # a full disk under tb/: tensorboard's writer thread fails first; its traceback must not be printed (the run
    # reports the error in one line when the next write or close raises it). A fresh interpreter: pytest replaces
    # threading.excepthook with its own.
    script = """
import errno, sys
from motionmae.runtime.logger import TensorBoardLogger
logger = TensorBoardLogger(sys.argv[1], None)
async_writer = logger._tb._get_file_writer().event_writer._async_writer
def full(data):
    raise OSError(errno.ENOSPC, "No space left on device")
async_writer._writer.write = full
logger.log(1, {"step": 1, "loss": 1.0})
async_writer._worker.join(timeout=30)  # the thread ends with the error
try:
    logger.log(2, {"step": 2, "loss": 1.0})
except OSError as e:
    print("raised:", e)
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "raised: [Errno 28] No space left on device" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
