import dataclasses

import pytest
import torch

from motionmae.config import load_config
from motionmae.errors import UserError
from motionmae.models.classifier import build_classifier, load_pretrained_encoder
from motionmae.models.pretrain import PretrainModel
from motionmae.models.vit import resize_pos_embed

TINY = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=4", "model.num_frames=4", "model.img_size=16",
    "model.patch_size=4", "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=4",
]


def pretrained(*overrides):
    torch.manual_seed(0)
    cfg = load_config("motionmae-ind", TINY + list(overrides))
    return PretrainModel(cfg).eval(), cfg


def test_mean_pool_classifier_takes_encoder_minus_norm():
    pre, cfg = pretrained()
    clf = build_classifier(cfg.model, num_classes=7).eval()
    # a wrapped, compiled, DDP-prefixed checkpoint still maps
    sd = {"model": {"module._orig_mod." + k: v for k, v in pre.state_dict().items()}}
    report = load_pretrained_encoder(clf, sd)
    assert sorted(report["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report["unexpected"] == []
    assert {"encoder.norm.weight", "mask_token", "motion_decoder.head.weight"} <= set(report["dropped"])
    x = torch.randn(2, 3, 4, 16, 16)
    # the classifier's tokens are the encoder's blocks output before the dropped final norm
    enc = pre.encoder
    t = enc.embed(x)[0]
    for blk in enc.blocks:
        t = blk(t)
    torch.testing.assert_close(clf.forward_features(x), t)
    assert clf(x).shape == (2, 7)


def test_bare_encoder_and_first_pooling_keep_norm():
    pre, cfg = pretrained()
    x = torch.randn(2, 3, 4, 16, 16)
    enc = build_classifier(cfg.model, 0).eval()
    assert load_pretrained_encoder(enc, pre.state_dict())["missing"] == []
    torch.testing.assert_close(enc.forward_features(x), pre.encoder.forward_features(x))
    first = build_classifier(dataclasses.replace(cfg.model, pooling="first"), 3).eval()
    load_pretrained_encoder(first, pre.state_dict())
    torch.testing.assert_close(first.forward_features(x), pre.encoder.forward_features(x))


def test_learnable_pos_embed_interpolated_to_new_size():
    pre, cfg = pretrained("model.pos_embed=learnable")
    big = dataclasses.replace(cfg.model, img_size=24, num_frames=8)
    clf = build_classifier(big, 5)
    load_pretrained_encoder(clf, pre.state_dict(), source_grid=cfg.model.grid())
    expect = resize_pos_embed(pre.encoder.pos_embed.detach(), (2, 4, 4), (4, 6, 6))
    torch.testing.assert_close(clf.pos_embed.detach(), expect)
    assert clf(torch.randn(1, 3, 8, 24, 24)).shape == (1, 5)


def test_strict_errors_name_the_keys():
    pre, cfg = pretrained()
    clf = build_classifier(cfg.model, 5)
    sd = pre.state_dict()
    with pytest.raises(UserError, match="encoder.blocks.9.extra|blocks.9.extra"):
        load_pretrained_encoder(clf, {**sd, "encoder.blocks.9.extra": torch.zeros(1)})
    with pytest.raises(UserError, match="blocks.1.mlp.fc1.weight"):
        load_pretrained_encoder(clf, {k: v for k, v in sd.items() if k != "encoder.blocks.1.mlp.fc1.weight"})
    wide = build_classifier(dataclasses.replace(cfg.model, embed_dim=64), 5)
    with pytest.raises(UserError, match="patch_embed.proj.weight"):
        load_pretrained_encoder(wide, sd)
    report = load_pretrained_encoder(clf, {**sd, "encoder.blocks.9.extra": torch.zeros(1)}, strict=False)
    assert report["unexpected"] == ["blocks.9.extra"]


def test_learnable_pos_embed_resized_from_the_checkpoint_grid():
    # 1568 tokens fit 8x14x14 but also 2x28x28 and 32x7x7: only the checkpoint's config can tell; told, the
    # table is resized from its true grid, and a table that does not fit the stated grid is an error
    pre, cfg = pretrained("model.pos_embed=learnable", "model.num_frames=16", "model.img_size=56")  # grid (8, 14, 14)
    clf = build_classifier(dataclasses.replace(cfg.model, num_frames=8, img_size=28), 5)  # grid (4, 7, 7)
    with pytest.raises(UserError, match="cannot tell its token grid.*8x14x14"):
        load_pretrained_encoder(clf, pre.state_dict())
    load_pretrained_encoder(clf, pre.state_dict(), source_grid=cfg.model.grid())
    expect = resize_pos_embed(pre.encoder.pos_embed.detach(), (8, 14, 14), (4, 7, 7))
    torch.testing.assert_close(clf.pos_embed.detach(), expect)
    with pytest.raises(UserError, match="1568 tokens, not the 8x7x7"):
        load_pretrained_encoder(clf, pre.state_dict(), source_grid=(8, 7, 7))
