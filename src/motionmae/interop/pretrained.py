"""`MotionMAE`: the pretraining model as a Python object in the transformers / timm manner.

    import motionmae
    model = motionmae.MotionMAE.from_pretrained("runs/small")   # a run dir, a checkpoint file, a save_pretrained dir,
                                                                  # a transformers VideoMAE dir or hub id in the local cache
    model.config                                                  # its PretrainConfig (model, mask, objective, data, train)
    x = model.preprocess(frames)                                  # uint8 (T, H, W, 3) -> float (1, 3, T, H, W), normalised
    tokens = model.forward_features(x)                            # encoder tokens (B, N, D); model.encoder: the ViT
    out = model(x, model.make_mask(x))                            # losses, predictions and targets on masked tokens
    model.save_pretrained("my-motionmae")                         # config.json + model.safetensors

`save_pretrained` writes a directory of two files: `config.json` (model_type "motionmae", the package version, every
config section) and `model.safetensors`, which is a checkpoint file of `runtime/checkpoint.py`'s format: tensors
named `model.<key>` and, in its header, the same config and a CRC-32 of every tensor, checked on every load. So the
directory (or the file alone) is also what every command takes (`--checkpoint`, `--pretrained`, `train.init`,
`visualize`). Nothing is downloaded: a hub id is looked up in the local Hugging Face cache only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from motionmae import config as C
from motionmae.errors import UserError
from motionmae.models.pretrain import PretrainModel
from motionmae.models.state import load_matching
from motionmae.version import __version__

CONFIG_NAME = "config.json"


class MotionMAE(PretrainModel):
    """A `PretrainModel` that knows its config (`.config`, a `PretrainConfig`) and how to load and save itself."""

    def __init__(self, config: C.PretrainConfig):
        super().__init__(config)
        self.config = config

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], decoder: Optional[str] = None, device="cpu") -> "MotionMAE":
        """The pretraining model stored at `path`, in eval mode on `device`:
        - a run directory (its `checkpoints/last.safetensors`) or a checkpoint file of a pretraining run;
        - a directory written by `save_pretrained`;
        - a transformers `VideoMAEForPreTraining` directory (config.json + weights), or a hub id / cache folder
          (`MCG-NJU/videomae-base`, `.../models--MCG-NJU--videomae-base`) already in the local Hugging Face cache.

        transformers weights are VideoMAE: by default they load as exactly that (`decoder="none"`, appearance target,
        tube masking); `decoder="sha"` or `"ind"` adds MotionMAE's motion branch, initialised fresh (listed in
        `.fresh`). Encoder-only or fine-tuned weights have no decoder to load: use `motionmae.load_encoder`.
        """
        where = str(path)
        hf_dir = hf_directory(path)
        if hf_dir is not None:
            from motionmae.interop.hf import load_hf

            conv = load_hf(hf_dir, decoder=decoder or "none")
            if conv.kind != "pretrain":
                raise UserError(f"{where}: holds a transformers {'VideoMAEModel' if conv.kind == 'encoder' else 'VideoMAEForVideoClassification'} "
                                "(no decoder), not VideoMAEForPreTraining; for its encoder use motionmae.load_encoder(path)")
            model = cls(conv.cfg)
            model.load_state_dict(conv.model.state_dict())
            model.fresh, model.notes = list(conv.fresh), list(conv.notes)
            return model.to(device).eval()

        from motionmae.runtime.checkpoint import load_model_state, resolve_checkpoint

        file = resolve_checkpoint(path)
        sd, cfg_dict = load_model_state(file)
        if not cfg_dict or "objective" not in cfg_dict or "encoder_to_decoder.weight" not in sd:
            raise UserError(f"{where}: not a pretraining checkpoint (no decoder: a fine-tuned or encoder-only model); "
                            "for its encoder use motionmae.load_encoder(path)")
        _check_config_json(file, cfg_dict)
        cfg = C.saved_pretrain_config(cfg_dict)
        if decoder and decoder != cfg.model.decoder:
            raise UserError(f"{where}: was trained with model.decoder={cfg.model.decoder}; decoder='{decoder}' applies to "
                            "transformers weights only (convert with `motionmae convert --decoder` to change it)")
        model = cls(cfg)
        load_matching(model, sd, where)
        model.fresh, model.notes = [], []
        return model.to(device).eval()

    def save_pretrained(self, directory: Union[str, os.PathLike], overwrite: bool = False) -> Path:
        """Write `directory/config.json` and `directory/model.safetensors` (see the module docstring), each atomically
        with the umask's mode. An existing non-empty directory is refused unless `overwrite`. Returns the directory."""
        from motionmae.files import write_json
        from motionmae.interop.common import check_destination
        from motionmae.runtime.checkpoint import PRETRAINED_WEIGHTS, save_checkpoint

        d = Path(directory)
        check_destination(d, overwrite)
        cfg = C.to_dict(self.config)
        save_checkpoint(d / PRETRAINED_WEIGHTS, self, state={"config": cfg, "kind": "pretrain", "model_kind": "pretrain",
                                                             "saved_by": "save_pretrained"}, rng=False)
        write_json(d / CONFIG_NAME, {"model_type": "motionmae", "architectures": ["MotionMAE"], "motionmae_version": __version__,
                                     **cfg}, indent=2)
        return d

    # ------------------------------------------------------------------ using it
    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The encoder's tokens (B, N, D) of a normalised float clip (B, C, T, H, W) (visible tokens only with `mask`)."""
        return self.encoder.forward_features(x, mask)

    def preprocess(self, frames, device=None) -> torch.Tensor:
        """Decoded uint8 frames (T, H, W, C) or (B, T, H, W, C) -> this model's input (B, C, T, S, S): short side
        resized (data.short_side, default S * 256 / 224), centre crop S = model.img_size, normalised with data.mean /
        data.std (`data.transforms.preprocess`). Pass the frames the model should see: model.num_frames of them,
        data.sampling_rate apart (plus objective.extra_frames for `forward`)."""
        from motionmae.data.transforms import preprocess

        d = self.config.data
        return preprocess(frames, self.config.model.img_size, d.mean, d.std, d.short_side,
                          device=device if device is not None else self.encoder.patch_embed.proj.weight.device)

    def make_mask(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """bool (B, N) masks of the model's `mask` config (kind, ratio) for clips `x`, True = masked; seeded."""
        from motionmae.objective.masking import make_mask

        m = self.config
        frames = x[:, :, : m.model.num_frames]
        grid = self.encoder.patch_embed.grid(frames)
        g = torch.Generator().manual_seed(seed)
        return make_mask(m.mask.kind, x.shape[0], grid, m.mask.ratio, g, clip=frames.detach().cpu()).to(x.device)


def _check_config_json(file: Path, cfg_dict: dict) -> None:
    """A save_pretrained directory's config.json must say what the weights' header says (it is a copy for people and
    tools; an edited copy would silently describe other weights)."""
    cj = file.parent / CONFIG_NAME
    if file.name != "model.safetensors" or not cj.is_file():
        return
    try:
        saved = json.loads(cj.read_text())
    except ValueError as e:
        raise UserError(f"{cj}: not valid JSON: {e}") from None
    if saved.get("model_type") != "motionmae":
        return
    differ = [f"{sec}.{k}" for sec, d in cfg_dict.items() if isinstance(d, dict) for k, v in d.items()
              if isinstance(saved.get(sec), dict) and k in saved[sec] and saved[sec][k] != v]
    if differ:
        raise UserError(f"{cj}: differs from the config stored with the weights in {file.name} ({', '.join(differ[:6])}); "
                        "the weights were saved with the latter: restore config.json, or change the model and save it again")


def hf_directory(path) -> Optional[Path]:
    """The transformers model directory `path` names, or None when it is one of ours: a directory with a VideoMAE
    config.json, a Hugging Face cache folder `models--ORG--NAME` (its `refs/main` snapshot), or a hub id `ORG/NAME`
    found in the local cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). Never downloads."""
    p = Path(path)
    if p.is_dir():
        if (p / "snapshots").is_dir():
            return _snapshot(p)
        cj = p / CONFIG_NAME
        if cj.is_file() and not (p / "checkpoints").is_dir():
            try:
                kind = json.loads(cj.read_text()).get("model_type", "videomae")
            except (ValueError, AttributeError):
                kind = "videomae"  # read_hf_dir names the broken file
            return None if kind == "motionmae" else p
        return None
    s = str(path)
    if p.exists() or s.count("/") != 1 or s.startswith((".", "/")) or s.endswith((".safetensors", ".pth", ".bin")):
        return None
    for cache in _hf_caches():
        folder = cache / f"models--{s.replace('/', '--')}"
        if folder.is_dir():
            return _snapshot(folder)
    raise UserError(f"{s}: no such file or directory, and not in the local Hugging Face cache ({', '.join(map(str, _hf_caches()))}); "
                    f"motionmae never downloads: fetch it first (huggingface-cli download {s}) or pass its directory")


def _hf_caches() -> list:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return [Path(env["HF_HUB_CACHE"])]
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return [home / "hub"]


def _snapshot(folder: Path) -> Path:
    """The snapshot a cache folder's `refs/main` points to (else its only snapshot)."""
    ref = folder / "refs" / "main"
    if ref.is_file():
        snap = folder / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted(d for d in (folder / "snapshots").iterdir() if d.is_dir()) if (folder / "snapshots").is_dir() else []
    if len(snaps) != 1:
        raise UserError(f"{folder}: a Hugging Face cache folder with {len(snaps)} snapshots and no usable refs/main; "
                        "pass the snapshot directory itself")
    return snaps[0]


__all__ = ["MotionMAE", "hf_directory"]
