"""Configs are checked when they are built: enumerated values with "did you mean", plainly invalid ranges, preset
recursion, one clip shape; every training and evaluation command prints its resolved config."""

import pytest
import yaml

from engine_helpers import TINY, cli
from motionmae import config as C
from motionmae.errors import UserError
from motionmae.runtime.checkpoint import save_checkpoint


def _error(overrides, cls=C.PretrainConfig, checkpoint=None) -> str:
    with pytest.raises(UserError) as e:
        C.load_config("", overrides, cls, checkpoint)
    return str(e.value)


@pytest.mark.parametrize("override, key, suggestion", [
    ("mask.kind=tubes", "mask.kind", "tube"),
    ("objective.loss=mae", "objective.loss", "mse"),
    ("objective.motion_color=grey", "objective.motion_color", "gray"),
    ("model.decoder=shared", "model.decoder", "sha"),
    ("objective.targets=[appearance,motoin]", "objective.targets", "motion"),
    ("train.amp=bf61", "train.amp", "bf16"),
    ("train.loggers=[jsonl,tensorbord]", "train.loggers", "tensorboard"),
])
def test_enumerated_values_are_checked_at_load_with_a_suggestion(override, key, suggestion):
    msg = _error([override])
    assert f"config key '{key}' expects one of" in msg and f"did you mean '{suggestion}'?" in msg


def test_unknown_keys_and_presets_suggest_the_closest():
    assert "unknown config key 'train.bacth_size' (did you mean 'batch_size'?)" in _error(["train.bacth_size=4"])
    assert "unknown config key 'probe.kk'" in _error(["probe.kk=4"], C.ProbeConfig)
    with pytest.raises(UserError, match="unknown preset 'motionmae-sha-smal' \\(did you mean 'motionmae-sha-small'\\?\\)"):
        C.load_config("motionmae-sha-smal")


@pytest.mark.parametrize("overrides, cls, fragment", [
    (["train.batch_size=0"], C.PretrainConfig, "train.batch_size=0 must be >= 1"),
    (["train.accum_steps=0"], C.FinetuneConfig, "train.accum_steps=0 must be >= 1"),
    (["probe.k=0"], C.ProbeConfig, "probe.k=0 must be >= 1"),
    (["probe.temperature=0"], C.ProbeConfig, "probe.temperature=0.0 must be > 0"),
    (["vos.temperature=-1"], C.VOSConfig, "vos.temperature=-1.0 must be > 0"),
    (["vos.size=8", "model.patch_size=16"], C.VOSConfig, "vos.size=8 is smaller than one patch"),
    (["extract.views=0"], C.ExtractConfig, "extract.views=0 must be >= 1"),
    # 2x2 tokens per time slice: floor(0.2 * 4) = 0 masked
    (["model.img_size=32", "model.patch_size=16", "mask.ratio=0.2"], C.PretrainConfig, "masks no token of a time slice (2x2"),
    (["mask.ratio=1.0"], C.PretrainConfig, "mask.ratio=1.0 must be in [0, 1)"),
    (["model.decoder=none"], C.PretrainConfig, "model.decoder=none is one decoder with one head"),
    (["objective.targets=[appearance,hog]", "model.patch_size=4", "model.img_size=32"], C.PretrainConfig,
     "objective.hog_cell=8 does not divide model.patch_size=4"),
    (["objective.motion_gap=16"], C.PretrainConfig, "objective.motion_gap=16 must be smaller than the clip's 16 frames"),
    (["model.num_frames=15"], C.PretrainConfig, "model.num_frames=15 is not divisible by model.tubelet_size=2"),
    (["train.device=gpu"], C.PretrainConfig, "train.device='gpu' is not a device"),
    (["finetune.label_smoothing=1"], C.FinetuneConfig, "finetune.label_smoothing=1.0 must be in [0, 1)"),
])
def test_plainly_invalid_values_are_one_error_at_load(overrides, cls, fragment):
    assert fragment in _error(overrides, cls)


def test_valid_edge_values_load():
    # the smallest ratio that still masks one token per slice; data.std of 0 is the test suite's way to a NaN
    cfg = C.load_config("", ["model.img_size=32", "model.patch_size=16", "mask.ratio=0.25", "data.std=[0,0,0]"])
    assert cfg.mask.ratio == 0.25
    cfg = C.load_config("videomae", ["objective.targets=[motion]"])  # decoder none with one (other) target
    assert cfg.objective.targets == ("motion",)


def test_one_clip_shape_data_follows_the_model():
    cfg = C.load_config("", ["model.num_frames=8", "model.img_size=112"])
    assert (cfg.data.num_frames, cfg.data.input_size) == (8, 112)
    for cls in (C.FinetuneConfig, C.ProbeConfig, C.ExtractConfig, C.VOSConfig):
        got = C.load_config("", ["data.num_frames=8"], cls, checkpoint={"model": {"num_frames": 8, "img_size": 64}})
        assert (got.model.num_frames, got.data.num_frames, got.data.input_size) == (8, 8, 64)
        assert "data.input_size=32 does not match model.img_size=64" in _error(["data.input_size=32"], cls, {"model": {"img_size": 64}})


