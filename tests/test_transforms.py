import torch

from motionmae.data import transforms as T


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_multi_scale_crop_sizes_and_offsets_by_hand():
    # 320x240, input 224: short side 240 -> sizes 240, 210, 180, 158 (int(240 * s)); none within 3 px of 224.
    # Pairs (w, h) whose scale indices differ by <= 1 (max_distort=1): 10 of them.
    sizes = [240, 210, 180, 158]
    expected = {(sizes[i], sizes[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    seen, g = set(), gen()
    for _ in range(600):
        top, left, ch, cw = T.multi_scale_crop_params(240, 320, 224, (1, 0.875, 0.75, 0.66), g)
        seen.add((cw, ch))
        hs, ws = (240 - ch) // 4, (320 - cw) // 4
        # offsets on the fixed 13-point grid of quarter steps, crop inside the frame
        assert 0 <= top <= 240 - ch and 0 <= left <= 320 - cw
        grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
        assert any((ox * ws, oy * hs) == (left, top) for ox, oy in grid)
    assert seen == expected


def test_sizes_near_target_snap():
    # short side 256: 256 * 0.875 = 224 exactly, 0.75 -> 192; 257 * 0.875 = 224.875 -> int 224 too
    seen = {T.multi_scale_crop_params(256, 256, 223, (1, 0.875), gen(s))[2] for s in range(40)}
    assert seen == {256, 223}  # 224 is within 3 px of 223 and snaps to it


def test_multi_scale_crop_output_and_determinism():
    clip = torch.randint(0, 256, (3, 4, 48, 64), dtype=torch.uint8)
    a = T.train_transform(clip, 32, (1, 0.875, 0.75, 0.66), True, gen(3))
    b = T.train_transform(clip, 32, (1, 0.875, 0.75, 0.66), True, gen(3))
    c = [T.train_transform(clip, 32, (1, 0.875, 0.75, 0.66), True, gen(s)) for s in range(4, 10)]
    assert a.shape == (3, 4, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and any(not torch.equal(a, x) for x in c)


def test_flip():
    clip = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    assert torch.equal(T.random_flip(clip, gen(), p=1.0)[..., 0], clip[..., 4])
    assert torch.equal(T.random_flip(clip, gen(), p=0.0), clip)


def test_resize_constant_and_round_trip():
    const = torch.full((3, 2, 30, 40), 77, dtype=torch.uint8)
    assert torch.equal(T.resize(const, (17, 23)), torch.full((3, 2, 17, 23), 77, dtype=torch.uint8))
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    smooth = (128 + 80 * torch.sin(xx / 9) * torch.cos(yy / 11)).round().to(torch.uint8).expand(3, 2, 48, 64)
    back = T.resize(T.resize(smooth, (36, 48)), (48, 64))
    assert (back.float() - smooth.float()).abs().mean() < 2.0


def test_short_side_resize_and_crops_by_hand():
    clip = torch.randint(0, 256, (3, 2, 48, 64), dtype=torch.uint8)
    assert T.short_side_resize(clip, 36).shape == (3, 2, 36, 48)
    assert T.short_side_resize(clip.transpose(-1, -2), 36).shape == (3, 2, 48, 36)
    crops = T.three_crop(clip, 48)  # along the long side (width 64): lefts 0, 8, 16
    for c, left in zip(crops, (0, 8, 16)):
        assert torch.equal(c, clip[..., :, left : left + 48])
    assert torch.equal(T.center_crop(clip, 32), clip[..., 8:40, 16:48])
    tall = clip.transpose(-1, -2)  # 64 high, 48 wide: tops 0, 8, 16
    for c, top in zip(T.three_crop(tall, 48), (0, 8, 16)):
        assert torch.equal(c, tall[..., top : top + 48, :])


def test_to_model_input_layouts_and_values():
    x = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    x[0, :, 0, 0, 0] = 255
    mean, std = (0.5, 0.25, 0.0), (0.25, 0.5, 1.0)
    a = T.to_model_input(x, mean, std, "cpu")
    b = T.to_model_input(x.permute(0, 2, 3, 4, 1).contiguous(), mean, std, "cpu")  # (B, T, H, W, C)
    assert a.shape == (2, 3, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a[0, :, 0, 0, 0].tolist() == [2.0, 1.5, 1.0]  # (1 - 0.5)/0.25, (1 - 0.25)/0.5, (1 - 0)/1
    assert T.to_model_input(x, mean, std, "cpu", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert torch.allclose(T.to_model_input(x.float() / 255, mean, std, "cpu"), a)


def test_uint8_resize_matches_float_path():
    clip = torch.randint(0, 256, (3, 4, 30, 44), dtype=torch.uint8)
    for size in ((32, 32), (16, 20)):  # up and (antialiased) down
        fast = T.resize(clip, size)
        ref = T.resize(clip.float(), size).round().clamp(0, 255)
        assert fast.dtype == torch.uint8 and fast.shape == (3, 4, *size)
        assert (fast.float() - ref).abs().max() <= 1


def test_random_resized_crop_draws_within_area_and_aspect():
    # torchvision's draw: area fraction in scale, aspect w/h in ratio (up to rounding), box inside the frame
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = T.random_resized_crop_params(240, 320, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top <= 240 - h and 0 <= left <= 320 - w
        assert 0.08 - 0.01 <= h * w / (240 * 320) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    clip = torch.randint(0, 256, (3, 2, 24, 32), dtype=torch.uint8, generator=g)
    assert T.random_resized_crop(clip, 16, g).shape == (3, 2, 16, 16)


def test_random_resized_crop_fallback_by_hand():
    # no draw can fit: the centre crop of the whole frame, clamped to the aspect range
    g = torch.Generator().manual_seed(0)
    assert T.random_resized_crop_params(240, 320, (2.0, 2.0), (3 / 4, 4 / 3), g) == (0, 0, 240, 320)
    assert T.random_resized_crop_params(240, 320, (2.0, 2.0), (2.0, 2.0), g) == (40, 0, 160, 320)  # w/h 4/3 < 2
    assert T.random_resized_crop_params(320, 240, (2.0, 2.0), (0.5, 0.5), g) == (0, 40, 320, 160)  # w/h 3/4 > 1/2
