"""Frozen features: `load_encoder` (Python API) and `motionmae extract` (pooled or token-grid features to a file).

    from motionmae import load_encoder
    enc = load_encoder("runs/pretrain")            # a run dir, a .safetensors checkpoint or a transformers VideoMAE dir; eval mode, on cpu
    tokens = enc.forward_features(x)               # x: (B, C, T, H, W) normalised with ImageNet mean/std
    grid = enc.forward_grid(x)                     # (B, T', H', W', D)
    pooled = pooled_features(enc, x)               # (B, D)

Pooled features are the mean of the encoder's output tokens (after its final LayerNorm), or for a fine-tuned
classifier what its head sees (mean -> fc_norm). Clips are taken deterministically: the centre crop of
`views` temporal clips spread over the video (1 = the centre clip), their features averaged per video.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from motionmae import config as C
from motionmae.config import DataConfig, ExtractConfig, model_config_from_dict
from motionmae.errors import UserError

# ----------------------------------------------------------------------------------------------
# encoders


def encoder_from_state(state_dict: dict, config_dict: Optional[dict], where: str = "checkpoint"):
    """A VisionTransformer holding the encoder of a pretraining checkpoint (`encoder.*` keys; no head), or the
    whole classifier of a fine-tuning checkpoint (`head.*` present; `forward` gives logits)."""
    from motionmae.models.classifier import build_classifier, load_pretrained_encoder
    from motionmae.models.state import strip_prefixes

    sd = strip_prefixes(state_dict)
    cfg = model_config_from_dict(config_dict, where)
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    model = build_classifier(dataclasses.replace(cfg, drop_path=0.0, grad_checkpointing=False), num_classes)
    try:
        load_pretrained_encoder(model, sd)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return model


def load_weights(path) -> Tuple[dict, dict]:
    """(state dict, config dict) of a motionmae checkpoint (file, run directory or save_pretrained directory) or of a
    transformers VideoMAE directory (config.json + weights, or a hub id in the local Hugging Face cache; converted in
    memory, checked key by key as `motionmae convert` does)."""
    from motionmae.interop.pretrained import hf_directory
    from motionmae.runtime.checkpoint import load_model_state

    hf = hf_directory(path)
    if hf is not None:
        from motionmae.config import to_dict
        from motionmae.interop.hf import load_hf

        conv = load_hf(hf, decoder="none")
        return conv.model.state_dict(), to_dict(conv.cfg)
    return load_model_state(path)


def load_encoder(path, device="cpu"):
    """Load the encoder of a motionmae pretraining or fine-tuning checkpoint (file or run directory), of weights
    converted by `motionmae convert`, or of a transformers VideoMAE directory (`VideoMAEModel`,
    `VideoMAEForVideoClassification`, `VideoMAEForPreTraining`): a `VisionTransformer` in eval mode."""
    sd, config_dict = load_weights(path)
    return encoder_from_state(sd, config_dict, str(path)).to(device).eval()


def pooled_features(model, x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, D): token mean for an encoder, the head's input (mean -> fc_norm) for a classifier."""
    return pooled_from_tokens(model, model.forward_features(x))


