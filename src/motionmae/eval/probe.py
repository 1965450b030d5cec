"""`motionmae probe`: frozen-encoder k-NN and linear probe, one score per label column.

Features (mean-pooled encoder tokens of the centre crop of `probe.views` temporal clips, `eval/features.py`)
are extracted once per (encoder, video list, clip settings) and cached as safetensors. Then, per label
column of the lists (the synthetic dataset has class, direction, speed, arrow):
- k-NN: cosine similarity, k nearest training videos vote with weight exp(cos / 0.07) (DINO), `eval/knn.py`;
- linear: BatchNorm1d(affine=False) + Linear trained with SGD on the cached features (MAE's linear probing
  with SGD instead of LARS), `eval/linear.py`.

Python: `run_probe(encoder_or_checkpoint, train_list, val_list) -> {column: {"knn": acc, "linear": acc}}`
prints a small table; `compare_probes({name: encoder_or_checkpoint}, ...)` prints one table for several.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from motionmae import config as C
from motionmae.config import ProbeConfig
from motionmae.data.labels import label_names
from motionmae.errors import UserError

EncoderLike = Union[str, os.PathLike, torch.nn.Module]


# ----------------------------------------------------------------------------------------------
# encoders and cached features


def random_encoder(model_cfg, seed: int = 0):
    """A randomly initialised encoder (the baseline a pretrained one is compared with), seeded."""
    from motionmae.models.vit import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(model_cfg).eval()


def _fingerprint_module(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    h.update(repr(getattr(model, "cfg", "")).encode())
    return h.hexdigest()


def _fingerprint_source(source: str) -> dict:
    p = Path(source)
    if p.is_file():
        return {"path": str(p.resolve()), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    if p.is_dir():
        files = sorted(str(f.relative_to(p)) + f":{f.stat().st_size}" for f in p.rglob("*") if f.is_file())
        return {"path": str(p.resolve()), "files": hashlib.sha256("\n".join(files).encode()).hexdigest()}
    return {"path": source}


def _load(encoder_or_checkpoint: EncoderLike, cfg: ProbeConfig, device):
    """(model, data config, fingerprint dict, default cache dir) for a checkpoint path or a module."""
    from motionmae.eval.features import encoder_from_state

    if isinstance(encoder_or_checkpoint, torch.nn.Module):
        model = encoder_or_checkpoint
        data = C.follow_model(cfg.data, getattr(model, "cfg", cfg.model))
        return model, data, {"module": _fingerprint_module(model)}, Path("runs") / "probe_cache"
    from motionmae.runtime.checkpoint import load_model_state, resolve_checkpoint

    path = resolve_checkpoint(encoder_or_checkpoint)
    st = path.stat()
    sd, config_dict = load_model_state(path)
    model = encoder_from_state(sd, config_dict, str(path))
    # the encoder fixes the clip shape and format; the user's config chooses the rest (root, workers, ...)
    data = C.checkpoint_data(cfg.data, config_dict)
    fp = {"checkpoint": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = path.parent.parent / "probe_cache" if path.parent.name == "checkpoints" else path.parent / "probe_cache"
    return model, data, fp, cache


def cached_features(model, fingerprint: dict, data_cfg, source: str, class_source: str, views: int, batch_size: int,
                    device, cache_dir: Optional[Path], amp: str = "auto", label: str = "", verbose: bool = True) -> dict:
    """Features of every video of `source` (see `eval.features.extract_features`), read from / written to
    `cache_dir/<key>.safetensors`, the key hashing the encoder, the list's content and every clip setting."""
    from safetensors.torch import load_file, save_file

    from motionmae.eval.features import eval_dataset, extract_features, make_loader
    from motionmae.runtime.amp import resolve_amp
    from motionmae.progress import ProgressBar

    settings = {k: getattr(data_cfg, k) for k in ("num_frames", "sampling_rate", "sampling", "input_size", "short_side",
                                                  "mean", "std", "root", "short_video")}
    amp_dtype = resolve_amp(amp, device, key="probe.amp")
    key_doc = {"encoder": fingerprint, "source": _fingerprint_source(source), "classes": class_source,
               "settings": settings, "views": views, "amp": str(amp_dtype), "version": 1}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache file is recomputed, never fatal
            pass
    dataset = eval_dataset(data_cfg, source, views, class_source)
    loader = make_loader(dataset, batch_size, data_cfg.num_workers)
    model = model.to(device).eval()
    bar = ProgressBar(len(loader), f"features {label}".strip(), enabled=verbose)
    every = 1 if bar.tty else max(len(loader) // 4, 1)  # a few lines in a log file, a live bar on a terminal
    out = extract_features(model, loader, device, data_cfg.mean, data_cfg.std, amp_dtype=amp_dtype,
                           progress=lambda i, n: bar.update(i) if i % every == 0 or i == n else None)
    bar.close()
    out["num_labels"] = torch.tensor(dataset.num_labels)
    if path is not None:
        from motionmae.files import atomic_path

        with atomic_path(path) as tmp:  # a unique temp name: two probes filling one cache never write the same file
            save_file({k: v.contiguous() for k, v in out.items()}, str(tmp), metadata={"key": json.dumps(key_doc, default=str)})
    return out


# ----------------------------------------------------------------------------------------------
# the probe


def probe_features(train: dict, val: dict, names: Sequence[str], cfg: ProbeConfig) -> Dict[str, Dict[str, float]]:
    """{column: {"knn": acc, "linear": acc}} from cached train / val features."""
    from motionmae.eval.knn import knn_accuracy
    from motionmae.eval.linear import linear_probe_accuracy

    p = cfg.probe
    results = {}
    for j, name in enumerate(names):
        ytr, yva = train["labels"][:, j], val["labels"][:, j]
        if (ytr < 0).all() or (yva < 0).all():
            continue
        num_classes = int(max(ytr.max(), yva.max())) + 1
        knn = knn_accuracy(train["features"], ytr, val["features"], yva, num_classes, p.k, p.temperature)
        lin = linear_probe_accuracy(train["features"], ytr, val["features"], yva, num_classes, epochs=p.linear_epochs,
                                    lr=p.linear_lr, batch_size=p.linear_batch_size, weight_decay=p.linear_weight_decay,
                                    seed=p.seed)
        results[name] = {"knn": knn, "linear": lin, "chance": 1.0 / num_classes}
    if not results:
        raise UserError("the probe lists carry no labels: use 'path label [label ...]' lines or class folders")
    return results


def run_probe(encoder_or_checkpoint: EncoderLike, train_list: str, val_list: str, config: Optional[ProbeConfig] = None,
              overrides: Sequence[str] = (), name: str = "", device: str = "", verbose: bool = True) -> Dict[str, Dict[str, float]]:
    """k-NN and linear probe of a frozen encoder (a module, a checkpoint file or a run directory).

    Returns {column: {"knn": acc, "linear": acc, "chance": 1/classes}}, one entry per label column of the lists,
    and prints a small table (`verbose`). `config`: a ProbeConfig (default: defaults + `overrides`, e.g.
    "probe.k=10", "data.root=..."); the clip shape comes from the encoder. `device`: '' = probe.device.
    """
    from motionmae.runtime.device import resolve_device

    cfg = config or C.load_config("", overrides, cls=ProbeConfig)
    dev = resolve_device(device or cfg.probe.device, key="probe.device")
    model, data_cfg, fp, default_cache = _load(encoder_or_checkpoint, cfg, dev)
    cache_dir = (Path(cfg.probe.cache_dir) if cfg.probe.cache_dir else default_cache) if cfg.probe.cache else None
    name = name or (Path(str(encoder_or_checkpoint)).name if not isinstance(encoder_or_checkpoint, torch.nn.Module) else "encoder")
    class_source = train_list if Path(train_list).is_dir() else ""
    kw = dict(views=cfg.probe.views, batch_size=cfg.probe.batch_size, device=dev, cache_dir=cache_dir, amp=cfg.probe.amp,
              verbose=verbose)
    train = cached_features(model, fp, data_cfg, train_list, class_source, label=f"{name} train", **kw)
    val = cached_features(model, fp, data_cfg, val_list, class_source, label=f"{name} val", **kw)
    names = label_names(train_list, int(train["num_labels"]))
    results = probe_features(train, val, names, cfg)
    if verbose:
        print(format_table({name: results}, k=cfg.probe.k))
    return results


def compare_probes(encoders: Dict[str, EncoderLike], train_list: str, val_list: str, **kwargs) -> Dict[str, dict]:
    """`run_probe` for each named encoder, then one table with a row per (encoder, method)."""
    verbose = kwargs.pop("verbose", True)
    results = {n: run_probe(e, train_list, val_list, name=n, verbose=False, **kwargs) for n, e in encoders.items()}
    if verbose:
        cfg = kwargs.get("config")
        print(format_table(results, k=cfg.probe.k if cfg else ProbeConfig().probe.k))
    return results


def format_table(results: Dict[str, Dict[str, Dict[str, float]]], k: int = 20) -> str:
    """Rows: encoder x {k-NN, linear}; columns: label columns; accuracies in %, chance in the last row."""
    columns = list(dict.fromkeys(c for r in results.values() for c in r))
    width = max([len(n) for n in results] + [8]) + 10
    head = f"{'probe accuracy (%)':<{width}}" + "".join(f"{c:>11}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        for method, label in (("knn", f"k-NN k={k}"), ("linear", "linear")):
            row = f"{name + '  ' + label:<{width}}"
            row += "".join(f"{100 * res[c][method]:>11.1f}" if c in res else f"{'-':>11}" for c in columns)
            lines.append(row)
    any_res = next(iter(results.values()))
    lines.append(f"{'chance':<{width}}" + "".join(f"{100 * any_res[c]['chance']:>11.1f}" if c in any_res else f"{'-':>11}"
                                                  for c in columns))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a motionmae checkpoint (.safetensors) or run directory")
    src.add_argument("--random-init", action="store_true", help="a randomly initialised encoder of --config's architecture")
    parser.add_argument("--train", required=True, help="labelled training list (or class folders) for k-NN / the linear probe")
    parser.add_argument("--val", required=True, help="labelled evaluation list (or class folders)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    C.add_config_arguments(parser, "architecture for --random-init; probe and data settings",
                           "e.g. probe.k=10 probe.views=2 probe.cache=false probe.device=cpu data.root=... model.size=small")


def run(args) -> int:
    if args.random_init and not args.config and not any(o.startswith("model.") for o in args.overrides):
        raise UserError("--random-init needs the architecture: --config PRESET (e.g. motionmae-sha-small) or model.* overrides")
    checkpoint_config = None
    if args.checkpoint:
        from motionmae.runtime.checkpoint import load_model_state

        checkpoint_config = load_model_state(args.checkpoint)[1]
    cfg = C.load_config(args.config, args.overrides, ProbeConfig, checkpoint_config)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    target = random_encoder(cfg.model, cfg.probe.seed) if args.random_init else args.checkpoint
    d, depth, _ = cfg.model.dims()
    name = f"random init (dim {d}, depth {depth})" if args.random_init else Path(args.checkpoint).name
    results = run_probe(target, args.train, args.val, config=cfg, name=name)
    if args.json:
        from motionmae.files import write_json

        print(f"wrote {write_json(args.json, results, indent=2)}")
    return 0
