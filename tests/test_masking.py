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
