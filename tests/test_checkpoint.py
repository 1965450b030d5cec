"""Checkpoint round trips, atomic replacement (a crash before the rename keeps the last good file), keep-k."""

import os

import pytest
import torch
from torch import nn

from motionmae.runtime import checkpoint as ck
from motionmae.engine.optim import build_optimizer
from motionmae.errors import UserError


def _model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))
    m.register_buffer("table", torch.arange(5.0))  # buffers travel too
    return m


def _train(m, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()


def test_resume_from_checkpoint_continues_identically(tmp_path):
    # run A: 3 steps, save, 3 more. run B: load A's checkpoint into a differently initialised model, 3 more.
    a = _model(0)
    opt_a = build_optimizer(a, lr=1e-2)
    _train(a, opt_a, 3, seed=1)
    path = ck.save_checkpoint(tmp_path / "c.safetensors", a, opt_a, {"step": 3, "epoch": 0, "config": {"x": [1, 2]}})
    _train(a, opt_a, 3, seed=2)

    b = _model(123)
    opt_b = build_optimizer(b, lr=1e-2)
    state = ck.load_checkpoint(path, b, opt_b)
    assert state == {"step": 3, "epoch": 0, "config": {"x": [1, 2]}}
    assert opt_b.param_groups[0]["betas"] == (0.9, 0.95)
    _train(b, opt_b, 3, seed=2)
    for (n, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), n


def test_rng_state_restored(tmp_path):
    torch.manual_seed(5)
    path = ck.save_checkpoint(tmp_path / "c.safetensors", _model(), state={})
    expect = torch.rand(4)
    torch.manual_seed(99)
    ck.load_checkpoint(path, restore_rng=True)
    assert torch.equal(torch.rand(4), expect)


def test_crash_before_rename_keeps_last_good(tmp_path, monkeypatch):
    m = _model()
    opt = build_optimizer(m, lr=1e-2)
    ck.save_run_checkpoint(tmp_path, 2, m, opt, {"step": 2}, numbered=True)
    good = (tmp_path / "checkpoints" / "last.safetensors").read_bytes()

    _train(m, opt, 1, seed=0)

    def crash(*a, **k):
        raise RuntimeError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    for numbered in (False, True):
        with pytest.raises(RuntimeError, match="simulated"):
            ck.save_run_checkpoint(tmp_path, 4, m, opt, {"step": 4}, numbered=numbered)
    monkeypatch.undo()
    d = tmp_path / "checkpoints"
    assert (d / "last.safetensors").read_bytes() == good
    assert ck.read_state(tmp_path) == {"step": 2}
    assert sorted(os.listdir(d)) == ["last.safetensors", "step_00000002.safetensors"]  # no temp files left behind


def test_last_and_keep_k(tmp_path):
    m = _model()
    opt = build_optimizer(m, lr=1e-2)
    for step in range(1, 6):
        ck.save_run_checkpoint(tmp_path, step, m, opt, {"step": step, "config": {"model": {"size": "tiny"}}}, numbered=True, keep_last=2)
    ck.save_run_checkpoint(tmp_path, 6, m, opt, {"step": 6}, numbered=False, keep_last=2)
    assert [p.name for p in ck.numbered_checkpoints(tmp_path)] == ["step_00000004.safetensors", "step_00000005.safetensors"]
    assert ck.read_state(tmp_path)["step"] == 6
    assert ck.read_state(tmp_path / "checkpoints" / "step_00000005.safetensors")["step"] == 5
    assert ck.find_last(tmp_path) == tmp_path / "checkpoints" / "last.safetensors"


def test_load_model_state_file_or_run_dir(tmp_path):
    m = _model()
    ck.save_run_checkpoint(tmp_path, 7, m, build_optimizer(m, 1e-3), {"step": 7, "config": {"model": {"size": "tiny"}}}, numbered=False)
    for where in (tmp_path, tmp_path / "checkpoints" / "last.safetensors"):
        sd, cfg = ck.load_model_state(where)
        assert cfg == {"model": {"size": "tiny"}}
        assert sd.keys() == m.state_dict().keys()
        assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        ck.load_model_state(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="no checkpoint found"):
        ck.load_model_state(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        ck.load_checkpoint(tmp_path / "junk.safetensors", _model())
    weights_only = ck.save_checkpoint(tmp_path / "w.safetensors", _model(), state={})
    with pytest.raises(UserError, match="no optimiser state"):
        m = _model()
        ck.load_checkpoint(weights_only, m, build_optimizer(m, 1e-3))
    with pytest.raises(UserError, match="missing keys"):
        ck.load_checkpoint(weights_only, nn.Linear(6, 8))
