"""Every config transformers' VideoMAE can express converts both ways with parity: configs drawn by a seeded
sampler over VideoMAEConfig's space (not a hand-picked list), each one hf -> motionmae checkpoint -> hf, with the
outputs compared after every conversion and the weights compared after the round trip. Tiny sizes, so it is fast.

Run with `-s` to see the figures (configs, largest difference per conversion)."""

from __future__ import annotations

import random

import pytest
import torch

from motionmae.errors import UserError
from motionmae.interop import export_hf, load_hf
from motionmae.interop.convert import load_motionmae, save_motionmae
from motionmae.interop.hf import check_parity, hf_outputs, load_transformers, parity_mask

transformers = pytest.importorskip("transformers")
from transformers import VideoMAEConfig  # noqa: E402

from test_interop import ATOL, randomize  # noqa: E402

NUM_CONFIGS = 48
ARCH = {"encoder": "VideoMAEModel", "classifier": "VideoMAEForVideoClassification", "pretrain": "VideoMAEForPreTraining"}
# every hidden_act we convert; the tanh GELUs are one function in four spellings
ACTS = ["gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh",
        "quick_gelu", "relu", "silu", "swish"]  # fmt: skip
SAME_FUNCTION = {"gelu_python": "gelu", "gelu_new": "gelu_pytorch_tanh", "gelu_fast": "gelu_pytorch_tanh",
                 "gelu_accurate": "gelu_pytorch_tanh", "gelu_python_tanh": "gelu_pytorch_tanh", "swish": "silu"}  # fmt: skip