def pooled_from_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens -> (B, D), the pooling of `pooled_features`."""
    if getattr(model, "num_classes", 0) > 0:
        return model.forward_head(tokens, pre_logits=True)
    return tokens.mean(dim=1)


# ----------------------------------------------------------------------------------------------
# data -> features


def eval_dataset(data_cfg: DataConfig, source: str, views: int = 1, class_source: str = ""):
    """A deterministic dataset over `source`: `views` temporal clips x 1 centre crop per video (labels optional).

    `class_source`: the training folder whose class folders fix the label order when `source` is a folder.
    """
    from motionmae.data.datasets import build_dataset

    if views < 1:
        raise UserError(f"views must be >= 1, got {views}")
    dc = dataclasses.replace(data_cfg, train=class_source or source, val=source, test_clips=views, test_crops=1)
    # mode 'pretrain' on the val split is the centre clip and crop and does not require labels
    return build_dataset(dc, "val", mode="test" if views > 1 else "pretrain", require_labels=False)


@torch.no_grad()
def extract_features(model, loader, device, mean: Sequence[float], std: Sequence[float], grid: bool = False,
                     amp_dtype: Optional[torch.dtype] = None, progress=None) -> dict:
    """Features of every video of `loader`, averaged over its views: {"features": (N, D) or (N, T', H', W', D)
    float32, "labels": (N, L) int64, "index": (N,) int64}, sorted by dataset index."""
    from motionmae.data.loader import Batches
    from motionmae.data.transforms import to_model_input
    from motionmae.runtime.amp import autocast
    from motionmae.runtime.distributed import PerVideoMean

    acc = PerVideoMean()
    with Batches(loader) as batches:
        for i, batch in enumerate(batches):
            x = to_model_input(batch["video"], mean, std, device)
            with autocast(device, amp_dtype):
                f = model.forward_grid(x) if grid else pooled_features(model, x)
            acc.add(batch["index"], f.float().cpu(), batch["label"])
            if progress is not None:
                progress(i + 1, len(loader))
    feats, labels, index = acc.result()
    return {"features": feats, "labels": labels, "index": index}


def make_loader(dataset, batch_size: int, num_workers: int):
    from motionmae.data import loader
    from motionmae.data.datasets import collate

    return loader.make_loader(dataset, batch_size, num_workers, collate_fn=collate)


def save_features(path, out: dict, fmt: str = "", meta: Optional[dict] = None) -> list:
    """Write {"features", "labels", "index"} to .npy (features in `path`; labels and index beside it as
    <stem>.labels.npy / <stem>.index.npy) or .safetensors (all three; `meta` in the header). Every file is written
    atomically with the umask's mode. Returns the paths written, `path` first."""
    import json

    from motionmae.files import atomic_path, save_npy

    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "npy")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in out.items()}, str(tmp), metadata={"motionmae": json.dumps(meta or {})})
        return [path]
    if fmt == "npy":
        stem = path.with_suffix("") if path.suffix == ".npy" else path
        return [save_npy(path, out["features"].numpy()), save_npy(f"{stem}.labels.npy", out["labels"].numpy()),
                save_npy(f"{stem}.index.npy", out["index"].numpy())]
    raise UserError(f"extract.format must be npy or safetensors, got '{fmt}'")


# ----------------------------------------------------------------------------------------------
# sliding windows over long videos (temporal action detection features)


@dataclass
class VideoFeatures:
    """One video's window features. `features[layer]`: float32 (num_windows, D) for pool 'mean', (num_windows, T', D)
    for 'time', (num_windows, T', H', W', D) for 'none' (a read-only memmap of the file when written to disk); window i
    covers frames starts[i] + j * frame_step, j < window. `files[layer]`: the .npy written (with `out`)."""

    name: str
    source: str
    num_frames: int
    fps: float
    starts: np.ndarray
    features: Dict[int, np.ndarray]
    files: Dict[int, Path] = field(default_factory=dict)


def window_starts(num_frames: int, window: int, stride: int, frame_step: int = 1) -> np.ndarray:
    """First frame of every window that fits in the video (VideoMAE v2's `range(0, n - span + 1, stride)`, span =
    (window - 1) * frame_step + 1); a video shorter than one window gets one window at 0, its last frame repeated."""
    span = (window - 1) * frame_step + 1
    return np.arange(0, max(num_frames - span, 0) + 1, stride, dtype=np.int64)


def layer_folder(layer: int) -> str:
    return f"layer{layer}"


