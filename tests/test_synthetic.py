import json

import numpy as np
import pytest

import motionmae.data.synthetic as S
from motionmae.cli import main as cli_main
from motionmae.config import DataConfig
from motionmae.data.datasets import build_dataset, read_annotation_list
from motionmae.data.decode import VideoReader
from motionmae.data.synthetic import (CLASSES, DIRECTIONS, ClipSpec, Style, background, clip_specs, glyph_alpha,
                                      load_fashion_mnist, make_dataset, render_clip, specs_from_meta)


# glyphs that fit in the frame (the default ones may wrap around and cover it): for outlines, centroids and background
FITS = Style(glyph_radius=(0.28, 0.36))


def all_specs(frames=6, size=32, glyph=0, style=None):
    return [ClipSpec(glyph, d, s, a, frames, size, seed=10 * d + 3 * s + a, style=style or Style()) for d in range(4) for s in range(2) for a in range(2)]


def test_reversed_clip_is_the_reversed_spec():
    for spec in all_specs():
        rev = spec.reversed()
        assert rev.arrow != spec.arrow and rev.glyph == spec.glyph and rev.speed == spec.speed
        opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}
        assert DIRECTIONS[rev.direction] == opposite[DIRECTIONS[spec.direction]]
        assert np.array_equal(render_clip(spec)[::-1], render_clip(rev))


def circular_centroid(w):
    """(y, x) centre of mass of w on a torus, via the mean phase along each axis."""
    n = w.shape[0]
    ang = 2 * np.pi * np.arange(n) / n
    return tuple(np.angle((w.sum(axis=1 - ax) * np.exp(1j * ang)).sum()) % (2 * np.pi) * n / (2 * np.pi) for ax in (0, 1))


def test_direction_and_speed_are_the_glyph_motion():
    # at 64 px the default speeds are 0.5 and 1.5 px per frame
    velocity = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
    for spec in all_specs(size=64):
        glyph = render_clip(spec, background_on=False)
        step = (0.5, 1.5)[spec.speed]
        centres = np.array([circular_centroid(f.max(-1).astype(float)) for f in glyph])
        moves = (np.diff(centres, axis=0) + 32) % 64 - 32  # the glyph moves in the labelled (observed) direction
        assert np.allclose(moves, [step * v for v in velocity[spec.direction]], atol=0.1)  # at the labelled speed
        area = (glyph.max(-1) > 127).sum(axis=(1, 2))
        assert area.max() - area.min() <= 0.02 * area.mean()  # the size does not change over time


def test_background_drifts_down_one_pixel_per_frame_at_64px():
    for kind in ("waves", "noise"):
        bg = background(np.random.default_rng(3), Style(background=kind), 64, 5)
        for t in range(4):
            assert np.allclose(np.roll(bg[t], 1, axis=0), bg[t + 1], atol=1e-5)  # exact sub-pixel-free shift
        assert bg.min() >= 0 and bg.max() <= 1
        # every channel varies: no flat background channel (flat cubes are codec noise once normalised)
        assert (bg[0].max(axis=(0, 1)) - bg[0].min(axis=(0, 1)) >= 0.6 * Style().contrast - 1e-6).all()
    flat = background(np.random.default_rng(3), Style(background="flat"), 16, 3)
    assert np.ptp(flat, axis=(0, 1, 2)).max() == 0


def test_arrow_is_the_background_drift_and_the_playback_order():
    for spec in all_specs(size=64, style=FITS):  # glyphs that leave the background in view
        full, free = render_clip(spec), render_clip(spec, background_on=False).max(-1) == 0  # pixels without glyph
        d = 1 if spec.arrow == 0 else -1  # the background drifts down 1 px/frame forward, up when reversed
        for t in range(spec.frames - 1):
            both = np.roll(free[t], d, axis=0) & free[t + 1]
            assert both.mean() > 0.3
            assert np.abs(np.roll(full[t], d, axis=0)[both].astype(int) - full[t + 1][both]).max() <= 1  # rounding


