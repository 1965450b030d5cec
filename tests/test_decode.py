from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from motionmae.data.decode import VideoDecodeError, VideoReader, write_video

T, H, W = 48, 32, 48


def smooth_frames(n=T, h=H, w=W):
    """Smooth images that differ frame to frame (each frame is its own, identifiable picture)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for t in range(n):
        r = 128 + 100 * np.sin(xx / 7.0 + t * 0.4)
        g = 128 + 100 * np.cos(yy / 5.0 - t * 0.3)
        b = np.full_like(xx, 20 + 4 * t)
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.round(np.stack(out)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    frames = smooth_frames()
    path = tmp_path_factory.mktemp("dec") / "v.mp4"
    # yuv444p at qp 0 is near-lossless; a keyframe every 8 frames so seeks land mid-file.
    write_video(path, frames, fps=24, pix_fmt="yuv444p", options={"qp": "0", "g": "8", "bf": "2"})
    return path, frames


def check(got, frames, idx):
    ref = frames[np.minimum(idx, len(frames) - 1)]
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.abs(got.astype(float) - ref).mean() < 3, "decoded frames differ from the written ones"
    # order: every decoded frame is nearest to the frame it claims to be
    dists = np.abs(got[:, None].astype(float) - frames[None].astype(float)).mean(axis=(2, 3, 4))
    assert (dists.argmin(1) == np.minimum(idx, len(frames) - 1)).all()


def test_header_and_frames_match_after_seeks(lossless):
    path, frames = lossless
    with VideoReader(path) as r:
        assert r.num_frames == T and abs(r.fps - 24) < 1e-6
        # forward, backward (needs a seek back), a gap longer than seek_gap, repeats, unsorted
        for idx in ([0, 1, 2, 3], [40, 41, 42], [5, 13, 21, 29], [47, 0, 47, 9, 9], [30, 10, 20], list(range(0, T, 3))):
            check(r.get_frames(idx), frames, np.array(idx))
    with VideoReader(path, seek_gap=4) as r:  # forces a seek per index
        idx = np.array([44, 3, 17, 30, 8])
        check(r.get_frames(idx), frames, idx)


def test_seeking_decodes_from_the_nearest_keyframe_only(lossless):
    path, frames = lossless  # keyframes every 8 frames (0, 8, ..., 40)
    with VideoReader(path) as r:
        check(r.get_frames([41, 42]), frames, np.array([41, 42]))
        assert r.frames_decoded <= 4  # 40, 41, 42 (+ one look-ahead), not 43 frames from the start
        n = r.frames_decoded
        check(r.get_frames([9, 9, 9]), frames, np.array([9, 9, 9]))  # back: seek to keyframe 8
        assert r.frames_decoded - n <= 3


def test_repeated_indices_share_one_decode(lossless):
    path, _ = lossless
    with VideoReader(path) as r:
        got = r.get_frames([7, 7, 7, 12, 7])
    assert (got[0] == got[1]).all() and (got[0] == got[4]).all() and not (got[0] == got[3]).all()


def test_indices_past_end_hold_last_frame(lossless):
    path, frames = lossless
    with VideoReader(path) as r:
        got = r.get_frames([T - 2, T - 1, T + 3, T + 40])
        check(got[:2], frames, np.array([T - 2, T - 1]))
        assert (got[2] == got[1]).all() and (got[3] == got[1]).all()
        assert r.num_frames == T


def test_count_from_duration_when_header_has_none(tmp_path):
    import av

    frames = smooth_frames(20)
    path = tmp_path / "v.mkv"  # Matroska stores no frame count
    write_video(path, frames, fps=10, pix_fmt="yuv444p", options={"qp": "0"})
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # the fallback path is really exercised
    with VideoReader(path) as r:
        assert r.num_frames == 20
        idx = np.array([19, 4, 11])
        check(r.get_frames(idx), frames, idx)


def test_raw_stream_without_header_is_counted_by_decoding(tmp_path):
    import av

    frames = smooth_frames(20)
    path = tmp_path / "v.h264"  # raw H.264: no frame count, no duration, no timestamps, not seekable
    write_video(path, frames, fps=10, pix_fmt="yuv444p", options={"qp": "0"})
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0 and c.duration is None
    with VideoReader(path) as r:
        assert r.num_frames == 20
        idx = np.array([19, 3, 10, 25])
        check(r.get_frames(idx), frames, idx)


def test_frame_folder(tmp_path):
    frames = smooth_frames(12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"img_{i + 1:05d}.png")
    with VideoReader(tmp_path) as r:
        assert r.num_frames == 12
        assert (r.get_frames([3, 0, 11, 20]) == frames[[3, 0, 11, 11]]).all()  # lossless PNG: exact


@pytest.mark.parametrize("kind", ["missing", "zero", "text", "truncated"])
def test_unreadable_files_raise_decode_error(tmp_path, lossless, kind):
    path = tmp_path / "bad.mp4"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "truncated":
        data = lossless[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        with VideoReader(path) as r:
            r.get_frames([0, 1])


# ----------------------------------------------------------------------------------------------- the fast path


def textured(n, h=48, w=64, seed=0):
    """Moving texture plus noise, so x264 makes real P, B-reference and non-reference B frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        base = np.stack([np.sin(xx * 0.2 + t * 0.3), np.cos(yy * 0.15 - t * 0.2), np.sin((xx + yy) * 0.1 + t * 0.1)], -1)
        out[t] = np.clip(128 + 90 * base + rng.normal(0, 8, (h, w, 1)), 0, 255).astype(np.uint8)
    return out


