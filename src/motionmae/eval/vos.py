"""Video object segmentation by label propagation with frozen features (DAVIS-2017 J&F).

The protocol of DINO's `eval_video_segmentation.py` (facebookresearch/dino), which VideoMAE-era papers report;
every default below is that script's (see docs/BENCHMARKS.md, "Video object segmentation", for the table):
- frames are resized to a short side of 480 px, the long side to the same aspect floored to a multiple of 64
  (854 -> 832 on DAVIS 480p), bilinearly; each frame is a grid of L2-normalised patch features;
- the first frame's annotation is resized to the patch grid (nearest) and one-hot encoded;
- frame t is predicted from the first frame and the 7 previous predicted frames: each query patch compares
  itself with the keys of those frames that lie within a (2*12+1)^2 patch window around it (the first frame
  included), keeps the 5 most similar over all frames together, weights them by softmax(cos / 0.1) and
  averages their labels (soft: a predicted frame keeps its averaged labels, not its argmax);
- the labels are upsampled bilinearly by the patch size, each object's map is min-max normalised over the
  frame, argmax gives the mask, and that is resized (nearest) to the original frame size.
Void (255) in the first annotation is background, as the DAVIS evaluation treats it.

The algorithm only needs `features(frames uint8 (T, H, W, 3)) -> float (T, h, w, D)`; `EncoderFeatures`
provides one from a video ViT (a tubelet-2 model sees each frame as a 2-frame clip of that frame).

    motionmae vos --checkpoint runs/pretrain --davis-root DAVIS --out runs/vos
    motionmae vos --eval-only --davis-root DAVIS --out my_method_masks   # any method's PNGs
"""

from __future__ import annotations

import csv
import json
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from motionmae import config as C
from motionmae.config import IMAGENET_MEAN, IMAGENET_STD, VOSOptions
from motionmae.errors import UserError
from motionmae.eval import davis


# ----------------------------------------------------------------------------------------------
# propagation