def test_no_single_frame_shows_a_motion_label():
    # The nuisances (start, size, colour, background) are drawn from the seed alone, before any label is used:
    # frame 0 of a forward clip is the same picture whatever its direction and speed.
    for glyph in range(len(CLASSES)):
        first = {render_clip(ClipSpec(glyph, d, s, 0, 6, 32, seed=5))[0].tobytes() for d in range(4) for s in range(2)}
        assert len(first) == 1
    # Reversed clips start where forward clips end; on the torus, with a uniform start, that is uniform too: the
    # glyph's position in frame 0 is spread evenly for both arrows (no drift of the mean position). Measured on
    # glyphs that fit in the frame (a default square may cover all of it, and then has no centroid).
    for arrow in (0, 1):
        pos = np.array([circular_centroid(render_clip(ClipSpec(1, 0, 1, arrow, 8, 32, seed=k, style=FITS), background_on=False)[0].max(-1)
                                          .astype(float)) for k in range(300)])
        resultant = np.abs(np.exp(2j * np.pi * pos / 32).mean(0))
        assert (resultant < 0.15).all()  # ~1/sqrt(300) for uniform positions


def _normalised_glyph(mask):
    """Roll the glyph away from the borders, crop its bounding box, resample to 12x12."""
    for axis in (0, 1):
        occ = mask.any(axis=1 - axis)
        mask = np.roll(mask, -int(np.flatnonzero(~occ)[0]), axis=axis)
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    iy = (np.arange(12) + 0.5) * box.shape[0] / 12
    ix = (np.arange(12) + 0.5) * box.shape[1] / 12
    return box[iy.astype(int)][:, ix.astype(int)].astype(float)


def test_every_frame_in_any_order_shows_its_class():
    size = 64
    templates = []
    for c in range(len(CLASSES)):
        a = glyph_alpha(c, size, np.array([[size / 2, size / 2]]), 14.0)[0]
        templates.append(_normalised_glyph(a > 0.5))
    rng = np.random.default_rng(0)
    for c in range(len(CLASSES)):
        for k in range(2):
            spec = ClipSpec(c, int(rng.integers(4)), int(rng.integers(2)), int(rng.integers(2)), 6, size, seed=k,
                            style=FITS)  # the outline alone
            clip = render_clip(spec, background_on=False)[rng.permutation(6)]  # frame-shuffled
            for frame in clip:
                g = _normalised_glyph(frame.max(-1) > 127)
                assert int(np.argmin([np.abs(g - t).mean() for t in templates])) == c


def test_make_dataset_round_trip(tmp_path):
    calls = []
    style = Style(max_freq=1, glyph_radius=(0.25, 0.3))
    info = make_dataset(tmp_path / "d", num_train=6, num_val=3, frames=8, size=32, seed=3, workers=1, style=style,
                        progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (9, 9) and len(calls) == 9
    meta = json.loads((tmp_path / "d" / "labels.json").read_text())
    assert meta["columns"] == ["class", "direction", "speed", "arrow"] and meta["num_train"] == 6
    assert meta["class"] == list(CLASSES) and meta["glyphs"] == "shapes"
    entries = read_annotation_list(info["train"])
    specs, render = specs_from_meta(meta, "train")  # the generator settings come back from labels.json
    assert specs == clip_specs(6, 8, 32, 3, "train", len(CLASSES), style)
    assert [e.label for e in entries] == [s.labels() for s in specs]
    for e, s, other in zip(entries[:2], specs, specs[2:]):
        with VideoReader(e.path) as r:
            assert r.num_frames == 8
            got = r.get_frames(range(8)).astype(float)
        # H.264 crf 18 at 32 px, yuv420p: textured colour loses much of its chroma, so compare luma, and
        # require the file to be far closer to its own spec's render than to another clip's
        own, wrong = (np.abs(got.mean(-1) - render(x).astype(float).mean(-1)).mean() for x in (s, other))
        assert own < 8 and own < 0.5 * wrong, (own, wrong)
    ds = build_dataset(DataConfig(train=info["train"], val=info["val"], num_frames=4, sampling_rate=2, input_size=32),
                       "val", "finetune")
    assert len(ds) == 3 and ds.num_labels == 4 and ds[0]["video"].shape == (3, 4, 32, 32)
    # same seed, same lists and the same files
    again = make_dataset(tmp_path / "e", num_train=6, num_val=3, frames=8, size=32, seed=3, workers=2, style=style)
    assert open(again["train"]).read() == open(info["train"]).read()
    for split, i in (("train", 0), ("train", 5), ("val", 2)):
        name = f"{split}/{i:06d}.mp4"
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "e" / name).read_bytes()


