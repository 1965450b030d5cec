"""FSDP2 (train.parallel=fsdp) on 2 real gloo ranks: the same losses as DDP for the same global batch (with
accumulation and activation checkpointing, and in bf16 with FSDP's mixed precision); sharded checkpoints resume
exactly after the whole job is killed (written in the background too); `convert --consolidate` gives the usual single
file, from which one process continues the run; a damaged or half-written sharded checkpoint is one clear error."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine_helpers import TINY, metric_rows, tiny_videos
from motionmae import config as C
from motionmae.cli import main as cli_main
from motionmae.engine.pretrain import pretrain
from motionmae.errors import UserError
from motionmae.runtime import checkpoint as ck
from motionmae.runtime import parallel as P
from motionmae.runtime.distributed import DistInfo
from motionmae.runtime.logger import read_metrics

pytestmark = [pytest.mark.skipif(not P.fsdp_available(), reason="this torch has no FSDP2"),
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]  # reading a sharded checkpoint here

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _command(args, ranks):
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    return [sys.executable, *launcher, "-m", "motionmae.cli", "pretrain", *args]


def _pretrain(args, ranks=2) -> subprocess.CompletedProcess:
    out = subprocess.run(_command(args, ranks), capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _descendants(pid: int) -> list:
    """Processes under `pid` (torchrun starts its ranks in sessions of their own: killing its group misses them)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _losses(run_dir):
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return tiny_videos(tmp_path_factory.mktemp("videos"), n=8)


def test_fsdp_gives_the_losses_of_ddp(videos, tmp_path):
    # 2 ranks x 2 micro-batches of 2 with activation checkpointing, gradient clipping: FSDP (sharded weights, grads and
    # AdamW states) takes the steps DDP takes
    common = [*TINY, f"data.train={videos}", "train.max_steps=3", "train.save_every=100", "train.clip_grad=1.0",
              "train.batch_size=2", "train.accum_steps=2", "model.grad_checkpointing=true"]
    # pictures at the end: the weights are gathered on every rank, rank 0 draws (no rank left waiting)
    fsdp = _pretrain([*common, "train.parallel=fsdp", "train.viz_every=0", f"train.output_dir={tmp_path / 'fsdp'}"])
    assert "x 2 rank(s) (fsdp)" in fsdp.stdout and (tmp_path / "fsdp" / "pictures" / "step_00000003.png").exists()
    _pretrain([*common, f"train.output_dir={tmp_path / 'ddp'}"])
    a, b = read_metrics(tmp_path / "fsdp"), read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in a] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # the sharded checkpoint, read back whole, holds DDP's weights
    (ckpt,) = ck.sharded_checkpoints(tmp_path / "fsdp")
    assert ckpt.name == "last_00000003" and sorted(p.name for p in ckpt.iterdir() if p.name.startswith("rank_")) == [
        "rank_00000.safetensors", "rank_00001.safetensors"]
    pa, pb = ck.load_model_state(tmp_path / "fsdp")[0], ck.load_model_state(tmp_path / "ddp")[0]
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)

    # bf16: FSDP's MixedPrecisionPolicy (bf16 weights, fp32 gradient reduction) stays with DDP's bf16 autocast
    bf16 = [*common, "train.amp=bf16", "train.max_steps=2"]
    _pretrain([*bf16, "train.parallel=fsdp", f"train.output_dir={tmp_path / 'fsdp16'}"])
    _pretrain([*bf16, f"train.output_dir={tmp_path / 'ddp16'}"])
    for x, y in zip(read_metrics(tmp_path / "fsdp16"), read_metrics(tmp_path / "ddp16")):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-3)


