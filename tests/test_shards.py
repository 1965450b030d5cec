import hashlib
import json
import shutil
import tarfile
import warnings

import pytest
import torch
from test_datasets import cfg, write_coded

from motionmae.cli import main as cli_main
from motionmae.data import shards as S
from motionmae.data.datasets import build_dataset as build_list_dataset
from motionmae.data.datasets import collate
from motionmae.data.loader import Batches, make_loader
from motionmae.errors import UserError

N = 23  # 5 shards of 5, 5, 5, 5, 3


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    for i in range(N):
        write_coded(root / f"{i:02d}.mp4", i, n=8, size=(16, 16))
    (root / "list.txt").write_text("".join(f"{i:02d}.mp4 {i % 3} {i % 2}\n" for i in range(N)))  # two label columns
    (root / "labels.json").write_text(json.dumps({"columns": ["a", "b"], "a": ["x", "y", "z"], "b": ["p", "q"]}))
    return root


@pytest.fixture(scope="module")
def shard_dir(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    args = ["make-shards", "--data", str(source / "list.txt"), "--out", str(out), "--shard-size", "5", "--no-shuffle"]
    assert cli_main(args) == 0
    return out


def spec(d, prefix=""):
    return prefix + str(d / "shard-{000000..000004}.tar")


def data_cfg(train, **kw):
    return cfg(train=train, num_frames=2, sampling_rate=2, input_size=16, short_side=16, **kw)


def read_all(ds, batch, workers, drop_last=False):
    with Batches(make_loader(ds, batch, workers, collate_fn=collate, drop_last=drop_last)) as batches:
        return list(batches)


# ----------------------------------------------------------------------------------------------- writing


def test_make_shards_keeps_bytes_labels_and_names(source, shard_dir, tmp_path, capsys):
    index = json.loads((shard_dir / "shards.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [5, 5, 5, 5, 3] and index["num_samples"] == N
    assert index["num_labels"] == 2 and index["num_classes"] == [3, 2]
    assert index["labels"]["a"] == ["x", "y", "z"] and json.loads((shard_dir / "labels.json").read_text())["b"] == ["p", "q"]
    with tarfile.open(shard_dir / "shard-000001.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000000005.cls", "000000005.json", "000000005.mp4"] and len(names) == 15
        assert tar.extractfile("000000007.mp4").read() == (source / "07.mp4").read_bytes()
        meta = json.loads(tar.extractfile("000000007.json").read())
        assert meta["label"] == [1, 1] and meta["path"].endswith("07.mp4") and tar.extractfile("000000007.cls").read() == b"1"
    # shuffled by default, reproducibly: every video once, not in list order, the same bytes for the same seed
    digests = []
    for out in (tmp_path / "a", tmp_path / "b"):
        assert cli_main(["make-shards", "--data", str(source / "list.txt"), "--out", str(out), "--shard-size", "10"]) == 0
        digests.append([hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))])
    assert digests[0] == digests[1]
    keys = [n.split(".")[0] for p in sorted((tmp_path / "a").glob("*.tar")) for n in tarfile.open(p).getnames()[::3]]
    assert sorted(keys) == [f"{i:09d}" for i in range(N)] and keys != sorted(keys)
    assert "shuffled with seed 0" in capsys.readouterr().out
    # an existing shard folder is not overwritten by accident
    assert cli_main(["make-shards", "--data", str(source / "list.txt"), "--out", str(tmp_path / "a")]) == 2
    assert "already holds shards" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_with_the_list_datasets_clips(source, shard_dir, workers):
    """Through a real DataLoader: each sample exactly once per epoch, and each item equals the map-style
    dataset's item for the same index (clips seeded from (seed, epoch, index), whatever the worker count)."""
    listed = build_list_dataset(data_cfg(str(source / "list.txt")), "train", "finetune", seed=5)
    ds = S.build_dataset(data_cfg(spec(shard_dir)), "train", "finetune", seed=5)
    assert isinstance(ds, S.ShardDataset) and len(ds) == ds.num_videos == N and ds.num_classes == [3, 2]
    orders = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        listed.set_epoch(epoch)
        batches = read_all(ds, 4, workers)
        index = torch.cat([b["index"] for b in batches])
        assert sorted(index.tolist()) == list(range(N))
        for b in batches:
            for video, label, i in zip(b["video"], b["label"], b["index"].tolist()):
                item = listed[i]
                assert torch.equal(video, item["video"]) and torch.equal(label, item["label"])
        assert sum(b["skipped"] for b in batches) == 0
        orders.append(index.tolist())
    assert orders[0] != orders[1]  # shard order and shuffle buffer change with the epoch


def test_evaluation_streams_in_order_with_test_views(source, shard_dir):
    c = data_cfg("", val=spec(shard_dir), test_clips=2, test_crops=3)
    ds = S.build_dataset(c, "val", "test")
    listed = build_list_dataset(data_cfg("", val=str(source / "list.txt"), test_clips=2, test_crops=3), "val", "test")
    batches = read_all(ds, 3, 2)
    # 8 batches of 3 (the last of 2): worker 0 reads samples 0-11 (batches 0, 2, 4, 6), worker 1 samples 12-22
    order = [i for k in range(4) for i in list(range(3 * k, 3 * k + 3)) + list(range(12 + 3 * k, min(15 + 3 * k, N)))]
    assert [int(i) for b in batches for i in b["index"][::6]] == order
    for b in batches:
        for k in range(0, len(b["index"]), 6):
            item = listed[int(b["index"][k])]
            assert torch.equal(b["video"][k:k + 6], item["video"]) and b["view"][k:k + 6].tolist() == list(range(6))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world,workers,batch,drop_last", [(1, 2, 3, True), (1, 3, 2, False), (2, 2, 2, True)])
def test_resume_continues_exactly(shard_dir, world, workers, batch, drop_last):
    seen = []
    for rank in range(world):
        ds = S.build_dataset(data_cfg(spec(shard_dir)), "train", "pretrain", seed=1)
        ds.world_size, ds.rank = world, rank
        ds.set_epoch(3)
        full = read_all(ds, batch, workers, drop_last)
        assert len(full) == (N // world // batch if drop_last else -(-(N // world) // batch))
        for consumed in (1, 2, len(full) - 1):
            ds.set_epoch(3, start=consumed * batch)
            assert len(ds) == N // world - consumed * batch
            rest = read_all(ds, batch, workers, drop_last)
            assert [b["index"].tolist() for b in rest] == [b["index"].tolist() for b in full[consumed:]]
            assert all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, full[consumed:]))
        # another worker count: not the same samples, but the rest of the epoch has the right length
        ds.set_epoch(3, start=batch)
        assert sum(len(b["index"]) for b in read_all(ds, batch, 1, drop_last)) == sum(len(b["index"]) for b in full[1:])
        seen += [i for b in full for i in b["index"].tolist()]
    assert len(seen) == len(set(seen))  # ranks read disjoint parts


