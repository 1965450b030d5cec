"""Does the synthetic VOS set tell a pretrained encoder from a random one? (docs/RESULTS.md, "Synthetic VOS sets")

J&F of label propagation (DINO's protocol, as `motionmae vos` runs it) with frozen encoders of the demo's
architecture, on both scenes of `make-dataset --kind vos` (8 sequences x 24 frames at 64x88, seed 0):
'sprites' (the first version: every object has its own colours) and 'glyphs' (one colour for every object and an
unannotated distractor: shape decides). Encoders, per seed: random init (the `demo` config's encoder seeded with
train.seed, what the demo compares with) and the same encoder after `motionmae demo` (500 steps on the built-in
data, train.seed = the seed); with --real-video DIR also the final checkpoints of benchmarks/real_video.py's runs,
with --study DIR (repeatable) those of benchmarks/reproduce.py's three models (same architecture and seeds, so the
same random init). Two references with no encoder bound the scale: one-hot positions (propagation then copies the
first frame's mask: no tracking) and each patch's raw pixels with its position (local colour and place, the
cue a random network keeps).

    python benchmarks/vos_sets.py --threads 1 --seeds 0,1,2 --real-video runs/real_video --study runs/study3000/full --update-docs

Finished demo runs and VOS results are read back (rerunning only rebuilds the table). CPU time goes to
`<out>/cost.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce as R  # noqa: E402
from common import markdown_table, mean_std, replace_section  # noqa: E402

SCENES = ("sprites", "glyphs")
REAL_VIDEO_MODELS = ("videomae", "motionmae-sha")
STUDY_MODELS = ("videomae", "motionmae-sha", "motionmae-ind")
RANDOM, DEMO = "random init", "demo (500 steps, built-in data)"
COPY, PIXELS = "reference: first mask copied (position only)", "reference: raw pixels + position"


class PositionOnly:
    """Reference features: a one-hot of each patch's place, so every query's best match is its own place in the
    previous frames and propagation copies the first frame's mask (what J&F gives for no tracking at all)."""

    def __init__(self, size: int, patch: int = 4):
        self.size, self.patch = size, patch

    def input_size(self, height: int, width: int):
        from motionmae.eval.vos import frame_grid

        h, w = frame_grid(height, width, self.size, self.patch)
        return h * self.patch, w * self.patch

    def __call__(self, frames):
        import torch

        h, w = (n // self.patch for n in self.input_size(*frames.shape[1:3]))
        return torch.eye(h * w).reshape(1, h, w, h * w).expand(len(frames), -1, -1, -1)


class PixelsAndPosition(PositionOnly):
    """Reference features: each patch's raw RGB values (0-1; the frame resized as `EncoderFeatures` resizes it) and
    its (row, column) in units of the grid's height, times `position` (4: best of 1 / 2 / 4 / 8 on the glyph set at
    64 px, J&F 0.53 / 0.64 / 0.70 / 0.69)."""

    def __init__(self, size: int, patch: int = 4, position: float = 4.0):
        super().__init__(size, patch)
        self.position = position

    def __call__(self, frames):
        import torch
        import torch.nn.functional as F

        size = self.input_size(*frames.shape[1:3])
        h, w = (n // self.patch for n in size)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        if tuple(size) != frames.shape[1:3]:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
        pixels = F.unfold(x / 255, self.patch, stride=self.patch).transpose(1, 2).reshape(len(frames), h, w, -1)
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        place = torch.stack([rows, cols], -1).float() * (self.position / h)
        return torch.cat([pixels, place.expand(len(frames), -1, -1, -1)], -1)


def demo_checkpoint(out: Path, seed: int, data: Path, ledger: R.Ledger) -> Path:
    """`motionmae demo --no-probe train.seed=<seed>` in one process (its data shared by every seed)."""
    from motionmae.data.synthetic import make_dataset
    from motionmae.demo import run_demo
    from motionmae.runtime.checkpoint import numbered_checkpoints

    run = out / f"demo-seed{seed}"
    if not numbered_checkpoints(run / "pretrain"):
        if not (data / "val.csv").exists():  # the demo's data (800 / 200 default clips), written in this process
            with ledger.charge("data/demo"):
                make_dataset(data, num_train=800, num_val=200, workers=1)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "data").exists():
            (run / "data").symlink_to(data.resolve(), target_is_directory=True)
        with ledger.charge(f"pretrain/demo-seed{seed}"):
            run_demo(run, overrides=[f"train.seed={seed}", "data.num_workers=0", "train.viz_every=-1"], probe=False)
    return numbered_checkpoints(run / "pretrain")[-1]


def encoders(out: Path, seeds: Sequence[int], real_video: Path, ledger: R.Ledger,
             studies: Sequence[Path] = ()) -> Dict[str, Dict[int, object]]:
    """{row name: {seed: encoder module or checkpoint path}}."""
    from motionmae import config as C
    from motionmae.eval.probe import random_encoder

    model = C.load_config("demo", []).model
    rows: Dict[str, Dict[int, object]] = {RANDOM: {s: random_encoder(model, s) for s in seeds},
                                          DEMO: {s: demo_checkpoint(out, s, out / "demo-data", ledger) for s in seeds}}
    sources = ([(real_video, REAL_VIDEO_MODELS, "real video")] if real_video else []) + [(study, STUDY_MODELS, "study") for study in studies]
    for runs, names, label in sources:
        rows.update(final_checkpoints(runs / "runs", names, seeds, label))
    return rows


def final_checkpoints(runs: Path, names: Sequence[str], seeds: Sequence[int], label: str) -> Dict[str, Dict[int, Path]]:
    """{'<name> (<label>, <steps> steps)': {seed: last numbered checkpoint}} of the runs `runs/<name>-seed<seed>`
    that have one."""
    from motionmae.runtime.checkpoint import numbered_checkpoints

    rows = {}
    for name in names:
        found = {s: c[-1] for s in seeds if (c := numbered_checkpoints(runs / f"{name}-seed{s}"))}
        if found:
            steps = sorted({int(c.stem.split("_")[-1]) for c in found.values()})
            rows[f"{name} ({label}, {'/'.join(map(str, steps))} steps)"] = found
    return rows


def measure(out: Path, rows: Dict[str, Dict[int, object]], sizes: Sequence[int], ledger: R.Ledger,
            sequences: int = 8, height: int = 64) -> Dict[tuple, Dict[int, float]]:
    """{(row, scene, size): {seed: J&F}} on `sequences` x 24 frames of each scene at `height` x 4/3 height."""
    res: Dict[tuple, Dict[int, float]] = {}
    for scene in SCENES:
        root = R.make_vos(R.Setup(vos_sequences=sequences, vos_size=height, vos_scene=scene), out)
        for size in sizes:
            for name, make in ((COPY, PositionOnly), (PIXELS, PixelsAndPosition)):  # the same for every seed
                jf = R.vos_run(make(size), root, out / "vos" / f"{scene}-{size}" / R.slug(name), size, ledger, quiet=True)["J&F"]
                res[(name, scene, size)] = {seed: jf for seed in next(iter(rows.values()))}
            for name, per_seed in rows.items():
                for seed, enc in per_seed.items():
                    run_dir = out / "vos" / f"{scene}-{size}" / f"{R.slug(name)}-seed{seed}"
                    jf = R.vos_run(enc, root, run_dir, size, ledger, quiet=True)["J&F"]
                    res.setdefault((name, scene, size), {})[seed] = jf
    return res


def table(res: Dict[tuple, Dict[int, float]], rows: Sequence[str], sizes: Sequence[int]) -> str:
    cols = [(scene, size) for scene in SCENES for size in sizes]
    head = ["encoder"] + [f"{scene}, vos.size={size}" for scene, size in cols]
    out: List[list] = []
    for name in rows:
        out.append([name] + [R.pm(list(res[(name, *c)].values()), 1.0, 3) for c in cols])
    for name in (COPY, PIXELS):  # one value each (no seed)
        out.append([name] + [f"{next(iter(res[(name, *c)].values())):.3f}" for c in cols])
    for name in rows:
        if name == RANDOM:
            continue
        cells = []
        for c in cols:
            a, b = res[(name, *c)], res[(RANDOM, *c)]
            d = [a[s] - b[s] for s in a if s in b]
            cells.append("{:+.3f} ± {:.3f} ({})".format(*mean_std(d), " ".join(f"{x:+.3f}" for x in d)))
        out.append([f"{name} - random init, per seed"] + cells)
    return markdown_table(head, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/vos_sets")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sizes", default="32,64", help="vos.size values (short side fed to the encoder; frames are 64 px)")
    p.add_argument("--real-video", default="", help="benchmarks/real_video.py's --out: add its final checkpoints")
    p.add_argument("--study", action="append", default=[],
                   help="benchmarks/reproduce.py's <out>/full (repeatable): add its three models' final checkpoints")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--update-docs", action="store_true", help="write the table into docs/RESULTS.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out, seeds, sizes = Path(args.out), [int(s) for s in args.seeds.split(",")], [int(s) for s in args.sizes.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    ledger = R.Ledger(out / "cost.json")
    rows = encoders(out, seeds, Path(args.real_video) if args.real_video else None, ledger, [Path(d) for d in args.study])
    res = measure(out, rows, sizes, ledger)
    cmd = " ".join(["python benchmarks/vos_sets.py", *(argv if argv is not None else sys.argv[1:])]).replace(" --update-docs", "")
    text = (f"Command: `{cmd}` ({ledger.hours() * 60:.0f} CPU-min in all: demo data and pretraining "
            f"{(ledger.hours('data/') + ledger.hours('pretrain/')) * 60:.0f}, VOS {ledger.hours('vos/') * 60:.1f}). "
            f"J&F-Mean, mean ± std over seeds {args.seeds}; "
            f"the difference rows are paired by seed (same random init).\n\n{table(res, list(rows), sizes)}\n")
    print(text)
    if args.update_docs:
        replace_section(R.DOCS / "RESULTS.md", "<!-- vos_sets.py:begin -->", "<!-- vos_sets.py:end -->", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
