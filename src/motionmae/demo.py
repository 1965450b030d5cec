"""`motionmae demo`: the whole default story on the built-in synthetic dataset, with no arguments.

1. write the synthetic dataset (moving glyphs, labelled class / direction / speed / arrow of time) if missing;
2. pretrain a small MotionMAE on it for a few minutes on a CPU (config preset `demo`);
3. save the checkpoint and reconstruction pictures;
4. frozen-feature probe (k-NN and linear) of the pretrained encoder next to a randomly initialised one;
5. print where everything was written.

Everything lands under `--out` (default `runs/demo`): `data/`, `pretrain/` (checkpoints, metrics, pictures).
Running it again reuses the dataset and the finished checkpoint (pretraining resumes, so nothing is redone).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from motionmae import config as C
from motionmae.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where the data and the run go (default: runs/demo)")
    parser.add_argument("--config", default="demo", metavar="PRESET_OR_YAML", help="pretraining config (default: the `demo` preset)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="pretraining overrides, e.g. train.max_steps=100")
    parser.add_argument("--num-train", type=int, default=800, help="synthetic training videos (default 800)")
    parser.add_argument("--num-val", type=int, default=200, help="synthetic validation videos (default 200)")
    parser.add_argument("--no-probe", action="store_true", help="skip the frozen-feature probe")


def run(args) -> int:
    run_demo(Path(args.out), args.config, args.overrides, args.num_train, args.num_val, probe=not args.no_probe)
    return 0


def run_demo(out: Path, config: str = "demo", overrides=(), num_train: int = 800, num_val: int = 200, probe: bool = True,
             probe_overrides=()) -> dict:
    """The steps above; returns {'data', 'run_dir', 'checkpoint', 'pictures', 'probe', 'seconds'}.
    `overrides` go to the pretraining config, `probe_overrides` (e.g. probe.k=10) to the probe's."""
    t0 = time.perf_counter()
    data_dir = out / "data"
    train_list, val_list = ensure_dataset(data_dir, num_train, num_val)

    cfg = C.load_config(config, [f"data.train={train_list}", f"train.output_dir={out / 'pretrain'}", *overrides])
    _banner(f"[2/4] pretraining MotionMAE on {train_list}")
    from motionmae.engine.pretrain import pretrain

    summary = pretrain(cfg, resume="auto")
    run_dir = Path(summary["run_dir"])
    pictures = sorted((run_dir / "pictures").glob("*.png"))

    results = None
    if probe:
        _banner("[3/4] frozen-feature probe: pretrained encoder vs random init")
        results = run_probe_step(run_dir, cfg, str(train_list), str(val_list), probe_overrides)

    seconds = time.perf_counter() - t0
    _banner(f"[4/4] done in {seconds / 60:.1f} min")
    print(f"  data         {data_dir}  (train.csv, val.csv, labels.json)")
    print(f"  checkpoint   {summary.get('checkpoint')}")
    print(f"  config       {run_dir / 'config.yaml'}")
    print(f"  metrics      {run_dir / 'metrics.jsonl'}  (TensorBoard: tensorboard --logdir {run_dir / 'tb'})")
    if pictures:
        print(f"  pictures     {pictures[-1]}  and {pictures[-1].with_suffix('.gif')}")
    print(f"  next         motionmae visualize {run_dir} VIDEO   |   motionmae probe --checkpoint {run_dir} --train {train_list} --val {val_list}")
    return {"data": str(data_dir), "run_dir": str(run_dir), "checkpoint": summary.get("checkpoint"),
            "pictures": [str(p) for p in pictures], "probe": results, "seconds": seconds}


def ensure_dataset(data_dir: Path, num_train: int, num_val: int):
    """The synthetic dataset's (train list, val list), written first if the lists are not there yet."""
    train_list, val_list = data_dir / "train.csv", data_dir / "val.csv"
    if train_list.exists() and val_list.exists():  # the writer puts the lists last: present means complete
        _banner(f"[1/4] synthetic dataset: reusing {data_dir}")
        return train_list, val_list
    _banner(f"[1/4] writing the synthetic dataset to {data_dir}")
    from motionmae.data.synthetic import make_dataset

    info = make_dataset(data_dir, num_train=num_train, num_val=num_val)
    print(f"  {info['num_train']} train + {info['num_val']} val clips in {info['seconds']:.1f} s")
    return Path(info["train"]), Path(info["val"])


def run_probe_step(run_dir: Path, cfg: C.PretrainConfig, train_list: str, val_list: str, overrides=()) -> Optional[dict]:
    """k-NN + linear probe of the pretrained encoder and of a random-init one with the same architecture
    (motionmae.eval.probe); None, with a note, when the evaluation module is not installed."""
    try:
        from motionmae.eval.probe import compare_probes, random_encoder
    except ImportError as e:
        print(f"  (probe skipped: motionmae.eval.probe is not available: {e})")
        return None
    # both encoders see the same clips: architecture and clip format from the pretraining config
    pcfg = C.load_config("", [f"probe.cache_dir={run_dir.parent / 'probe_cache'}", f"data.num_workers={cfg.data.num_workers}",
                              *overrides], C.ProbeConfig, checkpoint=C.to_dict(cfg))
    try:
        return compare_probes({"MotionMAE pretrained": str(run_dir), "random init": random_encoder(pcfg.model, seed=cfg.train.seed)},
                              train_list, val_list, config=pcfg)
    except UserError as e:
        print(f"  (probe failed: {e})")
        return None


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)
