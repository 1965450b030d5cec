"""Video decoding on PyAV: open a file (or a folder of frame images), count its frames, decode chosen indices.

`VideoReader(path).get_frames(indices) -> np.uint8 (T, H, W, 3)`. Only what a clip needs is decoded: the
wanted indices are sorted and de-duplicated, the reader seeks to the keyframe before the first one and
decodes forward (seeking again across long gaps), then the clip is gathered by index, so repeated or
looped indices cost nothing. Containers that lie about their length are handled: the count falls back to
duration * rate, and indices past the real end hold the last decoded frame.

A frame's index is read from its timestamp, `round((pts - start) * time_base * fps)`, as torchvision and
pytorchvideo do; for variable-frame-rate files this is an approximation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

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
    """Random access to the frames of one video file or frame folder.

    `num_frames` and `fps` are known after opening; `get_frames(indices)` returns uint8 (T, H, W, 3).
    Indices past the end hold the last frame (a container may overstate its length); negative indices
    are an error. Use as a context manager or call `close()`.
    """

    def __init__(self, path, seek_gap: int = 96):
        self.path = str(path)
        self.seek_gap = seek_gap  # seek again instead of decoding through a gap longer than this
        self._container = None
        self._images: Optional[List[str]] = None
        self.frames_decoded = 0  # frames the codec produced so far (tests and benchmarks check the seeking)
        if os.path.isdir(self.path):
            self._open_folder()
        else:
            self._open_file()

    # ------------------------------------------------------------------ opening
    def _open_folder(self):
        names = sorted((n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)
        if not names:
            raise VideoDecodeError(f"{self.path}: folder holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
        self._images = [os.path.join(self.path, n) for n in names]
        self.num_frames = len(names)
        self.fps = FRAME_FOLDER_FPS

    def _open_file(self):
        import av

        if not os.path.exists(self.path):
            raise VideoDecodeError(f"{self.path}: no such file")
        if os.path.getsize(self.path) == 0:
            raise VideoDecodeError(f"{self.path}: empty file (0 bytes)")
        try:
            self._container = av.open(self.path, metadata_errors="ignore")
        except Exception as e:  # av raises many FFmpegError subclasses, and OSError on odd files
            raise VideoDecodeError(f"{self.path}: cannot open: {e}") from None
        if not self._container.streams.video:
            self.close()
            raise VideoDecodeError(f"{self.path}: no video stream")
        st = self._container.streams.video[0]
        self._stream = st
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
                return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise VideoDecodeError(f"{path}: cannot read frame image: {e}") from None

    def _pts_of(self, i: int) -> int:
        return self._start + int(round(i / self.fps / self._time_base))

    def _index_of(self, frame) -> Optional[int]:
        if frame.pts is None:
            return None
        return int(round((frame.pts - self._start) * self._time_base * self.fps))

    def _decode_all(self) -> List[np.ndarray]:
        try:  # called right after opening: no seek (raw streams cannot seek)
            frames = [f.to_ndarray(format="rgb24") for f in self._container.decode(self._stream)]
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
            frames = self._decode_run(run, from_start=False)
            if frames is None:  # the seek overshot or timestamps are missing: decode from the start
                frames = self._decode_run(run, from_start=True)
            got.update(frames)
        return got

    def _decode_run(self, pending: List[int], from_start: bool) -> Optional[dict]:
        """Frames for the ascending indices `pending`. The frame shown at index j is the last decoded frame
        with index <= j, so dropped/duplicated timestamps and indices past the real end all resolve."""
        out: dict = {}
        k = 0
        prev, prev_arr, prev_i = None, None, -1
        try:
            if from_start or pending[0] == 0:
                self._container.seek(0)
            else:
                self._container.seek(self._pts_of(pending[0]), stream=self._stream, backward=True, any_frame=False)
            for count, frame in enumerate(self._container.decode(self._stream)):
                self.frames_decoded += 1
                i = self._index_of(frame)
                if i is None:  # no timestamps: only counting from the start can place the frame
                    if not from_start:
                        return None
                    i = count
                if prev is None and not from_start and i > pending[0]:
                    return None
                while k < len(pending) and pending[k] < i:  # shown by the previous frame
                    if prev is not None and prev_arr is None:
                        prev_arr = prev.to_ndarray(format="rgb24")
                    out[pending[k]] = prev_arr if prev is not None else frame.to_ndarray(format="rgb24")
                    k += 1
                if k == len(pending):
                    break
                prev, prev_arr, prev_i = frame, None, i
                if pending[k] == i:
                    prev_arr = out[i] = frame.to_ndarray(format="rgb24")
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
                prev_arr = prev.to_ndarray(format="rgb24")
            for j in pending[k:]:
                out[j] = prev_arr
            self.num_frames = min(self.num_frames, prev_i + 1)
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
