"""`motionmae make-dataset`: write the built-in synthetic datasets (`--kind classify`: data/synthetic.py, the
labelled glyph clips; `--kind vos`: data/synthetic_vos.py, a DAVIS-style segmentation set). The command lives
here, above both generators, because the VOS generator draws its scenes with the classify generator's parts."""

from __future__ import annotations

import motionmae.data.synthetic_vos as vos
from motionmae.data.synthetic import FASHION_MNIST_DIR, Style, make_dataset, progress_printer


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    parser.add_argument("--kind", default="classify", choices=["classify", "vos"],
                        help="classify: labelled glyph clips (default); vos: synthetic DAVIS-style set")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: 16; vos: 24)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels, even (default: 64; vos: height 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="writer processes (0: one per CPU)")
    parser.add_argument("--glyphs", default="shapes", choices=["shapes", "fashion"],
                        help="shapes: procedural (default, identical on every machine); fashion: Fashion-MNIST "
                             f"images from {FASHION_MNIST_DIR} (opt-in, where installed)")
    parser.add_argument("--style", default="", metavar="KEY=VALUE;...",
                        help="synthetic.Style fields of the clips, e.g. 'glyph_radius=[0.28,0.36];glyph_texture_moves=1' "
                             "(the previous default)")
    vos.add_vos_arguments(parser)


def run(args) -> int:
    if args.kind == "vos":
        return vos.run(args)
    info = make_dataset(args.out, args.num_train, args.num_val, args.frames or 16, args.size or 64, args.seed,
                        workers=args.workers, glyphs=args.glyphs, style=Style.from_dict(Style.parse(args.style)),
                        progress=progress_printer())
    print(f"wrote {info['num_train']} train + {info['num_val']} val clips ({info['glyphs']}) to {info['out']} "
          f"in {info['seconds']:.1f} s")
    print(f"lists: {info['train']}  {info['val']}  (columns: path,class,direction,speed,arrow; see labels.json)")
    return 0
