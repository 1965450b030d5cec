"""Outputs and messages a team meets every day: --version, what a rerun says, warm-up and schedule warnings, file
modes under the user's umask, every file an extraction writes is named."""

import os
import stat

import numpy as np
import pytest
import torch

from engine_helpers import TINY, cli, tiny_videos
from motionmae import config as C
from motionmae.engine.pretrain import pretrain
from motionmae.engine.trainer import make_plan
from motionmae.runtime import checkpoint as ck
from motionmae.version import __version__


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return tiny_videos(tmp_path_factory.mktemp("videos"), n=4)


def _cfg(videos, out, *more):
    return C.load_config("", [*TINY, f"data.train={videos}", f"train.output_dir={out}", "train.batch_size=2",
                              "train.loggers=[jsonl]", *more])


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_version_flag():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"motionmae {__version__}"


def test_warmup_longer_than_the_run_is_a_warning(videos, tmp_path, capsys):
    cfg = _cfg(videos, tmp_path, "train.max_steps=2", "train.warmup_steps=5")
    plan = make_plan(cfg, 4, 1)
    assert (plan.warmup_steps, plan.warmup_asked) == (2, 5)
    pretrain(cfg)
    out = capsys.readouterr().out
    assert "warning: the warm-up (5 steps" in out and "longer than the run (2 steps)" in out
    assert make_plan(_cfg(videos, tmp_path, "train.max_steps=2", "train.warmup_steps=2"), 4, 1).warmup_asked == 0


def test_rerunning_a_finished_run_says_it_is_complete_and_a_longer_run_names_the_new_schedule(videos, tmp_path, capsys):
    first = pretrain(_cfg(videos, tmp_path, "train.max_steps=2"))
    assert first["step"] == 2
    capsys.readouterr()
    again = pretrain(_cfg(videos, tmp_path, "train.max_steps=2"))
    out = capsys.readouterr().out
    assert again["complete"] and again["step"] == 2
    assert "is complete: step 2 of 2" in out and "nothing to do" in out and "clips/s" not in out
    # raising max_steps continues on a stretched schedule: named, with the lr jump at the resumed step
    longer = _cfg(videos, tmp_path, "train.max_steps=6")
    plan = make_plan(longer, 4, 1)
    saved = ck.read_state(tmp_path)["plan"]
    assert saved["total_steps"] == 2
    pretrain(longer)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "the lr schedule changed on resume" in ln)
    assert "total_steps 2 -> 6" in line and f"lr at step 2 is {plan.lr_at(2):.3e}" in line
    old_lr = make_plan(_cfg(videos, tmp_path, "train.max_steps=2"), 4, 1).lr_at(2)
    assert f"(it was {old_lr:.3e} on the old one)" in line
    assert ck.read_state(tmp_path)["step"] == 6


def test_outputs_are_readable_by_the_group_under_the_umask(videos, tmp_path, umask):
    from motionmae.eval.features import save_features
    from motionmae.files import save_npy, write_text

    umask(0o002)
    out = {"features": torch.zeros(2, 3), "labels": torch.zeros(2, 1, dtype=torch.int64), "index": torch.arange(2)}
    files = [ck.save_checkpoint(tmp_path / "a.safetensors", torch.nn.Linear(2, 2), state={}),
             *save_features(tmp_path / "f.npy", out), *save_features(tmp_path / "f.safetensors", out),
             save_npy(tmp_path / "x.npy", np.zeros(2)), write_text(tmp_path / "t.json", "{}")]
    assert len(files) == 7 and {_mode(p) for p in files} == {0o664}
    umask(0o022)
    ck.save_run_checkpoint(tmp_path / "run", 2, torch.nn.Linear(2, 2), None, {}, numbered=True)
    assert {_mode(p) for p in (tmp_path / "run" / "checkpoints").iterdir()} == {0o644}  # step_ file and its copy `last`
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left behind


def test_probe_cache_is_written_with_the_umasks_mode(tmp_path, umask):
    from motionmae.eval.probe import cached_features, random_encoder

    umask(0o002)
    videos = tiny_videos(tmp_path / "v", n=2)
    cfg = C.load_config("", TINY[:10], C.ProbeConfig)
    data = C.follow_model(C.DataConfig(num_workers=0, sampling_rate=2), cfg.model)
    cached_features(random_encoder(cfg.model), {"test": 1}, data, str(videos), "", 1, 2, torch.device("cpu"),
                    tmp_path / "cache", amp="none", verbose=False)
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.suffix == ".safetensors" and _mode(entry) == 0o664


def test_extract_names_every_file_it_writes(videos, tmp_path):
    from motionmae.models.pretrain import PretrainModel

    cfg = C.load_config("", TINY)
    ckpt = ck.save_checkpoint(tmp_path / "p.safetensors", PretrainModel(cfg), state={"config": C.to_dict(cfg)})
    proc = cli("extract", "--checkpoint", ckpt, "--data", videos, "--out", tmp_path / "x.npy", "extract.device=cpu",
               "data.num_workers=0", "extract.amp=none")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("wrote")]
    assert len(lines) == 3
    for line, suffix in zip(lines, ("", ".labels", ".index")):
        assert str(tmp_path / f"x{suffix}.npy") in line
    assert sorted(p.name for p in tmp_path.glob("x*")) == ["x.index.npy", "x.labels.npy", "x.npy"]
