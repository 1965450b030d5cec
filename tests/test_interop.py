"""Interop with transformers' VideoMAE and original VideoMAE checkpoints: numbers agree, keys are strict,
round trips are bit-identical, pickles with embedded objects are refused. Tiny random models, no downloads."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest
import torch

from motionmae.config import ModelConfig, ObjectiveConfig, PretrainConfig, load_config
from motionmae.errors import UserError
from motionmae.interop import export_hf, load_hf, load_videomae
# fp32 outputs cannot tell a LayerNorm eps of 1e-5 from 1e-12 at 1e-4 (measured: ~3e-6 apart on these models), so the
# eps convention is checked directly with `layernorm_eps`: same LayerNorms, same order, same eps.
from motionmae.interop.hf import hf_outputs, layernorm_eps, our_outputs, parity_mask
from motionmae.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel  # noqa: E402

ATOL = 1e-4


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, LayerNorms included (weight around 1, bias around 0), so nothing is trivially 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            is_ln_weight = p.ndim == 1 and any(s in name for s in ("norm", "layernorm")) and name.endswith("weight")
            p.copy_(1 + 0.2 * r if is_ln_weight else 0.1 * r)
    return module.eval()


def hf_config(hidden=32, layers=2, heads=2, tubelet=2, patch=16, img=32, frames=4, mean_pool=True, qkv_bias=True, eps=1e-12, **kw):
    return VideoMAEConfig(
        image_size=img, patch_size=patch, num_frames=frames, tubelet_size=tubelet, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden, qkv_bias=qkv_bias,
        use_mean_pooling=mean_pool, layer_norm_eps=eps, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=128, num_labels=5, attn_implementation="eager", **kw,
    )  # fmt: skip


def clip(cfg_or_model, seed=1, batch=2):
    m = cfg_or_model
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, m.num_frames, m.img_size, m.img_size, generator=g)


CASES = {  # name: hf_config kwargs
    "tiny-t2-mean-qkvbias": dict(),
    "tiny-t1-first-noqkvbias": dict(tubelet=1, mean_pool=False, qkv_bias=False),
    "small-t1-mean": dict(hidden=64, heads=4, tubelet=1, patch=8, eps=1e-6),
    "small-t2-first": dict(hidden=64, heads=4, tubelet=2, patch=8, mean_pool=False),
    "vits-width-t2-mean": dict(hidden=384, heads=6, layers=1, tubelet=2, patch=16),  # ViT-S width and heads
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_classifier_import_matches_transformers(tmp_path, case):
    hf = randomize(VideoMAEForVideoClassification(hf_config(**CASES[case])), seed=len(case))
    hf.save_pretrained(tmp_path)
    conv = load_hf(tmp_path)
    assert conv.kind == "classifier" and conv.num_classes == 5 and not conv.fresh
    m = conv.cfg.model
    assert (m.pos_embed, m.norm_eps, m.head_norm_eps) == ("sincos1d", hf.config.layer_norm_eps, 1e-5)
    x = clip(m)
    with torch.no_grad():
        ref_tokens = hf.videomae(x.permute(0, 2, 1, 3, 4)).last_hidden_state
        ours_tokens = conv.model.forward_features(x)
        if m.pooling == "mean":  # our mean-pooling classifier's `norm` is Identity, like transformers'
            assert isinstance(conv.model.norm, torch.nn.Identity)
        ref_logits = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        ours_logits = conv.model(x)
    assert (ours_tokens - ref_tokens).abs().max() < ATOL
    assert (ours_logits - ref_logits).abs().max() < ATOL
    assert ref_logits.abs().max() > 0.1  # not trivially zero
    assert layernorm_eps(conv.model) == layernorm_eps(hf)


def test_hf_encoder_import_matches_transformers(tmp_path):
    hf = randomize(VideoMAEModel(hf_config(mean_pool=False, tubelet=1)), seed=3)
    hf.save_pretrained(tmp_path)
    conv = load_hf(tmp_path)
    assert conv.kind == "encoder" and isinstance(conv.model.head, torch.nn.Identity)
    x = clip(conv.cfg.model)
    assert (our_outputs(conv.model, "encoder", x) - hf_outputs(hf, "encoder", x)).abs().max() < ATOL
    assert layernorm_eps(conv.model) == layernorm_eps(hf)
    # visible-token path: transformers' bool_masked_pos == our mask
    mask = parity_mask(conv.cfg, batch=2, ratio=0.5, seed=4)
    with torch.no_grad():
        ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask).last_hidden_state
        ours = conv.model.forward_features(x, mask)
    assert (ours - ref).abs().max() < ATOL


def test_hf_encoder_without_final_norm_converts_both_ways(tmp_path):
    # transformers' default use_mean_pooling=True: a VideoMAEModel without its final LayerNorm -> final_norm=false
    hf = randomize(VideoMAEModel(hf_config(mean_pool=True)), seed=5)
    assert hf.layernorm is None
    hf.save_pretrained(tmp_path / "a")
    conv = load_hf(tmp_path / "a")
    assert conv.kind == "encoder" and not conv.cfg.model.final_norm and isinstance(conv.model.norm, torch.nn.Identity)
    x = clip(conv.cfg.model)
    assert (our_outputs(conv.model, "encoder", x) - hf_outputs(hf, "encoder", x)).abs().max() < ATOL
    export_hf(conv.model, conv.cfg, tmp_path / "b")
    assert VideoMAEModel.from_pretrained(tmp_path / "b").config.use_mean_pooling


def test_hf_unmapped_and_missing_keys_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    VideoMAEForVideoClassification(hf_config()).save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(str(f))
    save_file({**sd, "videomae.extra.weight": torch.zeros(2)}, str(f))
    with pytest.raises(UserError, match="no counterpart in our model: videomae.extra.weight"):
        load_hf(tmp_path)
    sd.pop("videomae.encoder.layer.1.attention.attention.value.bias", None)
    sd.pop("videomae.encoder.layer.1.attention.attention.v_bias", None)
    save_file(sd, str(f))
    with pytest.raises(UserError, match="layer.1.attention.attention.v_bias"):
        load_hf(tmp_path)


def our_classifier(pooling="mean", tubelet=2, qkv_bias=True, seed=0, head_norm_eps=1e-5):
    cfg = ModelConfig(size="tiny", embed_dim=32, depth=2, num_heads=2, patch_size=16, tubelet_size=tubelet, num_frames=4,
                      img_size=32, pos_embed="sincos1d", pooling=pooling, qkv_bias=qkv_bias, head_norm_eps=head_norm_eps)  # fmt: skip
    return randomize(VisionTransformer(cfg, num_classes=7), seed), PretrainConfig(model=cfg)


@pytest.mark.parametrize("pooling,tubelet,qkv_bias", [("mean", 2, True), ("first", 1, False)])
def test_export_loads_in_transformers_and_round_trips_bit_identical(tmp_path, pooling, tubelet, qkv_bias):
    model, cfg = our_classifier(pooling, tubelet, qkv_bias)
    report = export_hf(model, cfg, tmp_path)  # verifies against transformers itself
    assert report["kind"] == "classifier" and report["max_abs_diff"] < ATOL
    hf, info = VideoMAEForVideoClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert layernorm_eps(model) == layernorm_eps(hf)
    x = clip(cfg.model, seed=5)
    with torch.no_grad():
        assert (model(x) - hf.eval()(pixel_values=x.permute(0, 2, 1, 3, 4)).logits).abs().max() < ATOL
    back = load_hf(tmp_path)
    a, b = model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert dataclasses.replace(back.cfg.model, size=cfg.model.size) == cfg.model  # `size` is only a label here


def test_encoder_export_is_videomae_model_and_round_trips(tmp_path):
    cfg = PretrainConfig(model=ModelConfig(size="tiny", embed_dim=32, depth=1, num_heads=2, patch_size=16, num_frames=4,
                                           img_size=32, pos_embed="sincos1d", norm_eps=1e-12))  # fmt: skip
    enc = randomize(VisionTransformer(cfg.model), seed=25)
    report = export_hf(enc, cfg, tmp_path)  # any head_norm_eps: an encoder has no fc_norm
    assert report["kind"] == "encoder" and report["max_abs_diff"] < ATOL
    hf = VideoMAEModel.from_pretrained(tmp_path)
    assert not hf.config.use_mean_pooling and hf.layernorm is not None
    back = load_hf(tmp_path).model.state_dict()
    assert all(torch.equal(back[k], v) for k, v in enc.state_dict().items())


def test_export_refuses_sincos3d_and_other_head_eps(tmp_path):
    model, cfg = our_classifier()
    cfg3 = PretrainConfig(model=dataclasses.replace(cfg.model, pos_embed="sincos3d"))
    with pytest.raises(UserError, match="pos_embed='sincos3d' cannot be exported"):
        export_hf(VisionTransformer(cfg3.model, num_classes=7), cfg3, tmp_path / "a")
    cfg6 = PretrainConfig(model=dataclasses.replace(cfg.model, head_norm_eps=1e-6))
    with pytest.raises(UserError, match="head_norm_eps=1e-06"):
        export_hf(VisionTransformer(cfg6.model, num_classes=7), cfg6, tmp_path / "b")


def test_original_eps_exports_only_when_allowed_and_the_difference_is_measured(tmp_path):
    model, cfg = our_classifier(head_norm_eps=None)  # fc_norm eps = norm_eps = 1e-6, VideoMAE's
    with pytest.raises(UserError, match="--allow-eps-change"):
        export_hf(model, cfg, tmp_path)
    report = export_hf(model, cfg, tmp_path, allow_eps_change=True)
    assert 0 < report["max_abs_diff"] < ATOL  # not identical, and measured against our model as it is


def test_export_verification_catches_a_wrong_number(tmp_path):
    """Export compares outputs, not only key names: a model transformers cannot reproduce (here its fixed
    positional table was altered, which no key carries) is refused."""
    model, cfg = our_classifier()
    model.pos_embed.mul_(0.9)  # a different table than transformers' fixed sinusoid (a constant shift would cancel in LayerNorm)
    with pytest.raises(UserError, match="outputs differ from transformers'"):
        export_hf(model, cfg, tmp_path)
    model, cfg = our_classifier()
    model.blocks[1].norm2.eps = 1e-5  # invisible at 1e-4 in the outputs, caught by the structural check
    with pytest.raises(UserError, match="LayerNorm eps differ"):
        export_hf(model, cfg, tmp_path)


# ----------------------------------------------------------------------------------------------
# original VideoMAE .pth


def hf_to_original_layout(sd: dict) -> dict:
    """transformers VideoMAE keys -> original VideoMAE keys (fine-tuned layout, or `encoder.*`/`decoder.*` for
    pretraining), written out independently of the converter under test (so the test checks the mapping, not itself)."""
    pretrain = any(k.startswith("decoder.") for k in sd)
    enc = "encoder." if pretrain else ""
    out = {}
    for k, v in sd.items():
        k = k.replace("videomae.embeddings.patch_embeddings.projection", enc + "patch_embed.proj")
        k = k.replace("videomae.encoder.layer.", enc + "blocks.").replace("videomae.layernorm", enc + "norm")
        k = k.replace("decoder.decoder_layers.", "decoder.blocks.")
        k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
        k = k.replace("attention.output.dense", "attn.proj").replace("intermediate.dense", "mlp.fc1")
        k = k.replace("output.dense", "mlp.fc2").replace("classifier", "head")
        k = k.replace("attention.attention.query.bias", "attn.q_bias").replace("attention.attention.value.bias", "attn.v_bias")
        k = k.replace("attention.attention.q_bias", "attn.q_bias").replace("attention.attention.v_bias", "attn.v_bias")
        out[k] = v
    for p in [k[: -len("attention.attention.query.weight")] for k in out if k.endswith("attention.attention.query.weight")]:
        out[p + "attn.qkv.weight"] = torch.cat([out.pop(p + f"attention.attention.{n}.weight") for n in ("query", "key", "value")])
    return out


def test_original_videomae_pth_matches_transformers(tmp_path):
    # original VideoMAE uses eps 1e-6 everywhere; with use_mean_pooling=False, transformers then computes the same function
    hf = randomize(VideoMAEForVideoClassification(hf_config(mean_pool=False, eps=1e-6, frames=8)), seed=7)
    sd = hf_to_original_layout(hf.state_dict())
    sd = {"_orig_mod.module." + k: v for k, v in sd.items()}  # torch.compile + DDP prefixes
    ckpt = {"model": sd, "epoch": 3, "args": argparse.Namespace(model="vit_tiny", lr=1e-3)}  # as the research code saves
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    conv = load_videomae(tmp_path / "checkpoint.pth", num_frames=8, img_size=32, num_heads=2)
    assert conv.kind == "classifier" and conv.cfg.model.pooling == "first" and conv.cfg.model.tubelet_size == 2
    x = clip(conv.cfg.model, seed=9)
    assert (our_outputs(conv.model, "classifier", x) - hf_outputs(hf, "classifier", x)).abs().max() < ATOL
    assert layernorm_eps(conv.model) == layernorm_eps(hf) == [1e-6] * 5  # 2 blocks x 2 + final norm


def test_original_videomae_pretraining_pth_matches_transformers(tmp_path):
    hf = randomize(VideoMAEForPreTraining(hf_config(mean_pool=False, eps=1e-6, hidden=384, heads=6, layers=1)), seed=8)
    hf.decoder.norm.eps = 1e-6  # now transformers computes exactly the original VideoMAE (eps 1e-6 everywhere)
    torch.save({"model": hf_to_original_layout(hf.state_dict()), "epoch": 799}, tmp_path / "checkpoint-799.pth")
    conv = load_videomae(tmp_path / "checkpoint-799.pth", num_frames=4, img_size=32, decoder_num_heads=2, decoder="none")
    assert conv.kind == "pretrain" and conv.cfg.model.num_heads == 6 and conv.cfg.mask.kind == "tube"  # a plain VideoMAE
    assert layernorm_eps(conv.model) == layernorm_eps(hf)
    x, mask = clip(conv.cfg.model, seed=10), parity_mask(conv.cfg, ratio=0.75, seed=11)
    assert (our_outputs(conv.model, "pretrain", x, mask) - hf_outputs(hf, "pretrain", x, mask)).abs().max() < ATOL


def test_original_videomae_pretrain_layout_imports_with_fresh_motion_head(tmp_path):
    from motionmae.models.pretrain import PretrainModel

    cfg = ModelConfig(size="tiny", embed_dim=192, depth=1, num_heads=3, patch_size=16, num_frames=4, img_size=32,
                      pos_embed="sincos1d", decoder="none", decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    src = randomize(PretrainModel(PretrainConfig(model=cfg, objective=ObjectiveConfig(targets=("appearance",)))), seed=11)
    torch.save({"module": src.state_dict()}, tmp_path / "pretrain.pth")
    conv = load_videomae(tmp_path / "pretrain.pth", num_frames=4, img_size=32, decoder_num_heads=2, decoder="ind")
    assert conv.kind == "pretrain" and conv.cfg.model.num_heads == 3  # 192 wide -> 3 heads (VideoMAE ViT-T table)
    # 'ind': the whole second decoder starts fresh; everything else is the file's, bit for bit
    assert {k.split(".")[0] for k in conv.fresh} == {"motion_encoder_to_decoder", "motion_mask_token", "motion_decoder"}
    got = conv.model.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(got[k], v), k


def test_pickle_with_embedded_object_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match=r"refused to unpickle.*(system|GLOBAL)"):
        load_videomae(tmp_path / "evil.pth")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# pretraining models


def test_hf_pretraining_import_decoder_and_loss_match_transformers(tmp_path):
    # the hub's VideoMAE pretraining checkpoints have use_mean_pooling=False (encoder norm kept)
    hf = randomize(VideoMAEForPreTraining(hf_config(mean_pool=False, norm_pix_loss=True)), seed=13)
    hf.save_pretrained(tmp_path)
    conv = load_hf(tmp_path, decoder="sha")
    assert conv.kind == "pretrain" and conv.cfg.objective.appearance_norm
    assert sorted(conv.fresh) == ["decoder.motion_head.bias", "decoder.motion_head.weight"]
    x = clip(conv.cfg.model, seed=14)
    mask = parity_mask(conv.cfg, batch=2, ratio=0.75, seed=15)
    with torch.no_grad():
        ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
        ours = conv.model(x, mask)
    assert (ours["pred_appearance"] - ref.logits).abs().max() < ATOL
    assert layernorm_eps(conv.model) == layernorm_eps(hf)  # encoder 1e-12, decoder blocks 1e-12, decoder.norm 1e-5
    # same norm-pix target convention (per cube, per channel, unbiased std + 1e-6): same loss
    assert abs(ours["loss_appearance"].item() - ref.loss.item()) < 1e-5 * max(1.0, ref.loss.item())


def our_pretrain(decoder="sha", seed=0):
    cfg = PretrainConfig(model=ModelConfig(size="tiny", embed_dim=32, depth=2, num_heads=2, patch_size=16, num_frames=4, img_size=32,
                                           pos_embed="sincos1d", decoder=decoder, decoder_embed_dim=32, decoder_depth=1,
                                           decoder_num_heads=2, head_norm_eps=1e-5))  # fmt: skip
    from motionmae.models.pretrain import PretrainModel

    return randomize(PretrainModel(cfg), seed), cfg


def test_pretrain_export_drops_motion_head_and_round_trips(tmp_path):
    model, cfg = our_pretrain("sha", seed=17)
    report = export_hf(model, cfg, tmp_path)
    assert report["kind"] == "pretrain" and report["dropped"] == ["decoder.motion_head.bias", "decoder.motion_head.weight"]
    hf, info = VideoMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert layernorm_eps(model) == layernorm_eps(hf)
    x, mask = clip(cfg.model, seed=18), parity_mask(cfg, ratio=0.5, seed=19)
    with torch.no_grad():
        assert (model(x, mask)["pred_appearance"] - hf.eval()(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask).logits).abs().max() < ATOL
    back = load_hf(tmp_path, decoder="sha")  # the appearance branch comes back bit for bit
    a, b = model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("decoder.motion_head."))


def test_pytorch_model_bin_and_learnable_pos_embed(tmp_path):
    """transformers directories with pytorch_model.bin (older saves) read like safetensors ones; an original
    VideoMAE fine-tuned file with a learnable `pos_embed` keeps it (and pins the token count)."""
    from safetensors.torch import load_file

    VideoMAEForVideoClassification(hf_config()).save_pretrained(tmp_path / "a")
    sd = load_file(str(tmp_path / "a" / "model.safetensors"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_bytes((tmp_path / "a" / "config.json").read_bytes())
    torch.save(sd, tmp_path / "b" / "pytorch_model.bin")
    a, b = load_hf(tmp_path / "a").model.state_dict(), load_hf(tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    cfg = ModelConfig(size="small", embed_dim=384, depth=1, num_heads=6, patch_size=16, num_frames=4, img_size=32, pos_embed="learnable")
    src = randomize(VisionTransformer(cfg, num_classes=3), seed=31)
    torch.save({"model": src.state_dict()}, tmp_path / "ft.pth")
    with pytest.raises(UserError, match="learnable pos_embed has 8 tokens"):
        load_videomae(tmp_path / "ft.pth")  # default 16 frames x 224 px would be 784 tokens
    conv = load_videomae(tmp_path / "ft.pth", num_frames=4, img_size=32)
    assert conv.cfg.model.pos_embed == "learnable" and conv.cfg.model.num_heads == 6
    got = conv.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items())


def test_transformers_load_with_dropped_biases_is_caught(tmp_path):
    """If transformers does not take the q/v biases (the hub bug in ANCHORS.md), the check says so instead of
    trusting "it loaded": here the bias keys are renamed so transformers cannot map them."""
    from safetensors.torch import load_file, save_file

    from motionmae.interop.hf import check_parity, load_transformers

    model, cfg = our_classifier()
    export_hf(model, cfg, tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(str(f))
    save_file({k.replace("q_bias", "q_bias_renamed"): v for k, v in sd.items()}, str(f))
    with pytest.raises(UserError, match="from_pretrained reports"):
        load_transformers(tmp_path, "classifier")
    # and had it loaded with those biases at zero, the outputs would not match ours
    hf = VideoMAEForVideoClassification.from_pretrained(tmp_path).eval()
    with pytest.raises(UserError, match="outputs differ"):
        check_parity(model, hf, "classifier", cfg)


def test_hf_preset_suffix_is_a_harmless_alias(tmp_path):
    # '<preset>-hf' = the preset with what transformers can express, which the defaults are now: the same config
    from motionmae.models.pretrain import PretrainModel

    for name in ("motionmae-sha-base", "videomae-small", "pretrain-ssv2"):
        assert load_config(name + "-hf") == load_config(name)

    cfg = load_config("videomae-tiny-hf", ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.num_frames=4",
                                           "model.img_size=32", "model.decoder_embed_dim=32", "model.decoder_depth=1",
                                           "model.decoder_num_heads=2"])
    assert (cfg.model.pos_embed, cfg.model.head_norm_eps, cfg.model.decoder, cfg.mask.kind) == ("sincos1d", 1e-5, "none", "tube")
    assert load_config("motionmae-sha-base-hf").model.size == "base"
    report = export_hf(randomize(PretrainModel(cfg), seed=3), cfg, tmp_path)
    assert report["kind"] == "pretrain" and report["max_abs_diff"] < ATOL
    with pytest.raises(UserError, match="each also with '-hf'"):
        load_config("videomae-enormous-hf")


# ----------------------------------------------------------------------------------------------
# the positional table travels with the weights


def _tiny_cfg(**kw):
    return ModelConfig(**{**dict(size="tiny", embed_dim=32, depth=1, num_heads=2, patch_size=16, num_frames=4, img_size=32), **kw})


def test_what_the_weights_say_about_their_positional_table(tmp_path):
    """VideoMAE layout: no `pos_embed` = the 1D table. So sincos1d stores none, sincos3d stores its table, and a
    stored table must be the config's (loading it under another table is an error, not a guess)."""
    from motionmae.config import model_config_from_dict, to_dict
    from motionmae.runtime.checkpoint import save_checkpoint
    from motionmae.eval.features import load_encoder

    assert "pos_embed" not in VisionTransformer(_tiny_cfg(pos_embed="sincos1d")).state_dict()
    enc3 = randomize(VisionTransformer(_tiny_cfg(pos_embed="sincos3d")), seed=1)
    sd = enc3.state_dict()
    assert torch.equal(sd["pos_embed"], enc3.pos_embed)
    # a VideoMAE-layout reader (ours: load_videomae) takes the stored table as it is: the same function
    torch.save({"model": sd}, tmp_path / "as_videomae.pth")
    conv = load_videomae(tmp_path / "as_videomae.pth", num_frames=4, img_size=32, num_heads=2)
    x = clip(conv.cfg.model, seed=2)
    with torch.no_grad():
        assert torch.equal(conv.model.forward_features(x), enc3.forward_features(x))
    # the table of a sincos3d checkpoint is checked against the config's
    save_checkpoint(tmp_path / "a.safetensors", enc3, state={"config": {"model": to_dict(enc3.cfg)}})
    assert torch.equal(load_encoder(tmp_path / "a.safetensors").pos_embed, enc3.pos_embed)
    bad = dict(sd, pos_embed=sd["pos_embed"] * 0.9)
    with pytest.raises(UserError, match="not the model.pos_embed='sincos3d' table"):
        VisionTransformer(_tiny_cfg(pos_embed="sincos3d")).load_state_dict(bad)
    # ... a config that says sincos1d for weights that carry a table
    save_checkpoint(tmp_path / "b.safetensors", enc3, state={"config": {"model": to_dict(_tiny_cfg(pos_embed="sincos1d"))}})
    with pytest.raises(UserError, match="unexpected keys \\['pos_embed'\\].*trained with model.pos_embed=sincos3d or learnable"):
        load_encoder(tmp_path / "b.safetensors")
    # ... and a config that does not say at all is refused, not read with today's default
    no_kind = {k: v for k, v in to_dict(enc3.cfg).items() if k != "pos_embed"}
    with pytest.raises(UserError, match="does not say which positional table"):
        model_config_from_dict({"model": no_kind})