def test_corrupt_samples_are_skipped_counted_and_replaced(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        write_coded(src / f"{i:02d}.mp4", i, n=6, size=(16, 16))
    (src / "03.mp4").write_bytes((src / "03.mp4").read_bytes()[:300])  # truncated video
    (src / "05.mp4").write_text("just text, renamed\n")
    out = tmp_path / "shards"
    S.write_shards(S.D.resolve_source(str(src))[0], out, shard_size=4, seed=None, progress=False)
    tar = out / "shard-000002.tar"  # cut the last shard inside its third sample: samples 10 and 11 are lost
    with tarfile.open(tar) as t:
        cut = t.getmember("000000010.mp4").offset_data + 100
    tar.write_bytes(tar.read_bytes()[:cut])
    c = data_cfg(str(out / "shard-{000000..000002}.tar"))
    for workers in (0, 2):
        ds = S.build_dataset(c, "train", "pretrain", seed=2)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            batches = read_all(ds, 2, workers)
        index = torch.cat([b["index"] for b in batches])
        assert len(index) == 12 and not set(index.tolist()) & {3, 5, 10, 11}
        assert sum(b["skipped"] for b in batches) == 4
        reds = torch.cat([b["video"][:, 0].float().mean(dim=(1, 2, 3)) for b in batches])
        assert torch.allclose(reds, 8 * index.float(), atol=3)  # each replacement's index matches its pixels
        if workers == 0:
            named = " ".join(str(r.message) for r in rec if "skipping unreadable video" in str(r.message))
            assert "shard-000000.tar:000000003.mp4" in named and "shard-000002.tar" in named
    strict = S.build_dataset(data_cfg(c.train, max_skip_fraction=0.1), "train", "pretrain")
    with pytest.warns(RuntimeWarning), pytest.raises(UserError, match="max_skip_fraction=0.1"):
        read_all(strict, 2, 0)


def test_pipe_urls_and_shards_without_an_index(shard_dir, tmp_path):
    local = S.build_dataset(data_cfg(spec(shard_dir)), "train", "pretrain", seed=4)
    piped = S.build_dataset(data_cfg(spec(shard_dir, "pipe:cat ")), "train", "pretrain", seed=4)
    assert piped.counts == local.counts  # shards.json found through the same pipe
    a, b = read_all(local, 4, 2), read_all(piped, 4, 2)
    assert all(torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"]) for x, y in zip(a, b))
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in shard_dir.glob("*.tar"):
        shutil.copy(p, bare / p.name)
    with pytest.warns(RuntimeWarning, match="reading them once"):
        counted = S.build_dataset(data_cfg(str(bare / "*.tar")), "train", "finetune")
    assert counted.counts == [5, 5, 5, 5, 3] and counted.num_labels == 2 and counted.num_classes == [3, 2]


def test_source_errors(source, shard_dir, tmp_path):
    with pytest.raises(UserError, match=r"2 of 7 shards not found: .*shard-000005.tar"):
        S.build_dataset(data_cfg(str(shard_dir / "shard-{000000..000006}.tar")), "train", "pretrain")
    with pytest.raises(UserError, match="matches no files"):
        S.build_dataset(data_cfg(str(tmp_path / "*.tar")), "train", "pretrain")
    with pytest.raises(UserError, match="names WebDataset shards"):
        build_list_dataset(data_cfg(spec(shard_dir)), "train", "pretrain")
    unlabeled = tmp_path / "u"
    S.write_shards(S.D.resolve_source(str(source / "*.mp4"))[0], unlabeled, shard_size=50, progress=False)
    with pytest.raises(UserError, match="has no labels"):
        S.build_dataset(data_cfg(str(unlabeled / "shard-000000.tar")), "train", "finetune")
    ds = S.build_dataset(data_cfg(str(unlabeled / "shard-000000.tar")), "train", "pretrain")
    with pytest.raises(ValueError, match="no sampler"):
        make_loader(ds, 2, 0, sampler=range(3))


RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from test_datasets import cfg
from motionmae.data import shards
from motionmae.data.datasets import collate
from motionmae.data.loader import Batches, make_loader

dist.init_process_group("gloo")
c = cfg(train=sys.argv[1], num_frames=2, sampling_rate=2, input_size=16, short_side=16)
ds = shards.build_dataset(c, "train", "pretrain", seed=3)  # ranks from torch.distributed
ds.set_epoch(1)
with Batches(make_loader(ds, 2, 2, collate_fn=collate, drop_last=True, train=True)) as batches:
    mine = [b["index"].tolist() for b in batches]
every = [None] * dist.get_world_size()
dist.all_gather_object(every, mine)
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps({"world": ds.world_size, "batches": every}))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_stream_disjoint_equal_parts(shard_dir, tmp_path):
    """Real torch.distributed (2 gloo ranks, 2 DataLoader workers each): every rank takes its part of the epoch
    from the process group, the parts are disjoint, and every rank gets the same number of full batches."""
    import os
    import subprocess
    import sys

    script, out = tmp_path / "ranks.py", tmp_path / "out.json"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                    spec(shard_dir), str(out)], env=env, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["world"] == 2
    per_rank = [[i for b in batches for i in b] for batches in result["batches"]]
    assert [len(b) for b in result["batches"]] == [(N // 2) // 2] * 2 and all(len(b) == 2 for r in result["batches"] for b in r)
    assert not set(per_rank[0]) & set(per_rank[1]) and len(set(per_rank[0] + per_rank[1])) == 2 * ((N // 2) // 2 * 2)
