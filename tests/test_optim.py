"""Optimiser groups, lr scaling and the warm-up + cosine schedule, checked against values worked out by hand."""

import math

import pytest
import torch
from torch import nn

from motionmae.engine.optim import build_optimizer, lr_at, param_groups, scaled_lr, set_lr


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 4, 8))
        self.mask_token = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Parameter(torch.randn(8, 8), requires_grad=False)


def _names(groups, decay):
    return sorted(n for g in groups if (g["weight_decay"] > 0) == decay for n in g["param_names"])


def test_no_decay_on_norms_biases_pos_embed_mask_token():
    groups = param_groups(Toy(), 0.05)
    assert _names(groups, True) == ["blocks.0.weight", "blocks.1.weight"]
    assert _names(groups, False) == ["blocks.0.bias", "blocks.1.bias", "mask_token", "norm.bias", "norm.weight", "pos_embed"]
    assert all(g["weight_decay"] in (0.0, 0.05) for g in groups)


def test_lr_scale_fn_splits_groups_and_set_lr_applies_it():
    scale = lambda name: 0.5 if name.startswith("blocks.0") else 1.0  # noqa: E731
    opt = build_optimizer(Toy(), lr=1e-3, weight_decay=0.05, lr_scale_fn=scale)
    assert len(opt.param_groups) == 4  # (decay, no decay) x (0.5, 1.0)
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        expect = 1e-3 if any(n.startswith("blocks.0") for n in g["param_names"]) else 2e-3
        assert g["lr"] == pytest.approx(expect)


def test_adamw_decays_only_the_decay_group():
    # with zero gradients Adam's update is 0, so one step is exactly the decoupled decay p <- p * (1 - lr * wd)
    torch.manual_seed(0)
    m = Toy()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = build_optimizer(m, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95))
    assert opt.defaults["betas"] == (0.9, 0.95)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in m.named_parameters():
        factor = 1 - 0.1 * 0.5 if n in ("blocks.0.weight", "blocks.1.weight") else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor)


def test_scaled_lr_is_linear_in_global_batch():
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3)  # VideoMAE ViT-B: 64 GPUs x 32


def test_warmup_then_cosine_by_hand():
    kw = dict(total_steps=110, warmup_steps=10, peak_lr=1.0, min_lr=0.1, warmup_lr=0.0)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)  # linear warm-up midpoint
    assert lr_at(10, **kw) == pytest.approx(1.0)  # peak right after warm-up
    assert lr_at(60, **kw) == pytest.approx(0.55)  # cosine midpoint: (peak + min) / 2
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)  # stays at the floor past the end
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_warmup():
    assert lr_at(0, total_steps=10, warmup_steps=0, peak_lr=2.0, min_lr=0.0) == pytest.approx(2.0)


def test_fused_adamw_follows_the_reference_loop():
    # build_optimizer picks torch's fused AdamW where it exists; it must take the steps of the plain loop
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    b.load_state_dict(a.state_dict())
    fast = build_optimizer(a, lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW(param_groups(b, 0.05), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, foreach=False)
    try:  # build_optimizer must use the fused kernel wherever this torch has it on CPU (2.13 does)
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))], fused=True)
        assert fast.defaults.get("fused")
    except RuntimeError:
        assert not fast.defaults.get("fused")
    for _ in range(5):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for m, opt in ((a, fast), (b, ref)):
            for p, g in zip(m.parameters(), grads):
                p.grad = g.clone() if p.requires_grad else None
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
