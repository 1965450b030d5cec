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
