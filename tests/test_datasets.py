import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from motionmae.config import DataConfig
from motionmae.data.datasets import (build_dataset, collate, dense_indices, dense_view_indices,
                                     read_annotation_list, resolve_source, segment_indices)
from motionmae.data.decode import write_video
from motionmae.errors import UserError

N_FRAMES = 12


def write_coded(path, i, n=N_FRAMES, size=(32, 40)):
    """Flat frames whose red channel codes the video id (8 * i) and green the frame index (16 * t)."""
    f = np.zeros((n, *size, 3), np.uint8)
    f[..., 0] = 8 * i
    f[..., 1] = (16 * np.arange(n))[:, None, None]
    f[..., 2] = 100
    write_video(path, f, fps=12, pix_fmt="yuv444p", options={"qp": "0"})


def cfg(**kw):
    base = dict(num_frames=4, sampling_rate=2, input_size=32, short_side=32, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


# ----------------------------------------------------------------------------------------------- sampling


def test_dense_indices_by_hand():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(300):
        idx = dense_indices(100, 4, 4, g)
        assert (np.diff(idx) == 4).all() and 0 <= idx[0] <= 87  # span 13, start in [0, 100 - 13]
        starts.add(int(idx[0]))
    assert min(starts) <= 3 and max(starts) >= 84
    assert dense_indices(100, 4, 4).tolist() == [43, 47, 51, 55]  # centred: (100 - 13) // 2
    assert dense_indices(10, 4, 4, g, "loop").tolist() == [0, 4, 8, 2]  # 12 mod 10
    assert dense_indices(10, 4, 4, g, "clamp").tolist() == [0, 4, 8, 9]
    assert dense_indices(13, 4, 4, g).tolist() == [0, 4, 8, 12]  # exactly one span: start 0
    # VideoMAE's test views (kinetics.py): frames 0, 4, ..., 96 (25), clip k at grid frame int(k * (25 - 4) / 2)
    assert [v.tolist() for v in dense_view_indices(100, 4, 4, 3)] == [[0, 4, 8, 12], [40, 44, 48, 52], [84, 88, 92, 96]]


def test_segment_indices_by_hand():
    assert segment_indices(32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]  # centres of [4i, 4i + 4)
    # VideoMAE's 2 SSv2 test views (ssv2.py): the start and the centre of each segment
    assert segment_indices(32, 8, view=0, num_views=2).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert segment_indices(32, 8, view=1, num_views=2).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    g = torch.Generator().manual_seed(1)
    draws = np.stack([segment_indices(32, 8, g) for _ in range(200)])
    assert ((draws // 4) == np.arange(8)).all()  # one frame inside each segment
    assert {int(v) for v in draws[:, 3]} == {12, 13, 14, 15}  # uniform over the segment
    # fewer frames than segments: segment i is [floor(5i/8), max(floor(5(i+1)/8) - 1, start)]
    assert segment_indices(5, 8, g).tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert segment_indices(5, 8).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]


# ----------------------------------------------------------------------------------------------- lists


def test_annotation_formats(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "frames").mkdir()
    lst = tmp_path / "train.csv"
    lst.write_text("v/a.mp4,3,1\n\nv/b.mp4, 0, 2\n/abs/c.mp4,1,0\n")
    e = read_annotation_list(lst)
    assert [x.label for x in e] == [(3, 1), (0, 2), (1, 0)]
    assert e[0].path == str(tmp_path / "v" / "a.mp4") and e[2].path == "/abs/c.mp4"
    assert e[1].where == f"{lst}:3"
    sp = tmp_path / "train.txt"
    sp.write_text("a.mp4 5\nb.mp4 7\n")
    e = read_annotation_list(sp, root="/data")
    assert [(x.path, x.label) for x in e] == [("/data/a.mp4", (5,)), ("/data/b.mp4", (7,))]
    v2 = tmp_path / "pretrain.txt"
    v2.write_text("v/a.mp4 0 -1\nv/frames 4 20\n")  # VideoMAE v2: path start total
    e = read_annotation_list(v2)
    assert [(x.label, x.start, x.total) for x in e] == [((), 0, -1), ((), 4, 20)]
    raw = tmp_path / "rawframes.txt"
    raw.write_text("v/frames 30 7\n")  # MMAction raw frames: dir total label
    e = read_annotation_list(raw, list_format="rawframes")[0]
    assert (e.label, e.start, e.total) == ((7,), 0, 30)
    assert read_annotation_list(raw)[0].total == 7  # auto reads a frame folder's two numbers as v2 start/total
    forced = tmp_path / "forced.txt"
    forced.write_text("v/a.mp4 2 9\n")
    assert read_annotation_list(forced)[0].label == (2, 9)
    assert (read_annotation_list(forced, list_format="v2")[0].start, read_annotation_list(forced, list_format="v2")[0].total) == (2, 9)
    nolab = tmp_path / "unlabeled.txt"
    nolab.write_text("a.mp4\nb.mp4\n")
    assert [x.label for x in read_annotation_list(nolab)] == [(), ()]


@pytest.mark.parametrize("text,line", [("a.mp4 1\nb.mp4 1\nc.mp4 cat\n", 3), ("a.mp4 1\n\nb.mp4 1 2\n", 3),
                                       ("a.mp4 -4\n", 1)])
def test_malformed_line_names_file_and_line(tmp_path, text, line):
    lst = tmp_path / "list.txt"
    lst.write_text(text)
    with pytest.raises(UserError, match=f"list.txt:{line}:"):
        read_annotation_list(lst)


def test_missing_video_is_named(tmp_path):
    write_coded(tmp_path / "a.mp4", 0)
    (tmp_path / "l.txt").write_text("a.mp4 0\nnot_there.mp4 1\n")
    with pytest.raises(UserError, match=r"l.txt:2: .*not_there.mp4"):
        build_dataset(cfg(train=str(tmp_path / "l.txt")), "train", "finetune")


def test_class_folders_glob_and_labels_needed(tmp_path):
    for c, i in (("zebra", 0), ("ant", 1), ("ant", 2)):
        (tmp_path / c).mkdir(exist_ok=True)
        write_coded(tmp_path / c / f"{i}.mp4", i)
    entries, names = resolve_source(str(tmp_path))
    assert names == ["ant", "zebra"] and [e.label for e in entries] == [(0,), (0,), (1,)]
    entries, names = resolve_source(str(tmp_path / "*" / "*.mp4"))
    assert names is None and len(entries) == 3 and entries[0].label == ()
    with pytest.raises(UserError, match="has no labels"):
        build_dataset(cfg(train=str(tmp_path / "*" / "*.mp4")), "train", "finetune")
    ds = build_dataset(cfg(train=str(tmp_path), val=str(tmp_path / "ant")), "val", "pretrain")
    assert len(ds) == 2 and ds[0]["label"].tolist() == [-1]  # a folder of videos: unlabeled


# ----------------------------------------------------------------------------------------------- items


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("vids")
    for i in range(6):
        write_coded(root / f"{i:02d}.mp4", i)
    (root / "list.txt").write_text("".join(f"{i:02d}.mp4 {i % 3}\n" for i in range(6)))
    return root


def test_val_clip_is_the_hand_worked_centre(folder):
    ds = build_dataset(cfg(val=str(folder / "list.txt")), "val", "finetune")
    item = ds[4]
    v = item["video"].float()
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.uint8
    assert abs(v[0].mean() - 32) < 3  # red codes video 4
    # 12 frames, T=4, stride 2: span 7, centred start (12 - 7) // 2 = 2 -> frames 2, 4, 6, 8 (green = 16 t)
    assert np.allclose(v[1].mean(dim=(1, 2)).numpy(), [32, 64, 96, 128], atol=3)
    assert item["label"].tolist() == [1] and item["index"] == 4 and item["skipped"] == 0


def test_repeated_sampling_and_test_views_collate(folder):
    ds = build_dataset(cfg(train=str(folder / "list.txt"), num_samples=3), "train", "finetune", seed=1)
    b = collate([ds[i] for i in (0, 5)])
    assert b["video"].shape == (6, 3, 4, 32, 32)
    assert b["label"].flatten().tolist() == [0, 0, 0, 2, 2, 2] and b["index"].tolist() == [0, 0, 0, 5, 5, 5]
    reds = b["video"][:, 0].float().mean(dim=(1, 2, 3))
    assert torch.allclose(reds, torch.tensor([0.0] * 3 + [40.0] * 3), atol=3)
    # the three samples are different clips of one decoded video
    assert len({tuple(x[1].float().mean(dim=(1, 2)).round().tolist()) for x in b["video"][:3]}) > 1
    dt = build_dataset(cfg(val=str(folder / "list.txt"), test_clips=2, short_side=40), "val", "test")
    item = dt[2]
    assert item["video"].shape == (6, 3, 4, 32, 32) and item["view"].tolist() == list(range(6))
    b = collate([dt[1], dt[2]])
    assert b["video"].shape == (12, 3, 4, 32, 32) and b["index"].tolist() == [1] * 6 + [2] * 6
    ext = build_dataset(cfg(train=str(folder / "list.txt")), "train", "pretrain", extra_frames=1)
    assert ext[0]["video"].shape == (3, 5, 32, 32)


def test_same_clips_for_any_worker_count_and_epochs_differ(folder):
    ds = build_dataset(cfg(train=str(folder / "list.txt")), "train", "pretrain", seed=7)
    runs = []
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
        runs.append(torch.cat([b["video"] for b in dl]))
    assert torch.equal(runs[0], runs[1])
    ds.set_epoch(1)
    assert not torch.equal(torch.cat([collate([ds[i]])["video"] for i in range(6)]), runs[0])


def test_v2_frame_folder_window(tmp_path):
    from PIL import Image

    (tmp_path / "frames").mkdir()
    for t in range(20):  # green codes the frame index
        Image.fromarray(np.full((32, 40, 3), (0, 10 * t, 0), np.uint8)).save(tmp_path / "frames" / f"img_{t + 1:05d}.png")
    (tmp_path / "v2.txt").write_text("frames 8 6\n")  # frames 8..13 only
    ds = build_dataset(cfg(train=str(tmp_path / "v2.txt"), num_frames=3, sampling_rate=2), "train", "pretrain")
    for epoch in range(5):
        ds.set_epoch(epoch)
        greens = ds[0]["video"][1].float().mean(dim=(1, 2)) / 10  # window of 6, span 5: start 0 or 1 in it
        assert greens.round().tolist() in ([8, 10, 12], [9, 11, 13])


# ----------------------------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory):
    """30 videos, 3 of them (10%) broken: truncated, zero bytes, text renamed .mp4."""
    root = tmp_path_factory.mktemp("corrupt")
    for i in range(30):
        write_coded(root / f"{i:02d}.mp4", i, n=6, size=(16, 16))
    data = (root / "07.mp4").read_bytes()
    (root / "07.mp4").write_bytes(data[: len(data) // 2])
    (root / "15.mp4").write_bytes(b"")
    (root / "23.mp4").write_text("just text, renamed\n")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_files_skipped_and_counted(corrupt_folder, workers):
    ds = build_dataset(cfg(train=str(corrupt_folder), num_frames=2, sampling_rate=1, input_size=16), "train", "pretrain")
    with warnings.catch_warnings(record=True) as rec:  # worker processes print theirs to stderr instead
        warnings.simplefilter("always")
        batches = list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate))
    if workers == 0:
        named = " ".join(str(r.message) for r in rec if "skipping unreadable video" in str(r.message))
        assert all(n in named for n in ("07.mp4", "15.mp4", "23.mp4"))
    assert sum(b["skipped"] for b in batches) == 3
    idx = torch.cat([b["index"] for b in batches])
    assert len(idx) == 30 and not set(idx.tolist()) & {7, 15, 23}
    reds = torch.cat([b["video"][:, 0].float().mean(dim=(1, 2, 3)) for b in batches])
    assert torch.allclose(reds, 8 * idx.float(), atol=3)  # each replacement's label/index matches its pixels


def test_worker_count_does_not_change_the_data_on_corrupt_files(tmp_path):
    # A process that already saw a video fail skips it without decoding; workers are new processes every epoch and
    # try it again. Videos that fail only after the clip's frames were drawn (cut short at 90%) made the two differ.
    rng = np.random.default_rng(0)
    for i in range(12):
        write_video(tmp_path / f"{i:02d}.mp4", rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8))
    for i in (3, 8):
        data = (tmp_path / f"{i:02d}.mp4").read_bytes()
        (tmp_path / f"{i:02d}.mp4").write_bytes(data[: int(len(data) * 0.9)])

    def epochs(workers):
        ds = build_dataset(cfg(train=str(tmp_path), num_frames=3, sampling_rate=2, input_size=16, max_skip_fraction=0.9),
                           "train", "pretrain")
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out += list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate))
        return out

    a, b = epochs(0), epochs(2)
    assert sum(x["skipped"] for x in a) == 6  # both broken videos, every epoch
    assert [x["index"].tolist() for x in a] == [x["index"].tolist() for x in b]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b))
    assert [x["skipped"] for x in a] == [x["skipped"] for x in b]


