"""Training streams from WebDataset shards: a pretraining run killed with SIGKILL resumes to the same losses, step
for step (DataLoader workers splitting the shards); fine-tuning trains and evaluates from shards; corrupt samples
are skipped and counted as with lists; pictures come from the first shard."""

import os
import signal

import pytest
import torch

from engine_helpers import TINY, cli, metric_rows, signal_when_logged, spawn, tiny_videos
from motionmae import config as C
from motionmae.data import datasets as DS
from motionmae.data.shards import write_shards
from motionmae.engine.finetune import finetune
from motionmae.engine.pretrain import pretrain
from motionmae.runtime import checkpoint as ck
from motionmae.runtime.logger import read_metrics


def make_shards(folder, out, n=8, shard_size=3, corrupt=()):
    """`n` tiny labelled videos (labels alternate 0/1; those numbered in `corrupt` overwritten with junk) written as
    shards of `shard_size`; returns the shard pattern."""
    videos = sorted(tiny_videos(folder, n=n, frames=10).glob("*.mp4"))
    for i in corrupt:
        videos[i].write_bytes(os.urandom(1500))
    entries = [DS.VideoEntry(str(v), (i % 2,), where=str(v)) for i, v in enumerate(videos)]
    info = write_shards(entries, out, shard_size=shard_size, seed=0, progress=False)
    return str(out / f"shard-{{000000..{info['shards'] - 1:06d}}}.tar")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("videos"), tmp_path_factory.mktemp("shards"))


def test_sigkill_then_resume_from_shards_repeats_every_loss(shards, tmp_path):
    # 2 DataLoader workers split each epoch of the 3 shards; the run is killed mid-epoch and resumes from `last`
    over = [*TINY, f"data.train={shards}", "data.num_workers=2", "data.shuffle_buffer=3", "train.batch_size=2",
            "train.max_steps=10", "train.save_every=3"]
    full = cli("pretrain", *over, f"train.output_dir={tmp_path / 'full'}", timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "8 videos (streamed from shards)" in full.stdout
    want = [(r["step"], r["epoch"], r["loss"], r["loss_motion"], r["lr"]) for r in read_metrics(tmp_path / "full")]
    assert [s for s, *_ in want] == list(range(1, 11)) and [e for _, e, *_ in want] == [0] * 4 + [1] * 4 + [2] * 2

    run_dir = tmp_path / "killed"
    proc = spawn("pretrain", *over, f"train.output_dir={run_dir}")
    signal_when_logged(proc, run_dir, signal.SIGKILL, 5)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = ck.read_state(run_dir)
    assert state["step"] in (3, 6, 9) and state["step"] <= max(r["step"] for r in metric_rows(run_dir))

    resumed = cli("pretrain", *over, f"train.output_dir={run_dir}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'last.safetensors'} at step {state['step']}" in resumed.stdout
    got = [(r["step"], r["epoch"], r["loss"], r["loss_motion"], r["lr"]) for r in read_metrics(run_dir)]
    assert got == want  # exactly equal, step for step
    a, b = ck.load_model_state(tmp_path / "full")[0], ck.load_model_state(run_dir)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_samples_in_shards_are_skipped_and_counted(tmp_path):
    pattern = make_shards(tmp_path / "videos", tmp_path / "shards", corrupt=(1, 6))
    cfg = C.load_config("", [*TINY, f"data.train={pattern}", "train.batch_size=2", "train.max_steps=4", "train.viz_every=0",
                             f"train.output_dir={tmp_path / 'run'}"])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        out = pretrain(cfg)
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["skipped_videos_epoch"] == 2  # one epoch of 8 samples, 2 of them junk
    # pictures of a shard-streamed run: the first sample of the first shard
    assert (tmp_path / "run" / "pictures" / "step_00000004.png").exists() and out["step"] == 4


def test_finetune_trains_and_evaluates_from_shards(shards, tmp_path):
    cfg = C.load_config("", [*TINY, f"data.train={shards}", f"data.val={shards}", "data.test_clips=1", "data.test_crops=1",
                             "train.batch_size=2", "train.max_steps=4", f"train.output_dir={tmp_path}"], C.FinetuneConfig)
    out = finetune(cfg)
    assert out["step"] == 4 and out["eval"]["num_classes"] == 2
    assert sum(out["eval"]["confusion"][0]) + sum(out["eval"]["confusion"][1]) == 8  # every val video once
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]