def first_frame_labels(mask: np.ndarray, n_objects: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Object indices (H, W) -> one-hot labels (h*w, n_objects + 1) of the patch grid, resized nearest (DINO's
    `read_seg`: PIL nearest to the grid size); void (255) is background."""
    m = np.where(mask == davis.VOID, 0, mask).astype(np.uint8)
    small = np.asarray(Image.fromarray(m).resize((grid[1], grid[0]), Image.NEAREST))
    return F.one_hot(torch.from_numpy(small.astype(np.int64)).flatten(), n_objects + 1).float()


def neighbourhood(h: int, w: int, radius: int) -> torch.Tensor:
    """bool (h*w, h*w): query patch i may attend key patch j (same grid) when both offsets are <= radius."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def labels_to_mask(labels: torch.Tensor, grid: Tuple[int, int], input_size: Tuple[int, int], out_size: Tuple[int, int]) -> np.ndarray:
    """Soft labels (h*w, C) -> uint8 object indices (H, W), as DINO: bilinear to `input_size` (the frame the features
    came from), per-object min-max normalisation over the frame, argmax, then nearest to `out_size`."""
    up = F.interpolate(labels.T.reshape(1, -1, *grid), size=input_size, mode="bilinear", align_corners=False)[0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    up = torch.where(hi > 0, (up - lo) / (hi - lo).clamp_min(1e-12), up)  # DINO's norm_mask: objects with any mass
    mask = up.argmax(0).to(torch.uint8).cpu().numpy()
    if tuple(input_size) != tuple(out_size):
        mask = np.asarray(Image.fromarray(mask).resize((out_size[1], out_size[0]), Image.NEAREST))
    return mask


def propagate_frame(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, near: Optional[torch.Tensor],
                    cfg: VOSOptions, chunk: int = 1024) -> torch.Tensor:
    """Soft labels (n, C) of one frame: query (n, D) and keys (frames * n, D) L2-normalised, values (frames * n, C)
    the keys' labels, `near` the (n, positions per frame) window or None. Each query averages the labels of its top-k
    keys within the window, weighted by softmax(cos / temperature). Queries go `chunk` rows at a time (bounded memory)."""
    n = query.shape[0]
    k = min(cfg.topk, keys.shape[0])
    out = torch.empty(n, values.shape[1], device=query.device)
    for s in range(0, n, chunk):
        sim = query[s : s + chunk] @ keys.T  # (q, K) cosine similarities
        if near is not None:  # DINO multiplies exp(sim / T) by the window: outside it a key weighs nothing
            sim.masked_fill_(~near[s : s + chunk].repeat(1, keys.shape[0] // near.shape[1]), float("-inf"))
        top, idx = sim.topk(k, dim=1)
        weight = torch.softmax(top / cfg.temperature, dim=1)  # -inf (outside the window) -> weight 0
        out[s : s + chunk] = torch.einsum("qk,qkc->qc", weight, values[idx])
    return out


def propagate(feats: torch.Tensor, first_mask: np.ndarray, n_objects: int, cfg: VOSOptions = VOSOptions(),
              input_size: Optional[Tuple[int, int]] = None, chunk: int = 1024) -> np.ndarray:
    """Propagate the first frame's mask through a sequence.

    feats: float (T, h, w, D) patch features; first_mask: uint8 (H, W) object indices (255 = void);
    input_size: (H', W') of the frames the features were computed from (default: (H, W)).
    Returns uint8 (T, H, W) predicted indices; frame 0 is the given mask with void set to background.
    """
    T, h, w, _ = feats.shape
    H, W = first_mask.shape
    feats = F.normalize(feats.reshape(T, h * w, -1).float(), dim=-1)
    labels0 = first_frame_labels(first_mask, n_objects, (h, w)).to(feats.device)  # (n, C)
    near = neighbourhood(h, w, cfg.radius).to(feats.device) if cfg.radius > 0 else None
    out = [np.where(first_mask == davis.VOID, 0, first_mask).astype(np.uint8)]
    memory: deque = deque(maxlen=cfg.context)  # (features (n, D), soft labels (n, C)) of predicted frames
    for t in range(1, T):
        keys = torch.cat([feats[0]] + [f for f, _ in memory])
        values = torch.cat([labels0] + [lab for _, lab in memory])
        pred = propagate_frame(feats[t], keys, values, near, cfg, chunk)
        memory.append((feats[t], pred))  # soft labels, not the argmax, are what later frames read
        out.append(labels_to_mask(pred, (h, w), input_size or (H, W), (H, W)))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# features from a video ViT


def _floor(x: float, multiple: int) -> int:
    return int(x // multiple) * multiple


def frame_grid(height: int, width: int, size: int, patch: int) -> Tuple[int, int]:
    """Patch grid (h, w) of a frame as DINO's `read_frame` resizes it: the short side to `size` (0: its own), the other
    side (the width when height <= width) to the same aspect floored to a multiple of 64 (of the patch below 64 px);
    both then floored to multiples of the patch (a no-op for 480 px and patches 8 or 16)."""
    size = size or min(height, width)
    if height > width:
        h_px, w_px = size * height / width, size
        h_px = _floor(h_px, 64) or _floor(h_px, patch)
    else:
        h_px, w_px = size, size * width / height
        w_px = _floor(w_px, 64) or _floor(w_px, patch)
    return max(int(h_px) // patch, 1), max(int(w_px) // patch, 1)


class EncoderFeatures:
    """`features(frames)` from a frozen `VisionTransformer`: each frame alone, as a clip of `tubelet` copies.

    The frame is resized bilinearly (no antialiasing, rounded to uint8: OpenCV's INTER_LINEAR, which DINO uses) to
    `input_size`, normalised with the encoder's mean/std; the encoder adapts its positional embedding to the
    frame's (1, h, w) grid. Features are the encoder's output tokens (after its final norm, if it has one).
    """

    def __init__(self, encoder: torch.nn.Module, size: int = VOSOptions.size, device="cpu", batch_size: int = 8,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 amp_dtype: Optional[torch.dtype] = None):
        self.encoder = encoder.eval()
        self.tubelet, self.patch = encoder.patch_embed.tubelet, encoder.patch_embed.patch
        self.size, self.device, self.batch_size = size, torch.device(device), batch_size
        self.mean, self.std, self.amp_dtype = mean, std, amp_dtype

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H', W') a height x width frame is resized to."""
        h, w = frame_grid(height, width, self.size, self.patch)
        return h * self.patch, w * self.patch

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        from motionmae.data.transforms import to_model_input
        from motionmae.runtime.amp import autocast

        T, H, W, _ = frames.shape
        size = self.input_size(H, W)
        out = []
        for s in range(0, T, self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s : s + self.batch_size])).permute(0, 3, 1, 2)  # (B, C, H, W)
            if size != (H, W):
                x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            clip = x.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1)  # (B, C, tubelet, H', W')
            x = to_model_input(clip, self.mean, self.std, device=self.device)
            with autocast(self.device, self.amp_dtype):
                out.append(self.encoder.forward_grid(x)[:, 0].float())  # (B, 1, h, w, D): one temporal slice
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# a DAVIS split, end to end


def _select(davis_root, split: str, sequences: Optional[Sequence[str]]) -> List[davis.DavisSequence]:
    seqs = davis.list_sequences(davis_root, split)
    if sequences:
        missing = sorted(set(sequences) - {s.name for s in seqs})
        if missing:
            raise UserError(f"sequences not in split '{split}': {', '.join(missing)}")
        seqs = [s for s in seqs if s.name in set(sequences)]
    return seqs


def segment_davis(features: EncoderFeatures, davis_root, out_dir, split: str = "val", cfg: VOSOptions = VOSOptions(),
                  sequences: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> dict:
    """Propagate the first-frame masks of every sequence of `split`, write palette PNGs in DAVIS layout
    (`out_dir/<seq>/<frame>.png`), then `evaluate_davis` them. `features`: an `EncoderFeatures`, or anything with
    its `__call__(frames)` and `input_size(height, width)`.

    Returns `evaluate_davis`'s dict plus "config", "seconds_per_frame" (features + propagation) and "frames".
    """
    from motionmae.progress import ProgressBar

    out_dir = Path(out_dir)
    seqs = _select(davis_root, split, sequences)
    seconds, n_frames = 0.0, 0
    bar = ProgressBar(len(seqs), desc="vos")
    for i, seq in enumerate(seqs):
        frames = davis.read_frames(seq.frames)
        first, palette = davis.read_mask(seq.annotations[0])
        if first.shape != frames.shape[1:3]:
            raise UserError(f"{seq.annotations[0]}: mask size {first.shape} differs from the frames' {frames.shape[1:3]}")
        t0 = time.perf_counter()
        pred = propagate(features(frames), first, davis.num_objects(first), cfg, features.input_size(*frames.shape[1:3]))
        seconds += time.perf_counter() - t0
        n_frames += len(frames)
        for path, mask in zip(seq.frames, pred):
            davis.write_mask(out_dir / seq.name / f"{path.stem}.png", mask, palette)
        bar.update(i + 1, seq=seq.name, s_per_frame=seconds / n_frames)
    bar.close()
    settings = {k: v for k, v in asdict(cfg).items() if k in ("topk", "context", "radius", "temperature", "size")}
    extra = {"config": settings, "seconds_per_frame": seconds / max(n_frames, 1), "frames": n_frames}
    log(f"{n_frames} frames, {extra['seconds_per_frame']:.3f} s/frame (features + propagation)")
    return evaluate_davis(davis_root, out_dir, split, sequences, log=log, extra=extra)


def evaluate_davis(davis_root, results_dir, split: str = "val", sequences: Optional[Sequence[str]] = None,
                   log: Callable[[str], None] = print, extra: Optional[dict] = None) -> dict:
    """Evaluate predicted masks `results_dir/<seq>/<frame>.png` against a DAVIS split (semi-supervised J&F),
    write `per-sequence-results-<split>.csv`, `global_results-<split>.csv` and `results-<split>.json` there.

    Sequences with unannotated frames (e.g. test-dev) are listed as "unevaluated". Returns the json dict:
    {"split", "sequences", "unevaluated", "global": {"J&F-Mean", ...}, "per_object": [{"Sequence", "J-Mean",
    "F-Mean"}, ...]} (+ `extra`).
    """
    results_dir = Path(results_dir)
    seqs = _select(davis_root, split, sequences)
    per_object: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    unevaluated: List[str] = []
    for seq in seqs:
        if not seq.fully_annotated:
            unevaluated.append(seq.name)
            continue
        gt = np.stack([davis.read_mask(a)[0] for a in seq.annotations])
        n_obj = davis.num_objects(gt[0])
        pred = np.zeros_like(gt)
        for t, frame in enumerate(seq.frames[1:-1], 1):  # the only frames DAVIS evaluates
            path = results_dir / seq.name / f"{frame.stem}.png"
            if not path.is_file():
                raise UserError(f"{path}: predicted mask missing")
            pred[t] = davis.read_mask(path)[0]
            if pred[t].shape != gt[t].shape:
                raise UserError(f"{path}: size {pred[t].shape} differs from the annotation's {gt[t].shape}")
            if pred[t].max() > n_obj:
                raise UserError(f"{path}: index {pred[t].max()} but sequence '{seq.name}' has {n_obj} objects")
        j, f = davis.evaluate_sequence(gt, pred, n_obj)
        per_object.update({f"{seq.name}_{k + 1}": (j[k], f[k]) for k in range(n_obj)})
    result = {"split": split, "sequences": len(seqs), "unevaluated": unevaluated, **(extra or {})}
    if unevaluated:
        log(f"not evaluated (some frames have no annotation): {', '.join(unevaluated)}")
    if per_object:
        glob, rows = davis.summarize(per_object)
        result.update({"global": glob, "per_object": rows})
        _write_csv(results_dir / f"global_results-{split}.csv", [{k: f"{v:.6f}" for k, v in glob.items()}])
        _write_csv(results_dir / f"per-sequence-results-{split}.csv",
                   [{"Sequence": r["Sequence"], "J-Mean": f"{r['J-Mean']:.6f}", "F-Mean": f"{r['F-Mean']:.6f}"} for r in rows])
        log(format_table(glob, rows))
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"results-{split}.json").write_text(json.dumps(result, indent=2))
    return result


def _write_csv(path: Path, rows: List[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_table(glob: dict, rows: List[dict]) -> str:
    keys = list(glob)
    lines = ["  ".join(f"{k:>10}" for k in keys), "  ".join(f"{glob[k]:>10.3f}" for k in keys), ""]
    width = max([len("Sequence")] + [len(r["Sequence"]) for r in rows])
    lines.append(f"{'Sequence':<{width}}  {'J-Mean':>7}  {'F-Mean':>7}")
    lines += [f"{r['Sequence']:<{width}}  {r['J-Mean']:>7.3f}  {r['F-Mean']:>7.3f}" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", help="pretrained or fine-tuned checkpoint (file or run directory), or a transformers VideoMAE directory")
    parser.add_argument("--davis-root", required=True, help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the masks already in --out (any method's)")
    parser.add_argument("--out", default="runs/vos", help="predicted masks (<seq>/<frame>.png) and result tables")
    C.add_config_arguments(parser, "vos settings (the encoder and its clip format come from --checkpoint)",
                           "e.g. vos.size=480 vos.topk=5 vos.context=7 vos.radius=12 vos.temperature=0.1 vos.split=val "
                           "vos.sequences=[bike-packing] vos.device=cpu vos.amp=none")


def run(args) -> int:
    from motionmae.eval.features import load_weights

    if args.eval_only:
        cfg = C.load_config(args.config, args.overrides, C.VOSConfig)
        if args.print_config:
            print(C.config_text(cfg), end="")
            return 0
        evaluate_davis(args.davis_root, args.out, cfg.vos.split, cfg.vos.sequences or None)
        return 0
    if not args.checkpoint:
        raise UserError("--checkpoint is required (or --eval-only to evaluate masks already in --out)")
    sd, config_dict = load_weights(args.checkpoint)  # = load_encoder, keeping the config for mean/std
    cfg = C.load_config(args.config, args.overrides, C.VOSConfig, checkpoint=config_dict)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    segment_with_weights(sd, config_dict, cfg, args.davis_root, args.out, where=str(args.checkpoint))
    print(f"masks and tables written to {args.out}")
    return 0


def segment_with_weights(state_dict: dict, config_dict: dict, cfg: C.VOSConfig, davis_root, out_dir,
                         where: str = "checkpoint") -> dict:
    """`segment_davis` with the encoder of a checkpoint's weights (`eval.features.load_weights`), per `cfg`
    (built with the checkpoint's config); returns its results dict."""
    from motionmae.eval.features import encoder_from_state
    from motionmae.runtime.amp import resolve_amp
    from motionmae.runtime.device import resolve_device

    v = cfg.vos
    device = resolve_device(v.device, key="vos.device")
    encoder = encoder_from_state(state_dict, config_dict, where).to(device).eval()
    features = EncoderFeatures(encoder, size=v.size, device=device, batch_size=v.batch_size, mean=cfg.data.mean,
                               std=cfg.data.std, amp_dtype=resolve_amp(v.amp, device, key="vos.amp"))
    return segment_davis(features, davis_root, out_dir, v.split, v, v.sequences or None)
