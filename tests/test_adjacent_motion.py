"""objective.motion_frames=adjacent: the motion target at each sampled frame t is R(i_t + g) - R(i_t) over the raw
frames of the video, not the difference to the next sampled frame. Videos whose pixels encode the raw frame index
make the expected differences known by hand."""

import numpy as np
import pytest
import torch
from PIL import Image

from motionmae import config as C
from motionmae.data.datasets import build_dataset
from motionmae.data.decode import VideoReader, write_video
from motionmae.data.transforms import to_model_input
from motionmae.models.pretrain import PretrainModel
from motionmae.objective.masking import make_mask
from motionmae.objective.targets import motion_frames

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "model.num_frames=4", "model.img_size=32",
        "model.patch_size=16", "data.sampling_rate=4", "data.num_workers=0", "data.flip=false", "train.amp=none"]


def index_colours(k):
    """RGB of raw frame k: R and G encode k (R = 8k + 4, G = 250 - 8k), B is constant."""
    return np.array([8 * k + 4, 250 - 8 * k, 100], dtype=np.uint8)


def frame_index(video: torch.Tensor) -> np.ndarray:
    """The raw index each frame of a uint8 (C, T, H, W) clip shows, read from the mean red of its top quarter."""
    top = video[0, :, : video.shape[2] // 4].float()
    return np.round((top.mean(dim=(1, 2)).numpy() - 4) / 8).astype(int)


def index_frame_folder(folder, n=24, h=40, w=48):
    """A frame folder (lossless PNGs): frame k is flat, coloured `index_colours(k)`."""
    folder.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(np.broadcast_to(index_colours(k), (h, w, 3)).copy()).save(folder / f"img_{k + 1:05d}.png")
    return folder


@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_clip_carries_each_sampled_frames_raw_neighbour_and_the_target_is_their_difference(tmp_path, sampling):
    video = index_frame_folder(tmp_path / "v")
    cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={video}", f"data.sampling={sampling}",
                                               "objective.motion_frames=adjacent", "objective.motion_norm=false"])
    o = cfg.objective
    ds = build_dataset(cfg.data, "train", "pretrain", extra_frames=o.extra_frames, neighbor_gap=o.neighbor_gap)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        clip = ds[0]["video"]
        assert clip.shape == (3, 8, 32, 32)  # the T sampled frames, then their T neighbours
        idx = frame_index(clip)
        sampled, neighbours = idx[:4], idx[4:]
        assert (neighbours == sampled + 1).all() and neighbours.max() <= 23  # the raw next frame, inside the video
        if sampling == "dense":
            assert (np.diff(sampled) == 4).all()  # the stride is unchanged
        seen.add(tuple(sampled))
        # the motion target of the clip, by hand: +8 red, -8 green, 0 blue (/255) at every pixel of every frame
        x = to_model_input(clip[None], cfg.data.mean, cfg.data.std)
        clip01 = x * torch.tensor(cfg.data.std).view(1, 3, 1, 1, 1) + torch.tensor(cfg.data.mean).view(1, 3, 1, 1, 1)
        d = motion_frames(clip01, o)
        assert d.shape == (1, 3, 4, 32, 32)
        want = torch.tensor([8.0, -8.0, 0.0]).view(1, 3, 1, 1, 1) / 255
        torch.testing.assert_close(d, want.expand_as(d), atol=1e-5, rtol=0)
    assert len(seen) > 1  # different clips, each with its own neighbours

    # the same video with the differences of the sampled frames: 4 raw frames apart, the first repeated
    sampled_cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={video}", "objective.motion_norm=false"])
    ds = build_dataset(sampled_cfg.data, "train", "pretrain")
    clip = ds[0]["video"]
    assert clip.shape[1] == 4
    d = motion_frames(clip[None].float() / 255, sampled_cfg.objective)
    step = float(np.diff(frame_index(clip))[0])  # 4 (dense) or the segment spacing
    torch.testing.assert_close(d[0, 0], torch.full((4, 32, 32), 8 * step / 255), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["per_slice", "tube", "random", "motion"])
