import math

import pytest
import torch

from motionmae.config import ModelConfig
from motionmae.errors import UserError
from motionmae.models.vit import (
    Attention,
    VisionTransformer,
    run_blocks,
    resize_pos_embed,
    sincos3d_table,
    sinusoid_table,
)
from motionmae.objective.masking import make_mask
from motionmae.objective.tokens import patchify, unpatchify


def tiny(**kw) -> ModelConfig:
    base = dict(embed_dim=32, depth=2, num_heads=4, num_frames=4, img_size=16, patch_size=4, tubelet_size=2)
    base.update(kw)
    return ModelConfig(**base)


def test_base_encoder_parameter_count_is_vit_b():
    # ViT-B with a 2x16x16 tubelet embedding, worked out by hand (D = 768, 12 blocks, MLP 4D):
    #   patch_embed: D * (3*2*16*16) + D; per block: 2 LayerNorms 4D, qkv 3D^2 (no bias) + q/v bias 2D,
    #   proj D^2 + D, fc1 4D^2 + 4D, fc2 4D^2 + D  -> 12 D^2 + 12 D; final norm 2D; fixed sin-cos: no params.
    d = 768
    expected = d * 1536 + d + 12 * (12 * d * d + 12 * d) + 2 * d
    assert expected == 86_227_200
    with torch.device("meta"):
        model = VisionTransformer(ModelConfig(size="base"))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_sdpa_equals_eager_attention():
    torch.manual_seed(0)
    model = VisionTransformer(tiny()).eval()
    for p in model.parameters():  # non-zero q/v biases so their handling is exercised too
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 3, 4, 16, 16)
    fused = model.forward_features(x)
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
    eager = model.forward_features(x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_sincos1d_equals_transformers_table():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VideoMAEConfig(
        image_size=16, patch_size=4, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
    )
    hf = transformers.VideoMAEModel(cfg)
    ours = VisionTransformer(tiny(pos_embed="sincos1d"))
    torch.testing.assert_close(ours.pos_embed, hf.embeddings.position_embeddings.float(), atol=1e-6, rtol=0)
    # and the formula itself, at a hand-picked entry: pos 5, dims 6 (sin) and 7 (cos) of 32
    t = sinusoid_table(8, 32)
    assert t[5, 6].item() == pytest.approx(math.sin(5 / 10000 ** (6 / 32)), abs=1e-6)
    assert t[5, 7].item() == pytest.approx(math.cos(5 / 10000 ** (6 / 32)), abs=1e-6)


def test_sincos3d_table_by_hand_and_resized_grid_extends_it():
    dim = 32  # split t/h/w = 8/12/12, each half sin, half cos
    table = sincos3d_table((2, 3, 4), dim)
    assert table.shape == (24, 32)
    t, h, w = 1, 2, 3
    row = table[t * 12 + h * 4 + w]
    om = lambda d: [1 / 10000 ** (i / (d / 2)) for i in range(d // 2)]
    expect = []
    for pos, d in ((t, 8), (h, 12), (w, 12)):
        expect += [math.sin(pos * o) for o in om(d)] + [math.cos(pos * o) for o in om(d)]
    torch.testing.assert_close(row, torch.tensor(expect), atol=1e-6, rtol=0)
    # a bigger grid holds the same rows at the old coordinates (integer positions, recomputed exactly)
    model = VisionTransformer(tiny(pos_embed="sincos3d"))
    big = model.pos_embed_for((3, 5, 5))[0].reshape(3, 5, 5, -1)
    torch.testing.assert_close(big[:2, :4, :4].reshape(32, -1), model.pos_embed[0])


def test_learnable_pos_embed_resize():
    pos = torch.randn(1, 2 * 3 * 3, 8)
    assert resize_pos_embed(pos, (2, 3, 3), (2, 3, 3)) is pos
    const = torch.ones(1, 18, 8) * torch.arange(8.0)
    out = resize_pos_embed(const, (2, 3, 3), (4, 5, 6))
    assert out.shape == (1, 120, 8)
    torch.testing.assert_close(out, torch.ones(1, 120, 8) * torch.arange(8.0))
    model = VisionTransformer(tiny(pos_embed="learnable"))
    assert isinstance(model.pos_embed, torch.nn.Parameter)
    assert model(torch.randn(1, 3, 4, 24, 24)).shape == (1, 32)  # runs at another size


def test_patch_embed_token_order_matches_patchify():
    # Conv3d flatten order (t, h, w) and patchify's (tubelet, p, p, C) layout describe the same tokens
    model = VisionTransformer(tiny())
    x = torch.randn(2, 3, 4, 16, 16)
    conv = model.patch_embed(x)
    w = model.patch_embed.proj.weight  # (D, C, t, p, p) -> (D, t*p*p*C) in patchify's layout
    lin = patchify(x, 2, 4) @ w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1).T + model.patch_embed.proj.bias
    torch.testing.assert_close(conv, lin, atol=1e-5, rtol=1e-5)


def test_visible_tokens_do_not_depend_on_masked_pixels():
    torch.manual_seed(0)
    model = VisionTransformer(tiny(depth=2)).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    mask = make_mask("per_slice", 2, (2, 4, 4), 0.75, torch.Generator().manual_seed(1))
    out = model.forward_features(x, mask)
    assert out.shape == (2, 8, 32)
    noise = unpatchify(patchify(torch.randn_like(x) * 10, 2, 4) * mask[..., None], 2, 4, (2, 4, 4))
    out2 = model.forward_features(x + noise, mask)
    assert not torch.equal(x + noise, x)
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    # and it equals VideoMAE's boolean-indexing path
    t = model.embed(x)[0][~mask].reshape(2, -1, 32)
    for blk in model.blocks:
        t = blk(t)
    torch.testing.assert_close(out, model.norm(t))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_keep_last_equals_slicing_the_full_output(fused, checkpointing):
    # the decoder's shortcut: the last block computes only the kept tokens; outputs and every gradient
    # must equal running all tokens and slicing afterwards
    torch.manual_seed(0)
    model = VisionTransformer(tiny(depth=3))
    for p in model.parameters():  # non-zero q/v biases so their split is exercised
        torch.nn.init.normal_(p, std=0.2)
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused
    x = torch.randn(2, 10, 32)
    ref = run_blocks(model.blocks, x, False)[:, -7:]
    ref.square().sum().backward()
    g_ref = [p.grad.clone() for p in model.blocks.parameters()]
    model.zero_grad()
    out = run_blocks(model.blocks, x, checkpointing, keep_last=7)
    out.square().sum().backward()
    assert out.shape == (2, 7, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, p in zip(g_ref, model.blocks.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-4, rtol=1e-4)


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = VisionTransformer(tiny())
    x = torch.randn(2, 3, 4, 16, 16)
    ref = model.forward_features(x)
    ref.square().sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.grad_checkpointing = True
    out = model.forward_features(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, p in zip(g_ref, model.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_drop_path_linear_over_depth_and_off_in_eval():
    model = VisionTransformer(tiny(depth=3, drop_path=0.2), num_classes=3)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    x = torch.randn(2, 3, 4, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_classifier_layouts():
    mean = VisionTransformer(tiny(), num_classes=5)
    keys = set(mean.state_dict())
    assert {"fc_norm.weight", "head.weight", "patch_embed.proj.weight", "blocks.1.attn.q_bias"} <= keys
    assert not any(k.startswith("norm.") for k in keys) and "pos_embed" not in keys
    first = VisionTransformer(tiny(pooling="first"), num_classes=5).eval()
    assert "norm.weight" in first.state_dict() and not any(k.startswith("fc_norm") for k in first.state_dict())
    x = torch.randn(2, 3, 4, 16, 16)
    torch.testing.assert_close(first(x), first.head(first.forward_features(x)[:, 0]))
    mean.eval()
    torch.testing.assert_close(mean(x), mean.head(mean.fc_norm(mean.forward_features(x).mean(1))))


def test_forward_grid_is_token_grid():
    model = VisionTransformer(tiny()).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    grid = model.forward_grid(x)
    tokens = model.forward_features(x)
    assert grid.shape == (2, 2, 4, 4, 32)
    torch.testing.assert_close(grid[1, 1, 2, 3], tokens[1, 1 * 16 + 2 * 4 + 3])


def test_user_errors():
    with pytest.raises(UserError, match="pos_embed"):
        VisionTransformer(tiny(pos_embed="rope"))
    with pytest.raises(UserError, match="not divisible"):
        VisionTransformer(tiny())(torch.randn(1, 3, 4, 15, 16))