@torch.no_grad()
def featurize(model, clips_or_paths, layers: Sequence[int] = (-1,), window: int = 0, stride: int = 4, pool: str = "mean",
              frame_step: int = 1, batch_size: int = 8, crop: str = "center", out=None, names: Optional[Sequence[str]] = None,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, short_side: int = 0,
              device=None, amp_dtype: Optional[torch.dtype] = None, progress: bool = True, meta: Optional[dict] = None):
    """Sliding-window features of long videos, from chosen encoder layers.

    `model`: an encoder or classifier (`load_encoder`), a `MotionMAE` / pretraining model (its `.encoder`), or a path
    `load_encoder` takes. `clips_or_paths`: a video file or frame folder, a uint8 array (T, H, W, C) of decoded frames,
    or a list of these. Windows of `window` frames (0: the model's num_frames), `frame_step` apart, start every `stride`
    frames (`window_starts`); each is resized like an evaluation clip (`crop`: 'center' = short side + centre crop,
    'full' = the whole frame to S x S) and normalised (mean/std: the model's `config.data` where it has one, else
    ImageNet's). Per window and layer (`VisionTransformer.forward_intermediates`: layer -1 is exactly
    `forward_features`): pool 'mean' -> (D,) (for a classifier the head's input: mean -> fc_norm), 'time' -> (T', D),
    'none' -> (T', H', W', D).

    `out`: a folder; each video's features are streamed (batch by batch, a memmap) to
    `out/layer<L>/<name>.npy` (float32, windows first: what temporal action detection code bases such as ActionFormer
    read as one feature file per video; <name> = the file's stem) and `out/features.json` lists every video (frames,
    fps, windows, files) and the settings. Without `out` the arrays are in memory. Returns a `VideoFeatures` (a list for
    a list input)."""
    from motionmae.data.decode import VideoReader
    from motionmae.data.transforms import spatial_view, to_model_input
    from motionmae.files import atomic_path, write_json
    from motionmae.progress import ProgressBar
    from motionmae.runtime.amp import autocast

    single = not isinstance(clips_or_paths, (list, tuple))
    items = [clips_or_paths] if single else list(clips_or_paths)
    config = getattr(model, "config", None)
    enc = load_encoder(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "encoder", model)
    data = getattr(config, "data", None)
    mean = tuple(mean or (data.mean if data else C.IMAGENET_MEAN))
    std = tuple(std or (data.std if data else C.IMAGENET_STD))
    short_side = short_side or (data.short_side if data else 0)
    window = window or enc.cfg.num_frames
    depth, size = len(enc.blocks), enc.cfg.img_size
    if pool not in ("mean", "time", "none"):
        raise UserError(f"pool must be 'mean', 'time' or 'none', got '{pool}'")
    if window % enc.cfg.tubelet_size or stride < 1 or frame_step < 1:
        raise UserError(f"window={window} must be a multiple of the tubelet ({enc.cfg.tubelet_size}); stride and frame_step >= 1")
    layers = [int(i) for i in layers]
    for i in layers:
        if not -depth <= i < depth:
            raise UserError(f"layer {i} does not exist: the encoder has {depth} blocks (0..{depth - 1}, or -1..-{depth})")
    device = torch.device(device) if device is not None else next(enc.parameters()).device
    enc = enc.to(device).eval()

    sources = []  # (name, source label, open() -> (num_frames, fps, get(indices) -> uint8 (n, H, W, C), close))
    for k, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            p = Path(item)
            name = names[k] if names else (p.name if p.is_dir() else p.stem)
            sources.append((name, str(p), item))
        else:
            frames = np.asarray(item)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != len(mean):
                raise UserError(f"clip {k}: expected decoded uint8 frames (T, H, W, {len(mean)}), got {frames.dtype} {frames.shape}")
            sources.append((names[k] if names else f"clip{k}", f"<array {k}>", frames))
    seen = {}
    for name, src, _ in sources:
        if name in seen:
            raise UserError(f"two videos would write the same feature files '{name}.npy': {seen[name]} and {src}; pass names=")
        seen[name] = src

    def opened(obj):
        if isinstance(obj, np.ndarray):
            return obj.shape[0], 0.0, lambda idx: obj[np.minimum(idx, obj.shape[0] - 1)], lambda: None
        try:
            r = VideoReader(obj)
        except Exception as e:
            raise UserError(f"{obj}: cannot read the video ({e})") from None
        return r.num_frames, r.fps, r.get_frames, r.close

    total = 0
    for _, _, obj in sources:  # windows of every video, for the progress bar (headers only)
        n, _, _, close = opened(obj)
        close()
        total += len(window_starts(n, window, stride, frame_step))
    bar = ProgressBar(total, "featurize", enabled=progress)
    done, results = 0, []
    offsets = np.arange(window) * frame_step
    for name, src, obj in sources:
        n, fps, get, close = opened(obj)
        starts = window_starts(n, window, stride, frame_step)
        arrays: Dict[int, np.ndarray] = {}
        files: Dict[int, Path] = {}
        with contextlib.ExitStack() as stack:
            try:
                for b0 in range(0, len(starts), batch_size):
                    idx = (starts[b0 : b0 + batch_size, None] + offsets[None]).reshape(-1)
                    wanted, inverse = np.unique(idx, return_inverse=True)  # overlapping windows: each frame decoded and resized once
                    frames = torch.from_numpy(np.ascontiguousarray(get(wanted))).permute(3, 0, 1, 2)  # (C, U, H, W)
                    views = spatial_view(frames, size, short_side, crop)[:, torch.from_numpy(inverse)]
                    clips = views.reshape(views.shape[0], -1, window, size, size).transpose(0, 1)  # (B, C, window, S, S)
                    x = to_model_input(clips, mean, std, device)
                    with autocast(device, amp_dtype):
                        outs = enc.forward_intermediates(x, layers)
                    for layer, tokens in zip(layers, outs):
                        f = _pool_tokens(enc, tokens.float(), x, pool).cpu().numpy()
                        if layer not in arrays:
                            shape = (len(starts), *f.shape[1:])
                            if out is not None:
                                files[layer] = Path(out) / layer_folder(layer) / f"{name}.npy"
                                tmp = stack.enter_context(atomic_path(files[layer]))
                                arrays[layer] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                            else:
                                arrays[layer] = np.empty(shape, np.float32)
                        arrays[layer][b0 : b0 + len(f)] = f
                    done += len(clips)
                    bar.update(done, video=name)
                for a in arrays.values():
                    if isinstance(a, np.memmap):
                        a.flush()
            finally:
                close()
        if out is not None:
            arrays = {layer: np.load(path, mmap_mode="r") for layer, path in files.items()}
        results.append(VideoFeatures(name, src, int(n), float(fps), starts, arrays, files))
    bar.close()
    if out is not None:
        index = {"layers": layers, "blocks": [i % depth for i in layers], "window": window, "stride": stride,
                 "frame_step": frame_step, "pool": pool, "crop": crop, "input_size": size, "dim": enc.embed_dim,
                 "dtype": "float32", "layout": _LAYOUT[pool], **(meta or {}),
                 "videos": [{"name": r.name, "source": r.source, "num_frames": r.num_frames, "fps": r.fps,
                             "num_windows": len(r.starts), "files": {str(k): str(v.relative_to(out)) for k, v in r.files.items()}}
                            for r in results]}
        write_json(Path(out) / "features.json", index, indent=1)
    return results[0] if single else results


