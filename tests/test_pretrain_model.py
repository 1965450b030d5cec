import dataclasses

import pytest
import torch

from motionmae.config import load_config
from motionmae.errors import UserError
from motionmae.models.pretrain import PretrainModel
from motionmae.objective.masking import make_mask

TINY = [
    "model.embed_dim=64", "model.depth=1", "model.num_heads=4", "model.num_frames=4", "model.img_size=16",
    "model.patch_size=4", "model.decoder_embed_dim=64", "model.decoder_depth=1", "model.decoder_num_heads=4",
]


def build(preset, *overrides, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(preset, TINY + list(overrides))
    return PretrainModel(cfg), cfg


def batch(model, cfg, frames=4, seed=0, kind="per_slice", ratio=0.5):
    g = torch.Generator().manual_seed(seed)
    clip01 = torch.nn.functional.avg_pool3d(torch.rand(2, 3, frames, 16, 16, generator=g), (1, 3, 3), 1, (0, 1, 1))
    mask = make_mask(kind, 2, cfg.model.grid(), ratio, g)
    return (clip01 - model.mean) / model.std, mask


def videomae_loss_by_hand(model, clip, mask, decoded=None):
    """VideoMAE's forward and loss, written independently: boolean indexing instead of gathers, and the
    target cut cube by cube in Python loops (per cube, per channel, unbiased std, eps 1e-6). `decoded` (dual
    masking, VideoMAE v2): the masked tokens the decoder gets and is scored on (default: all of `mask`)."""
    decoded = mask if decoded is None else decoded
    enc, b = model.encoder, clip.shape[0]
    x = enc.patch_embed(clip) + enc.pos_embed
    x = x[~mask].reshape(b, -1, x.shape[-1])
    for blk in enc.blocks:
        x = blk(x)
    x = model.encoder_to_decoder(enc.norm(x))
    pos = model.decoder.pos_embed.expand(b, -1, -1)
    n_mask = int(decoded[0].sum())
    x = torch.cat([x + pos[~mask].reshape(b, -1, x.shape[-1]), model.mask_token + pos[decoded].reshape(b, n_mask, -1)], 1)
    for blk in model.decoder.blocks:
        x = blk(x)
    pred = model.decoder.head(model.decoder.norm(x[:, -n_mask:]))

    clip01 = clip * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    gh = gw = 4  # 16 px / patch 4
    total, count = 0.0, 0
    for i in range(b):
        row = 0
        for n in range(mask.shape[1]):
            if not decoded[i, n]:
                continue
            t, h, w = n // (gh * gw), (n // gw) % gh, n % gw
            cube = clip01[i, :, 2 * t : 2 * t + 2, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4]  # (C, 2, 4, 4)
            cube = cube.permute(1, 2, 3, 0).reshape(-1, 3)  # (2*4*4, C)
            target = (cube - cube.mean(0)) / (cube.std(0, unbiased=True) + 1e-6)
            total = total + ((pred[i, row].reshape(-1, 3) - target) ** 2).sum()
            count += target.numel()
            row += 1
    return total / count


def test_decoder_none_loss_is_videomae_normalised_pixel_mse():
    model, cfg = build("videomae")
    clip, mask = batch(model, cfg, kind="tube")
    out = model(clip, mask)
    assert "pred_motion" not in out and "loss_motion" not in out  # appearance is the only target
    expect = videomae_loss_by_hand(model, clip, mask)
    torch.testing.assert_close(out["loss"], expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss_appearance"], out["loss"])


def test_dual_masking_is_videomae_v2_by_hand():
    # VideoMAE v2's objective: the decoder gets the visible tokens and the masked tokens its mask keeps; the loss
    # is taken on those only
    from motionmae.objective.masking import decoder_mask

    model, cfg = build("videomae")
    clip, mask = batch(model, cfg, kind="tube", ratio=0.75)
    dec = decoder_mask(mask, cfg.model.grid(), 0.5, torch.Generator().manual_seed(1))
    out = model(clip, mask, dec)
    assert out["pred_appearance"].shape == (2, int((mask & ~dec)[0].sum()), 96) and int((mask & ~dec)[0].sum()) == 12
    assert torch.equal(out["ids_masked"], (mask & ~dec).nonzero()[:, 1].reshape(2, -1))
    torch.testing.assert_close(out["loss"], videomae_loss_by_hand(model, clip, mask, mask & ~dec), atol=1e-5, rtol=1e-5)
    # an empty decoder mask is no decoder mask
    full = model(clip, mask)
    for k, v in model(clip, mask, torch.zeros_like(mask)).items():
        assert torch.equal(v, full[k])


@pytest.mark.parametrize("decoder", ["sha", "ind", "none"])
def test_dual_masking_scores_only_the_kept_tokens(decoder):
    # every decoder layout and target: predictions and targets at the kept masked tokens only (the targets those of
    # the full objective there); the pixels of a masked cube the decoder drops cannot change the loss, a kept one's do
    from motionmae.objective.masking import decoder_mask

    targets = "[appearance]" if decoder == "none" else "[appearance,motion,hog]"
    model, cfg = build("motionmae-sha", f"model.decoder={decoder}", f"objective.targets={targets}", "objective.hog_cell=2",
                       "mask.decoder_ratio=0.5")
    clip, mask = batch(model, cfg, ratio=0.75)
    dec = decoder_mask(mask, cfg.model.grid(), cfg.mask.decoder_ratio, torch.Generator().manual_seed(3))
    out, full = model(clip, mask, dec), model(clip, mask)
    out["loss"].backward()
    kept = mask & ~dec
    rows = kept[mask].reshape(2, -1)  # which rows of the full objective are kept
    for t in model.targets:
        assert out[f"pred_{t.name}"].shape == (2, int(kept[0].sum()), t.dim)
        assert torch.equal(out[f"target_{t.name}"], full[f"target_{t.name}"][rows].reshape(2, -1, t.dim))

    if decoder != "none":  # HOG's Sobel filters reach into the neighbouring cubes: appearance and motion here
        model, cfg = build("motionmae-sha", f"model.decoder={decoder}", "mask.decoder_ratio=0.5")
    loss = model(clip, mask, dec)["loss"].detach()

    def with_cube(token, value):  # clip 0 with cube `token` of the last time slice set (no motion target reaches back)
        x = clip.clone()
        h, w = divmod(token % 16, 4)
        x[0, :, 2:4, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4] = value
        return model(x, mask, dec)["loss"]

    last = torch.arange(16, 32)  # the tokens of the second (last) time slice
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(with_cube(int(last[dec[0, 16:]][0]), noise), loss)
        assert not torch.allclose(with_cube(int(last[kept[0, 16:]][0]), noise), loss)


def test_w_motion_zero_is_exactly_videomae():
    sha, cfg = build("motionmae-sha", "objective.w_motion=0", "mask.kind=tube")
    none, _ = build("videomae")
    missing, unexpected = none.load_state_dict(sha.state_dict(), strict=False)
    assert missing == [] and set(unexpected) == {"decoder.motion_head.weight", "decoder.motion_head.bias"}
    clip, mask = batch(sha, cfg, kind="tube")
    a, b = sha(clip, mask), none(clip, mask)
    assert a["loss"].item() == b["loss"].item() and a["loss_motion"].item() > 0
    a["loss"].backward()
    b["loss"].backward()
    for (name, p), q in zip(sha.encoder.named_parameters(), none.encoder.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def _touched(model, out_tensor):
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(out_tensor.sum(), list(params.values()), allow_unused=True, retain_graph=True)
    return {n for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}


def test_sha_heads_share_everything_but_last_linear():
    model, cfg = build("motionmae-sha")
    for p in model.parameters():  # non-zero biases everywhere so every parameter shows in the gradient
        torch.nn.init.normal_(p, std=0.1)
    out = model(*batch(model, cfg))
    app, mot = _touched(model, out["pred_appearance"]), _touched(model, out["pred_motion"])
    everything = set(dict(model.named_parameters()))
    assert app ^ mot == {"decoder.head.weight", "decoder.head.bias", "decoder.motion_head.weight", "decoder.motion_head.bias"}
    assert app | mot == everything


def test_ind_decoders_share_only_the_encoder():
    model, cfg = build("motionmae-ind")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = model(*batch(model, cfg))
    app, mot = _touched(model, out["pred_appearance"]), _touched(model, out["pred_motion"])
    assert app & mot == {n for n, _ in model.encoder.named_parameters(prefix="encoder")}
    assert all(n.startswith("motion_") for n in mot - app)


@pytest.mark.parametrize("decoder", ["sha", "ind"])
def test_overfit_fixed_batch_both_losses_drop_5x(decoder):
    model, cfg = build(f"motionmae-{decoder}")
    clip, mask = batch(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        out = model(clip, mask)
        if step == 0:
            first = out["loss_appearance"].item(), out["loss_motion"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    out = model(clip, mask)
    assert out["loss_appearance"].item() < first[0] / 5
    assert out["loss_motion"].item() < first[1] / 5


def test_extra_frame_encoder_sees_first_t_frames():
    model, cfg = build("motionmae-sha", "objective.motion_pad=extra_frame")
    clip, mask = batch(model, cfg, frames=5)
    out = model(clip, mask)
    first = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, motion_pad="first"))
    same = PretrainModel(first)
    same.load_state_dict(model.state_dict())
    ref = same(clip[:, :, :4], mask)
    torch.testing.assert_close(out["pred_appearance"], ref["pred_appearance"])
    torch.testing.assert_close(out["loss_appearance"], ref["loss_appearance"])
    assert not torch.allclose(out["target_motion"], ref["target_motion"])


def test_output_shapes_gray_motion_and_losses():
    model, cfg = build("motionmae-sha", "objective.motion_color=gray", "objective.loss=l1")
    clip, mask = batch(model, cfg)
    out = model(clip, mask)
    assert out["pred_appearance"].shape == (2, 16, 96) and out["pred_motion"].shape == (2, 16, 32)
    torch.testing.assert_close(out["loss_motion"], (out["pred_motion"] - out["target_motion"]).abs().mean())
    torch.testing.assert_close(out["loss"], out["loss_appearance"] + out["loss_motion"])
    assert torch.equal(out["ids_masked"][0], mask[0].nonzero()[:, 0])


def test_bf16_autocast_and_grad_checkpointing():
    model, cfg = build("motionmae-ind")
    clip, mask = batch(model, cfg)
    ref = model(clip, mask)["loss"]
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(clip, mask)["loss"], ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(clip, mask)
    assert out["pred_appearance"].dtype == torch.bfloat16 and out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert abs(out["loss"].item() - ref.item()) < 0.05 * ref.item()


def test_user_errors():
    with pytest.raises(UserError, match="decoder"):
        build("motionmae-sha", "model.decoder=shared")
    model, cfg = build("motionmae-sha")
    clip, mask = batch(model, cfg)
    with pytest.raises(UserError, match=r"\(2, 32\)"):
        model(clip, mask[:, :16])


def test_a_head_per_target_with_videomae_key_names_for_appearance():
    from motionmae.models.pretrain import branch_prefixes

    three = ["objective.targets=[appearance,motion,hog]", "objective.hog_cell=2", "objective.w_hog=0.5"]
    sha, cfg = build("motionmae-sha", *three)
    heads = {k for k in sha.state_dict() if "head" in k}
    assert heads == {f"decoder.{h}.{p}" for h in ("head", "motion_head", "hog_head") for p in ("weight", "bias")}
    assert branch_prefixes(cfg) == ("decoder.motion_head.", "decoder.hog_head.")
    out = sha(*batch(sha, cfg))
    assert out["pred_hog"].shape == out["target_hog"].shape == (2, 16, 2 * 2 * 9 * 3)  # 4 px patches, 2x2 cells of 2 px
    torch.testing.assert_close(out["loss"], out["loss_appearance"] + out["loss_motion"] + 0.5 * out["loss_hog"])
    ind, cfg = build("motionmae-ind", *three)
    assert {k.split(".")[0] for k in ind.state_dict()} == {
        "encoder", "encoder_to_decoder", "mask_token", "decoder", "motion_encoder_to_decoder", "motion_mask_token",
        "motion_decoder", "hog_encoder_to_decoder", "hog_mask_token", "hog_decoder"}
    assert branch_prefixes(cfg) == ("motion_", "hog_")


def test_overfit_fixed_batch_with_hog_every_loss_drops_5x():
    model, cfg = build("motionmae-sha", "objective.targets=[appearance,motion,hog]", "objective.hog_cell=2")
    clip, mask = batch(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    names = ("loss_appearance", "loss_motion", "loss_hog")
    for step in range(150):
        out = model(clip, mask)
        if step == 0:
            first = [out[k].item() for k in names]
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    out = model(clip, mask)
    assert all(out[k].item() < f / 5 for k, f in zip(names, first)), ([out[k].item() for k in names], first)
