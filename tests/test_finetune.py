import json
import math

import pytest
import torch
from PIL import Image

from motionmae import config as C
from motionmae.cli import main as cli_main
from motionmae.runtime.checkpoint import load_model_state, read_state, save_checkpoint
from motionmae.engine.finetune import finetune
from motionmae.config import FinetuneConfig, load_config
from motionmae.errors import UserError


def load_finetune_config(spec="", overrides=(), checkpoint=None):
    return load_config(spec, overrides, FinetuneConfig, checkpoint)

ARCH = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8", "model.num_frames=8",
        "model.img_size=32"]
# the synthetic clips have 8 frames: stride 1; no flip (left/right is a label); fp32 and no workers for speed
DATA = ["data.sampling_rate=1", "data.flip=false", "data.num_workers=0", "train.amp=none", "train.device=cpu"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from motionmae.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("syn"), num_train=24, num_val=12, frames=8, size=32, workers=1)


def _model_tensors(path):
    return load_model_state(path)[0]


def test_resume_continues_exactly(synthetic, tmp_path):
    common = ARCH + DATA + [f"data.train={synthetic['train']}", "train.batch_size=4", "train.max_steps=4",
                            "train.warmup_steps=1", "train.save_every=2", "finetune.label_column=direction",
                            "model.drop_path=0.1"]
    a = finetune(load_finetune_config("", common + [f"train.output_dir={tmp_path / 'a'}"]), resume="none")
    assert a["step"] == 4 and a["num_classes"] == 4
    mid = tmp_path / "a" / "checkpoints" / "step_00000002.safetensors"
    b = finetune(load_finetune_config("", common + [f"train.output_dir={tmp_path / 'b'}"]), resume=str(mid))
    assert b["step"] == 4
    ta, tb = _model_tensors(tmp_path / "a"), _model_tensors(tmp_path / "b")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    # and training did move the weights
    tm = _model_tensors(mid)
    assert not torch.equal(tm["blocks.0.attn.qkv.weight"], ta["blocks.0.attn.qkv.weight"])


def test_pretrained_encoder_is_loaded_and_eval_writes_metrics(synthetic, tmp_path):
    from motionmae import load_encoder
    from motionmae.models.pretrain import PretrainModel

    pcfg = C.load_config("motionmae-sha", ARCH + ["model.decoder_embed_dim=32", "model.decoder_depth=1",
                                                  "model.decoder_num_heads=2", "data.num_frames=8", "data.input_size=32",
                                                  "data.sampling_rate=1"])
    torch.manual_seed(0)
    pre = PretrainModel(pcfg)
    ckpt = tmp_path / "pre.safetensors"
    save_checkpoint(ckpt, pre, state={"config": C.to_dict(pcfg), "step": 10})
    out = tmp_path / "ft"
    # no model.* overrides: the architecture comes from the checkpoint. lr 0: the weights stay the pretrained ones.
    rc = cli_main(["finetune", "--pretrained", str(ckpt), f"data.train={synthetic['train']}", f"data.val={synthetic['val']}",
                   "finetune.label_column=speed", "train.batch_size=4", "train.max_steps=1", "train.base_lr=0",
                   "train.warmup_lr=0", "train.min_lr=0", f"train.output_dir={out}"] + DATA)
    assert rc == 0
    ft = _model_tensors(out)
    enc = pre.encoder.state_dict()
    for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "blocks.1.attn.q_bias"):
        assert torch.equal(ft[k], enc[k]), k
    assert ft["head.weight"].shape == (2, 32)  # speed: slow / fast
    assert "norm.weight" not in ft and "fc_norm.weight" in ft  # mean pooling: encoder norm off, fc_norm on

    m = json.loads((out / "eval_metrics.json").read_text())
    assert m["label_column"] == "speed" and m["class_names"] == ["slow", "fast"]
    assert m["num_samples"] == 12 and sum(map(sum, m["confusion"])) == 12
    assert m["views"] == {"temporal": 2, "spatial": 3}
    assert m["top5"] == 1.0  # 2 classes: top-5 is always right
    assert set(m["per_class_acc"]) == {"slow", "fast"}
    assert Image.open(out / "confusion.png").size[0] > 50

    # load_encoder gives back the fine-tuned classifier; its logits are the model's
    clf = load_encoder(out)
    assert clf.num_classes == 2 and not clf.training
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        feats = clf.forward_features(x)
        assert feats.shape == (2, 64, 32)
        assert torch.allclose(clf(x), clf.head(clf.fc_norm(feats.mean(1))))

    # --eval-only re-evaluates the saved run and gives the same numbers
    rc = cli_main(["finetune", "--eval-only", "--pretrained", str(ckpt), f"data.train={synthetic['train']}",
                   f"data.val={synthetic['val']}", "finetune.label_column=speed", f"train.output_dir={out}"] + DATA)
    assert rc == 0
    again = json.loads((out / "eval_metrics.json").read_text())
    assert again["confusion"] == m["confusion"] and again["top1"] == m["top1"]


