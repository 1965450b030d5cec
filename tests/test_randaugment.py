"""RandAugment for clips: every op by hand and against PIL (what timm applies per frame), the same ops on every
frame, timm's magnitude -> argument mapping, spec parsing, and which datasets are augmented."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from motionmae.config import DataConfig, load_config
from motionmae.data import transforms as T
from motionmae.data.datasets import VideoClipDataset, build_dataset, item_generator
from motionmae.data.decode import write_video
from motionmae.config import FinetuneOptions
from motionmae.errors import UserError

SPEC = "rand-m7-n4-mstd0.5-inc1"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def frame(h=20, w=24, seed=0):
    """A random uint8 (3, 1, h, w) clip that does not span the full range (so AutoContrast has work to do)."""
    g = gen(seed)
    return torch.randint(40, 200, (3, 1, h, w), generator=g, dtype=torch.uint8)


def op(clip, name, arg=None):
    return T.apply_op(clip, name, arg)


def gray_clip(values):
    """(3, 1, 1, N) clip whose three channels all hold `values` (PIL's luma of a gray pixel is the pixel)."""
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, -1).repeat(3, 1, 1, 1)


# ---------------------------------------------------------------------------------------- ops by hand


def test_lookup_ops_by_hand():
    x = gray_clip([0, 10, 63, 127, 128, 191, 200, 255])
    assert op(x, "Invert")[0].flatten().tolist() == [255, 245, 192, 128, 127, 64, 55, 0]
    assert op(x, "Solarize", 128)[0].flatten().tolist() == [0, 10, 63, 127, 127, 64, 55, 0]  # >= 128 inverted
    assert torch.equal(op(x, "Solarize", 256), x)
    assert op(x, "Posterize", 2)[0].flatten().tolist() == [0, 0, 0, 64, 128, 128, 192, 192]  # top 2 bits
    assert op(x, "Posterize", 0).max() == 0 and torch.equal(op(x, "Posterize", 8), x)
    # + 150 below 128, saturating at 255
    assert op(x, "SolarizeAdd", 150)[0].flatten().tolist() == [150, 160, 213, 255, 128, 191, 200, 255]


def test_enhance_ops_by_hand():
    x = gray_clip([0, 50, 100, 200])
    assert op(x, "Brightness", 0.5)[0].flatten().tolist() == [0, 25, 50, 100]
    assert op(x, "Brightness", 1.5)[0].flatten().tolist() == [0, 75, 150, 255]  # clipped
    # Contrast blends with the (rounded) mean luma, 87.5 -> 88: 88 + f (x - 88), truncated, clipped
    assert op(x, "Contrast", 0.0)[0].flatten().tolist() == [88] * 4
    assert op(x, "Contrast", 2.0)[0].flatten().tolist() == [0, 12, 112, 255]
    # Color 0: PIL's luma (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point; pure red -> 76
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1, 1)
    assert op(red, "Color", 0.0).flatten().tolist() == [76, 76, 76]
    # Sharpness 0 is the SMOOTH filter inside, border kept: centre 13 * v of a 3x3 of v's, one 130 among 0's
    x = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    x[0, 0, 1, 1] = 130
    assert op(x, "Sharpness", 0.0)[0, 0].tolist() == [[0, 0, 0], [0, 50, 0], [0, 0, 0]]  # 130 * 5 / 13
    assert op(x, "Sharpness", 2.0)[0, 0, 1, 1] == 210  # 50 + 2 * (130 - 50)


def test_autocontrast_and_equalize_by_hand():
    x = torch.tensor([55, 80, 140, 140], dtype=torch.uint8).view(1, 1, 1, 4)
    assert op(x, "AutoContrast").flatten().tolist() == [0, 75, 255, 255]  # (x - 55) * 255 / 85
    assert torch.equal(op(gray_clip([7, 7]), "AutoContrast"), gray_clip([7, 7]))  # flat: unchanged
    # 1024 pixels, 256 each of 10, 20, 30, 40: step = (1024 - 256) // 255 = 3, lut = (1 + pixels below) // 3
    x = torch.tensor([10, 20, 30, 40], dtype=torch.uint8).repeat_interleave(256).view(1, 1, 32, 32)
    out = op(x, "Equalize").flatten()
    assert [int(out[i * 256]) for i in range(4)] == [0, 85, 171, 255]  # 1 // 3, 257 // 3, 513 // 3, 769 // 3 -> 255