_LAYOUT = {"mean": "(windows, dim)", "time": "(windows, T', dim)", "none": "(windows, T', H', W', dim)"}


def _pool_tokens(enc, tokens: torch.Tensor, x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, N, D) tokens of clips `x` -> per pool: the model's pooled feature (B, D), (B, T', D) or (B, T', H', W', D)."""
    if pool == "mean":
        return pooled_from_tokens(enc, tokens)
    grid = enc.patch_embed.grid(x)
    g = tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1])
    return g.mean(dim=(2, 3)) if pool == "time" else g


# ----------------------------------------------------------------------------------------------
# CLI: motionmae extract


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a motionmae checkpoint (.safetensors) or run directory, or a "
                                                            "transformers VideoMAE directory")
    parser.add_argument("--data", required=True, metavar="LIST_OR_DIR", help="annotation list, folder of videos / class folders, or glob")
    parser.add_argument("--out", required=True, help="output file (.npy or .safetensors); with extract.window: a folder")
    C.add_config_arguments(parser, "data settings (the clip format comes from the checkpoint)",
                           "e.g. extract.kind=grid extract.views=2 extract.batch_size=16 extract.device=cpu extract.amp=none "
                           "data.root=... data.num_workers=4; sliding windows: extract.window=16 extract.stride=4 "
                           "extract.layers=[-1,-4] extract.pool=mean|time|none")


