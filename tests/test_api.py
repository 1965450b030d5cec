"""The Python API: MotionMAE.from_pretrained / save_pretrained (our checkpoints, transformers directories, the HF cache),
input checks that say how to convert, `featurize` over long videos (one window = the encoder on that window alone,
layer -1 = today's pooled features), and the README's snippet, run as written."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import motionmae
from motionmae import config as C
from motionmae.cli import main as cli_main
from motionmae.data.decode import VideoReader, write_video
from motionmae.data.transforms import preprocess
from motionmae.errors import UserError
from motionmae.eval.features import load_encoder, pooled_features
from motionmae.models.pretrain import PretrainModel
from motionmae.runtime import checkpoint as ck

TINY = ["model.embed_dim=32", "model.depth=4", "model.num_heads=2", "model.patch_size=8", "model.num_frames=8",
        "model.img_size=32", "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "data.sampling_rate=1"]


def _video(path, frames, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8))
    return Path(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pretraining run directory of a tiny MotionMAE (weights trained 0 steps, random but fixed)."""
    cfg = C.load_config("motionmae-sha", TINY)
    torch.manual_seed(0)
    model = PretrainModel(cfg)
    d = tmp_path_factory.mktemp("run")
    ck.save_checkpoint(d / "checkpoints" / "last.safetensors", model, state={"config": C.to_dict(cfg), "step": 3, "kind": "pretrain"})
    return d, model.eval(), cfg


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained


def test_from_pretrained_run_dir_and_file_then_save_pretrained_round_trip(run, tmp_path):
    d, model, cfg = run
    for source in (d, d / "checkpoints" / "last.safetensors"):
        m = motionmae.MotionMAE.from_pretrained(source)
        assert isinstance(m, PretrainModel) and not m.training and m.config == C.saved_pretrain_config(C.to_dict(cfg))
        assert _same_weights(m, model)
    out = m.save_pretrained(tmp_path / "sp")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cj = json.loads((out / "config.json").read_text())
    assert cj["model_type"] == "motionmae" and cj["model"]["embed_dim"] == 32 and cj["motionmae_version"] == motionmae.__version__
    back = motionmae.MotionMAE.from_pretrained(out)
    assert _same_weights(back, model) and back.config == m.config
    x = torch.randn(2, 3, 8, 32, 32)
    mask = back.make_mask(x, seed=1)
    with torch.no_grad():
        assert torch.equal(back.forward_features(x), model.encoder.forward_features(x))
        assert torch.equal(back(x, mask)["loss"], model(x, mask)["loss"])
    # the folder is a checkpoint every command takes: load_encoder, and the CLI's --checkpoint
    assert _same_weights(load_encoder(out), load_encoder(d))
    with pytest.raises(UserError, match="exists and is not empty"):
        back.save_pretrained(out)


def test_save_pretrained_keeps_checksums_and_refuses_an_edited_config(run, tmp_path):
    _, _, _ = run
    m = motionmae.MotionMAE.from_pretrained(run[0])
    out = m.save_pretrained(tmp_path / "sp")
    cj = json.loads((out / "config.json").read_text())
    cj["model"]["depth"] = 2
    (out / "config.json").write_text(json.dumps(cj))
    with pytest.raises(UserError, match=r"config.json: differs from the config stored with the weights .*model.depth"):
        motionmae.MotionMAE.from_pretrained(out)
    m.save_pretrained(out, overwrite=True)
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # a flipped byte in the last tensor's data
    (out / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ck.CorruptCheckpointError, match="does not match the checksum"):
        motionmae.MotionMAE.from_pretrained(out)


def test_from_pretrained_refuses_models_without_a_decoder(run, tmp_path):
    from motionmae.models.classifier import build_classifier

    cfg = C.load_config("", TINY, C.FinetuneConfig)
    clf = build_classifier(cfg.model, 3)
    ck.save_checkpoint(tmp_path / "ft.safetensors", clf, state={"config": C.to_dict(cfg)})
    with pytest.raises(UserError, match="not a pretraining checkpoint .*motionmae.load_encoder"):
        motionmae.MotionMAE.from_pretrained(tmp_path / "ft.safetensors")


