import pytest
import torch

from motionmae.errors import UserError
from motionmae.objective.masking import make_mask, masked_per_slice, num_visible


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_per_slice_exact_visible_count_per_slice_and_independent_positions():
    grid = (8, 14, 14)
    mask = make_mask("per_slice", 3, grid, 0.9, gen())
    assert mask.dtype == torch.bool and mask.shape == (3, 8 * 196)
    visible = (~mask).reshape(3, 8, 196).sum(-1)
    assert (visible == 20).all()  # 196 - floor(0.9 * 196) = 196 - 176
    slices = mask.reshape(3, 8, 196)
    assert not all(torch.equal(slices[0, 0], slices[0, i]) for i in range(1, 8))
    assert not torch.equal(slices[0], slices[1])


def test_tube_repeats_one_2d_pattern():
    mask = make_mask("tube", 2, (4, 5, 5), 0.6, gen()).reshape(2, 4, 25)
    for i in range(4):
        assert torch.equal(mask[:, i], mask[:, 0])
    assert ((~mask[:, 0]).sum(-1) == 10).all()
    assert not torch.equal(mask[0, 0], mask[1, 0])


def test_random_same_total_but_uneven_slices():
    grid = (8, 4, 4)
    m = make_mask("random", 4, grid, 0.75, gen())
    assert ((~m).sum(1) == num_visible(grid, 0.75)).all() and num_visible(grid, 0.75) == 32
    per_slice = (~m).reshape(4, 8, 16).sum(-1)
    assert (per_slice != 4).any()
    for kind in ("per_slice", "tube"):
        assert ((~make_mask(kind, 4, grid, 0.75, gen())).sum(1) == 32).all()


