"""Does dual masking (VideoMAE v2's decoder mask) keep what the motion target brings? An ablation at the demo's
budget: {videomae (appearance only), motionmae-sha} x mask.decoder_ratio {0, 0.5} x seeds, each a whole
`motionmae demo` (the built-in data, 500 steps, the linear probe against the seed's random init).

    python benchmarks/dual_masking.py --out runs/dual --seeds 0,1,2     # ~12 demo runs, ~40 min on 2 cores
    python benchmarks/dual_masking.py --out runs/dual --table-only      # the table from finished runs

Finished runs are reused (their probe.json); the table is markdown for docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

from motionmae.demo import run_demo

MODELS = {  # name -> (label, pretraining overrides)
    "vmae": ("videomae (appearance only, per-slice mask)", ["model.decoder=none", "objective.targets=[appearance]"]),
    "sha": ("motionmae-sha", []),
}
LABELS = ("class", "direction", "speed", "arrow")


def run_dir(out: Path, model: str, dual: str, seed: int) -> Path:
    return out / f"{model}-d{dual}-s{seed}"


def table(out: Path, duals, seeds) -> str:
    def ms(v):
        return f"{st.mean(v):+.1f} ± {st.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:+.1f}"

    lines = ["| model | mask.decoder_ratio | seeds | appearance / predict-zero | class | direction | speed | arrow |",
             "|---|---|---|---|---|---|---|---|"]
    for model, (label, _) in MODELS.items():
        for dual in duals:
            found = [(s, json.loads((run_dir(out, model, dual, s) / "probe.json").read_text())) for s in seeds
                     if (run_dir(out, model, dual, s) / "probe.json").exists()]
            if not found:
                continue
            diffs = {l: [100 * (d["probe"]["MotionMAE pretrained"][l]["linear"] - d["probe"]["random init"][l]["linear"])
                         for _, d in found] for l in LABELS}
            ratio = st.mean(d["reconstruction"]["ratio_appearance"] for _, d in found)
            lines.append(f"| {label} | {dual} | {','.join(str(s) for s, _ in found)} | {ratio:.3f} | "
                         + " | ".join(ms(diffs[l]) for l in LABELS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/dual")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--duals", default="0,0.5")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args(argv)
    out, seeds, duals = Path(a.out), [int(s) for s in a.seeds.split(",")], a.duals.split(",")
    if not a.table_only:
        for seed in seeds:
            for dual in duals:
                for model, (_, over) in MODELS.items():
                    d = run_dir(out, model, dual, seed)
                    if not (d / "probe.json").exists():
                        run_demo(d, overrides=[f"train.seed={seed}", f"mask.decoder_ratio={dual}", *over])
    print("linear probe, pretrained minus random init (points), mean ± std over seeds; "
          "held-out appearance loss / predict-zero\n")
    print(table(out, duals, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
