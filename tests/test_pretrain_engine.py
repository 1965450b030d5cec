"""The pretraining loop: exact resume after SIGKILL, accumulation = a bigger batch, NaN stop, run-dir contents."""

import contextlib
import math
import os
import shutil
import signal
import subprocess

import pytest
import torch

from engine_helpers import TINY, metric_rows, signal_when_logged, spawn, tiny_videos
from motionmae import config as C
from motionmae.runtime import checkpoint as ck
from motionmae.runtime.logger import read_metrics
from motionmae.engine.pretrain import pretrain
from motionmae.engine.trainer import NonFiniteLossError, make_plan


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return tiny_videos(tmp_path_factory.mktemp("videos"), n=8)


def _cfg(videos, out, *more):
    return C.load_config("", [*TINY, f"data.train={videos}", f"train.output_dir={out}", *more])


def _params(path):
    sd, _ = ck.load_model_state(path)
    return sd


def test_sigkill_then_resume_repeats_every_loss(videos, tmp_path):
    over = [*TINY, f"data.train={videos}", "train.batch_size=2", "train.max_steps=12", "train.save_every=2"]
    with _one_thread():  # the killed run is a subprocess with OMP_NUM_THREADS=1: same kernels, same bits
        pretrain(C.load_config("", [*over, f"train.output_dir={tmp_path / 'full'}"]), resume="none")
    want = [(r["step"], r["loss"], r["loss_motion"], r["lr"]) for r in read_metrics(tmp_path / "full")]
    assert [s for s, *_ in want] == list(range(1, 13))  # 12 steps over 3 epochs of 4

    run_dir = tmp_path / "killed"
    proc = spawn("pretrain", *over, f"train.output_dir={run_dir}")
    signal_when_logged(proc, run_dir, signal.SIGKILL, 3)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(r["step"] for r in metric_rows(run_dir))
    assert killed_at < 12
    resumed_from = ck.read_state(run_dir)["step"]
    assert resumed_from % 2 == 0 and 2 <= resumed_from <= killed_at

    with _one_thread():  # auto-resume from run_dir/checkpoints/last
        pretrain(C.load_config("", [*over, f"train.output_dir={run_dir}"]), resume="auto")
    got = [(r["step"], r["loss"], r["loss_motion"], r["lr"]) for r in read_metrics(run_dir)]
    assert got == want  # exactly equal, step for step (the log is cut back to the checkpoint on resume)
    a, b = _params(tmp_path / "full"), _params(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def test_accumulation_equals_bigger_batch(videos, tmp_path):
    # batch 2 x 2 micro-steps and batch 4 see the same clips with the same masks (masks are seeded per clip)
    a = pretrain(_cfg(videos, tmp_path / "a", "train.batch_size=2", "train.accum_steps=2", "train.max_steps=3"))
    b = pretrain(_cfg(videos, tmp_path / "b", "train.batch_size=4", "train.max_steps=3"))
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["lr"] for r in ra] == [r["lr"] for r in rb]
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    pa, pb = _params(a["checkpoint"]), _params(b["checkpoint"])
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)


def test_plan_scales_lr_with_global_batch():
    cfg = C.load_config("", ["train.batch_size=8", "train.accum_steps=4", "data.num_samples=2", "train.base_lr=1.5e-4",
                             "train.min_lr=1e-5", "train.warmup_lr=1e-6", "train.epochs=10", "train.warmup_epochs=2"])
    p = make_plan(cfg, num_videos=1000, world=2)
    assert p.global_batch == 8 * 4 * 2 * 2
    assert p.lr == pytest.approx(1.5e-4 * 128 / 256) and p.min_lr == pytest.approx(1e-5 * 0.5)
    assert p.steps_per_epoch == 1000 // 2 // 32 == 15
    assert (p.total_steps, p.warmup_steps) == (150, 30)


