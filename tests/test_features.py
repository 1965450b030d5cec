import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from motionmae import config as C
from motionmae.cli import main as cli_main
from motionmae.runtime.checkpoint import save_checkpoint

TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8", "model.num_frames=8",
        "model.img_size=32", "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "data.num_frames=8", "data.input_size=32", "data.sampling_rate=1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from motionmae.data.synthetic import make_dataset

    out = tmp_path_factory.mktemp("syn")
    return make_dataset(out, num_train=24, num_val=12, frames=8, size=32, workers=1)


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    from motionmae.models.pretrain import PretrainModel

    cfg = C.load_config("motionmae-sha", TINY)
    torch.manual_seed(0)
    model = PretrainModel(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "pretrain.safetensors"
    save_checkpoint(path, model, state={"config": C.to_dict(cfg), "step": 0})
    return path, model


def test_load_encoder_matches_pretraining_encoder(pretrain_ckpt):
    from motionmae import load_encoder

    path, model = pretrain_ckpt
    enc = load_encoder(path)
    assert not enc.training and enc.num_classes == 0
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc.forward_features(x), model.encoder.eval().forward_features(x), atol=1e-6)
        assert enc.forward_grid(x).shape == (2, 4, 4, 4, 32)
    # a run directory works too (its checkpoints/last.safetensors)
    run = path.parent / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.safetensors").write_bytes(path.read_bytes())
    assert torch.equal(load_encoder(run).blocks[1].mlp.fc2.weight, enc.blocks[1].mlp.fc2.weight)


def test_load_encoder_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    from motionmae import load_encoder
    from motionmae.errors import UserError

    p = tmp_path / "x.safetensors"
    save_file({"model.blocks.0.norm1.weight": torch.ones(4)}, str(p))
    with pytest.raises(UserError, match="model config"):
        load_encoder(p)


def test_extract_pooled_and_grid_match_direct_forward(synthetic, pretrain_ckpt, tmp_path):
    from motionmae import load_encoder
    from motionmae.data.datasets import build_dataset
    from motionmae.data.transforms import to_model_input

    path, _ = pretrain_ckpt
    out = tmp_path / "feats.npy"
    assert cli_main(["extract", "--checkpoint", str(path), "--data", synthetic["val"], "--out", str(out),
                     "extract.device=cpu", "data.num_workers=0", "extract.amp=none"]) == 0
    pooled = np.load(out)
    labels = np.load(tmp_path / "feats.labels.npy")
    assert pooled.shape == (12, 32) and labels.shape == (12, 4)
    assert cli_main(["extract", "--checkpoint", str(path), "--data", synthetic["val"], "--out", str(tmp_path / "g.safetensors"),
                     "extract.kind=grid", "extract.device=cpu", "data.num_workers=0", "extract.amp=none"]) == 0
    grid = load_file(str(tmp_path / "g.safetensors"))
    assert grid["features"].shape == (12, 4, 4, 4, 32)
    assert torch.equal(grid["index"], torch.arange(12))
    # the same numbers by hand: centre clip of video 3 -> encoder -> token mean
    enc = load_encoder(path)
    dc = C.DataConfig(val=synthetic["val"], num_frames=8, input_size=32, sampling_rate=1)
    item = build_dataset(dc, "val", "pretrain")[3]
    x = to_model_input(item["video"][None], dc.mean, dc.std)
    with torch.no_grad():
        tokens = enc.forward_features(x)
    assert np.allclose(pooled[3], tokens.mean(1)[0].numpy(), atol=1e-4)
    assert torch.allclose(grid["features"][3].reshape(-1, 32), tokens[0], atol=1e-4)
    assert labels[3].tolist() == item["label"].tolist()


def test_run_probe_random_encoder_per_column_and_cache(synthetic, tmp_path, capsys):
    from motionmae.eval.probe import random_encoder, run_probe

    cfg = C.load_config("", TINY[:6] + [f"probe.cache_dir={tmp_path}", "probe.k=5", "probe.linear_epochs=5",
                                        "data.num_workers=0", "data.sampling_rate=1"], C.ProbeConfig)
    enc = random_encoder(cfg.model, seed=0)
    res = run_probe(enc, synthetic["train"], synthetic["val"], config=cfg, name="random", device="cpu")
    assert set(res) == {"class", "direction", "speed", "arrow"}  # names from the dataset's labels.json
    for r in res.values():
        assert 0.0 <= r["knn"] <= 1.0 and 0.0 <= r["linear"] <= 1.0
    assert res["direction"]["chance"] == 0.25
    table = capsys.readouterr().out
    assert "direction" in table and "random  k-NN k=5" in table
    cached = sorted(tmp_path.glob("*.safetensors"))
    assert len(cached) == 2  # train and val features
    stamp = [p.stat().st_mtime_ns for p in cached]
    again = run_probe(enc, synthetic["train"], synthetic["val"], config=cfg, name="random", device="cpu", verbose=False)
    assert again == res
    assert [p.stat().st_mtime_ns for p in cached] == stamp  # read from the cache, not rewritten
    # another encoder is another cache entry
    run_probe(random_encoder(cfg.model, seed=1), synthetic["train"], synthetic["val"], config=cfg, device="cpu", verbose=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_probe_cli_checkpoint_writes_json(synthetic, pretrain_ckpt, tmp_path):
    path, _ = pretrain_ckpt
    out = tmp_path / "probe.json"
    rc = cli_main(["probe", "--checkpoint", str(path), "--train", synthetic["train"], "--val", synthetic["val"],
                   "--json", str(out), "probe.linear_epochs=5", f"probe.cache_dir={tmp_path}", "data.num_workers=0",
                   "probe.device=cpu"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) == {"class", "direction", "speed", "arrow"}


def test_probe_cli_random_init_needs_architecture(synthetic, capsys):
    rc = cli_main(["probe", "--random-init", "--train", synthetic["train"], "--val", synthetic["val"]])
    assert rc == 2 and "--random-init needs the architecture" in capsys.readouterr().err


def test_extract_several_views_of_unlabeled_videos(synthetic, pretrain_ckpt, tmp_path):
    from motionmae import load_encoder
    from motionmae.data.transforms import to_model_input
    from motionmae.eval.features import eval_dataset

    path, _ = pretrain_ckpt
    videos = f"{synthetic['out']}/val/*.mp4"  # a glob: no labels
    out = tmp_path / "views.npy"
    assert cli_main(["extract", "--checkpoint", str(path), "--data", videos, "--out", str(out), "extract.views=2",
                     "extract.device=cpu", "data.num_workers=0", "extract.amp=none"]) == 0
    pooled = np.load(out)
    assert pooled.shape == (12, 32) and (np.load(tmp_path / "views.labels.npy") == -1).all()
    # by hand: the mean over video 5's two temporal views of the token mean
    dc = C.DataConfig(num_frames=8, input_size=32, sampling_rate=1)
    ds = eval_dataset(dc, videos, views=2)
    item = ds[5]
    assert item["video"].shape[0] == 2
    with torch.no_grad():
        f = load_encoder(path).forward_features(to_model_input(item["video"], dc.mean, dc.std)).mean(1).mean(0)
    assert np.allclose(pooled[5], f.numpy(), atol=1e-4)