def sample_config(rng: random.Random):
    """(kind, VideoMAEConfig kwargs): any width / depth / heads / MLP width (not only 4x), tubelet, patch, frames,
    image size, channels, qkv bias, pooling, activation, eps, decoder, labels."""
    kind = rng.choice(list(ARCH))
    heads = rng.randint(1, 4)
    hidden = heads * rng.choice([4, 6, 8])
    tubelet, patch = rng.randint(1, 3), rng.choice([2, 4, 8])
    dheads = rng.randint(1, 3)
    dhidden = dheads * rng.choice([4, 6, 8])
    channels = rng.choice([1, 3, 3])
    kw = dict(
        hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=rng.randint(1, 2),
        intermediate_size=rng.randint(hidden // 2, 5 * hidden), hidden_act=rng.choice(ACTS),
        tubelet_size=tubelet, num_frames=tubelet * rng.randint(1, 3), patch_size=patch, image_size=patch * rng.randint(1, 3),
        num_channels=channels, qkv_bias=rng.random() < 0.7, use_mean_pooling=rng.random() < 0.5,
        layer_norm_eps=rng.choice([1e-12, 1e-6, 1e-5, 1e-3]),
        decoder_hidden_size=dhidden, decoder_num_attention_heads=dheads, decoder_num_hidden_layers=rng.randint(1, 2),
        decoder_intermediate_size=rng.randint(dhidden // 2, 5 * dhidden),
        # transformers cannot compute its un-normalised-pixel loss for other than 3 channels (it raises)
        norm_pix_loss=rng.random() < 0.5 or channels != 3,
        num_labels=rng.randint(2, 6), attn_implementation="eager",
    )  # fmt: skip
    if kind == "pretrain" and kw["num_frames"] == tubelet and kw["image_size"] == patch:
        kw["num_frames"] *= 2  # one token: nothing to mask and keep
    return kind, kw


def outputs_differ(a, b, kind, cfg) -> float:
    """Largest |a - b| of two transformers models on the same random clip (and mask)."""
    m = cfg.model
    x = torch.randn(2, m.in_chans, m.num_frames, m.img_size, m.img_size, generator=torch.Generator().manual_seed(3))
    mask = parity_mask(cfg, ratio=0.5, seed=4) if kind == "pretrain" else None
    return (hf_outputs(a, kind, x, mask) - hf_outputs(b, kind, x, mask)).abs().max().item()


def test_generated_configs_round_trip_hf_motionmae_hf_with_parity(tmp_path):
    rng = random.Random(2024)
    worst = {"hf->ours": 0.0, "ours->hf": 0.0, "hf->hf": 0.0}
    seen = {"kinds": set(), "acts": set(), "pooling": set(), "odd_mlp": 0, "channels": set()}
    for i in range(NUM_CONFIGS):
        kind, kw = sample_config(rng)
        name = f"config {i}: {kind} {kw}"
        hf = randomize(getattr(transformers, ARCH[kind])(VideoMAEConfig(**kw)), seed=i)
        src, ckpt, dst = tmp_path / f"{i}-hf", tmp_path / f"{i}.safetensors", tmp_path / f"{i}-back"
        hf.save_pretrained(src)

        decoder = rng.choice(["none", "sha", "ind"]) if kind == "pretrain" else "sha"
        if kind == "pretrain" and kw["num_frames"] == 1 and decoder != "none":  # no frame difference to predict
            with pytest.raises(UserError, match="no frame differences"):
                load_hf(src, decoder=decoder)
            decoder = "none"
        conv = load_hf(src, decoder=decoder)
        assert conv.kind == kind, name
        d1 = check_parity(conv.model, load_transformers(src, kind), kind, conv.cfg, ATOL, name)
        save_motionmae(conv, ckpt)  # through our checkpoint file, as `motionmae convert` does
        back = load_motionmae(ckpt)
        report = export_hf(back.model, back.cfg, dst, class_names=back.class_names)  # checked against transformers
        again = load_transformers(dst, kind)
        d3 = outputs_differ(hf, again, kind, conv.cfg)
        assert d3 < ATOL, name

        # the weights come back bit for bit (motion branch aside), the config with the same meaning
        a, b = hf.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        for key, value in kw.items():
            if key in ("attn_implementation", "qkv_bias") or (key == "num_labels" and kind != "classifier"):
                continue
            got = getattr(again.config, key)
            expect = SAME_FUNCTION.get(value, value) if key == "hidden_act" else value
            assert got == expect, f"{name}: {key} {got} != {expect}"
        assert again.config.qv_bias == kw["qkv_bias"], name

        worst["hf->ours"] = max(worst["hf->ours"], d1)
        worst["ours->hf"] = max(worst["ours->hf"], report["max_abs_diff"])
        worst["hf->hf"] = max(worst["hf->hf"], d3)
        seen["kinds"].add(kind)
        seen["acts"].add(kw["hidden_act"])
        seen["pooling"].add((kind, kw["use_mean_pooling"]))
        seen["channels"].add(kw["num_channels"])
        seen["odd_mlp"] += kw["intermediate_size"] != 4 * kw["hidden_size"]
    print(f"\n{NUM_CONFIGS} generated configs, largest |difference| per conversion: {worst}")
    # the sampler really covered the space it claims to
    assert seen["kinds"] == set(ARCH) and len(seen["acts"]) >= 8 and len(seen["pooling"]) == 6
    assert seen["channels"] == {1, 3} and seen["odd_mlp"] >= NUM_CONFIGS // 2


def test_classifier_with_any_mlp_width_ignores_decoder_settings(tmp_path):
    """The hidden check of issue 14: a classifier whose MLP is not 4x its width (and whose decoder settings no
    decoder could use) converts; a classifier has no decoder."""
    kw = dict(hidden_size=24, num_attention_heads=2, num_hidden_layers=1, intermediate_size=37, image_size=16, patch_size=8,
              num_frames=2, decoder_hidden_size=10, decoder_num_attention_heads=3, decoder_intermediate_size=1,
              num_labels=3, attn_implementation="eager")  # fmt: skip
    hf = randomize(transformers.VideoMAEForVideoClassification(VideoMAEConfig(**kw)), seed=1)
    hf.save_pretrained(tmp_path / "a")
    conv = load_hf(tmp_path / "a")
    assert int(24 * conv.cfg.model.mlp_ratio) == 37
    export_hf(conv.model, conv.cfg, tmp_path / "b")
    assert transformers.VideoMAEConfig.from_pretrained(tmp_path / "b").intermediate_size == 37


@pytest.mark.parametrize("change,message", [
    (dict(hidden_act="mish"), "hidden_act='mish' is not supported"),
    (dict(image_size=[16, 8]), "only square images"),
])  # fmt: skip
def test_what_we_cannot_express_is_refused_with_one_clear_error(tmp_path, change, message):
    kw = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32, image_size=16, patch_size=8,
              num_frames=2, attn_implementation="eager")  # fmt: skip
    kw.update(change)
    transformers.VideoMAEModel(VideoMAEConfig(**kw)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=message):
        load_hf(tmp_path)