def write_with_pts(path, frames, pts, tick=Fraction(1, 24), gop=16):
    """H.264 (x264 defaults: 3 B-frames, B-pyramid) with the given frame timestamps, in units of `tick` seconds."""
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.height, st.width, st.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        st.codec_context.time_base = tick
        st.options = {"g": str(gop), "keyint_min": str(gop), "bframes": "3", "b-pyramid": "normal"}
        for f, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(p), tick
            for pkt in st.encode(vf):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


@pytest.fixture(scope="module")
def bframes(tmp_path_factory):
    """80 frames, a keyframe every 16 (5 GOPs), B-frames; and a copy with timestamp gaps (dropped frames)."""
    import av

    root = tmp_path_factory.mktemp("fast")
    frames = textured(80)
    path = root / "b.mp4"
    write_with_pts(path, frames, range(80))
    with av.open(str(path)) as c:  # the file really has what the fast path is about
        st = c.streams.video[0]
        kinds = [(p.is_keyframe, p.pts) for p in c.demux(st) if p.size]
    assert sum(k for k, _ in kinds) >= 5
    assert any(b > a for (_, a), (_, b) in zip(kinds, kinds[1:])) and any(b < a for (_, a), (_, b) in zip(kinds, kinds[1:]))
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.skip_frame = "NONREF"
        nonref_skipped = 80 - sum(1 for _ in c.decode(video=0))
    assert nonref_skipped >= 20  # x264's non-reference B-frames
    # Variable frame rate at 24 fps on average: steps of 1/48 s, 1/48 s, 1/12 s, 1/24 s, so some indices have two
    # frames (the later one shows) and some none (the previous frame shows).
    gaps = root / "gaps.mp4"
    write_with_pts(gaps, frames, np.cumsum([0] + [(1, 1, 4, 2)[k % 4] for k in range(79)]), Fraction(1, 48))
    return path, gaps


CLIPS = [np.arange(16) * 4, 8 + np.arange(16) * 4, 17 + np.arange(8) * 2, 3 + np.arange(16), 40 + np.arange(10) * 3,
         np.array([70, 74, 78, 2, 6, 10]), np.array([79, 0, 79, 33, 33]), np.arange(5) * 19, np.array([75, 79, 83, 90])]


