"""Targets on a hand-made clip: a 2x2 square of colour c moving one 4x4 patch per frame.

Frames are 8x8 (2x2 patches of 4x4), the square sits in the top-left 2x2 pixels of its patch, which
visits patches (0,0) -> (0,1) -> (1,1) -> (1,0) -> (0,0). With tubelet 1 each token is one patch of one
frame, 4*4*3 values laid out (p, p, C).
"""

import math

import pytest
import torch

from motionmae.config import ObjectiveConfig
from motionmae.errors import UserError
from motionmae.objective.targets import Appearance, Motion
from motionmae.objective.tokens import cube_stats, normalized_tokens, patchify, unpatchify


def appearance_target(clip, cfg, tubelet, patch, index=None):
    return Appearance(cfg, tubelet, patch).compute(clip, index)


def motion_target(clip, cfg, tubelet, patch, index=None):
    return Motion(cfg, tubelet, patch).compute(clip, index)

COLOUR = (1.0, 0.5, 0.25)
PATH = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)]


def square_clip(frames=4):
    clip = torch.zeros(1, 3, frames, 8, 8)
    for t in range(frames):
        h, w = PATH[t]
        for c in range(3):
            clip[0, c, t, 4 * h : 4 * h + 2, 4 * w : 4 * w + 2] = COLOUR[c]
    return clip


def token(sign, colour=COLOUR):
    """Raw token: `sign * colour` at the square's 2x2 pixels, 0 elsewhere, laid out (p, p, C)."""
    v = torch.zeros(4, 4, len(colour))
    v[:2, :2] = sign * torch.tensor(colour)
    return v.reshape(-1)


def expected(signs, colour=COLOUR):
    """signs[t] = {(h, w): sign} per frame -> (1, T*4, 16*C) in t, h, w token order."""
    rows = [token(s.get((h, w), 0), colour) for s in signs for h in range(2) for w in range(2)]
    return torch.stack(rows)[None]


# frame differences of the square clip, worked out by hand: D_t = X_{t+g} - X_t
D1 = [{(0, 0): -1, (0, 1): 1}, {(0, 1): -1, (1, 1): 1}, {(1, 1): -1, (1, 0): 1}, {(1, 0): -1, (0, 0): 1}]
D2 = [{(0, 0): -1, (1, 1): 1}, {(0, 1): -1, (1, 0): 1}, {(1, 1): -1, (0, 0): 1}]


def cfg(**kw):
    return ObjectiveConfig(motion_norm=False, **kw)


def test_patchify_unpatchify_identity_and_layout():
    clip = torch.randn(2, 3, 4, 8, 12)
    x = patchify(clip, 2, 4)
    assert x.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    assert torch.equal(unpatchify(x, 2, 4, (2, 2, 3)), clip)
    # token (t'=1, h'=1, w'=2), value (ti=1, pi=2, pj=3, c=1) is clip[c, 2+1, 4+2, 8+3]
    n, v = 1 * 6 + 1 * 3 + 2, ((1 * 4 + 2) * 4 + 3) * 3 + 1
    assert x[0, n, v] == clip[0, 1, 3, 6, 11]
    y = torch.randn(2, 12, 96)
    assert torch.equal(patchify(unpatchify(y, 2, 4, (2, 2, 3)), 2, 4), y)


def test_normalize_cubes_by_hand():
    # one token, 2 channels, 4 values each: channel 0 = 0, 1, 2, 3 (mean 1.5, unbiased var 5/3)
    x = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]).reshape(1, 1, 8)
    def normalize_cubes(x, eps):  # channel-fastest tokens in and out
        return normalized_tokens(x.reshape(1, 1, 4, 2).transpose(-1, -2), eps)

    out = normalize_cubes(x, eps=0.0).reshape(4, 2)
    s = math.sqrt(5 / 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s)
    assert torch.equal(normalize_cubes(x, eps=1e-6).reshape(4, 2)[:, 1], torch.zeros(4))  # constant: 0
    mean, std = cube_stats(x, 2)
    torch.testing.assert_close(mean[0, 0], torch.tensor([1.5, 5.0]))
    torch.testing.assert_close(std[0, 0], torch.tensor([s, 0.0]))


