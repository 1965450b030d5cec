"""Reconstruction pictures: a PNG grid and an animated GIF of what the model sees and predicts.

One row per frame (one GIF frame per frame); the columns are the original, the masked input, then per target of
the model (`objective.targets`, in order) its true values (not for appearance: that is the original) and its
prediction -- with the default targets: original | masked input | pred. appearance | true motion | pred. motion.

- Predictions of normalised targets are un-normalised with the TRUE statistics of each cube (the per-cube,
  per-channel mean and std of the truth), as VideoMAE's visualisation script does. The pictures therefore show
  how well the *shape* of each cube is predicted; its mean brightness and contrast are borrowed from the truth.
- Visible cubes are copied from the truth in every prediction column (as VideoMAE does); only masked cubes
  are predictions.
- Each target draws its own values (`Target.picture`): appearance as pixels, motion (signed frame differences)
  on grey = 0 with one gain per picture shared by its true and predicted columns, HOG as orientation glyphs.

Every picture carries a caption (step, the clip's loss and per-target losses, mask kind and ratio, the video) and
each row its frame index (the GIF: "frame i/T" in its caption).

`motionmae visualize CHECKPOINT VIDEO [--out DIR] [--seed S]` renders a video's centre clip into `--out` (default
`visualize/` in the run directory, apart from the `pictures/` training writes every `train.viz_every` steps).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from motionmae import config as C
from motionmae.errors import UserError
from motionmae.objective.tokens import cube_stats, patchify, unpatchify

MIN_PANEL = 128  # small clips are upscaled (nearest) so each panel is at least this wide
CAPTION = 14  # px of the caption line (step, loss, mask, video; the GIF adds the frame) above the titles
HEADER = 16  # px of column titles above the PNG grid and each GIF frame
GUTTER = 24  # px left of each row for its frame index
GAP = 2  # px between panels


# ----------------------------------------------------------------------------------------------
# tensors -> panels


def panel_titles(model) -> List[str]:
    """The column titles of `reconstruction_panels` for a `PretrainModel`."""
    titles = ["original", "masked input"]
    for t in model.targets:
        titles += ([f"true {t.title}"] if t.show_truth else []) + [f"pred. {t.title}"]
    return titles


def reconstruction_panels(model, clip: torch.Tensor, mask: torch.Tensor, amp_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """The columns of `panel_titles(model)` for one clip: float array (T, K, H, W, 3) in [0, 1].

    `model`: a (unwrapped) `PretrainModel`; `clip`: normalised (1, C, T, H, W) on the model's device;
    `mask`: bool (1, N), True = masked.
    """
    return reconstruction(model, clip, mask, amp_dtype)[0]


@torch.no_grad()
def reconstruction(model, clip: torch.Tensor, mask: torch.Tensor, amp_dtype: Optional[torch.dtype] = None) -> Tuple[np.ndarray, dict]:
    """(`reconstruction_panels`, the model's losses on this clip {"loss": ..., "loss_<target>": ...} as floats)."""
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(clip.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            out = model(clip, mask)
    finally:
        model.train(was_training)
    clip01 = (clip.float() * model.std + model.mean).clamp(0, 1)
    frames = clip01[:, :, : model.objective_cfg.encoder_frames(clip01.shape[2])]
    tub, p = model.tubelet, model.patch
    grid = model.encoder.patch_embed.grid(frames)
    ids_masked = out["ids_masked"]  # (1, M): the token index of each prediction row

    masked_tokens = patchify(frames, tub, p)
    masked_tokens[mask] = 0.5
    cols = [frames, unpatchify(masked_tokens, tub, p, grid)]
    for t in model.targets:
        truth = t.raw(clip01)  # (1, N, dim)
        pred = out[f"pred_{t.name}"].float()
        if t.normalize:  # back to the truth's scale with each masked cube's true statistics
            mean, std = cube_stats(truth, t.channels)  # (1, N, C)
            m, s = _gather(mean, ids_masked), _gather(std, ids_masked)
            pred = (pred.reshape(*pred.shape[:-1], -1, t.channels) * (s[:, :, None] + t.cfg.norm_eps) + m[:, :, None]).reshape(pred.shape)
        full = truth.clone()
        full.scatter_(1, ids_masked[..., None].expand(-1, -1, full.shape[-1]), pred)
        cols += ([t.picture(truth, grid, truth)] if t.show_truth else []) + [t.picture(full, grid, truth)]
    arr = torch.stack([_rgb(x)[0].clamp(0, 1) for x in cols])  # (K, C, T, H, W)
    losses = {k: float(v) for k, v in out.items() if k == "loss" or k.startswith("loss_")}
    return arr.permute(2, 0, 3, 4, 1).cpu().numpy(), losses  # (T, K, H, W, C)


def caption(losses: dict, mask_kind: str, mask_ratio: float, step: Optional[int] = None, source: str = "") -> str:
    """The line above a picture: step, loss (and per target), mask, source video."""
    parts = [f"step {step}"] if step is not None else []
    if "loss" in losses:
        per = ", ".join(f"{k[5:]} {v:.4f}" for k, v in losses.items() if k.startswith("loss_"))
        parts.append(f"loss {losses['loss']:.4f}" + (f" ({per})" if per else ""))
    parts.append(f"mask {mask_kind} {mask_ratio:g}")
    if source:
        parts.append(source)
    return " | ".join(parts)


def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1, -1) if x.shape[1] == 1 else x


# ----------------------------------------------------------------------------------------------
# panels -> images


def panel_scale(width: int) -> int:
    return max(1, math.ceil(MIN_PANEL / width))


def frame_row(panels: np.ndarray, scale: int, label: str = "") -> np.ndarray:
    """(K, H, W, 3) floats -> uint8 (H*scale, GUTTER + K*W*scale + (K-1)*GAP, 3): the row's `label` (its frame index)
    in the gutter, then the panels side by side on white."""
    k, h, w, _ = panels.shape
    img = (np.clip(panels, 0, 1) * 255 + 0.5).astype(np.uint8)
    img = img.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    row = np.full((hs, GUTTER + k * ws + (k - 1) * GAP, 3), 255, np.uint8)
    for i in range(k):
        row[:, GUTTER + i * (ws + GAP) : GUTTER + i * (ws + GAP) + ws] = img[i]
    if label:
        row[: HEADER, :GUTTER] = _text_strip([(2, label)], GUTTER, HEADER)
    return row


def _text_strip(texts, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3) white strip with black `texts` [(x, text)] (PIL's default font)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for x, text in texts:
        draw.text((x, 2), text, fill=(0, 0, 0))
    return np.asarray(im)


def header(titles: List[str], width: int, panel_width: int) -> np.ndarray:
    """Column titles, uint8 (HEADER, width, 3) (the panels start after the frame-index gutter)."""
    return _text_strip([(GUTTER + i * (panel_width + GAP) + 2, t) for i, t in enumerate(titles)], width, HEADER)


def save_pictures(panels: np.ndarray, titles: List[str], out_dir, name: str, fps: float = 4.0, caption: str = "") -> Tuple[Path, Path]:
    """Write `name.png` (caption, titles, then one row per frame, each labelled with its frame index) and `name.gif`
    (caption + "frame i/T", titles, that frame's row; looping).

    Sizes: width GUTTER + K*W*s + (K-1)*GAP for K columns; PNG height CAPTION + HEADER + T*H*s + (T-1)*GAP; GIF frames
    CAPTION + HEADER + H*s tall, with s = ceil(128 / W) (at least 1).
    """
    from PIL import Image

    from motionmae.files import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t, k, h, w, _ = panels.shape
    s = panel_scale(w)
    rows = [frame_row(panels[i], s, f"t={i}") for i in range(t)]
    width = rows[0].shape[1]
    top = header(titles, width, w * s)
    gap = np.full((GAP, width, 3), 255, np.uint8)
    grid = np.concatenate([_text_strip([(2, caption)], width, CAPTION), top] + [x for r in rows for x in (r, gap)][:-1], axis=0)
    png, gif = out_dir / f"{name}.png", out_dir / f"{name}.gif"
    with atomic_path(png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    line = caption + " | " if caption else ""
    frames = [Image.fromarray(np.concatenate([_text_strip([(2, f"{line}frame {i}/{t}")], width, CAPTION), top, r], axis=0))
              for i, r in enumerate(rows)]
    with atomic_path(gif) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return png, gif


# ----------------------------------------------------------------------------------------------
# entry points


def eval_clip(cfg, path: str, source: Optional[bytes] = None) -> torch.Tensor:
    """The centre clip and centre crop of one video (a file, or its bytes in `source`), uint8 (C, T, H, W), as the
    validation transform makes it."""
    from motionmae.data.datasets import VideoClipDataset, VideoEntry

    d = cfg.data
    entry = VideoEntry(str(path), where=str(path))
    ds = VideoClipDataset([entry], num_frames=d.num_frames + cfg.objective.extra_frames, sampling_rate=d.sampling_rate,
                          sampling=d.sampling, mode="val", input_size=d.input_size, short_side=d.short_side,
                          short_video=d.short_video, max_skip_fraction=1.0, max_attempts=1,
                          neighbor_gap=cfg.objective.neighbor_gap)
    return ds.clip_of(entry, source)


def render(model, cfg, video_uint8: torch.Tensor, out_dir, name: str, seed: int = 0, device="cpu",
           amp_dtype: Optional[torch.dtype] = None, step: Optional[int] = None, source: str = "") -> Tuple[Path, Path]:
    """Mask `video_uint8` (C, T, H, W) with `cfg.mask` (generator seeded by `seed`), predict, write PNG + GIF
    captioned with `step`, the clip's losses, the mask and `source`."""
    from motionmae.data.transforms import to_model_input
    from motionmae.objective.masking import make_mask

    x = to_model_input(video_uint8[None], cfg.data.mean, cfg.data.std, device)
    mask = make_mask(cfg.mask.kind, 1, cfg.model.grid(), cfg.mask.ratio, torch.Generator().manual_seed(seed),
                     clip=video_uint8[None, :, : cfg.model.num_frames]).to(device)
    panels, losses = reconstruction(model, x, mask, amp_dtype)
    text = caption(losses, cfg.mask.kind, cfg.mask.ratio, step, f"{source} (centre clip, mask seed {seed})" if source else "")
    return save_pictures(panels, panel_titles(model), out_dir, name, caption=text)


def reconstruction_pictures_from_dataset(model, cfg, dataset, out_dir, name: str, device, amp_dtype=None,
                                         step: Optional[int] = None) -> Tuple[Path, Path]:
    """Pictures of the dataset's first video (centre clip, so successive pictures of a run are comparable)."""
    entry, source = dataset.first_video()
    return render(model, cfg, eval_clip(cfg, entry.path, source), out_dir, name, seed=cfg.train.seed, device=device,
                  amp_dtype=amp_dtype, step=step, source=Path(entry.path).name)


def load_pretrained(checkpoint, device="cpu"):
    """(PretrainModel with the checkpoint's weights, its PretrainConfig) from a checkpoint file, a run directory or a
    `save_pretrained` directory."""
    from motionmae.models.pretrain import PretrainModel
    from motionmae.models.state import load_matching
    from motionmae.runtime.checkpoint import load_model_state

    sd, cfg_dict = load_model_state(checkpoint)
    if not cfg_dict or "objective" not in cfg_dict:
        raise UserError(f"{checkpoint}: not a pretraining checkpoint (its config has no objective); pictures need the decoder")
    cfg = C.saved_pretrain_config(cfg_dict)
    model = PretrainModel(cfg)
    load_matching(model, sd, str(checkpoint))
    return model.to(device).eval(), cfg


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a pretraining checkpoint (.safetensors), run directory or save_pretrained directory")
    parser.add_argument("video", help="a video file or frame folder")
    parser.add_argument("--out", default="", help="output directory (default: visualize/ in the checkpoint's run directory, "
                                                  "apart from the pictures/ that training writes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args) -> int:
    from motionmae.runtime.device import resolve_device

    if not Path(args.video).exists():
        raise UserError(f"video not found: {args.video}")
    device = resolve_device(args.device, key="--device")
    from motionmae.runtime.checkpoint import read_state

    model, cfg = load_pretrained(args.checkpoint, device)
    step = read_state(args.checkpoint).get("step")
    out = Path(args.out) if args.out else _default_out(Path(args.checkpoint))
    png, gif = render(model, cfg, eval_clip(cfg, args.video), out, Path(args.video).stem + f"_seed{args.seed}", args.seed, device,
                      step=step, source=Path(args.video).name)
    print(f"wrote {png}\nwrote {gif}")
    return 0


def _default_out(checkpoint: Path) -> Path:
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "visualize"