def test_preset_recursion_is_named(tmp_path):
    (tmp_path / "self.yaml").write_text("preset: self.yaml\ntrain: {epochs: 1}\n")
    with pytest.raises(UserError, match=r"config recursion: self.yaml -> self.yaml"):
        C.load_config(str(tmp_path / "self.yaml"))
    (tmp_path / "a.yaml").write_text("preset: b.yaml\n")
    (tmp_path / "b.yaml").write_text("preset: a.yaml\n")
    with pytest.raises(UserError, match=r"config recursion: a.yaml -> b.yaml -> a.yaml"):
        C.load_config(str(tmp_path / "a.yaml"))
    with pytest.raises(UserError, match=r"config recursion: a.yaml -> b.yaml -> a.yaml"):
        C.load_config(str(tmp_path / "a.yaml"), cls=C.FinetuneConfig)
    # a chain without a loop: a file from a file from a preset, nearest wins
    (tmp_path / "base.yaml").write_text("preset: demo\ntrain: {batch_size: 3}\n")
    (tmp_path / "run.yaml").write_text("preset: base.yaml\ntrain: {batch_size: 5}\n")
    cfg = C.load_config(str(tmp_path / "run.yaml"))
    assert (cfg.train.batch_size, cfg.model.embed_dim) == (5, C.load_config("demo").model.embed_dim)


def test_one_file_for_all_commands(tmp_path):
    # sections of other commands are ignored; a named preset gives the other commands its model and data only
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"preset": "demo", "probe": {"k": 7}, "finetune": {"mixup": 0.0},
                                                       "vos": {"topk": 3}, "train": {"epochs": 9}}))
    spec = str(tmp_path / "exp.yaml")
    assert C.load_config(spec).train.epochs == 9
    ft = C.load_config(spec, cls=C.FinetuneConfig)
    assert (ft.finetune.mixup, ft.train.epochs, ft.train.base_lr) == (0.0, 9, C.FinetuneConfig().train.base_lr)
    assert C.load_config(spec, cls=C.ProbeConfig).probe.k == 7 and C.load_config(spec, cls=C.VOSConfig).vos.topk == 3
    with pytest.raises(UserError, match="unknown config key 'train'"):  # on the command line, strict
        C.load_config("", ["train.epochs=3"], C.ProbeConfig)


def test_print_config_on_every_training_and_evaluation_command(tmp_path, capsys):
    from motionmae.cli import main
    from motionmae.models.pretrain import PretrainModel

    pcfg = C.load_config("", TINY)
    ckpt = save_checkpoint(tmp_path / "pre.safetensors", PretrainModel(pcfg), state={"config": C.to_dict(pcfg)})
    commands = [  # (config class, arguments, a value the overrides set)
        (C.PretrainConfig, ["pretrain", *TINY, "mask.kind=tube"], ("mask", "kind", "tube")),
        (C.FinetuneConfig, ["finetune", "--pretrained", ckpt, "finetune.mixup=0"], ("finetune", "mixup", 0.0)),
        (C.ProbeConfig, ["probe", "--checkpoint", ckpt, "--train", "x", "--val", "y", "probe.k=3"], ("probe", "k", 3)),
        (C.ExtractConfig, ["extract", "--checkpoint", ckpt, "--data", "x", "--out", "y", "extract.kind=grid"], ("extract", "kind", "grid")),
        (C.VOSConfig, ["vos", "--checkpoint", ckpt, "--davis-root", "x", "vos.topk=2"], ("vos", "topk", 2)),
    ]
    for cls, args, (section, key, value) in commands:
        assert main([*map(str, args), "--print-config"]) == 0
        printed = C.from_dict(cls, yaml.safe_load(capsys.readouterr().out))
        assert getattr(getattr(printed, section), key) == value, args[0]
        assert printed.model.embed_dim == 32 and printed.data.num_frames == 4, args[0]  # from TINY / the checkpoint


def test_bad_value_stops_before_anything_is_written(tmp_path):
    out = cli("pretrain", *TINY, "mask.kind=tubes", f"data.train={tmp_path}", f"train.output_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "config key 'mask.kind' expects one of per_slice, tube, random, motion; got 'tubes' (did you mean 'tube'?)" in out.stderr
    assert not (tmp_path / "run").exists()


def test_saved_configs_from_before_targets_still_load():
    old = C.to_dict(C.load_config("videomae", TINY))
    del old["objective"]["targets"]  # what a VideoMAE run wrote before objective.targets existed
    assert C.saved_pretrain_config(old).objective.targets == ("appearance",)