def test_appearance_target_raw_and_normalised():
    clip = square_clip()
    raw = appearance_target(clip, ObjectiveConfig(appearance_norm=False), 1, 4)
    torch.testing.assert_close(raw, expected([{PATH[t]: 1} for t in range(4)]))
    norm = appearance_target(clip, ObjectiveConfig(), 1, 4)
    # square token, per channel: 4 of 16 values = c -> mean c/4, unbiased std c/sqrt(5)
    v = norm[0, 0].reshape(16, 3)
    torch.testing.assert_close(v[0], torch.full((3,), 0.75 * math.sqrt(5)), atol=1e-4, rtol=0)
    torch.testing.assert_close(v[15], torch.full((3,), -0.25 * math.sqrt(5)), atol=1e-4, rtol=0)
    assert torch.equal(norm[0, 1], torch.zeros(48))  # empty patch


def test_motion_signed_pad_first():
    out = motion_target(square_clip(), cfg(), 1, 4)
    torch.testing.assert_close(out, expected([D1[0], D1[0], D1[1], D1[2]]))


def test_motion_abs():
    out = motion_target(square_clip(), cfg(motion_mode="abs"), 1, 4)
    absd = [{k: abs(v) for k, v in d.items()} for d in (D1[0], D1[0], D1[1], D1[2])]
    torch.testing.assert_close(out, expected(absd))


def test_motion_gray():
    luma = 0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.25  # 0.621
    out = motion_target(square_clip(), cfg(motion_color="gray"), 1, 4)
    assert out.shape == (1, 16, 16)  # tubelet * p * p values, one channel
    torch.testing.assert_close(out, expected([D1[0], D1[0], D1[1], D1[2]], colour=(luma,)))


def test_motion_gap2_pad_first():
    out = motion_target(square_clip(), cfg(motion_gap=2), 1, 4)
    torch.testing.assert_close(out, expected([D2[0], D2[0], D2[0], D2[1]]))


def test_motion_extra_frame():
    clip5 = square_clip(5)
    out = motion_target(clip5, cfg(motion_pad="extra_frame"), 1, 4)
    torch.testing.assert_close(out, expected(D1))
    # appearance uses the first T frames only
    app = appearance_target(clip5, ObjectiveConfig(appearance_norm=False, motion_pad="extra_frame"), 1, 4)
    torch.testing.assert_close(app, expected([{PATH[t]: 1} for t in range(4)]))
    # gap 2: the clip carries T + 2 frames, and the targets are the T forward differences
    clip6 = torch.cat([clip5, square_clip(2)[:, :, 1:]], dim=2)  # 6th frame: square at (0, 1)
    out2 = motion_target(clip6, cfg(motion_pad="extra_frame", motion_gap=2), 1, 4)
    torch.testing.assert_close(out2, expected(D2 + [{(1, 0): -1, (0, 1): 1}]))


def test_motion_normalised_tubelet2():
    out = motion_target(square_clip(), ObjectiveConfig(), 2, 4)
    # token (t'=0, h'=0, w'=0) holds M_0 = M_1 = D_0, sign -1 there: per channel 8 of 32 values = -c,
    # mean -c/4, unbiased var 6c^2/31 -> the square's pixels are -(3/4) / sqrt(6/31), the rest (1/4) / sqrt(6/31)
    v = out[0, 0].reshape(32, 3)
    torch.testing.assert_close(v[0], torch.full((3,), -0.75 / math.sqrt(6 / 31)), atol=1e-4, rtol=0)
    torch.testing.assert_close(v[15], torch.full((3,), 0.25 / math.sqrt(6 / 31)), atol=1e-4, rtol=0)
    # index: only the chosen tokens, normalised the same way
    idx = torch.tensor([[5, 0]])
    torch.testing.assert_close(motion_target(square_clip(), ObjectiveConfig(), 2, 4, idx), out[:, [5, 0]])


def test_motion_bad_options():
    with pytest.raises(UserError, match="motion_gap"):
        motion_target(square_clip(), cfg(motion_gap=4), 1, 4)
    with pytest.raises(UserError, match="motion_mode"):
        motion_target(square_clip(), cfg(motion_mode="log"), 1, 4)


