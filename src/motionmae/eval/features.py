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

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Tuple

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
    """(state dict, config dict) of a motionmae checkpoint (file or run directory) or of a transformers VideoMAE
    directory (config.json + weights; converted in memory, checked key by key as `motionmae convert` does)."""
    from motionmae.runtime.checkpoint import load_model_state

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir():
        from motionmae.config import to_dict
        from motionmae.interop.hf import load_hf

        conv = load_hf(p, decoder="none")
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
    tokens = model.forward_features(x)
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
# CLI: motionmae extract


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a motionmae checkpoint (.safetensors) or run directory, or a "
                                                            "transformers VideoMAE directory")
    parser.add_argument("--data", required=True, metavar="LIST_OR_DIR", help="annotation list, folder of videos / class folders, or glob")
    parser.add_argument("--out", required=True, help="output file (.npy or .safetensors)")
    C.add_config_arguments(parser, "data settings (the clip format comes from the checkpoint)",
                           "e.g. extract.kind=grid extract.views=2 extract.batch_size=16 extract.device=cpu extract.amp=none "
                           "data.root=... data.num_workers=4")


def run(args) -> int:
    from motionmae.runtime.amp import resolve_amp
    from motionmae.runtime.device import resolve_device
    from motionmae.progress import ProgressBar

    sd, config_dict = load_weights(args.checkpoint)
    cfg = C.load_config(args.config, args.overrides, ExtractConfig, checkpoint=config_dict)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    ex, data_cfg = cfg.extract, cfg.data
    device = resolve_device(ex.device, key="extract.device")
    model = encoder_from_state(sd, config_dict, args.checkpoint).to(device).eval()
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
