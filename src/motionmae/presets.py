"""`motionmae presets`: every named preset with a one-line description, pretraining then fine-tuning ones.

A pretraining preset is a whole `pretrain` config (the other commands take its model and data sections); a
fine-tuning preset (`finetune-*`) a whole `finetune` config. `--print-config` on a command shows a preset's values;
docs/FIDELITY.md traces each value of the paper's recipes to its source.
"""

from __future__ import annotations

from motionmae import config as C


def add_arguments(parser) -> None:
    parser.add_argument("--kind", choices=["all", "pretrain", "finetune"], default="all",
                        help="only the presets of this command (default: all)")


def run(args) -> int:
    kinds = ("pretrain", "finetune") if args.kind == "all" else (args.kind,)
    for i, kind in enumerate(kinds):
        names = C.preset_names(kind)
        width = max(len(n) for n in names)
        print(f"{chr(10) if i else ''}# {kind} presets: motionmae {kind} --config NAME ... (--print-config shows the values)")
        for name in names:
            print(f"{name:<{width}}  {C.preset_description(name)}")
    print(f"\n# each name also takes '{C.HF_SUFFIX}' (an alias, the defaults export to transformers); a YAML file may start "
          "from a preset (`preset: NAME`) and override sections; sources of every value: docs/FIDELITY.md")
    return 0