def test_from_pretrained_transformers_dir_and_hf_cache(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

    hf_cfg = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                            decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True,
                            attn_implementation="eager")
    torch.manual_seed(0)
    hf = VideoMAEForPreTraining(hf_cfg).eval()
    # an HF cache layout: hub/models--org--tiny/{refs/main, snapshots/<hash>/...}
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    hf.save_pretrained(snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    x = torch.randn(2, 3, 4, 32, 32)
    for source in (snap, snap.parent.parent):
        m = motionmae.MotionMAE.from_pretrained(source)
        assert m.config.model.decoder == "none" and m.config.objective.targets == ("appearance",) and m.fresh == []
        mask = m.make_mask(x, seed=0)
        with torch.no_grad():
            ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask).loss
            ours = m(x, mask)["loss"]
        assert abs(float(ours) - float(ref)) < 1e-5  # transformers' own loss, on transformers' weights
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert _same_weights(motionmae.MotionMAE.from_pretrained("org/tiny"), m)  # a hub id, from the local cache only
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*never downloads"):
        motionmae.MotionMAE.from_pretrained("org/absent")
    sha = motionmae.MotionMAE.from_pretrained(snap, decoder="sha")  # MotionMAE's motion head added, fresh
    assert sha.config.model.decoder == "sha" and sha.fresh and all(k.startswith("decoder.motion_head") for k in sha.fresh)
    VideoMAEModel(hf_cfg).save_pretrained(tmp_path / "enc")
    with pytest.raises(UserError, match="VideoMAEModel .*load_encoder"):
        motionmae.MotionMAE.from_pretrained(tmp_path / "enc")


# ----------------------------------------------------------------------------------------------
# input checks


def test_input_checks_name_the_layout_and_the_conversion(run):
    m = motionmae.MotionMAE.from_pretrained(run[0])
    x = torch.randn(2, 3, 8, 32, 32)
    with pytest.raises(UserError, match=re.escape("looks like transformers' (B, T, C, H, W): x.permute(0, 2, 1, 3, 4)")) as e:
        m.forward_features(x.permute(0, 2, 1, 3, 4))
    assert "expected a float clip (B, C, T, H, W)" in str(e.value)
    with pytest.raises(UserError, match=r"got uint8 \(2, 3, 8, 32, 32\): .*model.preprocess\(frames\)"):
        m.encoder.forward_features((x * 40).clamp(0, 255).to(torch.uint8))
    with pytest.raises(UserError, match=r"without the batch dimension: x\[None\]"):
        m.forward_features(x[0])
    with pytest.raises(UserError, match=r"channels-last .*x.permute\(0, 4, 1, 2, 3\)"):
        m(x.permute(0, 2, 3, 4, 1), m.make_mask(x))
    # what the hint says works: decoded frames through preprocess equal the evaluation pipeline's clip
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
    a = m.preprocess(frames)
    b = preprocess(torch.from_numpy(frames).permute(3, 0, 1, 2)[None], 32, m.config.data.mean, m.config.data.std)
    assert a.shape == (1, 3, 8, 32, 32) and torch.equal(a, b)
    assert m.forward_features(a).shape == (1, 4 * 4 * 4, 32)


# ----------------------------------------------------------------------------------------------
# featurize


def test_featurize_windows_equal_the_encoder_on_each_window_alone(run, tmp_path):
    d, model, _ = run
    video = _video(tmp_path / "long.mp4", 30)
    f = motionmae.featurize(load_encoder(d), video, layers=[-1, 1], window=8, stride=4, batch_size=3, progress=False)
    assert f.name == "long" and f.num_frames == 30 and f.starts.tolist() == [0, 4, 8, 12, 16, 20]
    assert f.features[-1].shape == (6, 32) and f.features[1].shape == (6, 32)
    enc = model.encoder
    with VideoReader(video) as r:
        for i, s in enumerate(f.starts):
            x = preprocess(r.get_frames(range(s, s + 8)), 32, C.IMAGENET_MEAN, C.IMAGENET_STD)
            with torch.no_grad():
                last = enc.forward_features(x).mean(1)[0]
                h, _ = enc.embed(x)
                for blk in enc.blocks[:2]:  # layer 1: after the second block, through the final norm
                    h = blk(h)
                second = enc.norm(h).mean(1)[0]
            np.testing.assert_allclose(f.features[-1][i], last.numpy(), atol=1e-5)
            np.testing.assert_allclose(f.features[1][i], second.numpy(), atol=1e-5)
    # pool=time averages space only: its mean over time is the pooled feature of the encoder
    t = motionmae.featurize(model, video, layers=[-1], window=8, stride=4, pool="time", progress=False)
    assert t.features[-1].shape == (6, 4, 32)
    np.testing.assert_allclose(t.features[-1].mean(1), f.features[-1], atol=1e-5)
    g = motionmae.featurize(model, [video], window=8, stride=8, pool="none", frame_step=2, progress=False)[0]
    assert g.starts.tolist() == [0, 8] and g.features[-1].shape == (2, 4, 4, 4, 32)  # span 15 frames, every 8