def test_unknown_label_column_names_the_columns(synthetic, tmp_path):
    cfg = load_finetune_config("", ARCH + DATA + [f"data.train={synthetic['train']}", "finetune.label_column=colour",
                                                  f"train.output_dir={tmp_path}"])
    with pytest.raises(UserError, match="class, direction, speed, arrow"):
        finetune(cfg, resume="none")


def test_clip_shape_follows_the_encoder():
    cfg = load_finetune_config("", [], {"model": {"size": "small", "num_frames": 8, "img_size": 32, "drop_path": 0.0},
                                        "data": {"sampling_rate": 2, "flip": False, "mean": [0.5] * 3, "train": "ignored.csv"}})
    assert (cfg.model.size, cfg.model.drop_path) == ("small", 0.1)  # architecture from the checkpoint, recipe's drop path
    assert (cfg.data.num_frames, cfg.data.input_size, cfg.data.mean, cfg.data.train) == (8, 32, (0.5,) * 3, "")
    # the clips are the fine-tuning config's (a fine-tuning preset's), not the pretraining run's
    assert (cfg.data.sampling_rate, cfg.data.flip) == (4, True)
    ssv2 = load_finetune_config("finetune-ssv2", [], {"model": {"num_frames": 8}, "data": {"sampling_rate": 4, "flip": True}})
    assert (ssv2.data.sampling, ssv2.data.flip, ssv2.data.test_clips, ssv2.data.short_side) == ("segment", False, 2, 224)
    assert cfg.train.betas == (0.9, 0.999) and cfg.finetune.layer_decay == 0.75
    with pytest.raises(UserError, match="data.num_frames=16"):
        load_finetune_config("", ["data.num_frames=16"], {"model": {"num_frames": 8}})


def test_pretraining_preset_gives_model_and_data_only_and_pretraining_run_is_never_resumed(synthetic, tmp_path):
    cfg = load_finetune_config("demo", [])
    demo = C.load_config("demo")
    assert (cfg.model.size, cfg.model.img_size, cfg.data.sampling_rate) == (demo.model.size, demo.model.img_size, demo.data.sampling_rate)
    assert cfg.train.output_dir == "runs/finetune" and cfg.train.betas == (0.9, 0.999)  # not the pretraining recipe

    # a train.output_dir that holds a pretraining run: refuse to "resume" (and overwrite) it
    run = tmp_path / "pre"
    save_checkpoint(run / "checkpoints" / "last.safetensors", torch.nn.Linear(2, 2), state={"step": 5, "config": {}})
    cfg = load_finetune_config("", ARCH + DATA + [f"data.train={synthetic['train']}", f"train.output_dir={run}"])
    with pytest.raises(UserError, match="not a fine-tuning checkpoint"):
        finetune(cfg)


def test_learnable_pos_embed_resized_from_the_pretraining_grid(synthetic, tmp_path):
    # pretrained on 4-frame clips (grid 2x4x4: 32 tokens, which also fit 8x2x2), fine-tuned on 8 frames (4x4x4):
    # the grid comes from the checkpoint's config, not from guessing
    from motionmae.models.pretrain import PretrainModel
    from motionmae.models.vit import resize_pos_embed

    arch = [a for a in ARCH if not a.startswith("model.num_frames")] + ["model.pos_embed=learnable"]
    pcfg = C.load_config("motionmae-sha", arch + ["model.num_frames=4", "model.decoder_embed_dim=32",
                                                  "model.decoder_depth=1", "model.decoder_num_heads=2"])
    torch.manual_seed(0)
    pre = PretrainModel(pcfg)
    ckpt = tmp_path / "pre.safetensors"
    save_checkpoint(ckpt, pre, state={"config": C.to_dict(pcfg), "step": 10})
    out = tmp_path / "ft"
    rc = cli_main(["finetune", "--pretrained", str(ckpt), f"data.train={synthetic['train']}", "model.num_frames=8",
                   "finetune.label_column=speed", "train.batch_size=4", "train.max_steps=1", "train.base_lr=0",
                   "train.warmup_lr=0", "train.min_lr=0", f"train.output_dir={out}"] + DATA)
    assert rc == 0
    expect = resize_pos_embed(pre.encoder.pos_embed.detach(), (2, 4, 4), (4, 4, 4))
    torch.testing.assert_close(_model_tensors(out)["pos_embed"], expect)


def test_fp16_fine_tuning_keeps_its_loss_scale_in_the_checkpoint(synthetic, tmp_path):
    over = ARCH + DATA + [f"data.train={synthetic['train']}", "train.batch_size=4", "train.max_steps=2",
                          "finetune.label_column=direction", "train.amp=fp16", f"train.output_dir={tmp_path}"]
    out = finetune(load_finetune_config("", over), resume="none")
    assert out["step"] == 2 and math.isfinite(out["loss"])
    # torch's initial scale 2**16, halved per overflowing step (whether one overflows depends on the model's numbers)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scale = read_state(tmp_path)["loss_scaler"]["scale"]
    assert scale in (2.0**16, 2.0**15, 2.0**14) and scale == [r["loss_scale"] for r in rows if "loss_scale" in r][-1]
