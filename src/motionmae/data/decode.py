"""Video decoding on PyAV: open a file, in-memory bytes or a folder of frame images, count its frames, decode
chosen indices.

`VideoReader(path).get_frames(indices) -> np.uint8 (T, H, W, 3)`. Only what a clip needs is decoded: the
wanted indices are sorted and de-duplicated, the reader seeks to the keyframe before the first one and
decodes forward (seeking again across long gaps), then the clip is gathered by index, so repeated or
looped indices cost nothing. Containers that lie about their length are handled: the count falls back to
duration * rate, and indices past the real end hold the last decoded frame.

What makes it cheaper than decoding every frame (the frames it returns are the same, bit for bit):
- Non-reference frames a clip does not use are not decoded at all: each packet's index is known from its
  timestamp before decoding, and a packet the clip does not want goes to the codec with `skip_frame=NONREF`
  (no other frame is predicted from a non-reference frame, so nothing else changes; with x264's default
  B-pyramid that is 40-50% of the frames). Should a skipped frame have been needed after all (a wanted index
  with no frame of its own, held by a skipped neighbour in a variable-rate file), the run is decoded again
  without skipping.
- Once no later packet can show a wanted index (its decode timestamp is past the last one; pts >= dts), the
  codec is drained instead of being fed more packets to push the last frames out.
- Only the frames the clip uses are converted to RGB, by one converter per reader.
- One codec thread and one converter thread by default (`threads=1`): in DataLoader workers the parallelism
  is the workers.
Optionally (`short_side=N`, off by default) the converter also scales frames whose short side exceeds N down
to N in the same pass: cheaper than converting at full size and resizing afterwards, but not bit-identical
to it (swscale's filter instead of torch's antialiased bilinear; tests bound the difference).

A frame's index is read from its timestamp, `round((pts - start) * time_base * fps)`, as torchvision and
pytorchvideo do; for variable-frame-rate files this is an approximation.
"""

from __future__ import annotations

import bisect
import io
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from motionmae.data.transforms import short_side_shape

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts")
FRAME_FOLDER_FPS = 30.0  # frame folders carry no rate; VideoMAE's extracted Something-Something frames are ~12-30


class VideoDecodeError(Exception):
    """A file that cannot be read as a video (missing, empty, truncated, not a video, or no frames decode)."""


def is_frame_folder(path) -> bool:
    """A directory whose entries include image files (img_00001.jpg ...)."""
    p = Path(path)
    if not p.is_dir():
        return False
    with os.scandir(p) as it:
        return any(e.name.lower().endswith(IMAGE_EXTENSIONS) for e in it)


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


