"""Reconstruction pictures: a PNG grid and an animated GIF of what the model sees and predicts.

One row per frame (one GIF frame per frame), five columns:
  original | masked input | predicted appearance | true motion | predicted motion

- Predictions are un-normalised with the TRUE statistics of each cube (the per-cube, per-channel mean and
  std of the original clip, or of the true motion for the motion column), as VideoMAE's visualisation
  script does. The pictures therefore show how well the *shape* of each cube is predicted; its mean
  brightness and contrast are borrowed from the ground truth.
- Visible cubes are copied from the input in both prediction columns (as VideoMAE does); only masked cubes
  are predictions.
- Motion (frame differences, signed) is shown on grey = 0, brighter = positive, darker = negative, with one
  gain per picture (the largest true |difference| maps to full range) shared by the true and predicted columns.

`motionmae visualize CHECKPOINT VIDEO [--out DIR] [--seed S]` renders a video's centre clip.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from motionmae.errors import UserError

COLUMNS = ("original", "masked input", "pred. appearance", "true motion", "pred. motion")
MIN_PANEL = 128  # small clips are upscaled (nearest) so each panel is at least this wide
HEADER = 16  # px of column titles above the PNG grid and each GIF frame
GAP = 2  # px between panels


# ----------------------------------------------------------------------------------------------
# tensors -> panels


@torch.no_grad()
def reconstruction_panels(model, clip: torch.Tensor, mask: torch.Tensor, amp_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """The five columns for one clip: float array (T, 5, H, W, 3) in [0, 1].

    `model`: a (unwrapped) `PretrainModel`; `clip`: normalised (1, C, T, H, W) on the model's device;
    `mask`: bool (1, N), True = masked.
    """
    from motionmae.objective.targets import cube_stats, motion_frames, num_appearance_frames, patchify, unpatchify

    o, tub, p = model.objective_cfg, model.tubelet, model.patch
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(clip.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            out = model(clip, mask)
    finally:
        model.train(was_training)
    clip01 = (clip.float() * model.std + model.mean).clamp(0, 1)
    t = num_appearance_frames(clip01, o)
    frames = clip01[:, :, :t]
    c = frames.shape[1]
    grid = model.encoder.patch_embed.grid(frames)
    ids_masked = out["ids_masked"]  # (1, M): the token index of each prediction row

    def fill(true_tokens: torch.Tensor, pred: torch.Tensor, channels: int, normalised: bool) -> torch.Tensor:
        """Masked tokens of `true_tokens` replaced by `pred` (un-normalised with the true cube stats)."""
        pred = pred.float()
        if normalised:
            mean, std = cube_stats(true_tokens, channels)  # (1, N, C)
            m, s = _gather(mean, ids_masked), _gather(std, ids_masked)
            pred = (pred.reshape(*pred.shape[:-1], -1, channels) * (s[:, :, None] + o.norm_eps) + m[:, :, None]).reshape(pred.shape)
        full = true_tokens.clone()
        full.scatter_(1, ids_masked[..., None].expand(-1, -1, full.shape[-1]), pred)
        return unpatchify(full, tub, p, grid)

    tokens = patchify(frames, tub, p)
    recon = fill(tokens, out["pred_appearance"], c, o.appearance_norm).clamp(0, 1)
    masked_tokens = tokens.clone()
    masked_tokens[mask] = 0.5
    masked_in = unpatchify(masked_tokens, tub, p, grid)

    motion = motion_frames(clip01 if o.motion_pad == "extra_frame" else frames, o)  # (1, C', T, H, W)
    gain = 0.5 / max(float(motion.abs().max()), 1e-6)
    true_m = 0.5 + gain * motion
    if out.get("pred_motion") is not None:
        mtok = patchify(motion, tub, p)
        pred_m = 0.5 + gain * fill(mtok, out["pred_motion"], motion.shape[1], o.motion_norm)
    else:  # decoder 'none' (VideoMAE): no motion prediction, a flat grey panel
        pred_m = torch.full_like(true_m, 0.5)
    cols = [frames, masked_in, recon, _rgb(true_m), _rgb(pred_m)]
    arr = torch.stack([x[0].clamp(0, 1) for x in cols])  # (5, C, T, H, W)
    return arr.permute(2, 0, 3, 4, 1).cpu().numpy()  # (T, 5, H, W, C)


def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1, -1) if x.shape[1] == 1 else x


# ----------------------------------------------------------------------------------------------
# panels -> images


def panel_scale(width: int) -> int:
    return max(1, math.ceil(MIN_PANEL / width))


def frame_row(panels: np.ndarray, scale: int) -> np.ndarray:
    """(5, H, W, 3) floats -> uint8 (H*scale, 5*W*scale + 4*GAP, 3), panels side by side on white."""
    k, h, w, _ = panels.shape
    img = (np.clip(panels, 0, 1) * 255 + 0.5).astype(np.uint8)
    img = img.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    row = np.full((hs, k * ws + (k - 1) * GAP, 3), 255, np.uint8)
    for i in range(k):
        row[:, i * (ws + GAP) : i * (ws + GAP) + ws] = img[i]
    return row


def header(width: int, panel_width: int) -> np.ndarray:
    """Column titles, uint8 (HEADER, width, 3)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, HEADER), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, title in enumerate(COLUMNS):
        draw.text((i * (panel_width + GAP) + 2, 2), title, fill=(0, 0, 0))
    return np.asarray(im)


