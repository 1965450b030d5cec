"""Label propagation (oracle / random / hand-made features), the encoder feature extractor, the synthetic
DAVIS-format set and the `vos` pipeline end to end."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from motionmae.config import ModelConfig
from motionmae.data.synthetic_vos import make_vos_dataset
from motionmae.eval import davis, vos


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_vos_dataset(tmp_path_factory.mktemp("vos"), num_sequences=3, num_frames=8, height=96, width=128, seed=0,
                            scene="sprites")  # distinct colours: the propagation checks need no shape features


def tiny_encoder(**kw):
    from motionmae.models.vit import build_encoder

    torch.manual_seed(0)
    cfg = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4, img_size=32)
    cfg.update(kw)
    return build_encoder(ModelConfig(**cfg)).eval()


def ground_truth(seq):
    return np.stack([davis.read_mask(a)[0] for a in seq.annotations])


def run_sequences(root, make_features, cfg=vos.VOSOptions()):
    """J&F of propagate() on every sequence, with features from make_features(gt masks)."""
    per_object = {}
    for seq in davis.list_sequences(root):
        gt = ground_truth(seq)
        n = davis.num_objects(gt[0])
        pred = vos.propagate(make_features(gt), gt[0], n, cfg)
        j, f = davis.evaluate_sequence(gt, pred, n)
        for k in range(n):
            per_object[f"{seq.name}_{k + 1}"] = (j[k], f[k])
    return davis.summarize(per_object)[0]["J&F-Mean"]


def test_first_frame_labels_by_hand():
    # 4 x 6 annotation -> 2 x 3 grid, nearest (PIL): the pixel at floor((i + 0.5) * 2) -> rows 1, 3 and cols 1, 3, 5
    mask = np.array([[0, 0, 0, 0, 0, 0],
                     [0, 1, 0, 2, 0, 255],
                     [0, 0, 0, 0, 0, 0],
                     [0, 2, 0, 0, 0, 1]], np.uint8)  # fmt: skip
    lab = vos.first_frame_labels(mask, 2, (2, 3))  # (6 patches, 3 classes), row-major; void (255) is background
    ids = [1, 2, 0, 2, 0, 1]
    torch.testing.assert_close(lab, torch.eye(3)[ids])


def test_neighbourhood():
    near = vos.neighbourhood(3, 4, 1).reshape(3, 4, 3, 4)
    assert near[1, 1].sum() == 9 and near[0, 0].sum() == 4 and near[0, 3].sum() == 4
    assert near[0, 0, 1, 1] and not near[0, 0, 2, 0]
    assert vos.neighbourhood(3, 4, 3).all()


def test_labels_follow_features_not_positions():
    # frame 0: left patch (feature e0) is object 1, right patch (e1) background; frame 1 swaps the features
    feats = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])  # (T=2, h=1, w=2, D=2)
    first = np.zeros((2, 4), np.uint8)
    first[:, :2] = 1
    pred = vos.propagate(feats, first, 1, vos.VOSOptions(topk=1))
    np.testing.assert_array_equal(pred[0], first)
    np.testing.assert_array_equal(pred[1], 1 - first)


def test_radius_limits_every_context_frame_the_first_too():
    # 1 x 5 grid, object 1 at patch 0 in frame 0; the object's feature then jumps to patch 4 (4 patches away).
    # With radius 1, patch 4 of frame 1 cannot reach patch 0 of the first frame (DINO restricts all frames) and
    # takes its label from its own neighbourhood: background. With radius 4 it reaches it.
    e = torch.eye(5)
    f0 = e[[0, 1, 2, 3, 4]]
    f1 = e[[4, 1, 2, 3, 0]]  # patch 4 now carries the object's feature
    feats = torch.stack([f0, f1, f1])[:, None]  # (3, 1, 5, 5)
    first = np.zeros((1, 5), np.uint8)
    first[0, 0] = 1
    near = vos.propagate(feats, first, 1, vos.VOSOptions(topk=1, radius=1))
    np.testing.assert_array_equal(near[1], [[0, 0, 0, 0, 0]])
    far = vos.propagate(feats, first, 1, vos.VOSOptions(topk=1, radius=4))
    np.testing.assert_array_equal(far[1], [[0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(far[2], [[0, 0, 0, 0, 1]])  # and frame 2 follows frame 1 (same patch)


def test_one_frame_by_hand_top_k_softmax_of_cos_over_temperature():
    # keys: the first frame (3 patches: object 1, object 2, background) and one predicted frame with soft labels.
    # The query has cosines 0.6, 0.8, 0 with the first frame's keys and 0.7, 0.1, 0 with the other frame's;
    # top-2 over both frames together: 0.8 (object 2) and 0.7 (a 50/50 label), weighted softmax((0.8, 0.7) / T).
    q = torch.tensor([[0.6, 0.8, 0.0]])
    unit = lambda b: [0.0, b, math.sqrt(1 - b * b)]  # cosine 0.8 * b with q
    keys = torch.cat([torch.eye(3), torch.tensor([unit(0.7 / 0.8), unit(0.1 / 0.8), unit(0.0)])])
    first = torch.eye(3)[[1, 2, 0]]
    other = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    values = torch.cat([first, other])
    obj1, obj2, half = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.5, 0.0])
    for temp in (0.1, 1.0):
        w = torch.softmax(torch.tensor([0.8, 0.7]) / temp, 0)
        got = vos.propagate_frame(q, keys, values, None, vos.VOSOptions(topk=2, temperature=temp))
        torch.testing.assert_close(got[0], w[0] * obj2 + w[1] * half)
    # a window without key position 1 (in every frame): the best two left are 0.7 (other frame) and 0.6 (first frame)
    near = torch.tensor([[True, False, True]])  # 1 query x 3 key positions
    got = vos.propagate_frame(q, keys, values, near, vos.VOSOptions(topk=2, temperature=0.1))
    w = torch.softmax(torch.tensor([0.7, 0.6]) / 0.1, 0)
    torch.testing.assert_close(got[0], w[0] * half + w[1] * obj1)


def test_labels_to_mask_upsamples_normalises_each_object_then_resizes_nearest():
    # object 1 has little mass everywhere (at most 0.3) but is still where it is most likely: min-max normalisation
    # per object (DINO's norm_mask) lets it win there against a background at 0.6
    labels = torch.tensor([[0.6, 0.3], [0.9, 0.0], [0.9, 0.0], [0.9, 0.0]])  # (2 x 2 grid, C = 2)
    mask = vos.labels_to_mask(labels, (2, 2), (2, 2), (2, 2))
    np.testing.assert_array_equal(mask, [[1, 0], [0, 0]])
    # without normalisation background would win everywhere
    assert (labels.argmax(1) == 0).all()
    # upsampled bilinearly by the patch (x4), then nearest to another size (4 x 6 grid cells -> 8 x 12 px -> 8 x 13)
    big = vos.labels_to_mask(labels, (2, 2), (8, 8), (8, 13))
    assert big.shape == (8, 13) and big[0, 0] == 1 and big[-1, -1] == 0


def test_chunking_and_disabled_radius_are_equivalent():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 5, 7, 8, generator=g)
    first = np.zeros((20, 28), np.uint8)
    first[3:12, 4:15], first[10:18, 16:25] = 1, 2
    ref = vos.propagate(feats, first, 2, vos.VOSOptions(radius=3))
    np.testing.assert_array_equal(ref, vos.propagate(feats, first, 2, vos.VOSOptions(radius=3), chunk=4))
    # a radius covering the whole grid restricts nothing
    np.testing.assert_array_equal(vos.propagate(feats, first, 2, vos.VOSOptions(radius=0)),
                                  vos.propagate(feats, first, 2, vos.VOSOptions(radius=7)))


def test_oracle_features_reproduce_the_ground_truth_and_random_features_do_not(synth):
    patch = 4
    g = torch.Generator().manual_seed(0)

    def oracle(gt):  # per patch: the fraction of each true object id (one-hot ids averaged), plus noise
        t, h, w = gt.shape[0], gt.shape[1] // patch, gt.shape[2] // patch
        onehot = torch.nn.functional.one_hot(torch.from_numpy(gt.astype(np.int64)), 4).permute(0, 3, 1, 2).float()
        lab = torch.nn.functional.avg_pool2d(onehot, patch).permute(0, 2, 3, 1)  # (t, h, w, 4)
        return lab + 0.05 * torch.randn(lab.shape, generator=g)

    def random(gt):
        return torch.randn(gt.shape[0], gt.shape[1] // patch, gt.shape[2] // patch, 16, generator=g)

    good, bad = run_sequences(synth, oracle), run_sequences(synth, random)
    assert good > 0.92  # 0.940: below 1 because the first frame's labels are one-hot on the 4 px grid (DINO)
    assert bad < 0.5 and bad < good - 0.4


def test_synthetic_set_layout_and_determinism(synth, tmp_path):
    seqs = davis.list_sequences(synth, "val")
    assert [s.name for s in seqs] == ["synth000", "synth001", "synth002"]
    for s in seqs:
        assert len(s.frames) == 8 and s.fully_annotated
        frames, gt = davis.read_frames(s.frames), ground_truth(s)
        assert frames.shape == (8, 96, 128, 3) and gt.shape == (8, 96, 128)
        n = davis.num_objects(gt[0])
        assert 1 <= n <= 3 and set(np.unique(gt[0])) == set(range(n + 1))  # every object visible in frame 0
        assert set(np.unique(gt)) <= set(range(n + 1))
        assert (davis.read_mask(s.annotations[0])[1][:4] == davis.davis_palette()[:4]).all()
        assert not np.array_equal(gt[0], gt[-1])  # objects move
    again = make_vos_dataset(tmp_path, num_sequences=3, num_frames=8, height=96, width=128, seed=0, scene="sprites")
    for a, b in zip(sorted(synth.rglob("*.*")), sorted(again.rglob("*.*"))):
        assert a.relative_to(synth) == b.relative_to(again) and a.read_bytes() == b.read_bytes()


def test_frame_grid_is_dinos_resize():
    # DINO's read_frame: short side 480, the other side floored to a multiple of 64
    assert vos.frame_grid(480, 854, 480, 16) == (30, 52)  # 480 x 832 px
    assert vos.frame_grid(480, 854, 0, 8) == (60, 104)  # 0: the frame's own short side
    assert vos.frame_grid(854, 480, 480, 16) == (52, 30)
    assert vos.frame_grid(100, 100, 480, 16) == (30, 28)  # square: the width is the one floored (448)
    assert vos.frame_grid(96, 128, 64, 8) == (8, 8)  # 64 x 85.3 -> 64 x 64
    assert vos.frame_grid(40, 56, 24, 8) == (3, 4)  # below 64 px: floored to the patch instead (24 x 32)
    assert vos.frame_grid(480, 854, 480, 14) == (34, 59)  # 476 x 826: multiples of a 14-px patch


def test_encoder_features_are_per_frame_repeated_clips():
    enc = tiny_encoder()
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    feats = vos.EncoderFeatures(enc, size=0, batch_size=2)(frames)
    assert feats.shape == (3, 5, 7, 32)
    # frame 1 by hand: a 2-frame clip of that frame, ImageNet-normalised, through forward_features
    x = torch.from_numpy(frames[1]).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    clip = x[None, :, None].expand(1, 3, 2, 40, 56)
    with torch.no_grad():
        tokens = enc.forward_features(clip)
    torch.testing.assert_close(feats[1], tokens.reshape(5, 7, 32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vos.EncoderFeatures(enc, size=0, batch_size=1)(frames), feats, rtol=1e-5, atol=1e-5)
    assert vos.EncoderFeatures(enc, size=24, batch_size=3)(frames).shape == (3, 3, 4, 32)  # 24 x 33.6 px -> 3 x 4


def test_segment_davis_writes_masks_and_tables(tmp_path):
    root = make_vos_dataset(tmp_path / "data", num_sequences=2, num_frames=5, height=48, width=64, seed=3)
    out = tmp_path / "out"
    features = vos.EncoderFeatures(tiny_encoder(), size=0)
    result = vos.segment_davis(features, root, out, "val", vos.VOSOptions(), log=lambda s: None)
    per_object = {}
    for seq in davis.list_sequences(root):
        pngs = sorted((out / seq.name).glob("*.png"))
        assert [p.name for p in pngs] == [f.stem + ".png" for f in seq.frames]
        gt = ground_truth(seq)
        pred = np.stack([davis.read_mask(p)[0] for p in pngs])
        np.testing.assert_array_equal(pred[0], gt[0])  # first frame: the given annotation
        n = davis.num_objects(gt[0])
        j, f = davis.evaluate_sequence(gt, pred, n)  # tables agree with re-reading the written PNGs
        per_object.update({f"{seq.name}_{k + 1}": (j[k], f[k]) for k in range(n)})
    glob, rows = davis.summarize(per_object)
    assert result["global"]["J&F-Mean"] == pytest.approx(glob["J&F-Mean"])
    with open(out / "per-sequence-results-val.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["Sequence"] for r in table] == list(per_object)
    assert [float(r["J-Mean"]) for r in table] == pytest.approx([r["J-Mean"] for r in rows], abs=1e-6)
    with open(out / "global_results-val.csv") as fh:
        assert float(next(csv.DictReader(fh))["J&F-Mean"]) == pytest.approx(glob["J&F-Mean"], abs=1e-6)
    saved = json.loads((out / "results-val.json").read_text())
    assert saved["frames"] == 10 and saved["seconds_per_frame"] > 0 and saved["config"]["topk"] == 5


def test_cli_end_to_end(tmp_path, capsys):
    from motionmae.cli import main
    from motionmae.config import to_dict
    from motionmae.runtime.checkpoint import save_checkpoint

    root = make_vos_dataset(tmp_path / "data", num_sequences=2, num_frames=4, height=48, width=64, seed=1)
    enc = tiny_encoder()
    ckpt = save_checkpoint(tmp_path / "enc.safetensors", enc, state={"config": {"model": to_dict(enc.cfg)}})
    out = tmp_path / "out"
    rc = main(["vos", "--checkpoint", str(ckpt), "--davis-root", str(root), "--out", str(out), "vos.device=cpu",
               "vos.size=32", "vos.topk=3", "vos.radius=2", "vos.amp=none"])
    assert rc == 0
    assert "J&F-Mean" in capsys.readouterr().out
    for seq in ("synth000", "synth001"):
        assert sorted(p.name for p in (out / seq).glob("*.png")) == [f"{t:05d}.png" for t in range(4)]
    result = json.loads((out / "results-val.json").read_text())
    assert result["config"] == {"topk": 3, "context": 7, "radius": 2, "temperature": 0.1, "size": 32}
    assert (out / "per-sequence-results-val.csv").is_file() and (out / "global_results-val.csv").is_file()
    # same features through the Python API give the same tables
    api = vos.segment_davis(vos.EncoderFeatures(enc, size=32), root, tmp_path / "api", "val",
                            vos.VOSOptions(topk=3, radius=2, size=32), log=lambda s: None)
    assert api["global"] == result["global"]
    # a user mistake is one line, no traceback
    assert main(["vos", "--checkpoint", str(ckpt), "--davis-root", str(tmp_path / "nope"), "vos.device=cpu"]) == 2
    assert "DAVIS root not found" in capsys.readouterr().err


def test_eval_only_on_ground_truth_and_its_errors(tmp_path, capsys):
    import shutil

    from motionmae.cli import main
    from motionmae.errors import UserError

    root = make_vos_dataset(tmp_path / "data", num_sequences=2, num_frames=5, height=48, width=64, seed=2)
    res = tmp_path / "res"
    shutil.copytree(root / "Annotations" / "480p", res)  # a perfect method
    assert main(["vos", "--eval-only", "--davis-root", str(root), "--out", str(res)]) == 0
    result = json.loads((res / "results-val.json").read_text())
    assert result["global"]["J&F-Mean"] == 1.0 and result["global"]["J-Decay"] == 0.0
    assert "J&F-Mean" in capsys.readouterr().out
    # swap objects 1 and 2 in one evaluated frame of a 2-object sequence: J and F of both drop to 0 there
    seq = next(s for s in davis.list_sequences(root) if davis.num_objects(ground_truth(s)[0]) >= 2)
    m, pal = davis.read_mask(res / seq.name / "00002.png")
    swapped = m.copy()
    swapped[m == 1], swapped[m == 2] = 2, 1
    davis.write_mask(res / seq.name / "00002.png", swapped, pal)
    rows = {r["Sequence"]: r for r in vos.evaluate_davis(root, res, log=lambda s: None)["per_object"]}
    assert rows[f"{seq.name}_1"]["J-Mean"] == pytest.approx(2 / 3)  # frames 1..3 evaluated, one of them wrong
    assert rows[f"{seq.name}_2"]["F-Mean"] == pytest.approx(2 / 3)
    swapped[0, 0] = 9
    davis.write_mask(res / seq.name / "00002.png", swapped, pal)
    with pytest.raises(UserError, match="00002.png: index 9"):
        vos.evaluate_davis(root, res, log=lambda s: None)
    (res / seq.name / "00002.png").unlink()
    with pytest.raises(UserError, match="00002.png: predicted mask missing"):
        vos.evaluate_davis(root, res, log=lambda s: None)
    # a sequence whose middle frames are not annotated (like test-dev) is not evaluated
    (root / "Annotations" / "480p" / seq.name / "00002.png").unlink()
    result = vos.evaluate_davis(root, res, log=lambda s: None)
    assert result["unevaluated"] == [seq.name] and not any(r["Sequence"].startswith(seq.name) for r in result["per_object"])
    assert main(["vos", "--davis-root", str(root)]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err


def test_make_dataset_cli_kind_vos(tmp_path):
    from motionmae.cli import main

    assert main(["make-dataset", "--kind", "vos", "--out", str(tmp_path), "--frames", "4", "--size", "36",
                 "--num-sequences", "2", "--seed", "5"]) == 0
    seqs = davis.list_sequences(tmp_path, "val")
    assert [len(s.frames) for s in seqs] == [4, 4]
    assert davis.read_frames(seqs[0].frames).shape == (4, 36, 48, 3)  # width 4/3 of --size, a multiple of 8
    direct = make_vos_dataset(tmp_path / "direct", num_sequences=2, num_frames=4, height=36, width=48, seed=5)
    assert (direct / "Annotations/480p/synth001/00003.png").read_bytes() == (tmp_path / "Annotations/480p/synth001/00003.png").read_bytes()


def test_identical_frames_at_pixel_grid_copy_the_mask_and_void_becomes_background():
    first = np.array([[1, 1, 0, 255], [2, 2, 0, 255], [2, 0, 0, 0]], np.uint8)
    feats = torch.eye(12).reshape(1, 3, 4, 12).expand(3, -1, -1, -1)  # each pixel its own patch, distinct features
    pred = vos.propagate(feats, first, 2, vos.VOSOptions(topk=1, radius=1))
    expect = np.where(first == 255, 0, first)
    for t in range(3):
        np.testing.assert_array_equal(pred[t], expect)