class VideoReader:
    """Random access to the frames of one video (a file, its bytes, or a frame folder).

    `num_frames` and `fps` are known after opening; `get_frames(indices)` returns uint8 (T, H, W, 3).
    Indices past the end hold the last frame (a container may overstate its length); negative indices
    are an error. Use as a context manager or call `close()`.

    `source`: a path, or the file's bytes (`bytes`, `bytearray`, `memoryview` or a seekable binary file
    object; `name` then labels it in messages). `fast=False` decodes every frame of a run and drains the codec
    by decoding on (the plain path, which the fast one is tested against). `threads`: codec threads (0: PyAV's
    default). `short_side`: see the module docstring.
    """

    def __init__(self, source, seek_gap: int = 96, *, name: Optional[str] = None, fast: bool = True,
                 threads: int = 1, short_side: int = 0):
        self._source = source
        in_memory = isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read")
        self.path = str(name if name is not None else ("<bytes>" if in_memory else source))
        self.seek_gap = seek_gap  # seek again instead of decoding through a gap longer than this
        self.fast, self.threads, self.short_side = fast, threads, short_side
        self._container = None
        self._images: Optional[List[str]] = None
        self._reformatter = None
        self.notes: List[str] = []  # what is odd about this video, for a warning: a damaged tail, a grayscale source
        self.frames_decoded = 0  # frames the codec produced so far (tests and benchmarks check the seeking)
        self.redecoded_runs = 0  # runs the fast path gave back to the plain one (a skipped frame was needed)
        if not in_memory and os.path.isdir(self.path):
            self._open_folder()
        else:
            self._open_file(in_memory)

    # ------------------------------------------------------------------ opening
    def _open_folder(self):
        names = sorted((n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)
        if not names:
            raise VideoDecodeError(f"{self.path}: folder holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
        self._images = [os.path.join(self.path, n) for n in names]
        self.num_frames = len(names)
        self.fps = FRAME_FOLDER_FPS

    def _open_file(self, in_memory: bool):
        import av

        source = self._source
        if in_memory:
            if not hasattr(source, "read"):
                if len(source) == 0:
                    raise VideoDecodeError(f"{self.path}: empty file (0 bytes)")
                source = io.BytesIO(source)
        else:
            if not os.path.exists(self.path):
                raise VideoDecodeError(f"{self.path}: no such file")
            if os.path.getsize(self.path) == 0:
                raise VideoDecodeError(f"{self.path}: empty file (0 bytes)")
            source = self.path
        try:
            self._container = av.open(source, metadata_errors="ignore")
        except Exception as e:  # av raises many FFmpegError subclasses, and OSError on odd files
            raise VideoDecodeError(f"{self.path}: cannot open: {e}") from None
        if not self._container.streams.video:
            self.close()
            raise VideoDecodeError(f"{self.path}: no video stream")
        st = self._container.streams.video[0]
        self._stream = st
        if st.codec_context is None:  # a stream header FFmpeg has no decoder for (or garbage that parsed as one)
            self.close()
            raise VideoDecodeError(f"{self.path}: no decoder for its video stream")
        if st.codec_context.pix_fmt and st.codec_context.pix_fmt.startswith(("gray", "ya")):
            self.notes.append(f"is grayscale ({st.codec_context.pix_fmt}): its three colour channels are equal")
        if self.threads > 0:  # before the codec opens (on the first packet)
            st.codec_context.thread_type = "NONE" if self.threads == 1 else "AUTO"
            st.codec_context.thread_count = self.threads
        rate = st.average_rate or st.guessed_rate or st.base_rate
        self.fps = float(rate) if rate else 0.0
        self._time_base = float(st.time_base) if st.time_base else 0.0
        self._start = st.start_time if st.start_time is not None else 0
        n = int(st.frames or 0)
        if n <= 0 and self.fps > 0:  # the header has no count: estimate from the duration
            if st.duration is not None and self._time_base > 0:
                n = int(round(st.duration * self._time_base * self.fps))
            elif self._container.duration is not None:
                n = int(round(self._container.duration / 1_000_000 * self.fps))
        if n <= 0 or self.fps <= 0 or self._time_base <= 0:
            # No usable header: decode once to count (rare: raw streams, broken headers).
            frames = self._decode_all()
            self.num_frames, self._cache = len(frames), frames
        else:
            self.num_frames, self._cache = n, None

    def close(self):
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"VideoReader({self.path!r}, num_frames={self.num_frames}, fps={self.fps:.3g})"

    # ------------------------------------------------------------------ decoding
    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 (T, H, W, 3)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("get_frames needs at least one index")
        if idx.min() < 0:
            raise ValueError(f"negative frame index {int(idx.min())} for {self.path}")
        wanted = np.unique(idx)
        if self._images is not None:
            got = {int(i): self._read_image(int(i)) for i in wanted}
        elif self._cache is not None:
            got = {int(i): self._cache[min(int(i), len(self._cache) - 1)] for i in wanted}
        else:
            got = self._decode_indices(wanted)
        frames = [got[int(i)] for i in idx]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise VideoDecodeError(f"{self.path}: frames change size mid-video {sorted(shapes)}")
        return np.stack(frames)

    def _read_image(self, i: int) -> np.ndarray:
        from PIL import Image

        path = self._images[min(i, len(self._images) - 1)]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise VideoDecodeError(f"{path}: cannot read frame image: {e}") from None
        return self._scaled_image(rgb)

    def _scaled_image(self, rgb: np.ndarray) -> np.ndarray:
        """Frame-folder images through the same scaling as decoded frames (`short_side`)."""
        if not self.short_side or min(rgb.shape[:2]) <= self.short_side:
            return rgb
        import av

        return self._to_rgb(av.VideoFrame.from_ndarray(rgb, format="rgb24"))

    def _to_rgb(self, frame) -> np.ndarray:
        """One frame to uint8 (H, W, 3) RGB (scaled to `short_side` if set), by the reader's one converter."""
        from av.video.reformatter import VideoReformatter

        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        h, w = frame.height, frame.width
        size = {}
        if self.short_side and min(h, w) > self.short_side:
            size = dict(zip(("height", "width"), short_side_shape(h, w, self.short_side)), interpolation="BILINEAR")
        return self._reformatter.reformat(frame, format="rgb24", threads=1, **size).to_ndarray()

    def _pts_of(self, i: int) -> int:
        return self._start + int(round(i / self.fps / self._time_base))

    def _index_of(self, pts) -> Optional[int]:
        if pts is None:
            return None
        return int(round((pts - self._start) * self._time_base * self.fps))

    def _decode_all(self) -> List[np.ndarray]:
        try:  # called right after opening: no seek (raw streams cannot seek)
            frames = [self._to_rgb(f) for f in self._container.decode(self._stream)]
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: decoding failed: {e}") from None
        if not frames:
            raise VideoDecodeError(f"{self.path}: no frame could be decoded")
        return frames

    def _decode_indices(self, wanted: np.ndarray) -> dict:
        """Decode the sorted unique `wanted` indices; indices past the real end get the last frame."""
        # Split into runs: within a run decode straight through, across a long gap seek again.
        runs, start = [], 0
        for k in range(1, len(wanted) + 1):
            if k == len(wanted) or wanted[k] - wanted[k - 1] > self.seek_gap:
                runs.append([int(i) for i in wanted[start:k]])
                start = k
        got: dict = {}
        for run in runs:
            frames = self._decode_run(run, from_start=False, fast=self.fast)
            if frames is None and self.fast:  # skipping could not be trusted here: the plain way
                frames = self._decode_run(run, from_start=False)
            if frames is None:  # the seek overshot or timestamps are missing: decode from the start
                frames = self._decode_run(run, from_start=True)
            got.update(frames)
        return got

    def _frames(self, pending: List[int], fast: bool, seen: list, nonref: set):
        """Decoded frames from the current position on. `fast`: a packet whose index is not in `pending` is
        decoded with skip_frame=NONREF, and once a packet's decode timestamp is past the last pending index
        (so no later packet shows a pending index: pts >= dts) the codec is drained instead of decoding
        more. Every packet's timestamp goes to `seen`, those sent with NONREF to `nonref`."""
        cc = self._stream.codec_context
        want, last = set(pending), pending[-1]
        mode = "DEFAULT"
        try:
            for packet in self._container.demux(self._stream):
                i = self._index_of(packet.pts)
                if fast:
                    if i is not None and packet.dts is not None and self._index_of(packet.dts) > last:
                        packet = None  # drain: what is still buffered comes out without decoding more
                    else:
                        m = "NONREF" if i is not None and i not in want else "DEFAULT"
                        if m != mode:
                            cc.skip_frame = mode = m
                        if m == "NONREF":
                            nonref.add(packet.pts)
                if i is not None and packet is not None:
                    seen.append(packet.pts)
                for frame in cc.decode(packet):
                    self.frames_decoded += 1
                    yield frame
                if packet is None:
                    return
        finally:
            if mode != "DEFAULT":
                cc.skip_frame = "DEFAULT"

    def _skipped_frame_needed(self, pending: List[int], shown: dict, seen: list, nonref: set) -> bool:
        """Did a packet sent with NONREF hold a pending index? Index j shows the last frame (in timestamp order)
        with index <= j; if that packet was sent with NONREF and j got another frame, skipping changed j."""
        seen = sorted(set(seen))
        indices = [self._index_of(p) for p in seen]  # ascending with the timestamps
        for j in pending:
            pos = bisect.bisect_right(indices, j) - 1
            if pos >= 0 and seen[pos] in nonref and shown[j] != seen[pos]:
                return True
        return False

    def _decode_run(self, pending: List[int], from_start: bool, fast: bool = False) -> Optional[dict]:
        """Frames for the ascending indices `pending`, or None when this way cannot place them (the seek
        overshot, timestamps are missing, or a skipped frame was needed). The frame shown at index j is the last
        decoded frame with index <= j, so dropped/duplicated timestamps and indices past the real end all resolve."""
        out: dict = {}
        shown: dict = {}  # pending index -> timestamp of the frame it got
        k = 0
        prev, prev_arr, prev_i = None, None, -1
        seen: list = []
        nonref: set = set()
        try:
            if from_start or pending[0] == 0:
                self._container.seek(0)
            else:
                self._container.seek(self._pts_of(pending[0]), stream=self._stream, backward=True, any_frame=False)
            for count, frame in enumerate(self._frames(pending, fast, seen, nonref)):
                i = self._index_of(frame.pts)
                if i is None:  # no timestamps: only counting from the start can place the frame
                    if not from_start:
                        return None
                    i = count
                if prev is None and not from_start and i > pending[0]:
                    return None
                if fast and prev is not None and frame.pts <= prev.pts:  # out of display order: not sure what skipping changed
                    return None
                while k < len(pending) and pending[k] < i:  # shown by the previous frame
                    if prev is not None and prev_arr is None:
                        prev_arr = self._to_rgb(prev)
                    out[pending[k]] = prev_arr if prev is not None else self._to_rgb(frame)
                    shown[pending[k]] = (prev if prev is not None else frame).pts
                    k += 1
                if k == len(pending):
                    break
                prev, prev_arr, prev_i = frame, None, i
                if pending[k] == i:
                    prev_arr = out[i] = self._to_rgb(frame)
                    shown[i] = frame.pts
                    k += 1
                    if k == len(pending):
                        break
        except Exception as e:
            if prev is None:
                raise VideoDecodeError(f"{self.path}: decoding failed: {e}") from None
            # A truncated or damaged tail: keep what decoded, hold the last good frame.
        if k < len(pending):  # past the real end: the container overstated its length
            if prev is None:
                raise VideoDecodeError(f"{self.path}: no frame could be decoded")
            if prev_arr is None:
                prev_arr = self._to_rgb(prev)
            for j in pending[k:]:
                out[j], shown[j] = prev_arr, prev.pts
        if fast and nonref and self._skipped_frame_needed(pending, shown, seen, nonref):
            self.redecoded_runs += 1
            return None
        if k < len(pending):
            self.num_frames = min(self.num_frames, prev_i + 1)
            self.notes.append(f"only its first {prev_i + 1} frames decode (damaged or truncated, or its header "
                              "overstates the length): the last good frame stands in for later ones")
        return out


def write_video(path, frames: np.ndarray, fps: float = 30, codec: str = "libx264", pix_fmt: str = "yuv420p",
                options: Optional[dict] = None) -> None:
    """Write uint8 (T, H, W, 3) RGB frames to `path` with PyAV (even H and W for yuv420p)."""
    import av
    from fractions import Fraction

    frames = np.asarray(frames, dtype=np.uint8)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        st.height, st.width = frames.shape[1], frames.shape[2]
        st.pix_fmt = pix_fmt
        if options:
            st.options = dict(options)
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