def run(args) -> int:
    from motionmae.runtime.amp import resolve_amp
    from motionmae.progress import ProgressBar
    from motionmae.runtime.device import resolve_device
    from motionmae.runtime.rundir import check_output_file

    sd, config_dict = load_weights(args.checkpoint)
    cfg = C.load_config(args.config, args.overrides, ExtractConfig, checkpoint=config_dict)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    ex, data_cfg = cfg.extract, cfg.data
    check_output_file(args.out, "--out")  # before any video is decoded
    device = resolve_device(ex.device, key="extract.device")
    model = encoder_from_state(sd, config_dict, args.checkpoint).to(device).eval()
    if ex.window > 0:
        return _run_windows(args, cfg, model, device)
    dataset = eval_dataset(data_cfg, args.data, ex.views)
    loader = make_loader(dataset, ex.batch_size, data_cfg.num_workers)
    bar = ProgressBar(len(loader), "extract")
    grid = ex.kind == "grid"
    out = extract_features(model, loader, device, data_cfg.mean, data_cfg.std, grid=grid,
                           amp_dtype=resolve_amp(ex.amp, device, key="extract.amp"), progress=lambda i, n: bar.update(i))
    bar.close()
    meta = {"checkpoint": str(args.checkpoint), "data": args.data, "kind": ex.kind, "views": ex.views,
            "num_frames": data_cfg.num_frames, "input_size": data_cfg.input_size}
    paths = save_features(args.out, out, ex.format, meta)
    print(f"wrote {tuple(out['features'].shape)} {ex.kind} features of {out['features'].shape[0]} videos to {paths[0]}")
    for p, what in zip(paths[1:], ("labels (N, label columns; -1: none)", "dataset index of each row")):
        print(f"wrote {p}: {what}")
    return 0


def _run_windows(args, cfg, model, device) -> int:
    """`motionmae extract ... extract.window=W`: `featurize` over every video of --data into the folder --out."""
    from motionmae.data.datasets import resolve_source
    from motionmae.runtime.amp import resolve_amp
    from motionmae.runtime.rundir import check_output_dir

    ex, d = cfg.extract, cfg.data
    entries, _ = resolve_source(args.data, d.root, list_format=d.list_format)
    out = check_output_dir(args.out, "--out")
    if ex.window != cfg.model.num_frames:
        print(f"note: extract.window={ex.window} frames, the encoder was trained on {cfg.model.num_frames}: its positional "
              "table is interpolated")
    res = featurize(model, [e.path for e in entries], layers=ex.layers, window=ex.window, stride=ex.stride, pool=ex.pool,
                    frame_step=ex.frame_step, batch_size=ex.batch_size, crop=ex.crop, out=out, mean=d.mean, std=d.std,
                    short_side=d.short_side, device=device, amp_dtype=resolve_amp(ex.amp, device, key="extract.amp"),
                    meta={"checkpoint": str(args.checkpoint), "data": args.data})
    windows = sum(len(r.starts) for r in res)
    for layer in ex.layers:
        print(f"wrote {len(res)} file{'s' if len(res) != 1 else ''} {out / layer_folder(layer)}/<video>.npy: layer {layer}, "
              f"float32 {_LAYOUT[ex.pool]}"
              f" ({windows} windows of {ex.window} frames every {ex.stride})")
    print(f"wrote {out / 'features.json'}: settings, and per video its frames, fps, windows and files")
    return 0
