"""The paper's recipes as presets: VideoMAE's values where they come from, fine-tuning presets that carry every
section, fine-tuning clips that follow the fine-tuning config (not the checkpoint), the lr scaled by videos as
VideoMAE's fine-tuning does, fc dropout, VideoMAE's decoder per size; and the FLOP model of fine-tuning, multi-view
testing and VOS against torch's FlopCounterMode."""

import numpy as np
import pytest
import torch

from motionmae import config as C
from motionmae.config import FinetuneConfig, load_config
from motionmae.engine.finetune import FinetuneTask, data_notes
from motionmae.engine.trainer import make_plan
from motionmae.errors import UserError
from motionmae.models.classifier import build_classifier
from motionmae.models.flops import finetune_step_flops, multiview_flops, vos_sequence_flops

SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.num_frames=4", "model.img_size=32",
         "model.patch_size=8"]


def _count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


# ----------------------------------------------------------------------------------------------
# presets


def test_finetune_presets_carry_videomae_script_values():
    """Values read off VideoMAE's fine-tuning scripts (docs/FIDELITY.md): one row per dataset."""
    want = {  # sampling, stride, flip, samples, epochs, base lr, warm-up lr, min lr, layer decay, drop path, fc drop, views
        "finetune-ssv2": ("segment", 2, False, 1, 50, 5e-4, 1e-6, 1e-6, 0.75, 0.1, 0.0, (2, 3)),
        "finetune-k400": ("dense", 4, True, 1, 100, 1e-3, 1e-6, 1e-6, 0.75, 0.1, 0.0, (5, 3)),
        "finetune-ucf101": ("dense", 4, True, 2, 100, 5e-4, 1e-8, 1e-5, 0.7, 0.2, 0.5, (5, 3)),
        "finetune-hmdb51": ("dense", 2, True, 2, 50, 1e-3, 1e-8, 1e-5, 0.7, 0.2, 0.5, (5, 3)),
    }
    assert sorted(C.preset_names("finetune")) == sorted(want)
    for name, row in want.items():
        c = load_config(name, cls=FinetuneConfig)
        d, t, f = c.data, c.train, c.finetune
        got = (d.sampling, d.sampling_rate, d.flip, d.num_samples, t.epochs, t.base_lr, t.warmup_lr, t.min_lr,
               f.layer_decay, c.model.drop_path, f.fc_drop_rate, (d.test_clips, d.test_crops))
        assert got == row, name
        # common to all: test frames at a 224 px short side, RandAugment m7-n4, mixup/cutmix, smoothing, erasing
        assert (d.short_side, f.aa, f.mixup, f.cutmix, f.label_smoothing, f.reprob) == (
            224, "rand-m7-n4-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25), name
        assert (t.warmup_epochs, t.betas, t.weight_decay, c.model.num_frames, c.model.img_size) == (5, (0.9, 0.999), 0.05, 16, 224)


def test_pretraining_presets_and_decoders_per_size():
    assert load_config("pretrain-ucf101").mask.ratio == 0.9  # MotionMAE's UCF101 ratio (SPEC.md); VideoMAE: 0.75
    for name in ("pretrain-ssv2", "pretrain-k400", "pretrain-ucf101", "pretrain-hmdb51"):
        c = load_config(name)
        assert (c.mask.kind, c.data.flip, c.train.betas, c.train.warmup_epochs) == ("per_slice", False, (0.9, 0.95), 40)
    # VideoMAE's decoder per encoder size (modeling_pretrain.py, --decoder_depth of its scripts), explicit values win
    for size, dec in {"small": (192, 4, 3), "base": (384, 4, 6), "large": (512, 12, 8), "huge": (640, 12, 8)}.items():
        for m in (load_config(f"motionmae-sha-{size}").model, load_config("", [f"model.size={size}"]).model,
                  C.ModelConfig(size=size), load_config("pretrain-k400", [f"model.size={size}"]).model):
            assert (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads) == dec, size
    assert load_config("motionmae-sha-huge", ["model.decoder_depth=2"]).model.decoder_depth == 2
    assert C.update(C.ModelConfig(size="large", decoder_embed_dim=256), {"size": "huge"}).decoder_embed_dim == 256


def test_preset_kinds_are_kept_apart():
    with pytest.raises(UserError, match="'finetune-ssv2' is a fine-tuning preset: use it with `motionmae finetune"):
        load_config("finetune-ssv2")
    ft = load_config("finetune-ucf101", cls=FinetuneConfig)  # every section of a fine-tuning preset
    assert (ft.train.epochs, ft.finetune.fc_drop_rate, ft.model.grad_checkpointing) == (100, 0.5, True)
    probe = load_config("finetune-ssv2", cls=C.ProbeConfig)  # other commands: model and data only
    assert probe.data.sampling == "segment"
    pre = load_config("pretrain-ssv2", cls=FinetuneConfig)  # a pretraining preset gives fine-tuning model and data
    assert (pre.train.base_lr, pre.data.sampling_rate) == (FinetuneConfig().train.base_lr, 2)


def test_presets_command_lists_every_preset(capsys):
    from motionmae.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith((" ", "#"))}
    for name in C.preset_names():
        assert name in lines, name
        assert len(lines[name].split(None, 1)[1]) > 20, name  # a description
    assert "TSN segments, no flip" in lines["finetune-ssv2"] and "decoder 512x12" in lines["videomae-large"]


# ----------------------------------------------------------------------------------------------
# fine-tuning: clips from the fine-tuning config, lr per video, fc dropout


