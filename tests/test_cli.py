import json
"""The real `motionmae pretrain` CLI (a subprocess): user mistakes end in one clear stderr line, exit code 2, no traceback."""

import pytest

from engine_helpers import TINY, cli
from motionmae import config as C
from motionmae.engine.trainer import make_plan
from motionmae.errors import UserError


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("motionmae pretrain: error: ")
    for f in fragments:
        assert f in lines[0]


def test_unknown_config_key(tmp_path):
    _one_line_error(cli("pretrain", *TINY, "train.bacth_size=4", f"train.output_dir={tmp_path}"),
                    "unknown config key 'train.bacth_size'", "batch_size")


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    _one_line_error(cli("pretrain", *TINY, f"data.train={missing}", f"train.output_dir={tmp_path / 'run'}"),
                    f"data.train={missing}", "no such file")
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_empty_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.csv").write_text("")
    _one_line_error(cli("pretrain", *TINY, f"data.train={tmp_path / 'empty'}", f"train.output_dir={tmp_path / 'r1'}"),
                    str(tmp_path / "empty"), "no videos")
    _one_line_error(cli("pretrain", *TINY, f"data.train={tmp_path / 'empty.csv'}", f"train.output_dir={tmp_path / 'r2'}"),
                    "empty.csv", "no videos")


def test_dataset_smaller_than_one_step():
    cfg = C.load_config("", ["train.batch_size=4", "train.accum_steps=2"])
    with pytest.raises(UserError, match=r"data.train has 7 videos, fewer than one optimiser step needs .* = 8"):
        make_plan(cfg, num_videos=7, world=1)


def test_data_clip_shape_follows_model_unless_set_otherwise(tmp_path):
    cfg = C.load_config("", ["model.num_frames=8", "model.img_size=112"])
    assert (cfg.data.num_frames, cfg.data.input_size) == (8, 112)
    with pytest.raises(UserError, match="data.num_frames=8 does not match model.num_frames=4"):  # when the config is built
        C.load_config("", [*TINY, "data.num_frames=8", f"data.train={tmp_path}", f"train.output_dir={tmp_path / 'r'}"])


def test_demo_story_end_to_end_tiny(tmp_path, capsys):
    from motionmae.demo import run_demo

    tiny = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32", "model.decoder_depth=1",
            "model.decoder_num_heads=2", "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", "data.num_workers=0",
            "train.viz_every=0"]
    out = run_demo(tmp_path / "demo", overrides=tiny, num_train=8, num_val=4, probe_overrides=["probe.linear_epochs=3"])
    text = capsys.readouterr().out
    assert (tmp_path / "demo" / "data" / "train.csv").exists() and (tmp_path / "demo" / "data" / "val.csv").exists()
    assert out["checkpoint"].endswith("last.safetensors") and out["pictures"][0].endswith("step_00000002.png")
    assert set(out["probe"]) == {"MotionMAE pretrained", "random init"}
    assert set(out["probe"]["random init"]) == {"class", "direction", "speed", "arrow"}
    for line in ("checkpoint", "pictures", "metrics"):
        assert f"  {line} " in text
    assert "probe accuracy (%)" in text and "MotionMAE pretrained  linear" in text and "random init  linear" in text
    saved = json.loads((tmp_path / "demo" / "probe.json").read_text())  # the table and the losses, as JSON
    assert saved["probe"]["random init"]["class"]["linear"] == out["probe"]["random init"]["class"]["linear"]
    rec = saved["reconstruction"]
    assert f"predict-zero {rec['zero_appearance']:.4f}" in text and rec["ratio_appearance"] > 0
    again = run_demo(tmp_path / "demo", overrides=tiny, num_train=8, num_val=4, probe=False)  # reuses data and the run
    assert "reusing" in capsys.readouterr().out and again["checkpoint"] == out["checkpoint"]


def test_overrides_may_follow_options(capsys):
    from motionmae.cli import main

    # the override after `--resume none` is parsed as an override (and its typo reported), not rejected by argparse
    assert main(["pretrain", "--config", "demo", "--resume", "none", "train.bacth_size=4"]) == 2
    assert "unknown config key 'train.bacth_size'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--resume", "none", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("motion", [[], ["objective.motion_frames=adjacent", "model.num_frames=4", "data.num_frames=4",
                                          "data.sampling_rate=1"]], ids=["sampled", "adjacent"])
def test_reconstruction_vs_zero_by_hand(tmp_path, motion):
    """A model whose heads output zero reaches exactly the predict-zero loss, and on textured clips (no flat
    cube) that loss is (n-1)/n: the mean square of a cube normalised with the unbiased std. With raw adjacent
    frames for the motion target the held-out clips carry each frame's neighbour too (it failed on a mask of
    twice the tokens before)."""
    import torch

    from motionmae import config as C
    from motionmae.data.synthetic import make_dataset
    from motionmae.runtime.checkpoint import save_checkpoint
    from motionmae.demo import reconstruction_vs_zero
    from motionmae.models.pretrain import PretrainModel

    data = make_dataset(tmp_path / "d", num_train=2, num_val=6, frames=8, size=32, workers=1)
    cfg = C.load_config("demo", ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
                                 "model.decoder_depth=1", "model.decoder_num_heads=2", f"data.train={data['train']}",
                                 "objective.norm_eps=1e-6", *motion])  # (n-1)/n holds for a vanishing eps
    torch.manual_seed(0)
    model = PretrainModel(cfg)
    save_checkpoint(tmp_path / "random.safetensors", model, state={"config": C.to_dict(cfg)})
    for head in (model.decoder.head, model.decoder.motion_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    save_checkpoint(tmp_path / "zero.safetensors", model, state={"config": C.to_dict(cfg)})
    res = reconstruction_vs_zero(tmp_path / "zero.safetensors", data["val"], batch_size=4)
    n = cfg.model.tubelet_size * cfg.model.patch_size ** 2
    assert res["clips"] == 6 and res["ratio_appearance"] == 1.0 and res["ratio_motion"] == 1.0
    assert abs(res["zero_appearance"] - (n - 1) / n) < 1e-3
    other = reconstruction_vs_zero(tmp_path / "random.safetensors", data["val"], batch_size=3)  # same masks (seed 0)
    assert abs(other["zero_appearance"] - res["zero_appearance"]) < 1e-6 and other["ratio_appearance"] > 1.2  # random heads: worse
