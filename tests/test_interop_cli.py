"""`motionmae convert` end to end: transformers -> motionmae -> transformers, original .pth -> motionmae,
and the converted checkpoints are usable by the rest of motionmae (feature extraction)."""

from __future__ import annotations

import os

import pytest
import torch

from motionmae.cli import main

transformers = pytest.importorskip("transformers")
from transformers import VideoMAEForPreTraining, VideoMAEForVideoClassification  # noqa: E402

from test_interop import ATOL, hf_config, randomize  # noqa: E402


def test_cli_hf_to_motionmae_to_hf_is_bit_identical(tmp_path, capsys):
    names = ["archery", "bowling", "cooking", "dancing", "eating"]
    hf = randomize(VideoMAEForVideoClassification(hf_config(tubelet=1, mean_pool=True, id2label=dict(enumerate(names)))), seed=21)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from", "hf", "--to", "motionmae", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert main(["convert", "--from", "motionmae", "--to", "hf", str(tmp_path / "ours"), str(tmp_path / "hf2")]) == 0
    out = capsys.readouterr().out
    assert "checked against transformers: max |diff|" in out
    back = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf2")
    a, b = hf.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.config.layer_norm_eps == hf.config.layer_norm_eps and back.config.use_mean_pooling
    assert [back.config.id2label[i] for i in range(5)] == names  # label names travel through our checkpoint


def test_cli_converted_pretraining_checkpoint_feeds_feature_extraction(tmp_path):
    from motionmae.eval.features import load_encoder

    hf = randomize(VideoMAEForPreTraining(hf_config(mean_pool=False)), seed=22)
    hf.save_pretrained(tmp_path / "hf")
    dst = tmp_path / "ours.safetensors"
    assert main(["convert", "--from", "hf", "--to", "motionmae", str(tmp_path / "hf"), str(dst), "--decoder", "none"]) == 0
    enc = load_encoder(dst)
    x = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        ref = hf.videomae(x.permute(0, 2, 1, 3, 4)).last_hidden_state
        assert (enc.forward_features(x) - ref).abs().max() < ATOL


