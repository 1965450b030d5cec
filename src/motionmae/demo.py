"""`motionmae demo`: the whole default story on the built-in synthetic dataset, with no arguments.

1. write the synthetic dataset (moving glyphs, labelled class / direction / speed / arrow of time) if missing;
2. pretrain a small MotionMAE on it for a few minutes on a CPU (config preset `demo`), with checkpoint and
   reconstruction pictures;
3. the held-out reconstruction loss beside the trivial line (predicting zero for every masked cube), so one can
   see that it learned;
4. frozen-feature probe (k-NN and linear) of the pretrained encoder next to a randomly initialised one;
5. print where everything was written.

Everything lands under `--out` (default `runs/demo`): `data/`, `pretrain/` (checkpoints, metrics, pictures),
`probe.json` (the probe table and the loss figures). Running it again reuses the dataset and the finished
checkpoint (pretraining resumes, so nothing is redone).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from motionmae import config as C
from motionmae.errors import UserError
from motionmae.files import write_json


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
    # the config is checked before minutes go into writing the dataset (the lists are where the writer puts them)
    cfg = C.load_config(config, [f"data.train={data_dir / 'train.csv'}", f"train.output_dir={out / 'pretrain'}", *overrides])
    train_list, val_list = ensure_dataset(data_dir, num_train, num_val)
    _banner(f"[2/5] pretraining MotionMAE on {train_list}")
    from motionmae.engine.pretrain import pretrain

    summary = pretrain(cfg, resume="auto")
    run_dir = Path(summary["run_dir"])
    pictures = sorted((run_dir / "pictures").glob("*.png"))

    _banner(f"[3/5] reconstruction on {val_list} (held out), against predicting zero for every masked cube")
    losses = reconstruction_vs_zero(run_dir, str(val_list), seed=cfg.train.seed)
    print(format_losses(losses))

    results = None
    if probe:
        _banner("[4/5] frozen-feature probe: pretrained encoder vs random init")
        results = run_probe_step(run_dir, cfg, str(train_list), str(val_list), probe_overrides)
    report = {"reconstruction": losses, "probe": results, "steps": summary.get("step")}
    write_json(out / "probe.json", report, indent=1)  # atomic, with the umask's mode

    seconds = time.perf_counter() - t0
    _banner(f"[5/5] done in {seconds / 60:.1f} min")
    print(f"  data         {data_dir}  (train.csv, val.csv, labels.json)")
    print(f"  results      {out / 'probe.json'}  (probe table, reconstruction vs predict-zero)")
    print(f"  checkpoint   {summary.get('checkpoint')}")
    print(f"  config       {run_dir / 'config.yaml'}")
    print(f"  metrics      {run_dir / 'metrics.jsonl'}  (TensorBoard: tensorboard --logdir {run_dir / 'tb'})")
    if pictures:
        print(f"  pictures     {pictures[-1]}  and {pictures[-1].with_suffix('.gif')}")
    print(f"  next         motionmae visualize {run_dir} VIDEO   |   motionmae probe --checkpoint {run_dir} --train {train_list} --val {val_list}")
    return {"data": str(data_dir), "run_dir": str(run_dir), "checkpoint": summary.get("checkpoint"),
            "pictures": [str(p) for p in pictures], "probe": results, "reconstruction": losses, "seconds": seconds}


def ensure_dataset(data_dir: Path, num_train: int, num_val: int):
    """The synthetic dataset's (train list, val list), written first if the lists are not there yet."""
    train_list, val_list = data_dir / "train.csv", data_dir / "val.csv"
    if train_list.exists() and val_list.exists():  # the writer puts the lists last: present means complete
        _banner(f"[1/5] synthetic dataset: reusing {data_dir}")
        return train_list, val_list
    _banner(f"[1/5] writing the synthetic dataset to {data_dir}")
    from motionmae.data.synthetic import make_dataset, progress_printer

    info = make_dataset(data_dir, num_train=num_train, num_val=num_val, progress=progress_printer())
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
                              f"data.short_side={cfg.data.short_side}", *overrides], C.ProbeConfig, checkpoint=C.to_dict(cfg))
    try:
        return compare_probes({"MotionMAE pretrained": str(run_dir), "random init": random_encoder(pcfg.model, seed=cfg.train.seed)},
                              train_list, val_list, config=pcfg)
    except UserError as e:
        print(f"  (probe failed: {e})")
        return None


def reconstruction_vs_zero(checkpoint, data_list: str, num_clips: int = 200, batch_size: int = 16, seed: int = 0,
                           device: str = "cpu") -> dict:
    """Held-out reconstruction loss of a pretraining checkpoint beside the trivial line.

    The centre clip of each of the first `num_clips` videos of `data_list`, one mask each (drawn from `seed`, the
    run's mask kind and ratio); returns the mean appearance / motion loss of the model and of predicting zero for
    every masked cube (the loss a model that learned nothing reaches: (n-1)/n for cubes of n values normalised
    with the unbiased std, less where cubes are exactly flat), and their ratio."""
    import dataclasses

    import torch

    from motionmae.data.datasets import build_dataset, collate
    from motionmae.data.transforms import to_model_input
    from motionmae.runtime.checkpoint import load_model_state
    from motionmae.models.pretrain import PretrainModel
    from motionmae.models.state import load_matching
    from motionmae.objective.loss import reconstruction_loss
    from motionmae.objective.masking import make_mask

    sd, cfg_dict = load_model_state(checkpoint)
    cfg = C.from_dict(C.PretrainConfig, cfg_dict)
    model = PretrainModel(cfg)
    load_matching(model, sd, str(checkpoint))
    model.eval().to(device)
    o = cfg.objective
    ds = build_dataset(dataclasses.replace(cfg.data, val=str(data_list), num_workers=0), "val", "finetune",
                       extra_frames=o.extra_frames, require_labels=False, neighbor_gap=o.neighbor_gap)
    n = min(num_clips, len(ds))
    gen = torch.Generator().manual_seed(seed)
    names = [t.name for t in model.targets]
    sums = {f"{w}_{k}": 0.0 for k in names for w in ("loss", "zero")}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = collate([ds[i] for i in range(start, min(start + batch_size, n))])
            x = to_model_input(batch["video"], cfg.data.mean, cfg.data.std, device)
            clip = batch["video"][:, :, : cfg.model.num_frames]
            mask = make_mask(cfg.mask.kind, x.shape[0], cfg.model.grid(), cfg.mask.ratio, gen, clip=clip).to(device)
            out = model(x, mask)
            b = x.shape[0]
            for kind in names:
                target = out[f"target_{kind}"]
                sums[f"loss_{kind}"] += b * float(reconstruction_loss(out[f"pred_{kind}"], target, o.loss))
                sums[f"zero_{kind}"] += b * float(reconstruction_loss(torch.zeros_like(target), target, o.loss))
    res = {k: v / n for k, v in sums.items()}
    for kind in names:
        res[f"ratio_{kind}"] = res[f"loss_{kind}"] / res[f"zero_{kind}"]
    res["clips"] = n
    return res


def format_losses(res: dict) -> str:
    """Lines like `appearance  loss 0.61  predict-zero 0.96  ratio 0.63`."""
    lines = []
    for kind in [k[5:] for k in res if k.startswith("loss_")]:
        lines.append(f"  {kind:<11} loss {res[f'loss_{kind}']:.4f}   predict-zero {res[f'zero_{kind}']:.4f}   "
                     f"ratio {res[f'ratio_{kind}']:.3f}")
    return "\n".join(lines) + f"\n  ({res['clips']} validation clips, centre clip, one seeded mask each)"


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)