def save_pictures(panels: np.ndarray, out_dir, name: str, fps: float = 4.0) -> Tuple[Path, Path]:
    """Write `name.png` (titles, then one row per frame) and `name.gif` (titles + one row per frame, looping).

    Sizes: width 5*W*s + 4*GAP; PNG height HEADER + T*H*s + (T-1)*GAP; GIF frames HEADER + H*s tall,
    with s = ceil(128 / W) (at least 1).
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t, k, h, w, _ = panels.shape
    s = panel_scale(w)
    rows = [frame_row(panels[i], s) for i in range(t)]
    top = header(rows[0].shape[1], w * s)
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([top] + [x for r in rows for x in (r, gap)][:-1], axis=0)
    png, gif = out_dir / f"{name}.png", out_dir / f"{name}.gif"
    Image.fromarray(grid).save(png)
    frames = [Image.fromarray(np.concatenate([top, r], axis=0)) for r in rows]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return png, gif


# ----------------------------------------------------------------------------------------------
# entry points


def eval_clip(cfg, path: str) -> torch.Tensor:
    """The centre clip and centre crop of one video, uint8 (C, T, H, W), as the validation transform makes it."""
    from motionmae.data.datasets import VideoClipDataset, VideoEntry

    extra = cfg.objective.motion_gap if cfg.objective.motion_pad == "extra_frame" else 0
    d = cfg.data
    ds = VideoClipDataset([VideoEntry(str(path), where=str(path))], num_frames=d.num_frames + extra, sampling_rate=d.sampling_rate,
                          sampling=d.sampling, mode="val", input_size=d.input_size, short_side=d.short_side,
                          short_video=d.short_video, max_skip_fraction=1.0, max_attempts=1)
    return ds[0]["video"]


def render(model, cfg, video_uint8: torch.Tensor, out_dir, name: str, seed: int = 0, device="cpu",
           amp_dtype: Optional[torch.dtype] = None) -> Tuple[Path, Path]:
    """Mask `video_uint8` (C, T, H, W) with `cfg.mask` (generator seeded by `seed`), predict, write PNG + GIF."""
    from motionmae.data.transforms import to_model_input
    from motionmae.objective.masking import make_mask

    x = to_model_input(video_uint8[None], cfg.data.mean, cfg.data.std, device)
    mask = make_mask(cfg.mask.kind, 1, cfg.model.grid(), cfg.mask.ratio, torch.Generator().manual_seed(seed)).to(device)
    return save_pictures(reconstruction_panels(model, x, mask, amp_dtype), out_dir, name)


def reconstruction_pictures_from_dataset(model, cfg, dataset, out_dir, name: str, device, amp_dtype=None) -> Tuple[Path, Path]:
    """Pictures of the dataset's first video (centre clip, so successive pictures of a run are comparable)."""
    return render(model, cfg, eval_clip(cfg, dataset.entries[0].path), out_dir, name, seed=cfg.train.seed, device=device, amp_dtype=amp_dtype)


def load_pretrained(checkpoint, device="cpu"):
    """(PretrainModel with the checkpoint's weights, its PretrainConfig) from a checkpoint file or run directory."""
    from motionmae import config as C
    from motionmae.engine.checkpoint import load_model_state
    from motionmae.models.pretrain import PretrainModel

    sd, cfg_dict = load_model_state(checkpoint)
    if not cfg_dict:
        raise UserError(f"{checkpoint}: the checkpoint carries no config; it was not written by `motionmae pretrain`")
    cfg = C.from_dict(C.PretrainConfig, cfg_dict)
    model = PretrainModel(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint}: not a pretraining checkpoint (missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    return model.to(device).eval(), cfg


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a pretraining checkpoint (.safetensors) or a run directory")
    parser.add_argument("video", help="a video file or frame folder")
    parser.add_argument("--out", default="", help="output directory (default: pictures/ next to the checkpoint's run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args) -> int:
    from motionmae.engine.distributed import resolve_device

    if not Path(args.video).exists():
        raise UserError(f"video not found: {args.video}")
    device = resolve_device(args.device)
    model, cfg = load_pretrained(args.checkpoint, device)
    out = Path(args.out) if args.out else _default_out(Path(args.checkpoint))
    png, gif = render(model, cfg, eval_clip(cfg, args.video), out, Path(args.video).stem + f"_seed{args.seed}", args.seed, device)
    print(f"wrote {png}\nwrote {gif}")
    return 0


def _default_out(checkpoint: Path) -> Path:
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "pictures"
