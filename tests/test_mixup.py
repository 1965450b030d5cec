import torch

from motionmae.engine.mixup import Mixup, RandomErasing, cutmix_box, smooth_one_hot, soft_cross_entropy


def _constant_batch(b=4, c=3, t=4, h=16, w=24):
    # sample i is the constant i + 1, so every pixel says which sample it came from
    return torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, c, t, h, w).contiguous()


def test_smooth_one_hot_values():
    y = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert torch.allclose(y[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(y.sum(1), torch.ones(2))


def test_cutmix_labels_match_pixel_area_and_box_is_shared_by_frames():
    b, num_classes = 4, 5
    x = _constant_batch(b)
    target = torch.tensor([0, 1, 2, 3])
    mix = Mixup(num_classes, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    g = torch.Generator().manual_seed(0)
    seen_partial = 0
    for _ in range(20):
        out, soft = mix(x, target, g)
        assert torch.allclose(soft.sum(1), torch.ones(b))
        for i in range(b):
            own = (out[i] == i + 1).float().mean().item()  # fraction of the clip still from sample i
            other = (out[i] == b - i).float().mean().item()  # from its partner in the reversed batch
            assert abs(own + other - 1.0) < 1e-6
            assert abs(soft[i, target[i]].item() - own) < 1e-6
            assert abs(soft[i, target[b - 1 - i]].item() - other) < 1e-6
            # one box for the whole clip: every frame and channel has the same pattern
            assert torch.equal(out[i], out[i, :1, :1].expand_as(out[i]))
        seen_partial += 0.0 < own < 1.0
    assert seen_partial > 10  # boxes were actually cut most of the time


def test_cutmix_box_is_clipped_and_area_matches_lambda_when_inside():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        y0, y1, x0, x1 = cutmix_box(32, 48, 0.75, g)
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 48
        assert y1 - y0 <= 16 and x1 - x0 <= 24  # sqrt(1 - 0.75) of each side, at most


def test_mixup_is_convex_combination_with_smoothing():
    b, k, s = 4, 6, 0.1
    x = _constant_batch(b)
    target = torch.tensor([5, 1, 2, 3])
    mix = Mixup(k, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=s)
    out, soft = mix(x, target, torch.Generator().manual_seed(3))
    lam = (out[0, 0, 0, 0, 0].item() - b) / (1 - b)  # out0 = lam * 1 + (1 - lam) * 4
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(soft.sum(1), torch.ones(b))
    off = s / k
    assert abs(soft[0, 5].item() - (lam * (1 - s + off) + (1 - lam) * off)) < 1e-5
    assert abs(soft[0, 3].item() - (lam * off + (1 - lam) * (1 - s + off))) < 1e-5
    assert abs(soft[0, 0].item() - off) < 1e-6


def test_same_generator_seed_same_result():
    x, t = torch.randn(4, 3, 4, 16, 16), torch.tensor([0, 1, 2, 3])
    mix = Mixup(4)
    a = mix(x, t, torch.Generator().manual_seed(7))
    b = mix(x, t, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_random_erasing_one_box_per_clip_same_on_all_frames():
    x = torch.zeros(64, 3, 4, 32, 32)
    out = RandomErasing(prob=0.25)(x, torch.Generator().manual_seed(0))
    erased = (out != 0).flatten(1).any(1)
    assert 4 <= erased.sum().item() <= 32  # ~16 of 64 expected
    for i in torch.nonzero(erased).flatten():
        m = out[i] != 0  # (C, T, H, W)
        frame_mask = m[0, 0]
        assert torch.equal(m, frame_mask.expand_as(m))  # same box on every frame and channel
        rows, cols = frame_mask.any(1).nonzero(), frame_mask.any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert frame_mask.sum() == h * w  # a rectangle
        assert 0.02 * 1024 * 0.5 <= h * w <= 1024 / 3 + 64


def test_soft_cross_entropy_equals_hard_for_one_hot():
    logits = torch.randn(5, 7)
    t = torch.tensor([0, 3, 6, 2, 2])
    ref = torch.nn.functional.cross_entropy(logits, t)
    assert torch.allclose(soft_cross_entropy(logits, smooth_one_hot(t, 7, 0.0)), ref)
    ref_ls = torch.nn.functional.cross_entropy(logits, t, label_smoothing=0.1)
    assert torch.allclose(soft_cross_entropy(logits, smooth_one_hot(t, 7, 0.1)), ref_ls, atol=1e-6)