def test_featurize_layer_minus_one_equals_todays_pooled_features(run, tmp_path):
    d, _, _ = run
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        _video(videos / f"v{i}.mp4", 8, seed=i)  # exactly one window: the centre clip extract takes
    assert cli_main(["extract", "--checkpoint", str(d), "--data", str(videos), "--out", str(tmp_path / "p.npy"),
                     "extract.device=cpu", "extract.amp=none", "data.num_workers=0"]) == 0
    pooled = np.load(tmp_path / "p.npy")
    res = motionmae.featurize(d, sorted(videos.iterdir()), window=8, stride=4, progress=False)
    np.testing.assert_allclose(np.stack([r.features[-1][0] for r in res]), pooled, atol=1e-5)
    # the same for a frame folder and for decoded frames in memory
    frames = VideoReader(videos / "v1.mp4").get_frames(range(8))
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    for i, fr in enumerate(frames):
        Image.fromarray(fr).save(folder / f"img_{i + 1:05d}.png")
    a = motionmae.featurize(d, [folder, frames], window=8, progress=False)
    assert a[0].name == "frames" and a[1].name == "clip1"
    np.testing.assert_allclose(a[0].features[-1][0], pooled[1], atol=1e-5)
    np.testing.assert_allclose(a[1].features[-1][0], pooled[1], atol=1e-5)


def test_extract_windows_cli_streams_one_file_per_video_and_layer(run, tmp_path, capsys):
    d, _, _ = run
    videos = tmp_path / "videos"
    videos.mkdir()
    _video(videos / "a.mp4", 20, seed=1)
    _video(videos / "b.mp4", 5, seed=2)  # shorter than a window: one window, its last frame repeated
    out = tmp_path / "feats"
    assert cli_main(["extract", "--checkpoint", str(d), "--data", str(videos), "--out", str(out), "extract.window=8",
                     "extract.stride=4", "extract.layers=[-1,-4]", "extract.device=cpu", "extract.amp=none"]) == 0
    printed = capsys.readouterr().out
    for f in ("layer-1", "layer-4", "features.json"):
        assert str(out / f) in printed
    index = json.loads((out / "features.json").read_text())
    assert index["layers"] == [-1, -4] and index["blocks"] == [3, 0] and index["layout"] == "(windows, dim)"
    assert [(v["name"], v["num_frames"], v["num_windows"]) for v in index["videos"]] == [("a", 20, 4), ("b", 5, 1)]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == ["layer-1/a.npy", "layer-1/b.npy", "layer-4/a.npy", "layer-4/b.npy"]
    mem = motionmae.featurize(d, [videos / "a.mp4"], layers=[-4], window=8, stride=4, progress=False)[0]
    np.testing.assert_allclose(np.load(out / "layer-4" / "a.npy"), mem.features[-4], atol=1e-6)
    assert not list(out.rglob(".*.tmp"))
    with pytest.raises(UserError, match="extract.layers, extract.pool and extract.crop are settings of sliding-window"):
        C.load_config("", ["extract.layers=[-2]"], C.ExtractConfig)
    with pytest.raises(UserError, match=r"\[-5\] do not exist, the encoder has 4 blocks"):
        C.load_config("", [*TINY, "extract.window=8", "extract.layers=[-5]"], C.ExtractConfig)


# ----------------------------------------------------------------------------------------------
# the README


def test_readme_python_api(run, tmp_path, monkeypatch, capsys):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "<!-- the block below runs in tests/test_api.py::test_readme_python_api -->"
    block = text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    os.symlink(run[0], tmp_path / "runs" / "small")
    _video(tmp_path / "clip.mp4", 8)
    _video(tmp_path / "long.mp4", 24, seed=3)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 64, 32])" in printed and "'loss_motion'" in printed
    assert (tmp_path / "my-motionmae" / "model.safetensors").is_file()
    assert np.load(tmp_path / "tad_features" / "layer-1" / "long.npy").shape == (5, 32)
    assert (tmp_path / "tad_features" / "layer-4" / "long.npy").is_file()
