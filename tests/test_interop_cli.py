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
