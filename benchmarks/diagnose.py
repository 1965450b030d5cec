"""Why does pretraining sit at the trivial loss? Measurements behind docs/RESULTS.md ("Diagnosis").

Two kinds of measurement, both on the built-in synthetic data:

1. `targets`: what the appearance target is made of, without any model. For written clips (H.264) and the
   same clips rendered in memory (no codec), at the model's clip settings: each cube channel's std in 8-bit
   levels, and the normalised-target MSE between the decoded and the clean clip (the part of the target
   that is codec noise, which no model can predict). Also two fixed predictors of a masked cube: zero (the
   trivial line, (n-1)/n with the unbiased std) and a copy of the same position from the nearest visible
   time slice (per-slice masks), which says how much of the target is predictable at all.
2. `train`: short pretraining runs (tiny models, one thread) that change one thing at a time; each reports
   its final appearance loss as a fraction of the predict-zero loss, and a curve plot with the trivial line.

    python benchmarks/diagnose.py targets --data runs/demo/data
    python benchmarks/diagnose.py train --out runs/diagnose --variants base,lr3e-3 --steps 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import line_plot, markdown_table  # noqa: E402

from motionmae.demo import reconstruction_vs_zero  # noqa: E402


def trivial_loss(tubelet: int, patch: int) -> float:
    """MSE of predicting 0 for a cube normalised with the unbiased std: mean square = (n-1)/n, n = tubelet*p*p."""
    n = tubelet * patch * patch
    return (n - 1) / n


# ----------------------------------------------------------------------------------------------
# 1. the targets themselves


def _clip_pair(entry, spec, indices, size, render):
    from motionmae.data.decode import VideoReader
    from motionmae.data.transforms import from_numpy_frames, resize

    with VideoReader(entry.path) as r:
        decoded = r.get_frames(indices)
    clean = render(spec)[indices]
    out = []
    for frames in (decoded, clean):
        x = resize(from_numpy_frames(frames), (size, size)).float() / 255  # (C, T, H, W)
        out.append(x[None])
    return out


def nearest_visible_copy(tokens: torch.Tensor, mask: torch.Tensor, grid) -> torch.Tensor:
    """For each masked token, the token at the same (h, w) in the nearest time slice where it is visible
    (ties: the earlier slice); zero where no slice shows it. tokens (N, P), mask (N,) -> (N, P)."""
    t, h, w = grid
    tok = tokens.reshape(t, h * w, -1)
    vis = ~mask.reshape(t, h * w)
    pred = torch.zeros_like(tok)
    for ti in range(t):
        order = sorted(range(t), key=lambda s: (abs(s - ti), s))[1:]
        for s in order:
            take = ~vis[ti] & vis[s] & (pred[ti].abs().sum(-1) == 0)
            pred[ti][take] = tok[s][take]
    return pred.reshape(tokens.shape)


def target_stats(data: Path, frames: int, stride: int, size: int, patch: int, tubelet: int, ratio: float,
                 num_clips: int = 200, seed: int = 0) -> dict:
    """The measurements of part 1 over the first `num_clips` training clips of a synthetic dataset."""
    from motionmae.data.datasets import read_annotation_list
    from motionmae.data.synthetic import render_clip, specs_from_meta
    from motionmae.objective.masking import make_mask
    from motionmae.config import ObjectiveConfig
    from motionmae.objective.targets import motion_frames
    from motionmae.objective.tokens import cubes, normalized_tokens

    meta = json.loads((data / "labels.json").read_text())
    entries = read_annotation_list(data / "train.csv")[:num_clips]
    specs, render = specs_from_meta(meta, "train")
    g = torch.Generator().manual_seed(seed)
    stds, noise, copy, mean_vis, zero, corr = [], [], [], [], [], {"right": [], "below": [], "next slice": []}
    motion_noise, motion_corr = [], []
    for e, spec in zip(entries, specs):
        dec, clean = _clip_pair(e, spec, np.arange(frames) * stride, size, render)
        cd, cc = cubes(dec, tubelet, patch)[0], cubes(clean, tubelet, patch)[0]  # (N, C, n)
        stds.append(255 * cd.std(dim=-1).flatten())
        nd, nc = normalized_tokens(cd[None])[0], normalized_tokens(cc[None])[0]
        noise.append(((nd - nc) ** 2).mean(-1))
        md, mc = (normalized_tokens(cubes(motion_frames(x, ObjectiveConfig()), tubelet, patch)) for x in (dec, clean))
        motion_noise.append(((md - mc) ** 2).mean(-1).flatten())
        mg = md[0].reshape(frames // tubelet, size // patch, size // patch, -1)
        motion_corr.append((mg[:, :, 1:] * mg[:, :, :-1]).mean(-1).flatten() / trivial_loss(tubelet, patch))
        grid = (frames // tubelet, size // patch, size // patch)
        mask = make_mask("per_slice", 1, grid, ratio, g)[0]
        pred = nearest_visible_copy(nd, mask, grid)
        copy.append(((pred - nd) ** 2).mean(-1)[mask])
        mean_vis.append(((nd[~mask].mean(0) - nd) ** 2).mean(-1)[mask])  # no routing: every visible cube alike
        zero.append((nd**2).mean(-1)[mask])
        cg = nd.reshape(*grid, -1)  # (T', H', W', P)
        for key, (a, b) in {"right": (cg[:, :, 1:], cg[:, :, :-1]), "below": (cg[:, 1:], cg[:, :-1]),
                            "next slice": (cg[1:], cg[:-1])}.items():
            corr[key].append((a * b).mean(-1).flatten() / trivial_loss(tubelet, patch))
    stds, noise = torch.cat(stds), torch.cat(noise)
    levels = (1.0, 2.0, 4.0, 8.0)
    return {
        "cubes": int(noise.numel()), "values_per_channel": tubelet * patch * patch,
        "std_levels_median": float(stds.median()),
        "fraction_std_below": {f"{lv:g}": float((stds < lv).float().mean()) for lv in levels},
        "codec_noise_loss": float(noise.mean()),
        "predict_zero_loss": float(torch.cat(zero).mean()), "trivial": trivial_loss(tubelet, patch),
        "copy_nearest_slice_loss": float(torch.cat(copy).mean()),
        "mean_of_visible_loss": float(torch.cat(mean_vis).mean()),
        # mean correlation of a cube's normalised target with its neighbour's: what nearby visible cubes tell
        "neighbour_correlation": {k: float(torch.cat(v).mean()) for k, v in corr.items()},
        "motion_codec_noise_loss": float(torch.cat(motion_noise).mean()),
        "motion_neighbour_correlation_right": float(torch.cat(motion_corr).mean()),
    }


# ----------------------------------------------------------------------------------------------
# 2. short training runs


def variant_data(out: Path, data_keys: Sequence[str]) -> Path:
    """The synthetic dataset for `data.KEY=VALUE` items (KEY: a `Style` field, or size / frames / crf), written
    once under `out/data-<hash>`; returns its train list."""
    import hashlib

    import yaml

    from motionmae.data.synthetic import Style, make_dataset

    sizes = ("size", "frames", "crf")  # make_dataset's own arguments; the rest are Style fields
    kw = {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in data_keys) if k in sizes}
    style = Style.parse(";".join(i for i in data_keys if i.split("=", 1)[0] not in sizes))
    root = out / ("data-" + hashlib.sha1(repr(sorted(data_keys)).encode()).hexdigest()[:10])
    if not (root / "labels.json").exists():
        make_dataset(root, style=Style.from_dict(style), **kw)
    return root / "train.csv"


def run_variant(name: str, base: Sequence[str], extra: Sequence[str], out: Path, config: str = "demo") -> dict:
    """Pretrain one variant (resumes if its run exists); returns the logged curve and the final ratio.
    Items `style.KEY=VALUE` choose the data (see `variant_data`), the others are config overrides."""
    from motionmae.config import load_config
    from motionmae.engine.pretrain import pretrain

    run_dir = out / name
    data_keys = [e[len("style."):] for e in extra if e.startswith("style.")]
    over = [e for e in extra if not e.startswith("style.")]
    if data_keys or not any(b.startswith("data.train=") for b in base):
        over.append(f"data.train={variant_data(out, data_keys)}")
    cfg = load_config(config, [*base, f"train.output_dir={run_dir}", "train.viz_every=-1", "train.log_every=10",
                               "train.save_every=100000", *over])
    t0 = time.time()
    if pretrain(cfg, resume="auto").get("stopped"):  # SIGTERM: the run saved its checkpoint; so does this study
        raise SystemExit(143)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    held = reconstruction_vs_zero(run_dir, str(Path(cfg.data.train).parent / "val.csv"))
    zero = held["zero_appearance"]
    return {"name": name, "extra": list(extra), "trivial": trivial_loss(cfg.model.tubelet_size, cfg.model.patch_size),
            **held, "train_final": float(np.mean([r["loss_appearance"] for r in rows[-5:]])), "wall_s": wall,
            "curve": [(r["step"], r["loss_appearance"] / zero) for r in rows]}


# ----------------------------------------------------------------------------------------------
# 3. in-memory runs: the same model and objective, clips decoded once (no loader), probes at the end


def readout_features(encoder, x: torch.Tensor, layers: Sequence[int], batch: int = 100) -> Dict[str, torch.Tensor]:
    """Frozen features of clips `x` for several readouts: 'L<i>' = block i's tokens (through the final norm, as
    `forward_intermediates`) mean-pooled; 'L<i>-time' = pooled over space only, the time slices concatenated."""
    grid_t = x.shape[2] // encoder.patch_embed.proj.kernel_size[0]
    out: Dict[str, list] = {}
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            for layer, tok in zip(layers, encoder.forward_intermediates(x[i:i + batch], layers)):
                b, n, d = tok.shape
                out.setdefault(f"L{layer}", []).append(tok.mean(1))
                out.setdefault(f"L{layer}-time", []).append(tok.reshape(b, grid_t, n // grid_t, d).mean(2).flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def memory_run(data: Path, steps: int, lr: float, overrides: Sequence[str], config: str = "demo", probe_at=(),
               log=print, seed: int = 0, schedule: str = "cosine") -> dict:
    """Pretrain on the eval-view clips of `data`'s train list held in memory (fresh masks every step, warm-up
    from the config, then `schedule`: cosine, or constant at `lr`); report the held-out ratio to predict-zero
    every steps/4 and linear probes of every layer (vs the random init the run starts from) at `probe_at`."""
    import dataclasses

    from motionmae.config import load_config
    from motionmae.data.datasets import build_dataset, collate
    from motionmae.data.transforms import to_model_input
    from motionmae.engine.optim import build_optimizer
    from motionmae.eval.linear import linear_probe_accuracy
    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import make_mask

    cfg = load_config(config, [f"data.train={data / 'train.csv'}", "train.amp=none", f"train.seed={seed}", *overrides])
    names = json.loads((data / "labels.json").read_text())["columns"]

    def load(lst):
        ds = build_dataset(dataclasses.replace(cfg.data, val=str(lst), num_workers=0), "val", "finetune")
        b = collate([ds[i] for i in range(len(ds))])
        return b["video"], to_model_input(b["video"], cfg.data.mean, cfg.data.std), b["label"]

    raw, x, y = load(data / "train.csv")
    _, xv, yv = load(data / "val.csv")
    layers = list(range(cfg.model.dims()[1]))

    def probes(encoder) -> dict:
        ftr, fva = readout_features(encoder, x, layers), readout_features(encoder, xv, layers)
        return {r: {c: 100 * linear_probe_accuracy(ftr[r], y[:, j], fva[r], yv[:, j], int(y[:, j].max()) + 1, epochs=100)
                    for j, c in enumerate(names)} for r in ftr}

    def show(res: dict) -> str:
        return "\n".join(f"    {r:<9}" + " ".join(f"{c} {v:5.1f}" for c, v in row.items()) for r, row in res.items())

    torch.manual_seed(cfg.train.seed)
    model = PretrainModel(cfg)  # builds its encoder first: the random init below is this run's step 0
    out = {"data": str(data), "config": config, "overrides": list(overrides), "steps": steps, "lr": lr, "seed": seed,
           "schedule": schedule, "random init": probes(model.encoder), "curve": []}
    log("random init:\n" + show(out["random init"]))
    opt = build_optimizer(model, lr=lr, weight_decay=cfg.train.weight_decay, betas=cfg.train.betas)
    g = torch.Generator().manual_seed(seed)
    nv = min(64, len(xv))
    mask_val = make_mask(cfg.mask.kind, nv, cfg.model.grid(), cfg.mask.ratio, torch.Generator().manual_seed(1),
                         clip=load(data / "val.csv")[0][:nv] if cfg.mask.kind == "motion" else None)
    bs = cfg.train.batch_size
    t0 = time.process_time()
    for i in range(steps + 1):
        if i % max(steps // 4, 1) == 0 or i in probe_at:
            model.eval()
            with torch.no_grad():
                o = model(xv[:nv], mask_val)
            row = {"step": i, "cpu_min": (time.process_time() - t0) / 60}
            for t in model.targets:
                row[t.name] = o[f"loss_{t.name}"].item() / (o[f"target_{t.name}"] ** 2).mean().item()
            if i in probe_at:
                row["probe"] = probes(model.encoder)
            out["curve"].append(row)
            log(f"step {i}: held-out loss / predict-zero " + " ".join(f"{t.name} {row[t.name]:.3f}" for t in model.targets)
                + f" ({row['cpu_min']:.1f} CPU-min)" + ("\n" + show(row["probe"]) if "probe" in row else ""))
            model.train()
        if i == steps:
            break
        idx = torch.randint(0, len(x), (bs,), generator=g)
        mask = make_mask(cfg.mask.kind, bs, cfg.model.grid(), cfg.mask.ratio, g,
                         clip=raw[idx][:, :, : cfg.model.num_frames] if cfg.mask.kind == "motion" else None)
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(i, steps, cfg.train.warmup_steps, lr, schedule)
        loss = model(x[idx], mask)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        opt.step()
    return out


def scheduled_lr(step: int, steps: int, warmup: int, lr: float, schedule: str) -> float:
    """Linear warm-up to `lr`, then cosine to lr / 100 at `steps` ('cosine') or `lr` ('constant')."""
    from motionmae.engine.optim import lr_at

    return lr_at(min(step, warmup) if schedule == "constant" else step, steps, warmup, lr, lr * 0.01, lr * 0.001)


def sanity_run(steps: int, lr: float, rolling: bool, config: str = "demo", log=print, kind: str = "tile",
               overrides: Sequence[str] = (), schedule: str = "cosine") -> list:
    """kind 'tile': clips made of one random tile the size of a patch, repeated over the frame (every cube of a
    time slice is then the same) and, with `rolling`, moving down 1 px per frame. A model and objective without
    defects must learn to copy it from the visible cubes: both losses fall well below predict-zero.
    kind 'static': random pixels, the same in every frame: a masked cube can only be copied from the same place in
    another time slice (per-slice masks show it there with probability 1 - ratio^(T'-1)); how fast a model learns
    that measures how fast its decoder learns to route by position."""
    from motionmae.config import load_config
    from motionmae.engine.optim import build_optimizer
    from motionmae.models.pretrain import PretrainModel
    from motionmae.objective.masking import make_mask

    cfg = load_config(config, ["data.train=unused", "train.amp=none", *overrides])
    p, t, s = cfg.model.patch_size, cfg.model.num_frames, cfg.model.img_size
    g = torch.Generator().manual_seed(0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (cfg.data.mean, cfg.data.std))

    def clips(n):
        if kind == "static":
            return (torch.rand(n, 3, 1, s, s, generator=g).expand(-1, -1, t, -1, -1) - mean) / std
        tile = torch.rand(n, 3, 1, p, p, generator=g)
        frames = torch.cat([torch.roll(tile, k if rolling else 0, dims=3) for k in range(t)], 2)
        return (frames.repeat(1, 1, 1, s // p, s // p) - mean) / std

    xv = clips(64)
    torch.manual_seed(0)
    model = PretrainModel(cfg)
    opt = build_optimizer(model, lr=lr, weight_decay=cfg.train.weight_decay, betas=cfg.train.betas)
    mask_val = make_mask(cfg.mask.kind, 64, cfg.model.grid(), cfg.mask.ratio, g)
    curve = []
    for i in range(steps + 1):
        if i % 100 == 0:
            with torch.no_grad():
                o = model.eval()(xv, mask_val)
            row = (i, o["loss_appearance"].item() / (o["target_appearance"] ** 2).mean().item(),
                   o["loss_motion"].item() / (o["target_motion"] ** 2).mean().item() if rolling else float("nan"))
            curve.append(row)
            log(f"step {i}: loss / predict-zero: appearance {row[1]:.3f}" + (f", motion {row[2]:.3f}" if rolling else ""))
            model.train()
        if i == steps:
            break
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(i, steps, 40, lr, schedule)
        loss = model(clips(16), make_mask(cfg.mask.kind, 16, cfg.model.grid(), cfg.mask.ratio, g))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return curve


def reference_routing(steps: int, lr: float, ratio: float = 0.9, grid=(4, 8, 8), dim: int = 64, content: int = 48,
                      depth: int = 2, heads: int = 4, encoder_depth: int = 0, encoder_dim: int = 128, log=print) -> list:
    """The `sanity --kind static` task without motionmae: a plain pre-norm `nn.TransformerEncoder` (the demo
    decoder's width, depth and heads) over a (T', H', W') token grid with factorised sin-cos positions. Visible
    tokens carry their content (random vectors, the same at every time slice), masked ones a learned token; the
    loss is the MSE on the masked tokens (per-slice masks). Copying the same place from another time slice is the
    only way below predict-zero; if this plain model also sits on the line for hundreds of steps, the plateau is
    the task's (attention must first learn to route by position), not a defect of motionmae's model.
    `encoder_depth` > 0 puts an MAE encoder in front (that many blocks of `encoder_dim` over the visible tokens,
    then a Linear to `dim`, positions added again), as in motionmae's model."""
    t, h, w = grid
    n, g = t * h * w, torch.Generator().manual_seed(0)
    parts = [dim // 4, 3 * dim // 8, dim - dim // 4 - 3 * dim // 8]  # t, h, w shares of the width

    def sincos(length: int, d: int) -> torch.Tensor:
        angle = torch.arange(length)[:, None] / 10000 ** (torch.arange(d // 2)[None] * 2 / d)
        return torch.cat([angle.sin(), angle.cos()], 1)

    axes = [sincos(length, d).view(*[length if i == a else 1 for i in range(3)], d).expand(t, h, w, d)
            for a, (length, d) in enumerate(zip(grid, parts))]
    pos = torch.cat(axes, -1).reshape(n, dim)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, 0.0, activation="gelu", batch_first=True, norm_first=True)
    model = torch.nn.ModuleDict({"embed": torch.nn.Linear(content, dim), "blocks": torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False),
                                 "head": torch.nn.Linear(dim, content)})
    if encoder_depth:
        enc_layer = torch.nn.TransformerEncoderLayer(encoder_dim, heads, 4 * encoder_dim, 0.0, activation="gelu", batch_first=True, norm_first=True)
        model["patch_embed"] = torch.nn.Linear(content, encoder_dim)
        model["encoder"] = torch.nn.Sequential(torch.nn.TransformerEncoder(enc_layer, encoder_depth, enable_nested_tensor=False),
                                               torch.nn.LayerNorm(encoder_dim))
        model["embed"] = torch.nn.Linear(encoder_dim, dim)
        enc_pos = pos.repeat(1, encoder_dim // dim)
    mask_token = torch.nn.Parameter(torch.zeros(dim))
    opt = torch.optim.AdamW([*model.parameters(), mask_token], lr=lr, weight_decay=0.05)
    curve, keep = [], max(1, round(h * w * (1 - ratio)))  # visible tokens per time slice
    for i in range(steps + 1):
        x = torch.randn(16, 1, h * w, content, generator=g).expand(-1, t, -1, -1).reshape(16, n, content)
        mask = (torch.rand(16, t, h * w, generator=g).argsort(-1).argsort(-1) >= keep).reshape(16, n)
        if encoder_depth:  # visible tokens only through the encoder (the same count per clip)
            vis = (~mask).nonzero()[:, 1].view(16, -1)
            latent = model["encoder"](model["patch_embed"](x.gather(1, vis[..., None].expand(-1, -1, content))) + enc_pos[vis])
            embedded = torch.zeros(16, n, dim).scatter(1, vis[..., None].expand(-1, -1, dim), model["embed"](latent))
        else:
            embedded = model["embed"](x)
        tokens = torch.where(mask[..., None], mask_token.expand(16, n, dim), embedded) + pos
        err = (model["head"](model["blocks"](tokens)) - x)[mask]
        loss = err.square().mean()
        if i % 100 == 0:
            curve.append((i, loss.item() / x[mask].square().mean().item()))
            log(f"step {i}: loss / predict-zero {curve[-1][1]:.3f} (plain nn.TransformerEncoder)")
        if i == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return curve


def memory_table(paths: Sequence[Path], readout: str = "L3") -> str:
    """Markdown: one row per `memory` result file: data, overrides, held-out ratios at the end, and the
    linear probe of `readout` (pretrained vs the run's random init, and the difference)."""
    rows = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        last = r["curve"][-1]
        pre, rnd = last["probe"][readout], r["random init"][readout]
        rows.append([r.get("data", Path(p).stem), " ".join(r["overrides"]) or "-", str(r["steps"]), str(r.get("seed", 0)),
                     f"{last['appearance']:.3f}", f"{last.get('motion', float('nan')):.3f}"]
                    + [f"{pre[c]:.1f} / {rnd[c]:.1f} ({pre[c] - rnd[c]:+.1f})" for c in pre])
    cols = list(json.loads(Path(paths[0]).read_text())["random init"][readout])
    return markdown_table(["data", "overrides", "steps", "seed", "appearance / zero", "motion / zero"]
                          + [f"{c}: pre / rnd (diff)" for c in cols], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("targets")
    t.add_argument("--data", required=True, help="a synthetic dataset folder (make-dataset --out)")
    t.add_argument("--frames", type=int, default=8)
    t.add_argument("--stride", type=int, default=2)
    t.add_argument("--size", type=int, default=32)
    t.add_argument("--patch", type=int, default=4)
    t.add_argument("--tubelet", type=int, default=2)
    t.add_argument("--ratio", type=float, default=0.9)
    t.add_argument("--clips", type=int, default=200)
    r = sub.add_parser("train")
    r.add_argument("--out", default="runs/diagnose")
    r.add_argument("--config", default="demo")
    r.add_argument("--set", action="append", default=[], metavar="NAME=K=V;K=V",
                   help="a variant: name, then ';'-separated overrides (repeatable); style.KEY=V items choose the "
                        "synthetic data (Style fields, size, frames, crf); 'base' = no change")
    r.add_argument("--base", nargs="*", default=[], help="overrides applied to every variant (e.g. data.train=...)")
    r.add_argument("--plot", default="", help="write the curves (fraction of predict-zero) to this PNG")
    r.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("memory", help="in-memory pretraining on a (variant) dataset, probes at the end")
    m.add_argument("--out", default="runs/diagnose")
    m.add_argument("--style", default="", metavar="K=V;K=V", help="synthetic.Style fields of the data (default: the default data)")
    m.add_argument("--steps", type=int, default=800)
    m.add_argument("--lr", type=float, default=1e-3)
    m.add_argument("--probe-at", default="", help="comma list of steps to probe at (default: the last)")
    m.add_argument("--seed", type=int, default=0, help="train.seed: the model's init and the masks")
    m.add_argument("--schedule", default="cosine", choices=["cosine", "constant"], help="after the warm-up")
    m.add_argument("--data", default="", help="an existing synthetic dataset folder (default: written per --style)")
    m.add_argument("overrides", nargs="*", help="config overrides, e.g. mask.ratio=0.75")
    tb = sub.add_parser("table", help="markdown table of `memory` result files")
    tb.add_argument("files", nargs="+")
    tb.add_argument("--readout", default="L3", help="L<i> (mean-pooled block i) or L<i>-time")
    tb.add_argument("--plot", default="", help="also plot each run's held-out appearance loss / predict-zero to this PNG")
    tb.add_argument("--names", default="", help="comma-separated curve names for --plot (default: file names)")
    sa = sub.add_parser("sanity", help="the patch-sized tile that every cube repeats: must be learned")
    sa.add_argument("--steps", type=int, default=500)
    sa.add_argument("--lr", type=float, default=1e-3)
    sa.add_argument("--rolling", action="store_true", help="the tile moves down 1 px per frame (motion target too)")
    sa.add_argument("--kind", default="tile", choices=["tile", "static", "reference"],
                    help="reference: the static task for a plain nn.TransformerEncoder (no motionmae code)")
    sa.add_argument("--ratio", type=float, default=0.9, help="mask ratio of --kind reference")
    sa.add_argument("--encoder-depth", type=int, default=0, help="--kind reference: an MAE encoder of this depth in front")
    sa.add_argument("--schedule", default="cosine", choices=["cosine", "constant"], help="after the warm-up")
    sa.add_argument("overrides", nargs="*", help="config overrides, e.g. model.pos_embed=sincos3d")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "memory":
        data = Path(args.data) if args.data else variant_data(Path(args.out), [kv for kv in args.style.split(";") if kv]).parent
        probe_at = tuple(int(v) for v in args.probe_at.split(",")) if args.probe_at else (args.steps,)
        res = memory_run(data, args.steps, args.lr, args.overrides, probe_at=probe_at, seed=args.seed, schedule=args.schedule)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = "memory-" + "-".join(x.replace("=", "") for x in [args.style, *args.overrides, f"s{args.steps}", f"seed{args.seed}",
                                                     "" if args.schedule == "cosine" else args.schedule] if x)
        (Path(args.out) / f"{name.replace(';', '_')}.json").write_text(json.dumps(res))
        return 0
    if args.cmd == "table":
        print(memory_table([Path(f) for f in args.files], args.readout))
        if args.plot:
            names = args.names.split(",") if args.names else [Path(f).stem for f in args.files]
            curves: Dict[str, tuple] = {}
            for name, f in zip(names, args.files):
                c = json.loads(Path(f).read_text())["curve"]
                curves[name] = ([r["step"] for r in c], [r["appearance"] for r in c], [0.0] * len(c))
            steps = sorted({s for v in curves.values() for s in v[0]})
            curves["predict zero"] = (steps, [1.0] * len(steps), [0.0] * len(steps))
            line_plot(Path(args.plot), curves, "held-out appearance loss / predict-zero loss", "step", "fraction")
        return 0
    if args.cmd == "sanity" and args.kind == "reference":
        reference_routing(args.steps, args.lr, args.ratio, encoder_depth=args.encoder_depth)
        return 0
    if args.cmd == "sanity":
        sanity_run(args.steps, args.lr, args.rolling, kind=args.kind, overrides=args.overrides, schedule=args.schedule)
        return 0

    if args.cmd == "targets":
        res = target_stats(Path(args.data), args.frames, args.stride, args.size, args.patch, args.tubelet, args.ratio, args.clips)
        print(json.dumps(res, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: List[dict] = []
    for item in args.set or ["base"]:
        name, _, rest = item.partition("=")
        extra = [kv for kv in rest.split(";") if kv] if rest else []
        res = run_variant(name, args.base, extra, out, args.config)
        results.append(res)
        print(f"{name}: held-out appearance loss {res['loss_appearance']:.4f} = {res['ratio_appearance']:.3f} of "
              f"predict-zero ({res['zero_appearance']:.4f}; (n-1)/n = {res['trivial']:.4f})"
              + (f"; motion {res['ratio_motion']:.3f}" if "ratio_motion" in res else "")
              + f"; {res['wall_s'] / 60:.1f} min", flush=True)
        (out / f"{name}.json").write_text(json.dumps(res))
    print(markdown_table(["variant", "overrides", "appearance / predict-zero", "motion / predict-zero", "predict-zero", "min"],
                         [[r["name"], " ".join(r["extra"]) or "-", f"{r['ratio_appearance']:.3f}",
                           f"{r['ratio_motion']:.3f}" if "ratio_motion" in r else "-", f"{r['zero_appearance']:.3f}",
                           f"{r['wall_s'] / 60:.1f}"] for r in results]))
    if args.plot:
        curves: Dict[str, tuple] = {r["name"]: ([s for s, _ in r["curve"]], [v for _, v in r["curve"]], [0.0] * len(r["curve"]))
                                    for r in results}
        steps = sorted({s for r in results for s, _ in r["curve"]})
        curves["predict zero"] = (steps, [1.0] * len(steps), [0.0] * len(steps))
        line_plot(Path(args.plot), curves, "appearance loss / predict-zero loss", "step", "fraction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
