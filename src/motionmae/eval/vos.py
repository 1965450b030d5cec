"""Video object segmentation by label propagation with frozen features (DAVIS-2017 J&F).

The protocol of DINO / CRW / VideoMAE: every frame becomes a grid of L2-normalised patch features;
the first frame's ground-truth mask is propagated frame by frame. Each query patch of frame t looks at
the patches of the first frame (ground truth) and of the last `context` predicted frames (their soft
labels), restricted for the predicted frames to a (2r+1)^2 neighbourhood around its own position; it
keeps the top-k most similar patches over all of them, weights them by softmax(cos / temperature) and
averages their soft labels. Soft labels are upsampled bilinearly to the frame, argmax gives the mask.

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

from motionmae import config as C
from motionmae.config import IMAGENET_MEAN, IMAGENET_STD, VOSOptions
from motionmae.errors import UserError
from motionmae.eval import davis

Features = Callable[[np.ndarray], torch.Tensor]  # uint8 (T, H, W, 3) -> float (T, h, w, D)


# ----------------------------------------------------------------------------------------------
# propagation


def soft_labels(mask: np.ndarray, n_objects: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Object indices (H, W) -> per-patch label fractions (h*w, n_objects + 1) by area averaging.

    Void (255) pixels belong to no class, so a patch's fractions sum to its non-void share.
    """
    m = torch.from_numpy(np.asarray(mask, dtype=np.int64))
    onehot = torch.stack([m == k for k in range(n_objects + 1)]).float()  # (C, H, W)
    small = F.interpolate(onehot[None], size=grid, mode="area")[0]
    return small.flatten(1).T.contiguous()


