"""`motionmae convert`: checkpoints between transformers' VideoMAE, original VideoMAE `.pth` and motionmae.

    motionmae convert --from hf --to motionmae  hf_dir/           out.safetensors
    motionmae convert --from videomae --to hf   checkpoint.pth    hf_dir/  [--num-frames 16 --img-size 224]
    motionmae convert --from motionmae --to hf  runs/finetune/    hf_dir/
    motionmae convert --from motionmae --to motionmae old_run/   new_run/   # re-save (adds a sincos3d table older files lack)
    motionmae convert --consolidate fsdp_run/ out.safetensors              # an FSDP run's sharded checkpoint -> one file

A DST that exists and is not empty is refused unless --force. Every conversion that involves transformers is checked against transformers itself (same random clip, max
abs difference of the outputs must be < --atol) unless --no-verify; see docs/INTEROP.md.
"""

from __future__ import annotations

from pathlib import Path

from motionmae.errors import UserError
from motionmae.interop.common import Converted, check_destination
from motionmae.models.state import load_matching

FORMATS_IN = ("hf", "videomae", "motionmae")
FORMATS_OUT = ("hf", "motionmae")


# ----------------------------------------------------------------------------------------------
# motionmae checkpoints (runtime/checkpoint.py's format: safetensors `model.*` + JSON state with `config`)


def save_motionmae(conv: Converted, dst, overwrite: bool = False) -> Path:
    """Write a weights-only motionmae checkpoint; a path without `.safetensors` is a run directory
    (written as `DST/checkpoints/last.safetensors`, which every command accepts as `DST`). A non-empty `dst` is
    refused unless `overwrite`."""
    from motionmae.config import to_dict
    from motionmae.runtime.checkpoint import CKPT_DIR, LAST, save_checkpoint

    dst = Path(dst)
    check_destination(dst, overwrite)
    path = dst if dst.suffix == ".safetensors" else dst / CKPT_DIR / LAST
    state = {"config": to_dict(conv.cfg), "step": 0, "kind": "converted", "model_kind": conv.kind, "num_classes": conv.num_classes,
             "class_names": conv.class_names, "converted_notes": conv.notes}
    return save_checkpoint(path, conv.model, state=state, rng=False)


def load_motionmae(src, decoder: str = "") -> Converted:
    """A motionmae checkpoint (file or run directory) -> our model, kind taken from its keys.

    The model is built from the checkpoint's own config, so a sincos3d table it does not store (checkpoints
    written before tables were stored) is taken from that config, and noted."""
    from motionmae.config import DataConfig, ObjectiveConfig, PretrainConfig, from_dict, model_config_from_dict
    from motionmae.interop.hf import build_model
    from motionmae.models.pretrain import branch_prefixes
    from motionmae.runtime.checkpoint import load_model_state, read_state

    sd, cfg_dict = load_model_state(src)
    state = read_state(src)
    m = model_config_from_dict(cfg_dict, str(src))
    if decoder:
        m.decoder = decoder
    # a fine-tuning config has no objective section; the data section gives the mean/std targets are built with
    obj, data = cfg_dict.get("objective"), cfg_dict.get("data")
    cfg = PretrainConfig(
        model=m,
        objective=from_dict(ObjectiveConfig, obj, "objective") if isinstance(obj, dict) else ObjectiveConfig(),
        data=from_dict(DataConfig, data, "data") if isinstance(data, dict) else DataConfig(),
    )
    if "encoder_to_decoder.weight" in sd:
        kind, num_classes = "pretrain", 0
    elif "head.weight" in sd:
        kind, num_classes = "classifier", int(sd["head.weight"].shape[0])
    else:
        kind, num_classes = "encoder", 0
    model = build_model(cfg, kind, num_classes)
    notes = list(state.get("converted_notes", []))
    own = model.state_dict()
    tables = [k for k, _ in model.named_buffers() if k.endswith("pos_embed") and k in own and k not in sd]
    if tables:
        sd = {**sd, **{k: own[k] for k in tables}}
        notes.append(f"added the {m.pos_embed} positional table(s) {', '.join(tables)} from the checkpoint's config")
    fresh = load_matching(model, sd, str(src), fresh=branch_prefixes(cfg) if decoder else ())["fresh"]
    names = state.get("class_names")
    return Converted(model.eval(), cfg, kind, num_classes, notes, fresh, names if isinstance(names, list) else None)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(p) -> None:
    p.add_argument("--from", dest="src_format", choices=FORMATS_IN, help="format of SRC")
    p.add_argument("--to", dest="dst_format", choices=FORMATS_OUT, help="format of DST")
    p.add_argument("--consolidate", action="store_true",
                   help="SRC: an FSDP run (train.parallel=fsdp) or one of its sharded checkpoint folders; DST: the same training "
                        "state as one motionmae file (a .safetensors path, or a run directory), which any command reads and DDP resumes")
    p.add_argument("src", metavar="SRC", help="hf: model directory; videomae: .pth file; motionmae: checkpoint file or run directory")
    p.add_argument("dst", metavar="DST", help="hf: output directory; motionmae: .safetensors file or run directory")
    p.add_argument("--num-frames", type=int, default=None, help="videomae: clip length the model was trained on (default 16)")
    p.add_argument("--img-size", type=int, default=None, help="videomae: frame size the model was trained on (default 224)")
    p.add_argument("--num-heads", type=int, default=None, help="videomae: encoder heads (default: from the width, VideoMAE sizes)")
    p.add_argument("--decoder-num-heads", type=int, default=None, help="videomae: decoder heads (default: from the width)")
    p.add_argument("--decoder", choices=("sha", "ind", "none"), default="sha",
                   help="pretraining checkpoints into motionmae: motion branch to add fresh (none = plain VideoMAE)")
    p.add_argument("--allow-eps-change", action="store_true",
                   help="--to hf: accept transformers' fixed eps 1e-5 in fc_norm / decoder.norm (original VideoMAE: 1e-6); "
                        "the output difference is still measured and must stay below --atol")
    p.add_argument("--force", action="store_true", help="write over a DST that exists and is not empty")
    p.add_argument("--no-verify", action="store_true", help="skip the output comparison with transformers")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |ours - transformers| (fp32)")