def test_finetune_clips_follow_the_finetune_config_and_flips_are_warned():
    k400_run = {"model": {"num_frames": 16}, "data": {"sampling_rate": 4, "sampling": "dense", "flip": True}}
    ssv2 = load_config("finetune-ssv2", [], FinetuneConfig, k400_run)
    assert (ssv2.data.sampling, ssv2.data.flip) == ("segment", False)  # not the K400 checkpoint's
    ssv2_data = C.spec_dict("finetune-ssv2")["data"]
    assert data_notes(ssv2, k400_run, ssv2_data, 174) == [
        "note: fine-tuning clips follow the fine-tuning config: data.sampling=segment (pretraining: dense)"]
    flipped = load_config("finetune-ssv2", ["data.flip=true"], FinetuneConfig, k400_run)
    assert data_notes(flipped, k400_run, ssv2_data)[0].startswith(
        "warning: data.flip=true, but the preset/config file sets data.flip=false")
    plain = load_config("", [], FinetuneConfig, k400_run)  # the generic defaults flip: SSv2's 174 classes warn
    assert data_notes(plain, k400_run, {}, 174)[0].startswith("warning: data.flip=true with 174 classes")
    assert data_notes(plain, k400_run, {}, 400) == []
    ucf = load_config("finetune-ucf101", [], FinetuneConfig, {"model": {}, "data": {"sampling_rate": 4, "flip": False}})
    assert data_notes(ucf, {"data": {"sampling_rate": 4, "flip": False}}, C.spec_dict("finetune-ucf101")["data"], 101) == []


def test_finetune_lr_scales_by_videos_as_videomae():
    """run_class_finetuning.py: lr = base x batch_size x update_freq x world / 256, whatever --num_sample: UCF101's
    8 GPUs x 16 videos x 2 samples train at 5e-4 x 128 / 256. Pretraining scales by clips (VideoMAE v2's rule)."""
    cfg = load_config("finetune-ucf101", [], FinetuneConfig)
    p = make_plan(cfg, num_videos=9537, world=8, lr_per_video=FinetuneTask.lr_per_video)
    assert p.global_batch == 256 and p.lr_batch == 128
    assert (p.lr, p.min_lr, p.warmup_lr) == pytest.approx((2.5e-4, 5e-6, 5e-9))
    assert p.steps_per_epoch == 9537 // 8 // 16 == 74
    pre = make_plan(load_config("", ["data.num_samples=2", "train.batch_size=16"]), num_videos=9537, world=8)
    assert pre.lr_batch == pre.global_batch == 256


def test_fc_dropout_before_the_head():
    cfg = load_config("", SMALL, FinetuneConfig)
    model = build_classifier(cfg.model, 5, head_drop=0.5)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.equal(model(x), model.head(pooled))  # eval: no dropout
    model.train()
    torch.manual_seed(0)
    kept = model.head_drop(torch.ones(10000))
    assert set(kept.unique().tolist()) == {0.0, 2.0} and abs(float((kept == 0).float().mean()) - 0.5) < 0.03
    assert "head_drop" not in " ".join(model.state_dict())  # no weights: checkpoints and interop unchanged
    # VideoMAE's init_scale: the new head starts at 0.001 x its trunc-normal(0.02) draw
    heads = []
    for scale in (1.0, 0.001):
        torch.manual_seed(3)
        heads.append(build_classifier(cfg.model, 5, head_init_scale=scale).head.weight)
    torch.testing.assert_close(heads[1], heads[0] * 0.001)
    assert load_config("finetune-k400", cls=FinetuneConfig).finetune.head_init_scale == 0.001


# ----------------------------------------------------------------------------------------------
# FLOPs of fine-tuning, testing and VOS


@pytest.mark.parametrize("tubelet", [1, 2])
def test_finetune_and_multiview_flops_equal_flop_counter(tubelet, monkeypatch):
    from motionmae.models.vit import Attention

    monkeypatch.setattr(Attention, "fused_attn", False)  # FlopCounterMode does not count CPU SDPA kernels
    cfg = load_config("", [*SMALL, f"model.tubelet_size={tubelet}", "model.mlp_ratio=3.0", "model.drop_path=0.1"],
                      FinetuneConfig)
    model = build_classifier(cfg.model, 7, head_drop=0.5).train()
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    assert _count_flops(lambda: model(x).sum().backward()) == finetune_step_flops(cfg.model, 7, 3)["total"]
    with torch.no_grad():
        assert _count_flops(lambda: model.eval()(x)) == multiview_flops(cfg.model, 7, views=3)


def test_vos_flops_equal_flop_counter(monkeypatch):
    from motionmae.eval.vos import EncoderFeatures, propagate
    from motionmae.models.vit import Attention, build_encoder

    monkeypatch.setattr(Attention, "fused_attn", False)
    opts = C.VOSOptions(topk=3, context=2, radius=2, size=32)
    cfg = load_config("", SMALL, C.VOSConfig)
    encoder = build_encoder(cfg.model).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)  # 4x6 patches of 8 px
    features = EncoderFeatures(encoder, size=32)
    expected = vos_sequence_flops(cfg.model, 5, (4, 6), opts, objects=2)
    assert _count_flops(lambda: features(frames)) == expected["encoder"]
    feats = torch.randn(5, 4, 6, 32, generator=torch.Generator().manual_seed(1))
    first = rng.integers(0, 3, (32, 48)).astype(np.uint8)
    assert _count_flops(lambda: propagate(feats, first, 2, opts, (32, 48))) == expected["propagation"]
