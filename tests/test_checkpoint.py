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


# ---------------------------------------------------------------------------------------------- integrity


def _data_offset(path) -> int:
    """Byte offset where a safetensors file's tensor data starts (8-byte header length, then the JSON header)."""
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def _flip_byte(path, offset) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _run_with_two_checkpoints(tmp_path):
    m = _model(0)
    opt = build_optimizer(m, lr=1e-2)
    _train(m, opt, 1, seed=1)
    ck.save_run_checkpoint(tmp_path, 1, m, opt, {"step": 1}, numbered=True, keep_last=3)
    _train(m, opt, 1, seed=2)
    ck.save_run_checkpoint(tmp_path, 2, m, opt, {"step": 2}, numbered=True, keep_last=3)
    return tmp_path / ck.CKPT_DIR


def test_flipped_tensor_bytes_are_an_error_naming_the_tensor_and_the_newest_intact_checkpoint(tmp_path):
    d = _run_with_two_checkpoints(tmp_path)
    last, step2, step1 = d / ck.LAST, d / "step_00000002.safetensors", d / "step_00000001.safetensors"
    assert os.stat(last).st_ino != os.stat(step2).st_ino  # `last` is a file of its own
    _flip_byte(last, _data_offset(last) + 3)  # inside the first tensor of the data section
    with pytest.raises(ck.CorruptCheckpointError, match=r"damaged: tensor '.+' does not match") as e:
        ck.load_checkpoint(tmp_path, _model(1))
    assert str(step2) in str(e.value)  # the copy was not reached by the damage
    with pytest.raises(ck.CorruptCheckpointError):
        ck.load_model_state(last)
    # the numbered file still loads; damaging it too points at the older one
    ck.load_checkpoint(step2, _model(1))
    _flip_byte(step2, os.path.getsize(step2) - 1)  # last byte of the data section
    with pytest.raises(ck.CorruptCheckpointError) as e:
        ck.load_checkpoint(last, _model(1))
    assert str(step1) in str(e.value)
    assert ck.newest_intact(tmp_path) == step1


def test_unreadable_header_is_a_user_error_in_every_reader(tmp_path):
    p = tmp_path / "bad.safetensors"
    for content in (b"", b"\x00" * 7, (10**12).to_bytes(8, "little") + b"{}", b"not a checkpoint at all"):
        p.write_bytes(content)
        for read in (ck.read_state, ck.load_model_state, lambda q: ck.load_checkpoint(q, _model(0))):
            with pytest.raises(UserError, match="not a readable motionmae checkpoint"):
                read(p)


def test_bad_metadata_json_is_a_user_error(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "meta.safetensors"
    save_file({"model.w": torch.zeros(2)}, str(p), metadata={ck.META_KEY: "{not json"})
    with pytest.raises(UserError, match="not a readable motionmae checkpoint"):
        ck.read_state(p)


def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    m = _model(0)
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    p = ck.save_checkpoint(tmp_path / "nan.safetensors", m, state={"config": {}})
    with pytest.raises(UserError, match=r"NaN or inf \(first: 0.weight\)"):
        ck.load_model_state(p)
    with pytest.raises(UserError, match="NaN or inf"):
        ck.load_checkpoint(p, _model(1))
    sd, _ = ck.load_model_state(p, allow_nonfinite=True)
    assert torch.isnan(sd["0.weight"][0, 0])


def test_files_without_checksums_still_load(tmp_path):
    # format 1 (before checksums): the same layout without the crc32 entry
    import json

    from safetensors.torch import save_file

    m = _model(0)
    p = tmp_path / "v1.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in m.state_dict().items()}, str(p),
              metadata={ck.META_KEY: json.dumps({"format_version": 1, "state": {"step": 7}})})
    b = _model(1)
    assert ck.load_checkpoint(p, b)["step"] == 7
    assert torch.equal(b[0].weight, m[0].weight)


def test_failed_write_keeps_the_last_good_checkpoint_and_names_it(tmp_path, monkeypatch):
    import errno

    d = _run_with_two_checkpoints(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.shutil, "copyfile", full)  # the numbered file is written, the copy to `last` fails
    m = _model(0)
    with pytest.raises(ck.CheckpointWriteError, match=r"No space left on device; the last good checkpoint is .*last.safetensors"):
        ck.save_run_checkpoint(tmp_path, 3, m, build_optimizer(m, lr=1e-2), {"step": 3}, numbered=True)
    assert (d / ck.LAST).read_bytes() == before[ck.LAST]
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]
    assert ck.read_state(d / ck.LAST)["step"] == 2


def test_stale_temp_files_are_removed(tmp_path):
    d = _run_with_two_checkpoints(tmp_path)
    (d / ".last.safetensors.abc123.tmp").write_bytes(b"x" * 100)
    (d / ".step_00000003.safetensors.q.tmp").write_bytes(b"")
    removed = ck.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".last.safetensors.abc123.tmp", ".step_00000003.safetensors.q.tmp"]
    assert sorted(os.listdir(d)) == [ck.LAST, "step_00000001.safetensors", "step_00000002.safetensors"]


def test_a_run_whose_last_was_deleted_resumes_from_its_newest_numbered_checkpoint(tmp_path):
    d = _run_with_two_checkpoints(tmp_path)
    (d / ck.LAST).unlink()
    assert ck.find_last(tmp_path) == d / "step_00000002.safetensors"
    assert ck.resolve_checkpoint(tmp_path) == d / "step_00000002.safetensors"
