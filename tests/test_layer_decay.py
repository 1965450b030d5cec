import pytest

from motionmae.config import ModelConfig
from motionmae.engine.finetune import layer_decay_fn, layer_id
from motionmae.engine.optim import build_optimizer, set_lr
from motionmae.models.vit import VisionTransformer


def _tiny(pos_embed="learnable", pooling="mean"):
    cfg = ModelConfig(size="tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                      img_size=16, pos_embed=pos_embed, pooling=pooling)
    return VisionTransformer(cfg, num_classes=3)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_layer_decay_lr_of_every_parameter_depth_2(pooling):
    model = _tiny(pooling=pooling)
    peak = 1e-3
    opt = build_optimizer(model, peak, weight_decay=0.05, betas=(0.9, 0.999), lr_scale_fn=layer_decay_fn(2, 0.75))
    set_lr(opt, peak)
    lr_of = {name: g["lr"] for g in opt.param_groups for name in g["param_names"]}
    # hand-computed: decay ** (depth + 1 - layer) with depth 2, layers: embed 0, block0 1, block1 2, head 3
    expected = {0: 0.421875e-3, 1: 0.5625e-3, 2: 0.75e-3, 3: 1e-3}
    assert set(lr_of) == {n for n, _ in model.named_parameters()}
    for name, lr in lr_of.items():
        if name.startswith(("patch_embed.", "pos_embed")):
            want = expected[0]
        elif name.startswith("blocks.0."):
            want = expected[1]
        elif name.startswith("blocks.1."):
            want = expected[2]
        else:
            assert name.startswith(("head.", "fc_norm.", "norm.")), name
            want = expected[3]
        assert lr == pytest.approx(want, rel=1e-12), name
    assert lr_of["pos_embed"] == pytest.approx(expected[0])
    assert lr_of["head.weight"] == pytest.approx(peak)


def test_layer_decay_follows_schedule_and_keeps_no_decay_split():
    model = _tiny()
    opt = build_optimizer(model, 1.0, weight_decay=0.05, lr_scale_fn=layer_decay_fn(2, 0.5))
    set_lr(opt, 0.2)
    for g in opt.param_groups:
        for name in g["param_names"]:
            assert g["lr"] == pytest.approx(0.2 * 0.5 ** (3 - layer_id(name, 2)))
            p = dict(model.named_parameters())[name]
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 or name == "pos_embed" else 0.05), name


def test_layer_id_with_prefixes():
    assert layer_id("module.encoder.blocks.11.attn.qkv.weight", 12) == 12
    assert layer_id("encoder.patch_embed.proj.weight", 12) == 0
    assert layer_id("head.bias", 12) == 13
    assert layer_id("fc_norm.weight", 12) == 13