def neighbourhood(h: int, w: int, radius: int) -> torch.Tensor:
    """bool (h*w, h*w): query patch i may attend key patch j (same grid) when both offsets are <= radius."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)


def propagate(feats: torch.Tensor, first_mask: np.ndarray, n_objects: int, cfg: VOSOptions = VOSOptions(),
              chunk: int = 1024) -> np.ndarray:
    """Propagate the first frame's mask through a sequence.

    feats: float (T, h, w, D) patch features; first_mask: uint8 (H, W) object indices (255 = void).
    Returns uint8 (T, H, W) predicted indices; frame 0 is the given mask with void set to background.
    Queries are processed `chunk` rows at a time to bound the (queries x keys) affinity's memory.
    """
    T, h, w, _ = feats.shape
    H, W = first_mask.shape
    n = h * w
    feats = F.normalize(feats.reshape(T, n, -1).float(), dim=-1)
    labels0 = soft_labels(first_mask, n_objects, (h, w)).to(feats.device)  # (n, C)
    near = neighbourhood(h, w, cfg.radius).to(feats.device) if cfg.radius > 0 else None
    first = np.where(first_mask == davis.VOID, 0, first_mask).astype(np.uint8)
    out = [first]
    memory: deque = deque(maxlen=cfg.context)  # (features (n, D), soft labels (n, C)) of predicted frames
    for t in range(1, T):
        keys = torch.cat([feats[0]] + [f for f, _ in memory])  # (K, D), K = n * (1 + len(memory))
        values = torch.cat([labels0] + [l for _, l in memory])  # (K, C)
        k = min(cfg.topk, n)  # the first frame alone always has n unrestricted keys
        pred = torch.empty(n, values.shape[1], device=feats.device)
        for s in range(0, n, chunk):
            sim = feats[t, s : s + chunk] @ keys.T  # (q, K) cosine similarities
            if near is not None and memory:
                far = ~near[s : s + chunk].repeat(1, len(memory))
                sim[:, n:].masked_fill_(far, float("-inf"))
            top, idx = sim.topk(k, dim=1)
            weight = torch.softmax(top / cfg.temperature, dim=1)  # -inf (out of reach) -> weight 0
            pred[s : s + chunk] = torch.einsum("qk,qkc->qc", weight, values[idx])
        memory.append((feats[t], pred))
        up = F.interpolate(pred.T.reshape(1, -1, h, w), size=(H, W), mode="bilinear", align_corners=False)
        out.append(up[0].argmax(0).to(torch.uint8).cpu().numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# features from a video ViT


def frame_grid(height: int, width: int, size: int, patch: int) -> Tuple[int, int]:
    """Patch grid (h, w) for a frame resized to short side `size` (0: its own), both sides multiples of `patch`."""
    short = min(height, width)
    size = size or short
    scale = size / short
    h = max(1, round(height * scale / patch))
    w = max(1, round(width * scale / patch))
    return h, w


class EncoderFeatures:
    """`features(frames)` from a frozen `VisionTransformer`: each frame alone, as a clip of `tubelet` copies.

    The frame is resized so both sides are multiples of the patch size (short side `size`), normalised
    with ImageNet mean/std; the encoder adapts its positional embedding to the frame's (1, h, w) grid.
    """

    def __init__(self, encoder: torch.nn.Module, size: int = 0, device="cpu", batch_size: int = 8,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 amp_dtype: Optional[torch.dtype] = None):
        self.encoder = encoder.eval()
        self.tubelet, self.patch = encoder.patch_embed.tubelet, encoder.patch_embed.patch
        self.size, self.device, self.batch_size = size, torch.device(device), batch_size
        self.mean, self.std, self.amp_dtype = mean, std, amp_dtype

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        from motionmae.data.transforms import resize, to_model_input
        from motionmae.runtime.amp import autocast

        T, H, W, _ = frames.shape
        h, w = frame_grid(H, W, self.size, self.patch)
        out = []
        for s in range(0, T, self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s : s + self.batch_size])).permute(3, 0, 1, 2)  # (C, B, H, W)
            x = resize(x, (h * self.patch, w * self.patch)).permute(1, 0, 2, 3)  # (B, C, H', W') uint8
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


def segment_davis(features: Features, davis_root, out_dir, split: str = "val", cfg: VOSOptions = VOSOptions(),
                  sequences: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> dict:
    """Propagate the first-frame masks of every sequence of `split`, write palette PNGs in DAVIS layout
    (`out_dir/<seq>/<frame>.png`), then `evaluate_davis` them.

    Returns `evaluate_davis`'s dict plus "config", "seconds_per_frame" (features + propagation) and "frames".
    """
    from motionmae.runtime.progress import ProgressBar

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
        pred = propagate(features(frames), first, davis.num_objects(first), cfg)
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
    parser.add_argument("--checkpoint", help="pretrained or fine-tuned checkpoint (file or run directory)")
    parser.add_argument("--davis-root", required=True, help="DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the masks already in --out (any method's)")
    parser.add_argument("--out", default="runs/vos", help="predicted masks (<seq>/<frame>.png) and result tables")
    C.add_config_arguments(parser, "vos settings (the encoder and its clip format come from --checkpoint)",
                           "e.g. vos.size=480 vos.topk=5 vos.context=7 vos.radius=12 vos.temperature=0.07 vos.split=val "
                           "vos.sequences=[bike-packing] vos.device=cpu vos.amp=none")


def run(args) -> int:
    from motionmae.eval.features import encoder_from_state
    from motionmae.runtime.amp import resolve_amp
    from motionmae.runtime.checkpoint import load_model_state
    from motionmae.runtime.device import resolve_device

    if args.eval_only:
        cfg = C.load_config(args.config, args.overrides, C.VOSConfig)
        if args.print_config:
            print(C.config_text(cfg), end="")
            return 0
        evaluate_davis(args.davis_root, args.out, cfg.vos.split, cfg.vos.sequences or None)
        return 0
    if not args.checkpoint:
        raise UserError("--checkpoint is required (or --eval-only to evaluate masks already in --out)")
    sd, config_dict = load_model_state(args.checkpoint)  # = load_encoder, keeping the config for mean/std
    cfg = C.load_config(args.config, args.overrides, C.VOSConfig, checkpoint=config_dict)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    v = cfg.vos
    device = resolve_device(v.device, key="vos.device")
    encoder = encoder_from_state(sd, config_dict, str(args.checkpoint)).to(device).eval()
    features = EncoderFeatures(encoder, size=v.size, device=device, batch_size=v.batch_size, mean=cfg.data.mean,
                               std=cfg.data.std, amp_dtype=resolve_amp(v.amp, device, key="vos.amp"))
    segment_davis(features, args.davis_root, args.out, v.split, v, v.sequences or None)
    print(f"masks and tables written to {args.out}")
    return 0