def test_default_data_never_reads_fashion_mnist(tmp_path, monkeypatch):
    # the default dataset is the same on every machine: installed Fashion-MNIST must not change it
    def boom(*a, **k):
        raise AssertionError("the default dataset read Fashion-MNIST")

    monkeypatch.setattr(S, "load_fashion_mnist", boom)
    info = make_dataset(tmp_path, num_train=2, num_val=1, frames=4, size=16, workers=1)
    assert info["glyphs"] == "shapes"


def test_cli(tmp_path, capsys):
    assert cli_main(["make-dataset", "--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--frames", "4",
                     "--size", "16", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 train + 1 val" in captured.out and "3/3 clips" in captured.err  # the progress bar
    assert len((tmp_path / "val.csv").read_text().splitlines()) == 1
    assert cli_main(["make-dataset", "--out", str(tmp_path), "--size", "15"]) == 2  # UserError, one line


def test_make_dataset_style_option(tmp_path, capsys):
    # --style writes the clips of the given Style (here the previous default) and records it in labels.json
    args = ["make-dataset", "--out", str(tmp_path / "d"), "--num-train", "1", "--num-val", "1", "--frames", "4",
            "--size", "32", "--workers", "1"]
    assert cli_main(args + ["--style", "glyph_radius=[0.28, 0.36]; glyph_texture_moves=1"]) == 0
    style = json.loads((tmp_path / "d" / "labels.json").read_text())["style"]
    assert style["glyph_radius"] == [0.28, 0.36] and style["glyph_texture_moves"] == 1 and style["drift"] == Style().drift
    spec = S.specs_from_meta(json.loads((tmp_path / "d" / "labels.json").read_text()), "train")[0][0]
    assert spec.style == Style(glyph_radius=(0.28, 0.36), glyph_texture_moves=1)
    capsys.readouterr()
    assert cli_main(args[:2] + [str(tmp_path / "e"), "--style", "glyph_size=3"]) == 2
    assert "'glyph_size=3'" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_fashion_mnist_reader_and_glyphs(tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    images = np.zeros((20, 28, 28), np.uint8)
    images[:, 6:22, 8:20] = rng.integers(100, 256, (20, 1, 1))
    labels = np.arange(20, dtype=np.uint8) % 10
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:  # idx3: magic, count, rows, cols
        f.write(np.array([2051, 20, 28, 28], ">i4").tobytes() + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([2049, 20], ">i4").tobytes() + labels.tobytes())
    got = load_fashion_mnist(str(tmp_path))
    assert np.array_equal(got[0], images) and np.array_equal(got[1], labels)
    spec = ClipSpec(3, 0, 1, 0, 6, 32, seed=1)
    clip = render_clip(spec, background_on=False, fashion=got)
    assert clip.shape == (6, 32, 32, 3) and clip.max() > 0
    assert np.array_equal(render_clip(spec, fashion=got)[::-1], render_clip(spec.reversed(), fashion=got))


@pytest.mark.skipif(load_fashion_mnist() is None, reason="Fashion-MNIST not installed")
def test_fashion_glyphs(tmp_path):
    info = make_dataset(tmp_path, num_train=2, num_val=1, frames=4, size=32, glyphs="fashion", workers=1)
    assert info["glyphs"] == "fashion-mnist"
    assert json.loads((tmp_path / "labels.json").read_text())["class"] == list(S.FASHION_CLASSES)


def test_written_clips_depend_on_the_spec_only(tmp_path):
    # the same clip written again, after others, is the same file: datasets (and the demo's scores) reproduce.
    # With x264's SIMD code on, PyAV's tight frame buffers made some files depend on the process's heap; a fresh
    # interpreter writing this sequence showed it (clip 6 came out two ways).
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path\n"
        "from motionmae.data.synthetic import CLASSES, _write_one, clip_specs\n"
        "specs = clip_specs(40, 16, 32, 0, 'train', len(CLASSES)); seen = {}\n"
        "for n, k in enumerate((1, 6, 1, 6, 2, 6, 3, 1, 6)):\n"
        "    p = Path(sys.argv[1]) / f'{n}.mp4'; _write_one((str(p), specs[k], 8, 18, False))\n"
        "    seen.setdefault(k, set()).add(p.read_bytes())\n"
        "print(max(len(v) for v in seen.values()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"  # one file per clip


def test_vos_glyph_scene_one_colour_and_a_distractor(tmp_path):
    from motionmae.data.synthetic_vos import make_vos_dataset
    from motionmae.eval import davis

    root = make_vos_dataset(tmp_path, num_sequences=3, num_frames=6, height=64, width=88, seed=0)
    for seq in davis.list_sequences(root, "val"):
        frames = davis.read_frames(seq.frames).astype(float)
        gt = np.stack([davis.read_mask(a)[0] for a in seq.annotations])
        n = davis.num_objects(gt[0])
        assert 2 <= n <= 3 and set(np.unique(gt[0])) == set(range(n + 1))  # every object visible in frame 0
        assert not np.array_equal(gt[0], gt[-1])  # they move
        # one colour for all objects (JPEG blurs edges: compare the median of each object's pixels)
        colours = [np.median(frames[0][gt[0] == k], axis=0) for k in range(1, n + 1)]
        assert max(np.abs(c - colours[0]).max() for c in colours) <= 6
        # ... and an unannotated glyph of that colour: background pixels with the objects' colour
        far = np.abs(frames[0] - colours[0]).max(-1) <= 6
        assert (far & (gt[0] == 0)).sum() > 10
    again = make_vos_dataset(tmp_path / "again", num_sequences=3, num_frames=6, height=64, width=88, seed=0)
    for a, b in zip(sorted(root.rglob("*.*")), sorted(again.rglob("*.*"))):
        assert a.read_bytes() == b.read_bytes()


def test_class_texture_is_the_same_waves_for_every_clip_of_a_class():
    # The glyph's texture is periodic (8 px at 64 px): the DFT magnitude of a 16 px window inside the glyph does
    # not depend on where the window sits, so it identifies the waves whatever the clip's offset and colour.
    def spectrum(glyph, seed):
        spec = ClipSpec(glyph, 0, 0, 0, 2, 64, seed=seed)
        cy, cx = (int(round(c)) for c in circular_centroid(render_clip(spec, background_on=False)[0].max(-1).astype(float)))
        frame = np.roll(render_clip(spec)[0].astype(float), (32 - cy, 32 - cx), axis=(0, 1))
        lum = (frame[24:40, 24:40] / frame[24:40, 24:40].mean(axis=(0, 1))).mean(-1)  # colour divided out
        return np.abs(np.fft.fft2(lum - lum.mean()))

    assert Style().class_texture
    for glyph in (0, 1):  # disc, square: a 16 px window fits inside either
        a, b = spectrum(glyph, 1), spectrum(glyph, 2)
        assert np.abs(a - b).max() < 0.1 * a.max()
    assert np.abs(spectrum(0, 1) - spectrum(1, 1)).max() > 0.3 * spectrum(0, 1).max()


def test_glyph_texture_moves_mixes_fixed_and_moving_waves():
    # A large disc moving right 3 px per frame: with the share 1 its waves move with it (frame t inside the disc is
    # frame 0 shifted 3t px), with 0 they stay where they are, and in between the picture is the mix of the two.
    def frames(moves):
        style = Style(glyph_radius=(0.4, 0.4), speeds=(1 / 64, 3 / 64), glyph_texture_moves=moves)
        spec = ClipSpec(0, 0, 1, 0, 4, 64, seed=3, style=style)
        return render_clip(spec).astype(float), render_clip(spec, background_on=False).max(-1) == 255

    fixed, inside = frames(0.0)
    moving, _ = frames(1.0)
    half, _ = frames(0.5)
    assert (frames(True)[0] == moving).all() and (frames(False)[0] == fixed).all()  # the old booleans
    for t in range(1, 4):
        both = inside[t] & inside[0]
        assert (fixed[t][both] == fixed[0][both]).all()
        shifted = inside[t] & np.roll(inside[0], 3 * t, axis=1)
        assert np.abs(moving[t][shifted] - np.roll(moving[0], 3 * t, axis=1)[shifted]).max() <= 1
        assert np.abs(fixed[t][both] - moving[t][both]).max() > 20  # the two really differ
    assert np.abs(half[inside] - (fixed[inside] + moving[inside]) / 2).max() <= 1  # uint8 rounding
