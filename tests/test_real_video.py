"""The real-video probe set (benchmarks/real_video.py): labels correct by construction, on a made-up video whose
pixels encode their frame index and column; the OpenCV sample videos themselves are optional (skipped if absent)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real_video as RV  # noqa: E402


def coded_video(n=60, h=RV.HEIGHT, w=96):
    """uint8 (n, h, w, 3): channel 0 = frame index, channel 1 = column, channel 2 = row."""
    t, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([t, x, y], -1).astype(np.uint8)


@pytest.mark.parametrize("stride", RV.STRIDES)
@pytest.mark.parametrize("arrow", [0, 1])
@pytest.mark.parametrize("pan", [0, 1])
def test_labels_by_construction(stride, arrow, pan):
    video = coded_video()
    clip = RV.clip_from(video, start=5, stride=stride, arrow=arrow, pan=pan, x0=16, y0=3)
    assert clip.shape == (RV.FRAMES, RV.SIZE, RV.SIZE, 3)
    idx = clip[:, 0, 0, 0].astype(int)
    order = np.diff(idx)
    assert (order == (stride if arrow == 0 else -stride)).all()  # speed = stride; arrow = playback order
    assert sorted(idx) == list(range(5, 5 + stride * RV.FRAMES, stride))  # the same frames either way
    left = clip[:, 0, 0, 1].astype(int)
    assert (np.diff(left) == (1 if pan == 0 else -1)).all()  # the observed window moves right (pan 0) or left
    assert (clip[:, :, :, 2] == np.arange(3, 3 + RV.SIZE)[None, :, None]).all()  # rows fixed
    assert abs(left.mean() - 16) <= 1  # centred on x0 whatever the labels: the window's place gives nothing away


def test_reversed_clip_is_the_forward_clip_played_backwards():
    video = coded_video()
    fwd = RV.clip_from(video, 4, 3, 0, 1, 20, 0)
    rev = RV.clip_from(video, 4, 3, 1, 0, 20, 0)  # reversed playback of a left pan is observed as a right pan
    assert np.array_equal(fwd[::-1], rev)


@pytest.mark.skipif(not RV.available(), reason="OpenCV sample videos not installed")
def test_real_dataset_files(tmp_path):
    from motionmae.data.datasets import read_annotation_list

    out = RV.make_real_dataset(tmp_path, num_train=4, num_val=2)
    meta = json.loads((out / "labels.json").read_text())
    assert meta["columns"] == list(RV.COLUMNS) and len(meta["source"]) == len(RV.available())
    entries = read_annotation_list(out / "train.csv")
    assert len(entries) == 4 and all(len(e.label) == 4 for e in entries)