def test_seeded_generator_reproduces():
    for kind in ("per_slice", "tube", "random"):
        a = make_mask(kind, 2, (2, 4, 4), 0.5, gen(3))
        b = make_mask(kind, 2, (2, 4, 4), 0.5, gen(3))
        c = make_mask(kind, 2, (2, 4, 4), 0.5, gen(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_rounding_rule():
    assert masked_per_slice(196, 0.9) == 176
    assert masked_per_slice(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert masked_per_slice(16, 0.0) == 0
    assert (~make_mask("per_slice", 1, (2, 2, 2), 0.0, gen())).all()


def test_bad_arguments():
    with pytest.raises(UserError, match="ratio"):
        make_mask("tube", 1, (2, 4, 4), 1.0)
    with pytest.raises(UserError, match="kind"):
        make_mask("block", 1, (2, 4, 4), 0.5)


def _moving_clip(batch):
    """(B, 3, 2, 8, 8): one time slice of 2x2 tokens of 4x4 px (tubelet 2). Between the two frames the top-left
    cube brightens by 1 and the top-right one by 0.5; the bottom two stay still."""
    clip = torch.zeros(batch, 3, 2, 8, 8)
    clip[:, :, 1, :4, :4] = 1.0
    clip[:, :, 1, :4, 4:] = 0.5
    return clip


def test_motion_energy_by_hand():
    # frame 1 - frame 0 is 1 (0.5) over the whole top-left (top-right) cube; frame 0 repeats that difference, so
    # every value of the cube differs by 1 (0.5): mean square 1 (0.25); the still cubes 0
    from motionmae.objective.masking import motion_energy

    torch.testing.assert_close(motion_energy(_moving_clip(1), (1, 2, 2)), torch.tensor([[[1.0, 0.25, 0.0, 0.0]]]))
    as_uint8 = (254 * _moving_clip(1)).to(torch.uint8)  # differences taken in float, not in wrapping uint8
    torch.testing.assert_close(motion_energy(as_uint8.flip(2), (1, 2, 2)), 254**2 * torch.tensor([[[1.0, 0.25, 0.0, 0.0]]]))


def test_motion_mask_draws_masked_cubes_in_proportion_to_frame_difference_energy():
    # ratio 0.25 of 4 tokens: one masked per slice. Weights = energy + 1e-3 x the mean energy (0.3125):
    # (1.0003125, 0.2503125, 0.0003125, 0.0003125) / 1.25125 -> P = 0.7994, 0.2000, 0.00025, 0.00025
    n = 4000
    mask = make_mask("motion", n, (1, 2, 2), 0.25, gen(0), clip=_moving_clip(n))
    assert (mask.sum(1) == 1).all()  # the same count as every kind
    freq = mask.float().mean(0)
    assert abs(freq[0].item() - 0.7994) < 0.03 and abs(freq[1].item() - 0.2000) < 0.03  # +-5 standard deviations
    assert freq[2:].sum().item() < 0.01
    # a still clip: every position equally likely
    still = make_mask("motion", n, (1, 2, 2), 0.25, gen(0), clip=torch.zeros(n, 3, 2, 8, 8)).float().mean(0)
    assert (still - 0.25).abs().max() < 0.04


def test_motion_mask_counts_and_seeding_like_the_other_kinds():
    g = torch.Generator().manual_seed(1)
    clip = torch.rand(3, 3, 8, 32, 32, generator=g)  # tubelet 2, patch 8: grid (4, 4, 4)
    grid = (4, 4, 4)
    a = make_mask("motion", 3, grid, 0.75, gen(3), clip=clip)
    assert ((~a).reshape(3, 4, 16).sum(-1) == 4).all() and ((~a).sum(1) == num_visible(grid, 0.75)).all()
    assert torch.equal(a, make_mask("motion", 3, grid, 0.75, gen(3), clip=clip))
    assert not torch.equal(a, make_mask("motion", 3, grid, 0.75, gen(4), clip=clip))
    with pytest.raises(UserError, match="mask.kind=motion needs the clip"):
        make_mask("motion", 1, grid, 0.75, gen())


# ----------------------------------------------------------------------------------------------
# dual masking (VideoMAE v2): the decoder's mask


def test_running_cell_by_hand():
    from motionmae.objective.masking import running_cell

    # 2x2 cell, positions j = 0 1 / 2 3; slice t drops j where (j + t + start) % 4 < 2
    cell = running_cell(1, (3, 2, 2), 2, torch.tensor([0])).reshape(3, 4).tolist()
    assert cell == [[True, True, False, False], [True, False, False, True], [False, False, True, True]]
    shifted = running_cell(1, (1, 2, 2), 2, torch.tensor([1])).reshape(4).tolist()
    assert shifted == cell[1]  # a start of 1 is the pattern one slice later
    # tiled over the slice (any size, odd too); each cell drops `drop` of its 4 positions
    big = running_cell(2, (4, 6, 6), 1, torch.tensor([0, 3])).reshape(2, 4, 6, 6)
    assert (big.sum((2, 3)) == 9).all()
    assert torch.equal(big[:, :, :2, :2].repeat(1, 1, 3, 3), big)


def test_decoder_mask_keeps_an_exact_share_of_the_masked_tokens():
    from motionmae.objective.masking import decoder_mask, num_decoded

    grid = (8, 14, 14)
    for kind in ("per_slice", "tube", "random"):
        enc = make_mask(kind, 3, grid, 0.9, gen())
        dec = decoder_mask(enc, grid, 0.5, gen(1))
        assert not (dec & ~enc).any()  # only masked tokens are dropped
        kept = enc & ~dec
        assert (kept.sum(1) == num_decoded(grid, 0.9, 0.5)).all() and num_decoded(grid, 0.9, 0.5) == 1408 - 704
    assert num_decoded(grid, 0.9, 0.0) == 1408 and num_decoded(grid, 0.9, 0.75) == 1408 - 1056
    assert num_decoded((1, 1, 2), 0.5, 0.9) == 1  # at least one


def test_decoder_mask_prefers_the_running_cell_and_covers_every_position():
    from motionmae.objective.masking import decoder_mask, running_cell

    grid = (8, 6, 6)
    enc = make_mask("per_slice", 4, grid, 0.75, gen())
    g = gen(5)
    dec = decoder_mask(enc, grid, 0.5, g)
    start = torch.randint(4, (4,), generator=gen(5))  # the first draw of the same generator
    cell_kept = enc & ~running_cell(4, grid, 2, start)
    kept = enc & ~dec
    for b in range(4):  # the cell's masked positions first: one set holds the other
        a, c = kept[b], cell_kept[b]
        assert bool((a <= c).all()) or bool((c <= a).all())
    # tube masks: the cell keeps every masked position in half the slices -> exactly the cell, every position covered
    tube = make_mask("tube", 2, grid, 0.5, gen())
    kept = (tube & ~decoder_mask(tube, grid, 0.5, gen(2))).reshape(2, 8, 36)
    assert torch.equal(kept.any(1), tube.reshape(2, 8, 36)[:, 0])
    assert (kept.sum(1)[tube.reshape(2, 8, 36)[:, 0]] == 4).all()


def test_decoder_mask_is_seeded():
    from motionmae.objective.masking import decoder_mask

    enc = make_mask("per_slice", 2, (4, 4, 4), 0.75, gen())
    a, b, c = (decoder_mask(enc, (4, 4, 4), 0.5, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
