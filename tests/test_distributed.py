"""DDP: 2 gloo processes x batch b (accumulated, checkpointed) follow the same trajectory as 1 process x batch 2b; the sharded sampler."""

import os
import subprocess
import sys

import pytest
import torch

from engine_helpers import TINY, tiny_videos
from motionmae.runtime import checkpoint as ck
from motionmae.runtime.distributed import ShardedSampler, derive_seed
from motionmae.runtime.logger import read_metrics


def test_shards_partition_the_single_process_order():
    n, world = 12, 3
    single = list(ShardedSampler(n, 1, 0, seed=4))  # what one process sees
    shards = [list(ShardedSampler(n, world, r, seed=4)) for r in range(world)]
    assert sorted(single) == list(range(n)) and single != list(range(n))
    # the k-th sample of every rank, taken together, is the k-th group of `world` samples of the single order
    for k in range(n // world):
        assert sorted(s[k] for s in shards) == sorted(single[k * world : (k + 1) * world])
    odd = [list(ShardedSampler(11, world, r, seed=4)) for r in range(world)]  # drop_last: 11 -> 3 x 3
    assert [len(s) for s in odd] == [3, 3, 3] and len({i for s in odd for i in s}) == 9


def test_sampler_epochs_and_mid_epoch_start():
    s = ShardedSampler(10, 2, 1, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) != list(range(10))
    s.set_epoch(1, start=3)
    assert list(s) == e1[3:] and len(s) == 2
    padded = ShardedSampler(5, 2, 1, shuffle=False, drop_last=False)
    assert list(padded) == [1, 3, 0]  # wrapped around to 6 = 3 per rank


def test_derive_seed_is_stable_and_separates_keys():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, e, i) for e in range(10) for i in range(10)}) == 100


def _pretrain(args, ranks: int = 1) -> subprocess.CompletedProcess:
    """`motionmae pretrain ARGS` in a fresh process (under torchrun with `ranks` > 1); fails the test if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    out = subprocess.run([sys.executable, *launcher, "-m", "motionmae.cli", "pretrain", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_equal_one_process_with_double_batch(tmp_path):
    videos = tiny_videos(tmp_path / "videos", n=8)
    common = [*TINY, f"data.train={videos}", "train.max_steps=3", "train.save_every=100", "train.clip_grad=1.0"]
    # each rank: 2 micro-batches of 2 (DDP no_sync on the first) with activation checkpointing = 4 clips per rank
    ddp = _pretrain([*common, "train.batch_size=2", "train.accum_steps=2", "model.grad_checkpointing=true",
                     f"train.output_dir={tmp_path / 'ddp'}"], ranks=2)
    assert "x 2 rank(s)" in ddp.stdout and "effective batch 8 clips" in ddp.stdout
    _pretrain([*common, "train.batch_size=8", f"train.output_dir={tmp_path / 'one'}"])

    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["step"] for r in a] == [1, 2, 3] and [r["lr"] for r in a] == [r["lr"] for r in b]
    for x, y in zip(a, b):  # 3 steps = 3 epochs of the 8 videos
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    pa, pb = ck.load_model_state(tmp_path / "ddp")[0], ck.load_model_state(tmp_path / "one")[0]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "ddp")) == [".lock", "checkpoints", "config.yaml", "metrics.jsonl", "tb"]  # rank 0 only


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_fp16_loss_scaling_matches_one_process(tmp_path):
    # fp16 with loss scaling under DDP (V100 clusters): the ranks take the same steps with the same scale as
    # one process with the double batch
    videos = tiny_videos(tmp_path / "videos", n=8)
    common = [*TINY, f"data.train={videos}", "train.max_steps=3", "train.save_every=100", "train.amp=fp16"]
    _pretrain([*common, "train.batch_size=2", f"train.output_dir={tmp_path / 'ddp'}"], ranks=2)
    _pretrain([*common, "train.batch_size=4", f"train.output_dir={tmp_path / 'one'}"])
    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["loss_scale"] for r in a] == [r["loss_scale"] for r in b] == [2.0**16] * 3
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-3)
    assert ck.read_state(tmp_path / "ddp")["loss_scaler"] == ck.read_state(tmp_path / "one")["loss_scaler"]
