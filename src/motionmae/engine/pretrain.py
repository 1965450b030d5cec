"""`motionmae pretrain`: the MotionMAE / VideoMAE pretraining loop.

One optimiser step = `accum_steps` micro-batches of `batch_size` videos (x `num_samples` clips each) on
every rank; the lr follows the linear scaling rule on that global batch, with warm-up + cosine per step.
Everything random is a function of the config seed: the data (the dataset seeds each clip from
(seed, epoch, index)), the sampler order ((seed, epoch)), and the masks (seeded per clip from
(seed, epoch, index, repeat)). Masks are tied to the clip, not to the rank or the batch slot, so
2 ranks x batch b follow the same trajectory as 1 rank x batch 2b, and a resumed run repeats the
uninterrupted one exactly.

Run directory (`train.output_dir`): `config.yaml`, `metrics.jsonl`, `tb/`, `checkpoints/`, `pictures/`.
A run restarted in the same directory continues from `checkpoints/last.safetensors` (`--resume auto`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as globlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from motionmae import config as C
from motionmae.engine import checkpoint as ck
from motionmae.engine import distributed as D
from motionmae.engine.logger import MetricLogger, ProgressBar
from motionmae.engine.optim import LossScaler, build_optimizer, lr_at, scaled_lr, set_lr
from motionmae.errors import UserError
from motionmae.models.state import load_matching


class NonFiniteLossError(UserError):
    """The loss (or gradient) became NaN/inf; the run stops and its checkpoints are left untouched."""


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="", metavar="PRESET_OR_YAML",
                        help="a preset name (motionmae-sha-base, videomae-base, pretrain-ssv2, pretrain-k400, pretrain-ucf101, demo, ...) or a YAML file; default: the built-in defaults")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="config overrides, e.g. data.train=lists/train.csv train.batch_size=16 model.size=small")
    parser.add_argument("--resume", default="auto", metavar="PATH|auto|none",
                        help="continue from a checkpoint file or run directory; auto (default): from OUTPUT_DIR's last checkpoint if there is one")


def run(args) -> int:
    cfg = C.load_config(args.config, args.overrides)
    summary = pretrain(cfg, resume=args.resume)
    return 143 if summary.get("stopped") else 0  # 128 + SIGTERM: the run is not finished


# ----------------------------------------------------------------------------------------------
# pieces


def build_model(cfg: C.PretrainConfig) -> torch.nn.Module:
    from motionmae.models.pretrain import PretrainModel

    return PretrainModel(cfg)


def init_weights_from(model: torch.nn.Module, path: str) -> None:
    """Load every tensor of a checkpoint's model into `model`; any missing, extra or mis-shaped key is an error."""
    sd, _ = ck.load_model_state(path)
    load_matching(model, sd, f"train.init={path}", hint="convert it with the same model.decoder, or check model.* settings")


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `train.amp`: 'none' -> None (fp32); 'bf16' -> bfloat16; 'fp16' -> float16 (training
    adds loss scaling; VideoMAE's own setting); 'auto' -> bfloat16 on CUDA GPUs that support it, float16 on
    older ones (V100, T4), bfloat16 on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32."""
    fixed = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp in fixed:
        return fixed[amp]
    if amp != "auto":
        raise UserError(f"train.amp='{amp}' is not one of auto, bf16, fp16, none")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_native_bf16() else None
    return None


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sync_clip_shape(cfg: C.PretrainConfig) -> C.PretrainConfig:
    """data.num_frames / data.input_size follow model.num_frames / model.img_size, unless set to a conflicting value."""
    defaults, changes = C.DataConfig(), {}
    for dkey, mkey in (("num_frames", "num_frames"), ("input_size", "img_size")):
        dv, mv = getattr(cfg.data, dkey), getattr(cfg.model, mkey)
        if dv == mv:
            continue
        if dv != getattr(defaults, dkey):
            raise UserError(f"data.{dkey}={dv} does not match model.{mkey}={mv}; set model.{mkey} (data.{dkey} follows it)")
        changes[dkey] = mv
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes)) if changes else cfg


def check_data_source(data_cfg: C.DataConfig) -> None:
    """Fail early, with the key named, when data.train is unset or points at nothing."""
    spec = data_cfg.train
    if not spec:
        raise UserError("data.train is not set: pass data.train=PATH (an annotation list, a folder of videos or class folders, or a glob)")
    if any(ch in spec for ch in "*?["):
        if not globlib.glob(spec, recursive=True):
            raise UserError(f"data.train={spec}: the glob matches no files")
        return
    p = Path(spec)
    if not p.is_absolute() and data_cfg.root and not p.exists():
        p = Path(data_cfg.root) / spec
    if not p.exists():
        raise UserError(f"data.train={spec}: no such file or directory")


def clip_masks(cfg: C.PretrainConfig, index: torch.Tensor, epoch: int, device) -> torch.Tensor:
    """Boolean (B, N) masks, True = masked; clip b's mask is drawn from a generator seeded by
    (seed, epoch, index[b], r), r counting earlier clips of the same video in this batch (repeated sampling)."""
    from motionmae.objective.masking import make_mask

    grid = cfg.model.grid()
    seen: dict = {}
    rows = []
    for i in index.tolist():
        r = seen.get(i, 0)
        seen[i] = r + 1
        g = torch.Generator().manual_seed(D.derive_seed(cfg.train.seed, epoch, i, r))
        rows.append(make_mask(cfg.mask.kind, 1, grid, cfg.mask.ratio, g))
    return torch.cat(rows).to(device, non_blocking=True)


@dataclass
class Plan:
    """The numbers that follow from the config and the world size (printed at start)."""

    global_batch: int
    lr: float  # peak; min_lr and warmup_lr are scaled by the same global_batch / 256 (as VideoMAE does)
    min_lr: float
    warmup_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def make_plan(cfg: C.PretrainConfig, num_videos: int, world: int) -> Plan:
    t = cfg.train
    if t.batch_size < 1 or t.accum_steps < 1:
        raise UserError(f"train.batch_size={t.batch_size} and train.accum_steps={t.accum_steps} must be >= 1")
    videos_per_step = t.batch_size * t.accum_steps * world
    steps_per_epoch = (num_videos // world) // (t.batch_size * t.accum_steps)
    if steps_per_epoch == 0:
        raise UserError(f"data.train has {num_videos} videos, fewer than one optimiser step needs "
                        f"(train.batch_size={t.batch_size} x train.accum_steps={t.accum_steps} x {world} ranks = {videos_per_step}); "
                        "lower train.batch_size or add videos")
    global_batch = videos_per_step * cfg.data.num_samples
    total = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
    warmup = t.warmup_steps if t.warmup_steps > 0 else int(round(t.warmup_epochs * steps_per_epoch))
    return Plan(global_batch, scaled_lr(t.base_lr, global_batch), scaled_lr(t.min_lr, global_batch), scaled_lr(t.warmup_lr, global_batch),
                steps_per_epoch, total, min(warmup, total))


# ----------------------------------------------------------------------------------------------
# the loop


def pretrain(cfg: C.PretrainConfig, resume: str = "auto") -> dict:
    """Train per `cfg`; returns a summary dict (final step, last loss, run dir, checkpoint path, clips/s)."""
    info = D.init_distributed(cfg.train.device)
    stop_request, previous = _catch_sigterm()
    try:
        return _pretrain(cfg, info, resume, stop_request)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        D.cleanup()


def _pretrain(cfg: C.PretrainConfig, info: D.DistInfo, resume: str, stop_request: dict) -> dict:
    from motionmae.data.datasets import build_dataset, collate
    from motionmae.data.loader import Batches, make_loader
    from motionmae.data.transforms import to_model_input

    t, device, main = cfg.train, info.device, info.is_main
    run_dir = Path(t.output_dir)
    say = print if main else (lambda *a, **k: None)

    cfg = sync_clip_shape(cfg)
    check_data_source(cfg.data)
    extra = cfg.objective.motion_gap if cfg.objective.motion_pad == "extra_frame" else 0
    dataset = build_dataset(cfg.data, "train", "pretrain", seed=t.seed, extra_frames=extra)
    plan = make_plan(cfg, len(dataset), info.world_size)
    amp_dtype = resolve_amp(t.amp, device)

    # ---- model and optimiser: identical init on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(t.seed)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, lr=plan.lr, weight_decay=t.weight_decay, betas=t.betas)
    scaler = LossScaler(amp_dtype, device)
    torch.manual_seed(D.derive_seed(t.seed, info.rank))  # any global-RNG use (drop path) differs per rank

    # ---- resume (or start from given weights)
    step, epoch, pos = 0, 0, 0  # pos: micro-batches of `epoch` already consumed
    ckpt_path = _resume_path(resume, run_dir)
    if ckpt_path is None and t.init:
        init_weights_from(model, t.init)
        say(f"initialised from {t.init}")
    if ckpt_path is not None:
        state = ck.load_checkpoint(ckpt_path, model, optimizer, restore_rng=info.world_size == 1)
        step, epoch, pos = state["step"], state["epoch"], state["epoch_pos"]
        scaler.load_state_dict(state.get("loss_scaler", {}))
        _warn_config_changes(state.get("config", {}), cfg, say)
        say(f"resumed from {ckpt_path} at step {step} (epoch {epoch}, batch {pos})")
    if info.world_size > 1:  # every rank must continue from the same checkpoint (rank 0 writes it; others read it)
        spread = D.all_reduce_max(torch.tensor([float(step), -float(step)]))
        if spread[0] != -spread[1]:
            raise UserError(f"ranks disagree on the checkpoint to resume from (steps {int(-spread[1])}..{int(spread[0])}): "
                            f"train.output_dir={run_dir} must be on a file system shared by all nodes, or pass --resume PATH readable by all")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, run_dir / "config.yaml")
    D.barrier()

    ddp = info.world_size > 1
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if ddp else model

    sampler = D.ShardedSampler(len(dataset), info.world_size, info.rank, shuffle=True, seed=t.seed, drop_last=True)
    micro_per_epoch = plan.steps_per_epoch * t.accum_steps
    loader_gen = torch.Generator().manual_seed(D.derive_seed(t.seed, info.rank, 1))  # keeps DataLoader off the global RNG

    logger = MetricLogger(run_dir, enabled=main, resume_step=step if ckpt_path is not None else None)
    say(f"pretraining {_describe(cfg)} on {device} x {info.world_size} rank(s), amp={amp_dtype or 'fp32'}")
    say(f"  {len(dataset)} videos; effective batch {plan.global_batch} clips = {t.batch_size} x {t.accum_steps} accum x "
        f"{info.world_size} ranks x {cfg.data.num_samples} samples; lr = {t.base_lr:g} x {plan.global_batch}/256 = {plan.lr:.3e} "
        f"(min {plan.min_lr:.2e}, warm-up from {plan.warmup_lr:.2e})")
    say(f"  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), warm-up {plan.warmup_steps}; run dir {run_dir}")
    bar = ProgressBar(plan.total_steps, "pretrain", enabled=main, initial=step)

    params = [p for p in model.parameters() if p.requires_grad]
    last_ckpt = ckpt_path
    skipped_epoch = 0
    clips_done, t_start = 0, time.perf_counter()
    summary: dict = {"run_dir": str(run_dir)}
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    net.train()

    while step < plan.total_steps:
        if pos >= micro_per_epoch:
            epoch, pos = epoch + 1, 0
        if pos == 0:
            skipped_epoch = 0
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, start=pos * t.batch_size)
        loader = make_loader(dataset, t.batch_size, cfg.data.num_workers, sampler=sampler, collate_fn=collate, drop_last=True,
                             pin_memory=device.type == "cuda", generator=loader_gen, train=True)
        with Batches(loader) as batches:  # workers are reaped on every way out, errors included
            while pos < micro_per_epoch and step < plan.total_steps:
                t0 = time.perf_counter()
                sums = torch.zeros(6, dtype=torch.float64)  # loss, appearance, motion, grad norm, skipped videos, stop request
                for micro in range(t.accum_steps):
                    batch = next(batches)
                    x = to_model_input(batch["video"], cfg.data.mean, cfg.data.std, device)
                    mask = clip_masks(cfg, batch["index"], epoch, device)
                    sync = micro == t.accum_steps - 1 or not ddp
                    with (contextlib.nullcontext() if sync else net.no_sync()):
                        with autocast():
                            out = net(x, mask)
                        scaler.backward(out["loss"] / t.accum_steps)
                    sums[:3] += torch.tensor([out["loss"].item(), _item(out, "loss_appearance"), _item(out, "loss_motion")], dtype=torch.float64)
                    sums[4] += int(batch.get("skipped", 0))
                    clips_done += x.shape[0]
                    pos += 1
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad if t.clip_grad > 0 else float("inf"))
                sums[3], sums[5] = float(norm), float(stop_request["signal"] is not None)
                # one small collective: mean losses over ranks, and every rank sees the same finiteness / stop verdict
                red = D.all_reduce_mean(sums) if ddp else sums
                loss, loss_a, loss_m = (red[:3] / t.accum_steps).tolist()
                skipped_epoch += int(round(float(red[4]) * info.world_size))
                stop = float(red[5]) > 0
                # with fp16 an inf/nan gradient is an overflow: the scaler skips that step and lowers the scale
                if not (math.isfinite(loss) and (scaler.enabled or math.isfinite(float(red[3])))):
                    bar.close()
                    logger.close()
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise NonFiniteLossError(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} "
                                             f"(epoch {epoch}); stopping, {where}. Lower train.base_lr, set train.clip_grad, or try train.amp=none")
                lr = lr_at(step, plan.total_steps, plan.warmup_steps, plan.lr, plan.min_lr, plan.warmup_lr)
                set_lr(optimizer, lr)
                scaler.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                dt = time.perf_counter() - t0

                if step % t.log_every == 0 or step == plan.total_steps:
                    rate = clips_done * info.world_size / (time.perf_counter() - t_start)
                    row = {"loss": loss, "loss_appearance": loss_a, "loss_motion": loss_m, "lr": lr, "grad_norm": float(red[3]),
                           "epoch": epoch, "clips_per_s": rate, "step_time": dt, "skipped_videos_epoch": skipped_epoch,
                           "peak_mem_mb": peak_memory_mb(device)}
                    if scaler.enabled:
                        row["loss_scale"] = scaler.scale()
                    logger.log(step, row)
                    bar.update(step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                    summary.update(loss=loss, clips_per_s=rate, peak_mem_mb=row["peak_mem_mb"])
                epoch_done = pos >= micro_per_epoch
                if epoch_done and main and skipped_epoch:
                    bar.write(f"epoch {epoch}: skipped {skipped_epoch} unreadable video(s) (see warnings above)")
                if step % t.save_every == 0 or step == plan.total_steps or stop:
                    state = {"step": step, "epoch": epoch, "epoch_pos": pos, "config": C.to_dict(cfg), "world_size": info.world_size,
                             "loss_scaler": scaler.state_dict()}
                    if main:
                        last_ckpt = ck.save_run_checkpoint(run_dir, step, model, optimizer, state,
                                                           numbered=step % t.save_every == 0, keep_last=t.keep_last)
                    D.barrier()
                # viz_every > 0: every so many steps and at the end; 0: at the end only; < 0: never
                if main and t.viz_every >= 0 and (step == plan.total_steps or (t.viz_every > 0 and step % t.viz_every == 0)):
                    _pictures(cfg, model, dataset, run_dir, step, device, amp_dtype, bar)
                if stop:
                    break
        if stop:
            bar.close()
            logger.close()
            say(f"stopped by signal at step {step}/{plan.total_steps}; saved {last_ckpt}; run the same command again to continue")
            summary.update(step=step, checkpoint=str(last_ckpt), epoch=epoch, stopped=True)
            return summary

    bar.close()
    logger.close()
    summary.update(step=step, checkpoint=str(last_ckpt) if last_ckpt else None, epoch=epoch)
    if main:
        print(f"done: {step} steps, {summary.get('clips_per_s', 0):.1f} clips/s, peak memory {summary.get('peak_mem_mb', 0):.0f} MB; "
              f"checkpoint {last_ckpt}; metrics {run_dir / 'metrics.jsonl'}; pictures {run_dir / 'pictures'}")
    return summary


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on a GPU, resident set size on a CPU (0 if unknown)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _catch_sigterm():
    """SIGTERM (cluster preemption, `kill`) asks the loop to finish the current step, save `last` and return.
    Returns ({"signal": None until it arrives}, the previous handler or None). Only the main thread can
    install handlers (elsewhere SIGTERM keeps its default)."""
    box: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        return box, None

    def handler(signum, frame):
        box["signal"] = signum

    return box, signal.signal(signal.SIGTERM, handler)


def _item(out: dict, key: str) -> float:
    v = out.get(key)
    return float(v.detach().float()) if torch.is_tensor(v) else float(v or 0.0)


def _resume_path(resume: str, run_dir: Path) -> Optional[Path]:
    if resume in ("", "none", "no", "false"):
        return None
    if resume == "auto":
        return ck.find_last(run_dir)
    return ck.resolve_checkpoint(resume)


def _warn_config_changes(saved: dict, cfg: C.PretrainConfig, say) -> None:
    """A resumed run with a different model/data/batch setup is not a continuation; say which keys changed."""
    now = C.to_dict(cfg)
    changed = [f"{sec}.{k}" for sec in ("model", "mask", "objective", "data", "train") for k in now.get(sec, {})
               if sec in saved and k in saved[sec] and saved[sec][k] != now[sec][k]]
    if changed:
        say(f"note: resuming with changed config keys: {', '.join(changed)}")


def _describe(cfg: C.PretrainConfig) -> str:
    d, n, h = cfg.model.dims()
    return (f"ViT (dim {d}, depth {n}) {cfg.model.num_frames}x{cfg.model.img_size}, decoder={cfg.model.decoder}, "
            f"mask={cfg.mask.kind}@{cfg.mask.ratio}")


def _pictures(cfg, model, dataset, run_dir: Path, step: int, device, amp_dtype, bar) -> None:
    """Reconstruction pictures of the first training video (a fixed clip, so pictures are comparable across steps)."""
    from motionmae import viz

    try:
        paths = viz.reconstruction_pictures_from_dataset(model, cfg, dataset, run_dir / "pictures", f"step_{step:08d}", device, amp_dtype)
    except UserError as e:  # pictures must never stop a run
        bar.write(f"pictures skipped: {e}")
        return
    bar.write(f"pictures: {paths[0]}")