def test_geometric_ops_by_hand():
    x = frame(20, 20)
    # TranslateXRel 0.1 of 20 px = 2 px: output column j shows input column j + 2, 128 comes in on the right
    out = op(x, "TranslateXRel", 0.1)
    assert torch.equal(out[..., :18], x[..., 2:]) and (out[..., 18:] == 128).all()
    out = op(x, "TranslateYRel", -0.15)  # 3 px down
    assert torch.equal(out[..., 3:, :], x[..., :17, :]) and (out[..., :3, :] == 128).all()
    # Rotate is counter-clockwise about the centre: 90 maps the top-right corner to the top-left
    assert torch.equal(op(x, "Rotate", 90.0), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(op(x, "Rotate", -90.0), torch.rot90(x, -1, (-2, -1)))
    assert torch.equal(op(x, "Rotate", 180.0), x.flip(-1).flip(-2))
    # ShearX f: output (x, y) reads input (x + f y, y) about the top-left corner; f = 2 shifts row r by 2r + 1
    x = frame(4, 24)
    out = op(x, "ShearX", 2.0)
    for r in range(4):
        s = 2 * r + 1
        assert torch.equal(out[..., r, : 24 - s], x[..., r, s:]) and (out[..., r, 24 - s :] == 128).all()
    assert torch.equal(op(x.transpose(-1, -2), "ShearY", 2.0), out.transpose(-1, -2))


def test_ops_match_pil_on_a_frame():
    """timm applies PIL per frame: colour ops must agree exactly, resampling ops within 1 away from the edges
    (PIL fills outside pixels without blending the border; the arguments keep the fill within 4 px)."""
    x = frame(20, 24, seed=3)
    pil = Image.fromarray(x[:, 0].permute(1, 2, 0).numpy())
    kw = dict(resample=Image.BILINEAR, fillcolor=(128, 128, 128))
    exact = [("AutoContrast", None, ImageOps.autocontrast(pil)), ("Equalize", None, ImageOps.equalize(pil)),
             ("Posterize", 3, ImageOps.posterize(pil, 3)), ("Solarize", 150, ImageOps.solarize(pil, 150))]
    for f in (0.3, 1.7):
        exact += [("Color", f, ImageEnhance.Color(pil).enhance(f)), ("Contrast", f, ImageEnhance.Contrast(pil).enhance(f)),
                  ("Brightness", f, ImageEnhance.Brightness(pil).enhance(f)),
                  ("Sharpness", f, ImageEnhance.Sharpness(pil).enhance(f))]
    close = [("Rotate", 17.0, pil.rotate(17.0, **kw)),
             ("ShearX", 0.2, pil.transform(pil.size, Image.AFFINE, (1, 0.2, 0, 0, 1, 0), **kw)),
             ("ShearY", -0.1, pil.transform(pil.size, Image.AFFINE, (1, 0, 0, -0.1, 1, 0), **kw)),
             ("TranslateXRel", 0.1, pil.transform(pil.size, Image.AFFINE, (1, 0, 0.1 * 24, 0, 1, 0), **kw))]
    def ours(name, arg):
        return op(x, name, arg)[:, 0].permute(1, 2, 0).numpy().astype(int)

    for name, arg, ref in exact:
        assert np.array_equal(ours(name, arg), np.asarray(ref)), (name, arg)
    for name, arg, ref in close:
        diff = ours(name, arg) - np.asarray(ref).astype(int)
        assert np.abs(diff[4:-4, 4:-4]).max() <= 1, (name, arg)


# ---------------------------------------------------------------------------------------- RandAugment


def test_same_ops_on_every_frame():
    x = frame(16, 16).repeat(1, 4, 1, 1)  # 4 copies of one frame
    for name in T.RAND_INCREASING_OPS + T.RAND_OPS:
        y = op(x, name, T.rand_augment_arg(name, 6.0, gen(1)))
        assert all(torch.equal(y[:, i], y[:, 0]) for i in range(4)), name
    changed = 0
    for seed in range(20):
        y = T.rand_augment(x, 4, 9.0, 0.5, gen(seed), prob=1.0)
        assert all(torch.equal(y[:, i], y[:, 0]) for i in range(4))
        changed += not torch.equal(y, x)
    assert changed >= 18


def test_magnitude_to_argument_like_timm():
    g = gen(0)
    assert T.rand_augment_arg("PosterizeIncreasing", 10, g) == 0 and T.rand_augment_arg("PosterizeIncreasing", 5, g) == 2
    assert T.rand_augment_arg("Posterize", 10, g) == 4
    assert T.rand_augment_arg("SolarizeIncreasing", 7, g) == 256 - 179 and T.rand_augment_arg("Solarize", 7, g) == 179
    assert T.rand_augment_arg("SolarizeAdd", 10, g) == 110
    assert T.rand_augment_arg("Color", 10, g) == pytest.approx(1.9) and T.rand_augment_arg("Color", 0, g) == pytest.approx(0.1)
    signs = {T.rand_augment_arg("Rotate", 10, g) for _ in range(50)}
    assert signs == {30.0, -30.0}
    assert {round(T.rand_augment_arg("ColorIncreasing", 10, g), 6) for _ in range(50)} == {0.1, 1.9}
    assert {abs(T.rand_augment_arg(n, 10, g)) for n in ("ShearX", "TranslateYRel")} == {0.3, 0.45}


def test_magnitude_zero_increasing_ops_are_identity():
    x = frame(12, 12).repeat(1, 2, 1, 1)
    for name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                 "SolarizeIncreasing", "SolarizeAdd", "Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        assert torch.equal(op(x, name, T.rand_augment_arg(name, 0.0, gen())), x), name
    assert torch.equal(T.rand_augment(x, 4, 0.0, 0.0, gen(), prob=0.0), x)  # no op passes its coin


def test_same_seed_same_clip():
    x = frame(16, 16).repeat(1, 3, 1, 1)
    a = T.rand_augment(x, 4, 7.0, 0.5, gen(5))
    assert torch.equal(a, T.rand_augment(x, 4, 7.0, 0.5, gen(5)))
    assert any(not torch.equal(a, T.rand_augment(x, 4, 7.0, 0.5, gen(s))) for s in range(6, 12))
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_spec_parsing():
    ra = T.RandAugment.from_spec(SPEC)
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.increasing, ra.prob) == (4, 7.0, 0.5, True, 0.5)
    ra = T.RandAugment.from_spec("rand-m9-mstd101")  # timm: mstd > 100 -> uniform magnitude
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.increasing) == (2, 9.0, float("inf"), False)
    assert T.RandAugment.from_spec("") is None and T.RandAugment.from_spec("none") is None
    for bad in ("autoaug-v0", "rand-m7-x3", "rand-mfoo", "rand-p2"):
        with pytest.raises(UserError, match="finetune.aa"):
            T.RandAugment.from_spec(bad, "finetune.aa")