def test_cli_refuses_pickle_payload_with_one_line_error(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    rc = main(["convert", "--from", "videomae", "--to", "motionmae", str(tmp_path / "evil.pth"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "refused to unpickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# a run from a default preset exports to transformers; what an export directory holds


def test_tiny_run_from_a_default_preset_exports_to_transformers_with_parity(tmp_path, capsys):
    """No '-hf' suffix: the defaults (1D sin-cos table, head eps 1e-5) are what transformers computes."""
    from engine_helpers import TINY, tiny_videos

    from motionmae import config as C
    from motionmae.config import preset_names
    from motionmae.engine.pretrain import pretrain
    from motionmae.interop import export_hf
    from motionmae.interop.hf import check_parity, load_transformers
    from motionmae.models.pretrain import PretrainModel
    from motionmae.viz import load_pretrained

    videos = tiny_videos(tmp_path / "videos", n=4)
    run = tmp_path / "run"
    cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={videos}", f"train.output_dir={run}", "train.max_steps=2",
                                               "train.batch_size=2", "train.save_every=2"])
    assert (cfg.model.pos_embed, cfg.model.head_norm_eps) == ("sincos1d", 1e-5)
    pretrain(cfg, resume="none")
    assert main(["convert", "--from", "motionmae", "--to", "hf", str(run), str(tmp_path / "hf")]) == 0
    assert "checked against transformers: max |diff|" in capsys.readouterr().out
    ours, _ = load_pretrained(run)
    hf = load_transformers(tmp_path / "hf", "pretrain")  # no missing / unexpected keys
    assert check_parity(ours, hf, "pretrain", cfg) < ATOL  # decoder predictions, and every LayerNorm eps
    with torch.no_grad():  # hidden states of the encoder too
        x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        ref = hf.videomae(x.permute(0, 2, 1, 3, 4)).last_hidden_state
        assert (ours.encoder.forward_features(x) - ref).abs().max() < ATOL
    # every other default preset, at the same tiny size: exportable as built
    tiny = [o for o in TINY if o.startswith(("model.", "data.num_frames", "data.input_size"))]
    for name in (n for n in preset_names("pretrain") if not n.endswith("-hf") and n != "demo"):
        pcfg = C.load_config(name, tiny)
        report = export_hf(randomize(PretrainModel(pcfg), seed=1), pcfg, tmp_path / name)
        assert report["max_abs_diff"] < ATOL, name


def test_export_dir_has_preprocessor_and_model_card_and_works_in_pipeline(tmp_path):
    """`convert --to hf` output works offline with AutoImageProcessor and pipeline('video-classification'), which
    decodes with PyAV; its scores are our model's on the processor's frames."""
    from engine_helpers import tiny_videos
    from transformers import AutoImageProcessor, pipeline

    from motionmae.data.decode import VideoReader
    from motionmae.interop import export_hf
    from test_interop import our_classifier

    model, cfg = our_classifier()
    names = [f"action {i}" for i in range(7)]
    export_hf(model, cfg, tmp_path / "hf", class_names=names, source="runs/x (motionmae)")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: video-classification")
    assert "runs/x (motionmae)" in card and "largest absolute difference" in card and "7 classes" in card
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    video = tiny_videos(tmp_path / "videos", n=1, frames=6, size=40) / "v00.mp4"
    with VideoReader(video) as r:
        frames = r.get_frames(range(4))  # the pipeline reads the first num_frames frames (sampling rate 1)
    px = processor(list(frames), return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 4, 3, 32, 32)
    with torch.no_grad():
        probs = model(px.permute(0, 2, 1, 3, 4)).softmax(-1)[0]
    pipe = pipeline("video-classification", model=str(tmp_path / "hf"))
    got = pipe(str(video), top_k=3)
    top = probs.topk(3)
    assert [g["label"] for g in got] == [names[i] for i in top.indices.tolist()]
    assert [g["score"] for g in got] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_convert_refuses_a_non_empty_destination_without_force(tmp_path, capsys):
    hf = randomize(VideoMAEForVideoClassification(hf_config()), seed=2)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "ckpt.safetensors").write_bytes(b"old")
    for dst_format, dst in (("hf", tmp_path / "busy"), ("motionmae", tmp_path / "busy"), ("motionmae", tmp_path / "ckpt.safetensors")):
        rc = main(["convert", "--from", "hf", "--to", dst_format, str(tmp_path / "hf"), str(dst)])
        err = capsys.readouterr().err
        assert rc == 2 and "exists and is not empty; pass --force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    assert (tmp_path / "ckpt.safetensors").read_bytes() == b"old"
    # --force: written, stale weight files that would shadow ours removed, the user's other files kept
    (tmp_path / "busy" / "pytorch_model.bin").write_bytes(b"stale")
    assert main(["convert", "--from", "hf", "--to", "hf", str(tmp_path / "hf"), str(tmp_path / "busy"), "--force"]) == 0
    names = sorted(p.name for p in (tmp_path / "busy").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "notes.txt", "preprocessor_config.json"]
    back = VideoMAEForVideoClassification.from_pretrained(tmp_path / "busy")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in hf.state_dict().items())
    assert main(["convert", "--from", "hf", "--to", "motionmae", str(tmp_path / "hf"), str(tmp_path / "ckpt.safetensors"), "--force"]) == 0


@pytest.mark.parametrize("arch", ["VideoMAEModel", "VideoMAEForVideoClassification", "VideoMAEForPreTraining"])
def test_load_encoder_accepts_a_transformers_directory(tmp_path, arch):
    from motionmae import load_encoder

    hf = randomize(getattr(transformers, arch)(hf_config(mean_pool=arch == "VideoMAEModel")), seed=3)
    hf.save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    x = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = hf if arch == "VideoMAEModel" else hf.videomae
        ref = base(x.permute(0, 2, 1, 3, 4)).last_hidden_state
        assert (enc.forward_features(x) - ref).abs().max() < ATOL
        if arch == "VideoMAEForVideoClassification":
            assert (enc(x) - hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits).abs().max() < ATOL
