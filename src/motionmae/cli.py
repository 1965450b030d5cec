"""`motionmae <command>`: each command lives in its own module, imported only when it runs.

A command module exposes `add_arguments(parser)` and `run(args) -> int | None`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from motionmae.errors import UserError
from motionmae.version import __version__

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("motionmae.demo", "the whole default story on the built-in data: dataset, pretrain, pictures, probe"),
    "pretrain": ("motionmae.engine.pretrain", "pretrain a video ViT with the MotionMAE / VideoMAE objective"),
    "finetune": ("motionmae.engine.finetune", "fine-tune a pretrained encoder for action recognition"),
    "probe": ("motionmae.eval.probe", "frozen-feature k-NN and linear probe"),
    "extract": ("motionmae.eval.features", "extract pooled or token-grid features to .npy / safetensors"),
    "vos": ("motionmae.eval.vos", "video object segmentation by label propagation (DAVIS J&F)"),
    "visualize": ("motionmae.viz", "reconstruction and motion pictures (PNG grid + GIF) for a checkpoint and a video"),
    "make-dataset": ("motionmae.data.make_dataset", "write the built-in synthetic dataset (mp4 + annotation lists)"),
    "make-shards": ("motionmae.data.shards", "write a video dataset as WebDataset tar shards for streaming"),
    "convert": ("motionmae.interop.convert", "convert checkpoints between transformers, original VideoMAE and motionmae"),
    "presets": ("motionmae.presets", "list every preset (the paper's recipes, model sizes) with a one-line description"),
    "reproduce": ("motionmae.recipes", "a paper recipe end to end: pretrain, fine-tune, multi-view test (or VOS), results and model card"),
}


def build_parser(argv) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motionmae", description="MotionMAE: motion-aware masked autoencoders for video.")
    parser.add_argument("--version", action="version", version=f"motionmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if argv[:1] == [name]:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Spinning threads make a busy or
    # oversubscribed CPU (DataLoader workers, other jobs) up to 10x slower; measured in docs/BENCHMARKS.md.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = _on_ctrl_c(f"motionmae {argv[0]}" if argv and not argv[0].startswith("-") else "motionmae")
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _on_ctrl_c(name: str):
    """Ctrl-C ends the command at once with one line and exit code 130. It may land inside an import or a library's
    cleanup, where unwinding a KeyboardInterrupt leaves half-imported modules and tracebacks; exiting loses nothing
    written (checkpoints are replaced atomically, the run lock dies with the process, DataLoader workers get the
    same SIGINT or see their parent gone). Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        try:
            sys.stderr.write(f"{name}: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)

    return signal.signal(signal.SIGINT, handler)


def _main(argv) -> int:
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    # `key=value` overrides may stand anywhere, also after an option (`--resume none train.lr=1e-4`)
    if rest and isinstance(getattr(args, "overrides", None), list) and all("=" in a and not a.startswith("-") for a in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        rc = importlib.import_module(args._module).run(args)
    except UserError as e:
        print(f"motionmae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        # torch's message, e.g. "DataLoader worker (pid 123) is killed by signal: Killed." (often the OOM killer);
        # the workers are reaped (data/loader.Batches) and checkpoints are intact
        first = str(e).strip().splitlines()[0]
        print(f"motionmae {args.command}: error: a data-loading worker died ({first}); fewer data.num_workers or more "
              "memory may help; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