def test_hog_of_one_cell_by_hand():
    # one 8x8 cell, tubelet 1: x = a(col) + b(row), a step of 1 between columns 3|4, b a step of 0.5 between
    # rows 3|4 (channel 0 only; channel 1 a plain vertical edge; channel 2 flat). Sobel on a separable image:
    # gx = 4 (a[j-1] - a[j+1]), gy = 4 (b[i-1] - b[i+1]), so
    #   columns 3, 4 outside rows 3, 4 (12 px): gx = -4, gy = 0   -> |g| 4,        atan2 = -pi/2 -> -4.5 -> bin 4
    #   rows 3, 4 outside columns 3, 4 (12 px): gx = 0,  gy = -2  -> |g| 2,        atan2 = pi    ->  9   -> bin 0
    #   the 4 crossing pixels:                  gx = -4, gy = -2  -> |g| sqrt(20), atan2 = -2.034 -> -5.83 -> bin 3
    # histogram (bin 0, 3, 4) = (24, 4 sqrt(20), 48), L2 norm sqrt(3200): (3, sqrt(5), 6) / sqrt(50)
    from motionmae.objective.hog import HOG

    x = torch.zeros(1, 3, 1, 8, 8)
    x[0, 0, 0, :, 4:] += 1.0
    x[0, 0, 0, 4:, :] += 0.5
    x[0, 1, 0, :, 4:] = 1.0
    hog = HOG(ObjectiveConfig(hog_bins=9, hog_cell=8), tubelet=1, patch=8)
    out = hog.compute(x)
    assert out.shape == (1, 1, 9 * 3) and hog.dim == 27
    v = out[0, 0].reshape(9, 3)  # (bin, channel): channel fastest
    expect0 = torch.zeros(9)
    expect0[[0, 3, 4]] = torch.tensor([3.0, math.sqrt(5), 6.0]) / math.sqrt(50)
    torch.testing.assert_close(v[:, 0], expect0)
    torch.testing.assert_close(v[:, 1], torch.eye(9)[4])  # a vertical edge alone: all in bin 4
    assert torch.equal(v[:, 2], torch.zeros(9))  # a flat channel has no histogram (not NaN)


def test_hog_takes_each_cubes_first_frame_and_lays_cells_out_row_major():
    from motionmae.objective.hog import HOG, hog_cells

    g = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 3, 4, 16, 32, generator=g)
    hog = HOG(ObjectiveConfig(hog_cell=4), tubelet=2, patch=8)  # 2x2 cells per 8 px patch, 9 bins
    full = hog.compute(clip)
    assert full.shape == (2, 2 * 2 * 4, 4 * 9 * 3)
    cells = hog_cells(clip[:, :, 2], 9, 4)  # frame 2 = first frame of the second cube: (B, C, 9, 4, 8)
    # token (t'=1, h'=1, w'=2) holds cells rows 2-3, columns 4-5 of frame 2; value (cell_y=1, cell_x=0, bin 5, C=2)
    n, k = 1 * 8 + 1 * 4 + 2, ((1 * 2 + 0) * 9 + 5) * 3 + 2
    assert full[1, n, k] == cells[1, 2, 5, 3, 4]
    idx = torch.tensor([[14, 3], [0, 9]])
    torch.testing.assert_close(hog.compute(clip, idx), torch.gather(full, 1, idx[..., None].expand(-1, -1, full.shape[-1])))


def test_registry_builds_the_configured_targets_in_order():
    from motionmae.config import load_config
    from motionmae.objective.targets import TARGETS, build_targets

    cfg = load_config("", ["objective.targets=[hog,appearance]", "objective.motion_color=gray", "objective.w_hog=0.5"])
    targets = build_targets(cfg.objective, cfg.model)
    assert [t.name for t in targets] == ["hog", "appearance"] and set(TARGETS) == {"appearance", "motion", "hog"}
    assert [t.dim for t in targets] == [2 * 2 * 9 * 3, 2 * 16 * 16 * 3] and targets[0].weight == 0.5
