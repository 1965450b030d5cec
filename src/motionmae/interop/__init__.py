"""Checkpoints in and out: transformers' VideoMAE, original VideoMAE `.pth`, motionmae.

    from motionmae.interop import load_hf, load_videomae, export_hf
    conv = load_hf("videomae-base-finetuned-kinetics/")      # -> Converted(model, cfg, kind, num_classes, notes)
    conv = load_videomae("checkpoint.pth", num_frames=16)     # weights_only=True; embedded objects refused
    export_hf(conv.model, conv.cfg, "out_dir/")              # config.json + model.safetensors, checked against transformers
"""

from motionmae.interop.common import Converted, torch_load_weights_only
from motionmae.interop.convert import load_motionmae, save_motionmae
from motionmae.interop.hf import check_parity, export_hf, load_hf
from motionmae.interop.videomae import load_videomae

__all__ = ["Converted", "load_hf", "load_videomae", "load_motionmae", "save_motionmae", "export_hf", "check_parity", "torch_load_weights_only"]