def test_run_dir_contents_and_config_round_trip(videos, tmp_path):
    cfg = _cfg(videos, tmp_path, "train.batch_size=2", "train.max_steps=4", "train.save_every=2", "train.keep_last=1", "train.viz_every=0")
    out = pretrain(cfg)
    assert C.load_config(str(tmp_path / "config.yaml")) == cfg
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.safetensors", "step_00000004.safetensors"]
    state = ck.read_state(tmp_path)
    assert (state["step"], state["epoch"], state["epoch_pos"]) == (4, 0, 4)  # 8 videos / batch 2: epoch 0 just used up
    assert C.from_dict(C.PretrainConfig, state["config"]) == cfg
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(k in rows[0] for k in ("loss", "loss_appearance", "loss_motion", "lr", "grad_norm", "clips_per_s", "skipped_videos_epoch", "peak_mem_mb"))
    assert rows[0]["loss"] == pytest.approx(rows[0]["loss_appearance"] + rows[0]["loss_motion"], rel=1e-5)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert (tmp_path / "pictures" / "step_00000004.png").exists() and out["step"] == 4


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(videos, tmp_path):
    pretrain(_cfg(videos, tmp_path, "train.batch_size=2", "train.max_steps=2", "train.save_every=2"))
    good = (tmp_path / "checkpoints" / "last.safetensors").read_bytes()
    # resume with std 0: the input becomes inf/NaN at step 2 -> clean stop, nothing written
    bad = _cfg(videos, tmp_path, "train.batch_size=2", "train.max_steps=6", "train.save_every=1", "data.std=[0,0,0]")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*last good checkpoint is .*last.safetensors"):
        pretrain(bad)
    assert (tmp_path / "checkpoints" / "last.safetensors").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.safetensors", "step_00000002.safetensors"]


def test_sigterm_saves_last_at_the_current_step_and_exits_143(videos, tmp_path):
    run_dir = tmp_path / "run"
    proc = spawn("pretrain", *TINY, f"data.train={videos}", "train.batch_size=2", "train.max_steps=200",
                 "train.save_every=1000", f"train.output_dir={run_dir}", stdout=subprocess.PIPE)
    signal_when_logged(proc, run_dir, signal.SIGTERM, 1)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout
    state = ck.read_state(run_dir)
    assert 1 <= state["step"] < 200 and state["step"] == max(r["step"] for r in metric_rows(run_dir))
    assert f"stopped by signal at step {state['step']}/200" in stdout


def test_init_starts_a_new_run_from_given_weights(videos, tmp_path):
    a = pretrain(_cfg(videos, tmp_path / "a", "train.batch_size=2", "train.max_steps=2"))
    # lr 0 everywhere: the new run's weights stay exactly the ones it was initialised with
    frozen = ["train.base_lr=0", "train.min_lr=0", "train.warmup_lr=0", "train.batch_size=2", "train.max_steps=1"]
    b = pretrain(_cfg(videos, tmp_path / "b", *frozen, f"train.init={a['checkpoint']}"))
    assert ck.read_state(tmp_path / "b")["step"] == 1  # a new run, not a resume of a's step 2
    pa, pb = _params(a["checkpoint"]), _params(b["checkpoint"])
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    with pytest.raises(C.UserError, match=r"train.init=.*does not match the model: missing keys \['motion_mask_token"):
        pretrain(_cfg(videos, tmp_path / "c", *frozen, "model.decoder=ind", f"train.init={a['checkpoint']}"))


def test_fp16_loss_scaling_skips_overflows_and_resumes_exactly(videos, tmp_path, monkeypatch):
    # amp=fp16 (GPUs without bf16). Started at 2^23, the loss scale overflows this model's fp16 gradients: those
    # steps are skipped and the scale halved instead of stopping the run. The scale is in the checkpoint, so a
    # run resumed at step 4 takes the same steps as the uninterrupted one.
    from motionmae.engine.optim import LossScaler

    monkeypatch.setattr(LossScaler, "INIT_SCALE", 2.0**23)
    over = ["train.amp=fp16", "train.batch_size=2", "train.max_steps=8", "train.save_every=4"]
    with _one_thread():
        pretrain(_cfg(videos, tmp_path / "full", *over), resume="none")
    rows = metric_rows(tmp_path / "full")
    scales = [r["loss_scale"] for r in rows]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert not math.isfinite(rows[0]["grad_norm"]) and scales[0] == 2.0**22  # overflow: skipped, scale halved
    assert math.isfinite(rows[-1]["grad_norm"]) and all(b <= a for a, b in zip(scales, scales[1:]))
    mid = tmp_path / "full" / "checkpoints" / "step_00000004.safetensors"
    assert ck.read_state(mid)["loss_scaler"]["scale"] == scales[3]
    with _one_thread():
        pretrain(_cfg(videos, tmp_path / "resumed", *over), resume=str(mid))
    assert [r["loss_scale"] for r in metric_rows(tmp_path / "resumed")] == scales[4:]
    a, b = _params(tmp_path / "full"), _params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_amp(monkeypatch):
    from motionmae.runtime.amp import resolve_amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_amp(a, cpu) for a in ("none", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
    for has_bf16, want in ((True, torch.bfloat16), (False, torch.float16)):  # A100/H100 vs V100/T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
        assert resolve_amp("auto", cuda) == want
    with pytest.raises(C.UserError, match="auto, bf16, fp16, none"):
        resolve_amp("fp8", cpu)


def test_motion_masks_and_a_hog_target_end_to_end(videos, tmp_path):
    # a target and a masking kind that are config entries only: a run, its checkpoint and its pictures
    cfg = _cfg(videos, tmp_path, "mask.kind=motion", "objective.targets=[appearance,motion,hog]", "objective.w_hog=2",
               "train.batch_size=2", "train.max_steps=2", "train.viz_every=0", "train.loggers=[jsonl]")
    pretrain(cfg)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_appearance"] + r["loss_motion"] + 2 * r["loss_hog"], rel=1e-5)
    assert "decoder.hog_head.weight" in _params(tmp_path)
    assert not (tmp_path / "tb").exists()  # train.loggers: only the JSONL log
    from PIL import Image

    from motionmae import viz

    with Image.open(tmp_path / "pictures" / "step_00000002.png") as im:  # 2 + 1 + 2 + 2 columns of 32 px x 4
        assert im.size[0] == viz.GUTTER + 7 * 32 * viz.panel_scale(32) + 6 * viz.GAP


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None,
                    reason="torch.compile's default backend (inductor) needs a C++ compiler on CPU")
