"""Reconstruction pictures: panel semantics (with an oracle model whose predictions are the targets) and file sizes."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import TINY, tiny_videos
from motionmae import config as C
from motionmae import viz
from motionmae.cli import main as cli_main
from motionmae.data.transforms import to_model_input
from motionmae.runtime.checkpoint import save_checkpoint
from motionmae.models.pretrain import PretrainModel
from motionmae.objective.masking import make_mask


class Oracle(PretrainModel):
    """Predicts exactly the (normalised) targets: the pictures must then show the truth in every column."""

    def forward(self, clip, mask):
        out = super().forward(clip, mask)
        out["pred_appearance"], out["pred_motion"] = out["target_appearance"], out["target_motion"]
        return out


def _cfg(*more):
    return C.load_config("", [*TINY, *more])


def _clip(seed=0, t=4, static=False):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (3, t, 32, 32), generator=g, dtype=torch.uint8)
    return video[:, :1].expand(-1, t, -1, -1).contiguous() if static else video


def _panels(model, cfg, video, seed=0):
    x = to_model_input(video[None], cfg.data.mean, cfg.data.std)
    mask = make_mask(cfg.mask.kind, 1, cfg.model.grid(), cfg.mask.ratio, torch.Generator().manual_seed(seed))
    return viz.reconstruction_panels(model, x, mask), mask


@pytest.mark.parametrize("more", [[], ["objective.motion_color=gray", "model.decoder=ind"], ["objective.appearance_norm=false", "objective.motion_norm=false"]])
def test_oracle_predictions_reproduce_the_truth(more):
    cfg = _cfg(*more)
    torch.manual_seed(0)
    panels, _ = _panels(Oracle(cfg).eval(), cfg, _clip())
    original, recon, true_m, pred_m = panels[:, 0], panels[:, 2], panels[:, 3], panels[:, 4]
    np.testing.assert_allclose(recon, original, atol=2e-5)  # un-normalised with the true cube statistics
    np.testing.assert_allclose(pred_m, true_m, atol=2e-5)
    assert panels.shape == (4, 5, 32, 32, 3)


def test_visible_cubes_come_from_the_input_and_motion_is_signed_on_grey():
    cfg = _cfg()
    torch.manual_seed(0)
    video = _clip(static=True)
    panels, mask = _panels(PretrainModel(cfg).eval(), cfg, video)
    # token grid (2, 2, 2) of 2x16x16 cubes; pixel (t, y, x) belongs to token (t//2)*4 + (y//16)*2 + x//16
    m = mask[0].reshape(2, 2, 2).repeat_interleave(2, 0).repeat_interleave(16, 1).repeat_interleave(16, 2).numpy()
    original, masked_in, recon = panels[:, 0], panels[:, 1], panels[:, 2]
    np.testing.assert_allclose(original, video.permute(1, 2, 3, 0).numpy() / 255.0, atol=1e-6)
    assert m.any() and (~m).any()
    np.testing.assert_array_equal(recon[~m], original[~m])
    np.testing.assert_array_equal(masked_in[m], 0.5)
    np.testing.assert_array_equal(masked_in[~m], original[~m])
    np.testing.assert_allclose(panels[:, 3], 0.5, atol=1e-7)  # a still video has no motion: all grey


def test_visualize_command_writes_png_and_gif_of_the_expected_size(tmp_path):
    cfg = _cfg()
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", PretrainModel(cfg), state={"config": C.to_dict(cfg)})
    video = tiny_videos(tmp_path / "videos", n=1) / "v00.mp4"
    assert cli_main(["visualize", str(ckpt), str(video), "--seed", "3", "--device", "cpu"]) == 0
    # a folder of its own, not the pictures/ that training writes every train.viz_every steps
    png, gif = tmp_path / "run" / "visualize" / "v00_seed3.png", tmp_path / "run" / "visualize" / "v00_seed3.gif"
    assert not (tmp_path / "run" / "pictures").exists()
    s = viz.panel_scale(32)  # 32 px panels are upscaled x4 to 128
    width = viz.GUTTER + 5 * 32 * s + 4 * viz.GAP
    with Image.open(png) as im:
        assert im.size == (width, viz.CAPTION + viz.HEADER + 4 * 32 * s + 3 * viz.GAP)
        caption = np.asarray(im.convert("L"))[: viz.CAPTION]
        assert (caption < 128).any()  # the caption line has text
    with Image.open(gif) as im:
        assert im.size == (width, viz.CAPTION + viz.HEADER + 32 * s) and im.n_frames == 4 and im.is_animated
    assert cli_main(["visualize", str(tmp_path / "run"), str(video), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["v00_seed0.gif", "v00_seed0.png"]
    assert cli_main(["visualize", str(ckpt), str(tmp_path / "missing.mp4")]) == 2


def test_columns_follow_the_targets_and_an_oracle_hog_prediction_draws_the_truth():
    cfg = _cfg("objective.targets=[appearance,hog]")

    class AllOracle(PretrainModel):
        def forward(self, clip, mask):
            out = super().forward(clip, mask)
            return {**out, **{f"pred_{t.name}": out[f"target_{t.name}"] for t in self.targets}}

    torch.manual_seed(0)
    model = AllOracle(cfg).eval()
    assert viz.panel_titles(model) == ["original", "masked input", "pred. appearance", "true HOG", "pred. HOG"]
    panels, _ = _panels(model, cfg, _clip())
    assert panels.shape == (4, 5, 32, 32, 3)
    np.testing.assert_allclose(panels[:, 2], panels[:, 0], atol=2e-5)
    np.testing.assert_allclose(panels[:, 4], panels[:, 3], atol=1e-6)
    assert panels[:, 3].max() > 0.5  # random pixels have edges in every cell


def test_captions_name_step_losses_mask_and_video():
    cfg = _cfg()
    torch.manual_seed(0)
    model = PretrainModel(cfg).eval()
    video = _clip()
    x = to_model_input(video[None], cfg.data.mean, cfg.data.std)
    mask = make_mask(cfg.mask.kind, 1, cfg.model.grid(), cfg.mask.ratio, torch.Generator().manual_seed(0))
    _, losses = viz.reconstruction(model, x, mask)
    with torch.no_grad():
        out = model(x, mask)
    assert losses == {k: float(out[k]) for k in ("loss_appearance", "loss_motion", "loss")}  # the clip's own losses
    text = viz.caption({"loss": 0.5, "loss_appearance": 0.25, "loss_motion": 0.25}, "per_slice", 0.9, step=30, source="v.mp4")
    assert text == "step 30 | loss 0.5000 (appearance 0.2500, motion 0.2500) | mask per_slice 0.9 | v.mp4"
    assert viz.caption({}, "tube", 0.75) == "mask tube 0.75"