def test_too_many_failures_is_a_clear_error(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.mp4").write_text("not a video")
    write_coded(tmp_path / "ok.mp4", 1)
    ds = build_dataset(cfg(train=str(tmp_path), max_skip_fraction=0.5), "train", "pretrain")
    with pytest.warns(RuntimeWarning), pytest.raises(UserError, match="max_skip_fraction"):
        for i in range(len(ds)):
            ds[i]


# ----------------------------------------------------------------------------------------------- benchmark


def test_loader_benchmark_quick_mode_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loader.py"
    spec = importlib.util.spec_from_file_location("bench_loader", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.run(quick=True, update_docs=False)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")]
    loader = [r for r in rows if len(r) == 7 and r[0] == "64x48"]  # video, MB, num_samples, workers, clips/s, ms, CPU ms
    transforms = [r for r in rows if len(r) == 3 and r[0] == "64x48"]  # source, transform, CPU ms/clip
    assert len(loader) == len(mod.QUICK["samples"]) * len(mod.QUICK["workers"]) and len(transforms) == 3
    assert all(float(r[4]) > 0 for r in loader) and all(float(r[2]) > 0 for r in transforms)
    assert "| model step (cached batch) |" in text and "the step fed" in text
    decode = {r[1]: r for r in rows if len(r) == 6 and r[0] == "64x48"}  # video, decoder, CPU ms, vs decord, frames, identical
    fast, plain = decode["ours (fast path)"], next(r for name, r in decode.items() if name.startswith("ours, plain"))
    assert float(fast[2]) > 0 and int(fast[4]) < int(plain[4])  # the fast path decoded fewer frames
    exact = [r for name, r in decode.items() if "short" not in name]  # not the two scaled rows
    assert len(exact) >= 2 and all(r[5].split("/")[0] == r[5].split("/")[1] for r in exact)  # same frames, bit for bit
    assert "mean abs diff" in decode[next(n for n in decode if "by the converter" in n)][5]
    assert len([r for r in rows if len(r) == 4 and r[0] == "64x48"]) == 4  # whole items, scaled in the converter or not
    streamed = [r for r in rows if len(r) == 5 and r[0] in ("annotation list", "shards (local files)", "shards (pipe:cat, a stream)")]
    assert len(streamed) == 3 * len(mod.QUICK["workers"]) and all(float(r[2]) > 0 for r in streamed)
    assert "from the shards equal the list's: yes" in text
