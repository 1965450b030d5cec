"""DAVIS J / F metrics on hand-made masks, and the palette PNG round trip."""

import numpy as np
import pytest
from PIL import Image

from motionmae.errors import UserError
from motionmae.eval import davis


def square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_identical_and_disjoint():
    rng = np.random.default_rng(0)
    blob = rng.random((60, 80)) > 0.7
    assert davis.region_similarity(blob, blob) == 1.0
    assert davis.boundary_f_measure(blob, blob) == 1.0
    a, b = square((60, 80), 5, 5, 10), square((60, 80), 40, 60, 10)  # boundaries ~40 px apart, tolerance 1 px
    assert davis.region_similarity(a, b) == 0.0
    assert davis.boundary_f_measure(a, b) == 0.0


def test_empty_masks():
    empty, a = np.zeros((20, 20), bool), square((20, 20), 5, 5, 4)
    assert davis.region_similarity(empty, empty) == 1.0 and davis.boundary_f_measure(empty, empty) == 1.0
    assert davis.region_similarity(a, empty) == 0.0 and davis.boundary_f_measure(a, empty) == 0.0
    assert davis.boundary_f_measure(empty, a) == 0.0


def test_seg2bmap_of_a_square_is_the_outline_shifted_towards_the_origin():
    # rows/cols 10..19 set: boundary = pixels differing from their E, S or SE neighbour
    # = outline of the 11 x 11 box rows 9..19, cols 9..19 (40 pixels); the image border is never a boundary
    b = davis.seg2bmap(square((40, 40), 10, 10, 10))
    expect = np.zeros((40, 40), bool)
    expect[9, 9:20] = expect[19, 9:20] = expect[9:20, 9] = expect[9:20, 19] = True
    np.testing.assert_array_equal(b, expect)
    assert b.sum() == 40
    assert not davis.seg2bmap(np.ones((5, 5), bool)).any()


def test_boundary_radius():
    assert davis.boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert davis.boundary_radius((40, 40)) == 1  # ceil(0.45)
    assert davis.boundary_radius((40, 40), bound_th=3) == 3  # >= 1: pixels


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5])
def test_dilate_disk_matches_definition(radius):
    rng = np.random.default_rng(radius)
    b = rng.random((23, 31)) > 0.97
    expect = np.zeros_like(b)
    for y, x in zip(*np.nonzero(b)):
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dy * dy + dx * dx <= radius * radius and 0 <= y + dy < 23 and 0 <= x + dx < 31:
                    expect[y + dy, x + dx] = True
    np.testing.assert_array_equal(davis.dilate_disk(b, radius), expect)


def test_one_pixel_shift_within_tolerance():
    # 40 x 40 image: tolerance ceil(0.008 * 56.6) = 1 px; a 10 x 10 square moved right by 1
    a, b = square((40, 40), 10, 10, 10), square((40, 40), 10, 11, 10)
    assert davis.region_similarity(a, b) == pytest.approx(90 / 110)
    assert davis.boundary_f_measure(a, b) == 1.0  # every outline pixel has the other outline within 1 px


def test_three_pixel_shift_beyond_tolerance():
    # outlines: gt rows 9..19 x cols 9..19, pred rows 9..19 x cols 12..22, 40 pixels each, tolerance 1 (a cross).
    # pred pixels within 1 of gt: top row cols 12..20 (9) + bottom row (9) + left col rows 10 and 18 (next to
    # gt's top/bottom rows) (2) = 20 -> precision 1/2; recall 1/2 by symmetry; F = 1/2.
    a, b = square((40, 40), 10, 10, 10), square((40, 40), 10, 13, 10)
    assert davis.region_similarity(a, b) == pytest.approx(70 / 130)
    assert davis.boundary_f_measure(a, b) == pytest.approx(0.5)
    # with a 3-pixel tolerance the same shift is fully matched
    assert davis.boundary_f_measure(a, b, bound_th=3) == 1.0


def test_void_pixels_are_ignored():
    a, b = square((40, 40), 10, 10, 10), square((40, 40), 10, 10, 12)
    void = b & ~a
    assert davis.region_similarity(a, b) == pytest.approx(100 / 144)
    assert davis.region_similarity(a, b, void) == 1.0


def test_statistics_by_hand():
    # 8 frames: bins (davis2017-evaluation) are frames 0-2, 2-4, 4-5, 5-7
    mean, recall, decay = davis.statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0.0]))
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    mean, recall, decay = davis.statistics(np.array([0.9, 0.4, np.nan, 0.2]))
    assert mean == pytest.approx(0.5) and recall == pytest.approx(0.25)


def test_evaluate_sequence_excludes_first_and_last_frames():
    gt = np.zeros((5, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 12:18, 12:18] = 2
    pred = gt.copy()
    pred[0] = pred[-1] = 0  # wrong only where DAVIS does not evaluate
    pred[2][pred[2] == 2] = 0  # object 2 lost in frame 2
    j, f = davis.evaluate_sequence(gt, pred, 2)
    assert j.shape == f.shape == (2, 3)
    np.testing.assert_array_equal(j, [[1, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(f, [[1, 1, 1], [1, 0, 1]])
    glob, rows = davis.summarize({"s_1": (j[0], f[0]), "s_2": (j[1], f[1])})
    assert glob["J-Mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert glob["J&F-Mean"] == pytest.approx((glob["J-Mean"] + glob["F-Mean"]) / 2)
    assert [r["Sequence"] for r in rows] == ["s_1", "s_2"]


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, (17, 23)).astype(np.uint8)
    pal = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    davis.write_mask(tmp_path / "a.png", mask, pal)
    got, got_pal = davis.read_mask(tmp_path / "a.png")
    np.testing.assert_array_equal(got, mask)
    np.testing.assert_array_equal(got_pal, pal)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"
    # default palette: the DAVIS / VOC colours
    davis.write_mask(tmp_path / "b.png", mask[:, :5] % 4)
    got, got_pal = davis.read_mask(tmp_path / "b.png")
    np.testing.assert_array_equal(got, mask[:, :5] % 4)
    assert got_pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert got_pal[255].tolist() == [224, 224, 192]


def test_read_mask_rejects_rgb(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="rgb.png"):
        davis.read_mask(tmp_path / "rgb.png")


def test_list_sequences_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        davis.list_sequences(tmp_path / "nope")
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "train.txt").write_text("a\n")
    with pytest.raises(UserError, match="val.txt.*splits present: train"):
        davis.list_sequences(tmp_path, "val")
    with pytest.raises(UserError, match=r"train.txt:1: sequence 'a' has no frames"):
        davis.list_sequences(tmp_path, "train")


def test_evaluate_sequence_counts_void_as_background_like_davis2017_evaluation():
    # davis2017-evaluation sets 255 to 0 when it reads an annotation, before it looks for void pixels: void is
    # background for J and F. A prediction that covers an object's void border therefore loses J.
    gt = np.zeros((3, 40, 40), np.uint8)
    gt[:, 10:20, 10:20] = 1
    ring = square((40, 40), 9, 9, 12) & ~square((40, 40), 10, 10, 10)
    gt[:, ring] = davis.VOID
    pred = np.zeros_like(gt)
    pred[:, 9:21, 9:21] = 1  # the object and its void border
    j, _ = davis.evaluate_sequence(gt, pred, 1)
    assert j[0, 0] == pytest.approx(100 / 144)
    assert davis.region_similarity(gt[1] == 1, pred[1] == 1, gt[1] == davis.VOID) == 1.0  # what ignoring void would give
