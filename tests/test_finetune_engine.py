"""Fine-tuning runs on the same engine as pretraining: exact resume after SIGKILL, SIGTERM saves and exits 143,
unreadable videos are skipped and counted, min / warm-up lr scale with the batch like the peak lr."""

import os
import signal
import subprocess

import pytest
import torch

from engine_helpers import TINY, metric_rows, signal_when_logged, spawn, tiny_videos
from motionmae.config import FinetuneConfig, load_config
from motionmae.engine.finetune import finetune
from motionmae.engine.trainer import make_plan
from motionmae.runtime import checkpoint as ck
from motionmae.runtime.logger import read_metrics


def labelled_list(folder, n=8, corrupt=0):
    """`path label` lines for `n` tiny videos (labels alternate 0/1); the first `corrupt` files are overwritten with junk."""
    videos = sorted(tiny_videos(folder, n=n, frames=10).glob("*.mp4"))
    for v in videos[:corrupt]:
        v.write_bytes(os.urandom(1500))
    lst = folder / "list.csv"
    lst.write_text("".join(f"{v} {i % 2}\n" for i, v in enumerate(videos)))
    return lst


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return labelled_list(tmp_path_factory.mktemp("videos"))


def test_sigkill_then_resume_repeats_every_loss(videos, tmp_path):
    # the whole recipe is on: RandAugment, random resized crop, mixup / cutmix, random erasing, drop path
    over = [*TINY, f"data.train={videos}", "train.batch_size=2", "train.max_steps=12", "train.save_every=2",
            "model.depth=2", "model.drop_path=0.1"]  # depth 2: block 1 drops paths (block 0 never does)
    finetune(load_config("", [*over, f"train.output_dir={tmp_path / 'full'}"], FinetuneConfig), resume="none")
    want = [(r["step"], r["loss"], r["train_acc"], r["lr"]) for r in read_metrics(tmp_path / "full")]
    assert [s for s, *_ in want] == list(range(1, 13))  # 12 steps over 3 epochs of 4

    run_dir = tmp_path / "killed"
    proc = spawn("finetune", *over, f"train.output_dir={run_dir}")
    signal_when_logged(proc, run_dir, signal.SIGKILL, 3)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = ck.read_state(run_dir)["step"]
    assert resumed_from % 2 == 0 and 2 <= resumed_from < 12

    finetune(load_config("", [*over, f"train.output_dir={run_dir}"], FinetuneConfig), resume="auto")
    got = [(r["step"], r["loss"], r["train_acc"], r["lr"]) for r in read_metrics(run_dir)]
    assert got == want  # exactly equal, step for step
    a, b = ck.load_model_state(tmp_path / "full")[0], ck.load_model_state(run_dir)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_last_and_exits_143_and_unreadable_videos_are_counted(tmp_path):
    lst = labelled_list(tmp_path / "videos", n=8, corrupt=1)  # batch 2: every epoch visits all 8, the bad one too
    run_dir = tmp_path / "run"
    proc = spawn("finetune", *TINY, f"data.train={lst}", "train.batch_size=2", "train.max_steps=200",
                 "train.save_every=1000", f"train.output_dir={run_dir}", stdout=subprocess.PIPE)
    signal_when_logged(proc, run_dir, signal.SIGTERM, 4)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout
    state = ck.read_state(run_dir)
    rows = metric_rows(run_dir)
    assert 4 <= state["step"] < 200 and state["step"] == max(r["step"] for r in rows) and state["kind"] == "finetune"
    assert f"stopped by signal at step {state['step']}/200" in stdout
    assert rows[3]["skipped_videos_epoch"] == 1  # the end of epoch 0


def test_min_and_warmup_lr_scale_with_the_global_batch():
    # VideoMAE's run_class_finetuning.py scales min_lr and warmup_lr by batch / 256 like the peak lr
    cfg = load_config("", ["train.batch_size=8", "train.accum_steps=2", "train.base_lr=1e-3", "train.min_lr=1e-6",
                           "train.warmup_lr=1e-6"], FinetuneConfig)
    p = make_plan(cfg, num_videos=64, world=2)
    assert p.global_batch == 32
    assert (p.lr, p.min_lr, p.warmup_lr) == pytest.approx((1e-3 / 8, 1e-6 / 8, 1e-6 / 8))