def run(args) -> int:
    from motionmae.interop import hf, videomae

    if args.consolidate:
        return consolidate(args)
    if not (args.src_format and args.dst_format):
        raise UserError("convert needs --from and --to (or --consolidate RUN OUT for an FSDP run's sharded checkpoint)")
    vm_only = {"--num-frames": args.num_frames, "--img-size": args.img_size, "--num-heads": args.num_heads,
               "--decoder-num-heads": args.decoder_num_heads}  # fmt: skip
    given = [k for k, v in vm_only.items() if v is not None]
    if given and args.src_format != "videomae":
        raise UserError(f"{', '.join(given)}: only for --from videomae (the other formats store their config)")
    check_destination(args.dst, args.force)  # before any work
    decoder = args.decoder if args.dst_format == "motionmae" else "none"
    if args.src_format == "hf":
        conv = hf.load_hf(args.src, decoder=decoder)
    elif args.src_format == "videomae":
        conv = videomae.load_videomae(args.src, args.num_frames, args.img_size, args.num_heads, args.decoder_num_heads, decoder)
    else:
        conv = load_motionmae(args.src)
    m = conv.cfg.model
    d, n, h = m.dims()
    print(f"read {args.src}: {conv.kind}, embed {d}, depth {n}, heads {h}, tubelet {m.tubelet_size}x{m.patch_size}x{m.patch_size}, "
          f"{m.num_frames} frames x {m.img_size} px, pos_embed {m.pos_embed}, act {m.act_layer}, pooling {m.pooling}"
          + (f", {conv.num_classes} classes" if conv.num_classes else ""))
    for note in conv.notes:
        print(f"  note: {note}")
    if args.src_format == "hf" and not args.no_verify:
        diff = hf.check_parity(conv.model, hf.load_transformers(args.src, conv.kind), conv.kind, conv.cfg, args.atol, args.src)
        print(f"  checked against transformers: max |diff| = {diff:.3g}")
    if args.dst_format == "hf":
        report = hf.export_hf(conv.model, conv.cfg, args.dst, verify=not args.no_verify, atol=args.atol, class_names=conv.class_names,
                              allow_eps_change=args.allow_eps_change, overwrite=args.force,
                              source=f"{args.src} ({args.src_format})")
        if report["dropped"]:
            print(f"  dropped {len(report['dropped'])} motion-branch tensors: transformers' VideoMAE has no motion head")
        print(f"wrote {args.dst} ({hf.ARCH[report['kind']]})")
        if report["max_abs_diff"] is not None:
            print(f"  checked against transformers: max |diff| = {report['max_abs_diff']:.3g}")
    else:
        path = save_motionmae(conv, args.dst, overwrite=args.force)
        print(f"wrote {path}")
    return 0


def consolidate(args) -> int:
    """`--consolidate SRC DST`: a sharded checkpoint as the usual single file (runtime/checkpoint.consolidate)."""
    from motionmae.runtime.checkpoint import CKPT_DIR, LAST, consolidate as merge, read_state

    given = [f for f, v in (("--from", args.src_format), ("--to", args.dst_format)) if v]
    if given:
        raise UserError(f"--consolidate reads a sharded motionmae checkpoint and writes a motionmae file: drop {' and '.join(given)}")
    check_destination(args.dst, args.force)
    dst = Path(args.dst)
    path = merge(args.src, dst if dst.suffix == ".safetensors" else dst / CKPT_DIR / LAST)
    state = read_state(path)
    print(f"wrote {path}: step {state.get('step', '?')} of {args.src} ({state.get('kind', '?')}), model and optimiser in full")
    return 0