# ---------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("aa_vids")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(root / f"{i}.mp4", rng.integers(0, 256, (8, 24, 32, 3), dtype=np.uint8), fps=8,
                    pix_fmt="yuv444p", options={"qp": "0"})
    (root / "list.txt").write_text("".join(f"{i}.mp4 {i}\n" for i in range(3)))
    return root


def _cfg(folder):
    return DataConfig(train=str(folder / "list.txt"), val=str(folder / "list.txt"), num_frames=4, sampling_rate=2,
                      input_size=16, short_side=16, num_workers=0, test_clips=1, test_crops=1)


def test_only_finetune_train_clips_are_augmented(folder):
    cfg, spec = _cfg(folder), "rand-m9-n2-p1.0"
    plain = build_dataset(cfg, "train", "finetune", seed=3)
    aug = build_dataset(cfg, "train", "finetune", seed=3, aa=spec)
    pre = build_dataset(cfg, "train", "pretrain", seed=3, aa=spec)
    assert plain.rand_augment is None and pre.rand_augment is None and aug.rand_augment is not None
    ra = T.RandAugment.from_spec(spec)
    for i in range(3):
        assert torch.equal(pre[i]["video"], plain[i]["video"])  # pretraining: never augmented
        # the augmented clip is RandAugment of the plain one, drawn from the item's generator after crop/flip
        g = item_generator(3, 0, i)
        clip, _ = plain._load(i, g)
        assert torch.equal(aug[i]["video"], ra(clip, g))
    assert any(not torch.equal(aug[i]["video"], plain[i]["video"]) for i in range(3))
    for split, mode in (("val", "finetune"), ("val", "test")):
        ds = build_dataset(cfg, split, mode, aa=spec)
        assert ds.rand_augment is None
        assert torch.equal(ds[1]["video"], build_dataset(cfg, split, mode)[1]["video"])
    assert VideoClipDataset(plain.entries, mode="val", aa=spec).rand_augment is None
    with pytest.raises(UserError, match="finetune.aa"):
        build_dataset(cfg, "train", "finetune", aa="rand-q3")


def test_config_defaults():
    assert FinetuneOptions().aa == SPEC  # VideoMAE's fine-tuning setting
    with pytest.raises(UserError, match="unknown config key 'data.aa'"):  # pretraining has no such switch
        load_config("", ["data.aa=" + SPEC])


def test_videomae_crop_augments_the_decoded_frames_then_crops(folder, monkeypatch):
    # finetune.crop=rrc (VideoMAE's order): RandAugment sees the whole frames, brought from 24x32 down to the short
    # side 16 (16x21), and the random resized crop comes after; 'multiscale' crops first. Pretraining clips keep
    # the multi-scale crop whatever is asked.
    seen = []
    real = T.RandAugment.__call__

    def spy(self, clip, g):
        seen.append(tuple(clip.shape[-2:]))
        return real(self, clip, g)

    monkeypatch.setattr(T.RandAugment, "__call__", spy)
    cfg = _cfg(folder)
    rrc = build_dataset(cfg, "train", "finetune", seed=3, aa=SPEC, crop="rrc")
    assert rrc[0]["video"].shape[-2:] == (16, 16) and seen == [(16, 21)]
    seen.clear()
    assert build_dataset(cfg, "train", "finetune", seed=3, aa=SPEC, crop="multiscale")[0]["video"].shape[-2:] == (16, 16)
    assert seen == [(16, 16)]
    assert build_dataset(cfg, "train", "pretrain", crop="rrc").crop == "multiscale"
    assert FinetuneOptions().crop == "rrc"
    with pytest.raises(UserError, match="finetune.crop"):
        build_dataset(cfg, "train", "finetune", crop="center")