def test_compiled_model_takes_the_same_steps(videos, tmp_path):
    # train.compile=true: torch.compile with its default backend (inductor: C++ kernels here, Triton on CUDA) takes the
    # eager run's steps
    a = pretrain(_cfg(videos, tmp_path / "a", "train.batch_size=2", "train.max_steps=2"))
    b = pretrain(_cfg(videos, tmp_path / "b", "train.batch_size=2", "train.max_steps=2", "train.compile=true"))
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], rel=1e-6)
    pa, pb = _params(a["checkpoint"]), _params(b["checkpoint"])
    assert pa.keys() == pb.keys()  # saved without the `_orig_mod.` prefix
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)


def test_one_compiled_graph_for_the_network():
    # what compiles: the host-side token counts and the (gradient-free) targets stay eager, so torch.compile captures
    # encoder, decoder, heads and loss in one graph, with or without a decoder mask
    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import decoder_mask, make_mask

    cfg = C.load_config("", [*TINY])
    model = PretrainModel(cfg)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("per_slice", 2, cfg.model.grid(), 0.5, torch.Generator().manual_seed(0))
    for dec in (None, decoder_mask(mask, cfg.model.grid(), 0.5, torch.Generator().manual_seed(1))):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x, mask, dec)
        assert explained.graph_count == 2 and {r.reason.split(".")[0] for r in explained.break_reasons} == {
            "Skip calling `torch"}  # the two functions marked torch.compiler.disable
        big = max(explained.graphs, key=lambda g: len(g.graph.nodes))
        assert sum(n.op == "call_module" or n.op == "call_function" for n in big.graph.nodes) > 20


def test_dual_masking_end_to_end(videos, tmp_path):
    # mask.decoder_ratio=0.5 (VideoMAE v2): the encoder's masks are those of a run without it; the decoder's are
    # seeded per clip too, so batch 2 x 2 micro-steps still take the steps of batch 4
    from motionmae.engine.pretrain import clip_masks

    cfg = _cfg(videos, tmp_path / "x", "mask.decoder_ratio=0.5", "model.img_size=64", "data.input_size=64")
    video, index = torch.zeros(3, 3, 4, 64, 64, dtype=torch.uint8), torch.tensor([5, 1, 5])
    mask, dec = clip_masks(cfg, video, index, 2, "cpu")
    off = C.load_config("", [*TINY, "model.img_size=64", "data.input_size=64"])
    assert torch.equal(mask, clip_masks(off, video, index, 2, "cpu")[0]) and clip_masks(off, video, index, 2, "cpu")[1] is None
    assert not (dec & ~mask).any() and ((mask & ~dec).sum(1) == 14).all()  # 2 slices x 14 masked of 16; half kept
    dual = ["mask.decoder_ratio=0.5", "train.max_steps=3"]
    a = pretrain(_cfg(videos, tmp_path / "a", *dual, "train.batch_size=2", "train.accum_steps=2"))
    b = pretrain(_cfg(videos, tmp_path / "b", *dual, "train.batch_size=4"))
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(ra) == 3 and all(math.isfinite(r["loss"]) for r in ra)
    for x, y in zip(ra, rb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    pa, pb = _params(a["checkpoint"]), _params(b["checkpoint"])
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)