@pytest.fixture(scope="module")
def killed_and_resumed(videos, tmp_path_factory):
    """A 2-rank FSDP run of 10 steps, and the same run killed (the whole job, SIGKILL) after step 7 and resumed,
    writing its checkpoints in the background (train.async_checkpoint: completed once written, at a later step)."""
    root = tmp_path_factory.mktemp("fsdp-resume")
    over = [*TINY, f"data.train={videos}", "train.batch_size=2", "train.max_steps=10", "train.save_every=3",
            "train.parallel=fsdp", "train.keep_last=2"]
    _pretrain([*over, f"train.output_dir={root / 'full'}"])
    run_dir = root / "killed"
    args = [*over, "train.async_checkpoint=true", f"train.output_dir={run_dir}"]
    proc = subprocess.Popen(_command(args, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= 7 for r in metric_rows(run_dir)):
            for pid in [*_descendants(proc.pid), proc.pid]:  # both ranks and the launcher, as when a node dies
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(r["step"] for r in metric_rows(run_dir))
    resumed = _pretrain(args)
    return root, killed_at, resumed.stdout


def test_fsdp_resumes_exactly_after_the_job_is_killed(killed_and_resumed):
    root, killed_at, stdout = killed_and_resumed
    assert killed_at < 10 and "resumed from " in stdout and ("step_00000003 at step 3" in stdout or "step_00000006 at step 6" in stdout)
    assert _losses(root / "killed") == _losses(root / "full")  # exactly equal, step for step
    a, b = ck.load_model_state(root / "full")[0], ck.load_model_state(root / "killed")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # keep_last=2 numbered ones plus the end of the run; no temporary folder left behind
    names = sorted(p.name for p in (root / "killed" / "checkpoints").iterdir())
    assert names == ["last_00000010", "step_00000006", "step_00000009"]


def test_consolidated_checkpoint_continues_in_one_process(killed_and_resumed, tmp_path):
    # step 6's sharded checkpoint -> one file (model and AdamW state in full, CRC-32s); one process with the double
    # batch continues from it and takes the steps the 2 FSDP ranks took
    root, _, _ = killed_and_resumed
    out = tmp_path / "one"
    assert cli_main(["convert", "--consolidate", str(root / "full" / "checkpoints" / "step_00000006"), str(out)]) == 0
    path = out / "checkpoints" / "last.safetensors"
    assert ck.verify_checkpoint(path) and ck.read_state(path)["step"] == 6
    sharded = ck.load_model_state(root / "full" / "checkpoints" / "step_00000006")[0]
    single = ck.load_model_state(path)[0]
    assert all(torch.equal(sharded[k], single[k]) for k in sharded)
    cfg = C.load_config(str(root / "full" / "config.yaml"), ["train.parallel=ddp", "train.batch_size=4", f"train.output_dir={out}"])
    pretrain(cfg)
    want = [r for r in _losses(root / "full") if r[0] > 6]
    got = _losses(out)
    assert [s for s, *_ in got] == [7, 8, 9, 10]
    for (s, loss, lr), (_, loss2, lr2) in zip(got, want):
        assert loss == pytest.approx(loss2, rel=1e-5) and lr == pytest.approx(lr2)
    # a run directory: its newest sharded checkpoint; an existing destination is refused
    assert cli_main(["convert", "--consolidate", str(root / "full"), str(tmp_path / "c.safetensors")]) == 0
    assert ck.read_state(tmp_path / "c.safetensors")["step"] == 10
    assert cli_main(["convert", "--consolidate", str(root / "full"), str(tmp_path / "c.safetensors")]) == 2


def test_fsdp_fine_tuning_evaluates_on_every_rank(tmp_path):
    # evaluation runs a whole copy of the model on each rank: ranks may see different numbers of batches
    # (finetune.eval_max_videos stops each on its own count) without waiting on each other
    from test_finetune_engine import labelled_list

    lst = labelled_list(tmp_path / "videos", n=8)
    args = [*TINY, f"data.train={lst}", f"data.val={lst}", "data.test_clips=1", "data.test_crops=1", "train.batch_size=2",
            "train.max_steps=2", "train.parallel=fsdp", "finetune.eval_max_videos=3", f"train.output_dir={tmp_path / 'ft'}"]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run([sys.executable, *launcher, "-m", "motionmae.cli", "finetune", *args], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 0, "\n".join(l for l in out.stderr.splitlines() if "[rank1]" in l)[-3000:] + out.stderr[-1500:]
    rows = [r for r in read_metrics(tmp_path / "ft") if "val/top1" in r]
    assert len(rows) == 1 and 0.0 <= rows[0]["val/top1"] <= 1.0
    assert ck.sharded_checkpoints(tmp_path / "ft")[-1].name == "last_00000002"


def test_damaged_or_half_written_sharded_checkpoints(videos, tmp_path):
    # one process with train.parallel=fsdp writes the same sharded folders (nothing to shard)
    over = [*TINY, f"data.train={videos}", "train.batch_size=2", "train.max_steps=2", "train.save_every=1",
            "train.parallel=fsdp", f"train.output_dir={tmp_path}"]
    pretrain(C.load_config("", over))
    d = tmp_path / "checkpoints"
    assert sorted(p.name for p in d.iterdir()) == ["step_00000001", "step_00000002"]
    # a write that was killed leaves a temporary folder: removed by the next run, which resumes from the newest
    (d / ".step_00000003.tmp").mkdir()
    (d / ".step_00000003.tmp" / "__0_0.distcp").write_bytes(b"half")
    shard = d / "step_00000002" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ck.CorruptCheckpointError, match=r"step_00000002: damaged: __0_0.distcp does not match the checksum"
                                                        r".*newest intact checkpoint of this run is .*step_00000001"):
        pretrain(C.load_config("", [*over, "train.max_steps=4"]))
    assert not (d / ".step_00000003.tmp").exists()
    (d / "step_00000001" / "rank_00000.safetensors").unlink()
    with pytest.raises(ck.CorruptCheckpointError, match=r"step_00000001: not a complete sharded checkpoint"):
        ck.load_model_state(d / "step_00000001")


def test_fsdp_needs_fsdp2_and_bf16_or_fp32(monkeypatch):
    info = DistInfo()
    with pytest.raises(UserError, match="fp16 loss scaling is implemented for DDP only"):
        P.Parallel("fsdp", info, amp_dtype=torch.float16)
    monkeypatch.setattr(P, "fully_shard", None)  # torch builds before FSDP2
    with pytest.raises(UserError, match=r"train.parallel=fsdp needs FSDP2 .* use train.parallel=ddp"):
        P.Parallel("fsdp", info)
    with pytest.raises(UserError, match="train.async_checkpoint=true .* needs train.parallel=fsdp"):
        C.load_config("", ["train.async_checkpoint=true"])


def test_sharding_stays_on_the_model_device(monkeypatch):
    # in-process, one gloo rank: shard() builds its mesh on the model's device type even where CUDA is present (a CPU
    # run on a GPU node), and the sharded model computes what the plain one does
    import torch.distributed as dist

    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import make_mask

    cfg = C.load_config("", TINY)
    torch.manual_seed(0)
    plain = PretrainModel(cfg)
    torch.manual_seed(0)
    model = PretrainModel(cfg)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("per_slice", 2, cfg.model.grid(), 0.5, torch.Generator().manual_seed(0))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        P.shard(model, "cpu", 1)
        monkeypatch.undo()
        weight = model.encoder.blocks[0].attn.qkv.weight
        assert type(weight).__name__ == "DTensor" and weight.device_mesh.device_type == "cpu"
        a, b = model(x, mask)["loss"], plain(x, mask)["loss"]
        a.backward()
        b.backward()
        assert torch.equal(a, b)
        torch.testing.assert_close(weight.grad.full_tensor(), plain.encoder.blocks[0].attn.qkv.weight.grad)
    finally:
        dist.destroy_process_group()