def test_adjacent_target_with_every_mask_kind_and_decoder(tmp_path, kind):
    """The model's motion target at every masked token is the hand-known difference, whatever the mask and the
    decoder; the encoder sees the T sampled frames only."""
    video = index_frame_folder(tmp_path / "v")
    for decoder, targets in (("sha", "[appearance,motion]"), ("ind", "[appearance,motion]"), ("none", "[motion]")):
        cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={video}", f"mask.kind={kind}", "mask.ratio=0.5",
                                                   f"model.decoder={decoder}", f"objective.targets={targets}",
                                                   "objective.motion_frames=adjacent", "objective.motion_norm=false"])
        ds = build_dataset(cfg.data, "train", "pretrain", neighbor_gap=cfg.objective.neighbor_gap)
        batch = torch.stack([ds[0]["video"], ds[0]["video"]])  # (2, C, 2T, H, W)
        torch.manual_seed(0)
        model = PretrainModel(cfg)
        mask = make_mask(kind, 2, cfg.model.grid(), 0.5, torch.Generator().manual_seed(1), clip=batch[:, :, :4])
        out = model(to_model_input(batch, cfg.data.mean, cfg.data.std), mask)
        assert torch.isfinite(out["loss"])
        target = out["target_motion"].reshape(2, -1, 2 * 16 * 16, 3)  # (B, M, tubelet*p*p, C), channel fastest
        want = torch.tensor([8.0, -8.0, 0.0]) / 255
        torch.testing.assert_close(target, want.expand_as(target), atol=1e-5, rtol=0)
        # the encoder input is the first T frames: the same latent as a clip without the neighbours
        enc = model.encoder.forward_features(to_model_input(batch[:, :, :4], cfg.data.mean, cfg.data.std), mask)
        assert enc.shape == (2, mask[0].logical_not().sum(), 32)


def test_neighbours_decode_like_the_plain_decoder_from_a_video_with_b_frames(tmp_path):
    """The decoder's fast path skips non-reference frames a clip does not use: the neighbours are asked for as used
    frames, so the clip equals decoding every frame (the plain path), bit for bit."""
    path = tmp_path / "v.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (24, 120, 3), dtype=np.uint8)
    frames = np.stack([np.broadcast_to(index_colours(k), (48, 48, 3)) for k in range(30)])
    for k in range(30):  # the top half tells the index, the bottom half moves: B-frames that nothing refers to
        frames[k, 24:] = texture[:, 2 * k : 2 * k + 48]
    write_video(path, frames, options={"crf": "10", "bframes": "3", "b-pyramid": "none"})
    cfg = C.load_config("motionmae-sha-tiny", [*TINY, "model.img_size=48", f"data.train={path}", "data.scales=[1.0]",
                                               "objective.motion_frames=adjacent"])
    ds = build_dataset(cfg.data, "train", "pretrain", neighbor_gap=1)
    for epoch in range(4):
        ds.set_epoch(epoch)
        clip = ds[0]["video"]  # 48x48 frames, scale 1: no crop, no resize
        idx = frame_index(clip)
        assert (idx[4:] == idx[:4] + 1).all()
        with VideoReader(path, fast=False) as plain:
            want = plain.get_frames(idx)
        assert torch.equal(clip, torch.from_numpy(want).permute(3, 0, 1, 2))
    with VideoReader(path) as fast:  # the fast path does skip frames a clip does not ask for
        fast.get_frames([0, 8, 16])
        assert fast.frames_decoded < 17


def test_pretraining_runs_with_adjacent_targets(tmp_path):
    from engine_helpers import tiny_videos

    from motionmae.engine.pretrain import pretrain

    videos = tiny_videos(tmp_path / "videos", n=4, frames=12)
    cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={videos}", f"train.output_dir={tmp_path / 'run'}",
                                               "train.max_steps=3", "train.batch_size=2", "train.warmup_steps=1",
                                               "train.viz_every=0", "objective.motion_frames=adjacent"])
    summary = pretrain(cfg, resume="none")
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    assert list((tmp_path / "run" / "pictures").glob("*.png"))  # pictures of the adjacent target too


def test_adjacent_refuses_a_padding_it_does_not_use():
    with pytest.raises(C.UserError, match="motion_pad=extra_frame pads the differences of sampled frames"):
        C.load_config("", ["objective.motion_frames=adjacent", "objective.motion_pad=extra_frame"])
    o = C.load_config("", ["objective.motion_frames=adjacent", "objective.motion_gap=2"]).objective
    assert (o.neighbor_gap, o.extra_frames, o.encoder_frames(32)) == (2, 0, 16)


def test_a_video_too_short_for_the_clip_and_its_neighbours_is_named(tmp_path):
    # 4 frames at stride 4 span 13 raw frames; with each frame's neighbour (gap 1) a clip needs 14
    import warnings

    video = index_frame_folder(tmp_path / "v", n=13)
    cfg = C.load_config("motionmae-sha-tiny", [*TINY, f"data.train={video}"])
    for gap in (0, 1):
        ds = build_dataset(cfg.data, "train", "pretrain", neighbor_gap=gap)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds[0]
        short = [str(w.message) for w in caught if "fewer than a clip spans" in str(w.message)]
        if gap == 0:
            assert short == []
        else:
            assert len(short) == 1 and "has 13 frame(s), fewer than a clip spans (4 at stride 4 and each frame's neighbour 1 on)" in short[0]