@pytest.mark.parametrize("seek_gap", [96, 6])
def test_fast_path_returns_exactly_the_plain_frames(bframes, seek_gap):
    path = bframes[0]
    with VideoReader(path, seek_gap=seek_gap, fast=False) as plain, VideoReader(path, seek_gap=seek_gap) as fast:
        assert plain.num_frames == fast.num_frames == 80
        for idx in CLIPS:
            assert np.array_equal(fast.get_frames(idx), plain.get_frames(idx)), idx
        assert fast.frames_decoded < 0.8 * plain.frames_decoded  # it did skip frames
        assert fast.redecoded_runs == 0
    data = path.read_bytes()  # in-memory bytes decode to the same frames
    with VideoReader(data, seek_gap=seek_gap, name="in-memory.mp4") as mem, VideoReader(path, fast=False) as plain:
        for idx in CLIPS[:4]:
            assert np.array_equal(mem.get_frames(idx), plain.get_frames(idx))


def test_variable_rate_file_a_skipped_frame_that_is_needed_is_decoded_again(bframes):
    """Timestamps with gaps: an index without a frame of its own shows its predecessor, which the fast path may
    have skipped; then it decodes that run again without skipping. Every index, alone and in clips."""
    import av

    _, gaps = bframes
    with VideoReader(gaps, fast=False) as plain, VideoReader(gaps) as fast:
        with av.open(str(gaps)) as c:
            shown = [plain._index_of(f.pts) for f in c.decode(video=0)]
        assert abs(plain.fps - 24) < 0.5
        assert len(set(shown)) <= len(shown) - 8 and len(set(range(max(shown))) - set(shown)) >= 8  # doubles, holes
        for j in range(plain.num_frames + 2):
            assert np.array_equal(fast.get_frames([j]), plain.get_frames([j])), j
        for idx in CLIPS:
            assert np.array_equal(fast.get_frames(idx), plain.get_frames(idx)), idx
        assert fast.redecoded_runs > 0


def test_in_memory_source_errors_name_it():
    with pytest.raises(VideoDecodeError, match="clip.mp4: empty"):
        VideoReader(b"", name="clip.mp4")
    with pytest.raises(VideoDecodeError, match="clip.mp4: cannot open"):
        VideoReader(b"not a video at all" * 10, name="clip.mp4")


def test_decoder_scaling_is_close_to_decode_then_resize(lossless):
    """short_side: the converter's bilinear scaling against decoding at full size and torch's antialiased resize
    (on the opencv sample videos at 640x480 -> 256: mean 0.9-1.2 levels of 255)."""
    import torch

    from motionmae.data import transforms as T

    path, _ = lossless  # 32x48, smooth
    idx = np.arange(0, 40, 5)
    with VideoReader(path) as full, VideoReader(path, short_side=16) as small, VideoReader(path, short_side=32) as same:
        ref = T.short_side_resize(T.from_numpy_frames(full.get_frames(idx)), 16)
        got = T.from_numpy_frames(small.get_frames(idx))
        assert got.shape == ref.shape == (3, len(idx), 16, 24)
        diff = (got.float() - ref.float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())
        # not a copy of some other frame: each scaled frame is nearest to its own reference frame
        d = (got.float()[:, :, None] - ref.float()[:, None]).abs().mean(dim=(0, 3, 4))
        assert torch.equal(d.argmin(1), torch.arange(len(idx)))
        assert np.array_equal(same.get_frames(idx), full.get_frames(idx))  # no larger than short_side: untouched


def test_data_decode_short_side_scales_in_the_reader(tmp_path, monkeypatch):
    """data.decode_short_side reaches the reader, and the clip comes out the same size as with torch's resize."""
    from test_datasets import cfg, write_coded

    from motionmae.data import datasets

    write_coded(tmp_path / "a.mp4", 3)  # 32x40 frames
    (tmp_path / "l.txt").write_text("a.mp4 0\n")
    made = []
    monkeypatch.setattr(datasets, "VideoReader", lambda *a, **kw: made.append(kw["short_side"]) or VideoReader(*a, **kw))
    items = [datasets.build_dataset(cfg(val=str(tmp_path / "l.txt"), input_size=16, short_side=16, decode_short_side=s),
                                    "val", "finetune")[0]["video"] for s in (0, 16)]
    assert made == [0, 16] and items[0].shape == items[1].shape == (3, 4, 16, 16)
    assert (items[0].float() - items[1].float()).abs().mean() < 2  # flat coded frames: nearly the same pixels