def test_checkpoint_without_its_sincos3d_table_is_refused_and_convert_adds_it(tmp_path, capsys):
    """Checkpoints written before sincos3d tables were stored: the config says sincos3d, the weights have no table.
    Loading them is refused (the same weights could be a sincos1d model); `convert --from motionmae --to motionmae`
    re-saves them with the table computed from their own config."""
    from motionmae.cli import main
    from motionmae.config import to_dict
    from motionmae.runtime.checkpoint import save_checkpoint
    from motionmae.eval.features import load_encoder
    from motionmae.models.pretrain import PretrainModel

    cfg = PretrainConfig(model=_tiny_cfg(pos_embed="sincos3d", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    model = randomize(PretrainModel(cfg), seed=3)
    # such a file: the same weights saved from a model that stores no table, under the sincos3d config
    legacy = PretrainModel(PretrainConfig(model=dataclasses.replace(cfg.model, pos_embed="sincos1d")))
    legacy.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("pos_embed")})
    old = save_checkpoint(tmp_path / "old.safetensors", legacy, state={"config": to_dict(cfg)}, rng=False)
    with pytest.raises(UserError, match="no stored sincos3d positional table.*convert --from motionmae --to motionmae"):
        load_encoder(old)
    assert main(["convert", "--from", "motionmae", "--to", "motionmae", str(old), str(tmp_path / "new")]) == 0
    assert "added the sincos3d positional table(s) encoder.pos_embed, decoder.pos_embed" in capsys.readouterr().out
    enc = load_encoder(tmp_path / "new")
    x = clip(cfg.model, seed=4)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(x), model.encoder.forward_features(x))


def test_fine_tuning_at_another_size_checks_the_stored_table_then_takes_the_exact_one():
    from motionmae.models.classifier import load_pretrained_encoder
    from motionmae.models.vit import sincos3d_table

    pre = VisionTransformer(_tiny_cfg(pos_embed="sincos3d"))  # grid 2 x 2 x 2
    clf = VisionTransformer(_tiny_cfg(pos_embed="sincos3d", num_frames=8, img_size=48), num_classes=3)  # 4 x 3 x 3
    load_pretrained_encoder(clf, pre.state_dict(), source_grid=(2, 2, 2))
    torch.testing.assert_close(clf.pos_embed[0], sincos3d_table((4, 3, 3), 32))
    sd = dict(pre.state_dict(), pos_embed=pre.state_dict()["pos_embed"].flip(1))  # a table of another kind
    with pytest.raises(UserError, match="not the model.pos_embed='sincos3d' table of the 2x2x2 token grid"):
        load_pretrained_encoder(clf, sd, source_grid=(2, 2, 2))
