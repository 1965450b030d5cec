"""The training loop, once: pretraining and fine-tuning are `Task`s it runs.

The `Trainer` owns what every training run needs: the plan (global batch, lr scaling, schedule length), model
wrapping (runtime/parallel.py), gradient accumulation, autocast and fp16 loss scaling, the lr schedule, the
non-finite stop, checkpoints and resume (runtime/checkpoint.py `Checkpointer`), SIGTERM, logs and the progress
bar. A task supplies what differs: its dataset and model, `step(net, batch, at) -> {name: scalar tensor}` (the
"loss" to back-propagate plus anything else to log, each averaged over micro-steps and ranks), and
`after_step` hooks (pictures, evaluation).

One optimiser step = `accum_steps` micro-batches of `batch_size` videos (x `num_samples` clips each) on every
rank; lr, min_lr and warmup_lr follow the linear scaling rule on that global batch (VideoMAE), with warm-up +
cosine per step. Everything random is a function of the seed: the data (the dataset seeds each clip from
(seed, epoch, index)), the order ((seed, epoch)), and whatever a task draws per clip or per step, so
2 ranks x batch b follow the same trajectory as 1 rank x batch 2b, and a resumed run repeats the uninterrupted
one exactly.

Run directory (`train.output_dir`): `config.yaml`, `metrics.jsonl`, `tb/`, `checkpoints/`, and what the task's
hooks write. A run restarted in the same directory continues from `checkpoints/last.safetensors` (`resume="auto"`).
"""

from __future__ import annotations

import errno
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from motionmae import config as C
from motionmae.data.datasets import collate
from motionmae.data.loader import Batches, make_loader
from motionmae.engine.optim import LossScaler, build_optimizer, lr_at, scaled_lr, set_lr
from motionmae.errors import UserError
from motionmae.runtime import distributed as D
from motionmae.runtime.amp import autocast, resolve_amp
from motionmae.runtime.checkpoint import CKPT_DIR, Checkpointer, ShardedCheckpointer, newest_intact, read_state, remove_stale_temps
from motionmae.runtime.device import peak_memory_mb
from motionmae.runtime.logger import MetricLogger
from motionmae.runtime.parallel import Parallel
from motionmae.progress import ProgressBar
from motionmae.runtime.rundir import RunLock, check_output_dir, checkpoint_bytes


class NonFiniteLossError(UserError):
    """The loss (or gradient) became NaN/inf; the run stops and its checkpoints are left untouched."""


# ----------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    """The numbers that follow from the config and the world size (printed at start)."""

    global_batch: int  # clips per optimiser step
    lr: float  # peak; min_lr and warmup_lr are scaled by the same lr_batch / 256 (as VideoMAE does)
    min_lr: float
    warmup_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr_batch: int = 0  # what the lr scales by: global_batch, or the videos per step (Task.lr_per_video)
    warmup_asked: int = 0  # the warm-up the config asks for, when it is longer than the run (then cut to total_steps)

    def schedule(self) -> dict:
        """What defines the lr schedule; saved in checkpoints so that a resume onto another schedule is named."""
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "lr": self.lr, "min_lr": self.min_lr,
                "warmup_lr": self.warmup_lr, "global_batch": self.global_batch}

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.lr, self.min_lr, self.warmup_lr)


def make_plan(cfg, num_videos: int, world: int, lr_per_video: bool = False) -> Plan:
    """`cfg`: any config with `train` and `data` sections. `lr_per_video`: the lr scales by the videos per step rather
    than the clips (they differ with data.num_samples > 1)."""
    t = cfg.train
    videos_per_step = t.batch_size * t.accum_steps * world
    steps_per_epoch = (num_videos // world) // (t.batch_size * t.accum_steps)
    if steps_per_epoch == 0:
        raise UserError(f"data.train has {num_videos} videos, fewer than one optimiser step needs "
                        f"(train.batch_size={t.batch_size} x train.accum_steps={t.accum_steps} x {world} ranks = {videos_per_step}); "
                        "lower train.batch_size or add videos")
    global_batch = videos_per_step * cfg.data.num_samples
    total = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
    warmup = t.warmup_steps if t.warmup_steps > 0 else int(round(t.warmup_epochs * steps_per_epoch))
    lr_batch = videos_per_step if lr_per_video else global_batch
    return Plan(global_batch, scaled_lr(t.base_lr, lr_batch), scaled_lr(t.min_lr, lr_batch), scaled_lr(t.warmup_lr, lr_batch),
                steps_per_epoch, total, min(warmup, total), lr_batch, warmup if warmup > total else 0)


# ----------------------------------------------------------------------------------------------
# what a task supplies


@dataclass
class At:
    """Where a micro-step is: the optimiser step it belongs to (counted from 0), its micro-step, the epoch."""

    step: int
    micro: int
    epoch: int


class Task:
    """What differs between pretraining and fine-tuning. `kind` is stored in checkpoints ("pretrain",
    "finetune"); a run only resumes from its own kind. `noun` names the task in messages."""

    kind = ""
    noun = ""
    other_kind_hint = ""  # appended to the error when train.output_dir holds another kind of run
    lr_per_video = False  # the lr scales by clips per step (False) or by videos per step (True)

    def __init__(self, cfg):
        self.cfg = cfg
        self.info: Optional[D.DistInfo] = None  # set by the Trainer: rank, world size, device

    def build_dataset(self):
        """The training dataset (items collated by `data.datasets.collate`): map-style (lists) or streaming
        (`data.shards.ShardDataset`); `set_epoch` is called on it (see `TrainData`)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """The model, built under `torch.manual_seed(train.seed)` (the same weights on every rank)."""
        raise NotImplementedError

    def lr_scale(self) -> Optional[Callable[[str], float]]:
        """Per-parameter lr multiplier (layer-wise decay), or None."""
        return None

    def init_weights(self, model: torch.nn.Module, say) -> None:
        """A new run (not a resume): load the weights it starts from, if any."""

    def step(self, net: torch.nn.Module, batch: dict, at: At) -> Dict[str, torch.Tensor]:
        """Forward one micro-batch (under autocast): {"loss": ..., other scalars to log}."""
        raise NotImplementedError

    def describe(self) -> str:
        """What is trained, for the first line printed."""
        return ""

    def details(self) -> str:
        """A line of task settings printed at start ('' for none)."""
        return ""

    def state(self) -> dict:
        """JSON saved with each checkpoint besides the trainer's own (labels, classes, ...)."""
        return {}

    def after_step(self, trainer: "Trainer", step: int, final: bool) -> None:
        """After each optimiser step (and its checkpoint): pictures, evaluation, ..."""

    def evaluate(self, trainer: "Trainer", step: int) -> dict:
        """Evaluate `trainer.model` (fine-tuning: multi-view testing on data.val)."""
        raise UserError(f"{self.noun} has no evaluation")

    def done(self, summary: dict) -> str:
        """The last line printed."""
        return f"done: {summary['step']} steps; checkpoint {summary.get('checkpoint')}"


# ----------------------------------------------------------------------------------------------
# where the run is in the data


class TrainData:
    """The training batches and where the run is in them: the epoch, micro-batches of it consumed, unreadable videos
    skipped in it; its `state_dict` goes into every checkpoint (exact resume). The one place that knows what kind
    of dataset it reads: a map-style one (annotation lists) is cut by a `ShardedSampler`; a streaming one
    (`data.shards.ShardDataset`, WebDataset shards) splits each epoch across ranks and workers itself and is told
    where to start (`set_epoch(epoch, start)`), exactly when ranks, workers and batch size are those of the
    interrupted run."""

    def __init__(self, dataset, cfg, info: D.DistInfo, micro_per_epoch: int):
        t = cfg.train
        self.dataset, self.batch_size, self.num_workers = dataset, t.batch_size, cfg.data.num_workers
        self.micro_per_epoch, self.pin_memory = micro_per_epoch, info.device.type == "cuda"
        self.streaming = self.is_streaming(dataset)
        self.sampler = None if self.streaming else D.ShardedSampler(len(dataset), info.world_size, info.rank, shuffle=True,
                                                                    seed=t.seed, drop_last=True)
        self.generator = torch.Generator().manual_seed(D.derive_seed(t.seed, info.rank, 1))  # keeps DataLoader off the global RNG
        self.epoch, self.pos, self.skipped = 0, 0, 0

    @staticmethod
    def is_streaming(dataset) -> bool:
        return isinstance(dataset, torch.utils.data.IterableDataset)

    @staticmethod
    def num_videos(dataset) -> int:
        """Videos in one epoch over all ranks (what the plan divides)."""
        return dataset.num_videos if TrainData.is_streaming(dataset) else len(dataset)

    @property
    def epoch_done(self) -> bool:
        return self.pos >= self.micro_per_epoch

    def batches(self) -> Batches:
        """This epoch's batches from the current position (the next epoch's when this one is used up); a context
        manager that reaps the loader's workers on every way out."""
        if self.epoch_done:
            self.epoch, self.pos, self.skipped = self.epoch + 1, 0, 0
        start = self.pos * self.batch_size
        if self.streaming:
            self.dataset.set_epoch(self.epoch, start=start)
        else:
            self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=start)
        loader = make_loader(self.dataset, self.batch_size, self.num_workers, sampler=self.sampler, collate_fn=collate,
                             drop_last=True, pin_memory=self.pin_memory, generator=self.generator, train=True)
        return Batches(loader)

    def next(self, batches: Batches) -> dict:
        batch = next(batches)
        self.pos += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "epoch_pos": self.pos, "skipped_epoch": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.skipped = state["epoch"], state["epoch_pos"], state.get("skipped_epoch", 0)


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """`Trainer(cfg, task).fit(resume)`; `cfg` has `train` and `data` sections (PretrainConfig, FinetuneConfig)."""

    def __init__(self, cfg, task: Task):
        self.cfg, self.task = cfg, task
        self.info: Optional[D.DistInfo] = None
        self.amp_dtype: Optional[torch.dtype] = None
        self.model: Optional[torch.nn.Module] = None
        self.summary: dict = {}
        self.bar: Optional[ProgressBar] = None
        self.logger: Optional[MetricLogger] = None
        self.lock: Optional[RunLock] = None
        self.parallel: Optional[Parallel] = None

    def say(self, *args) -> None:
        if self.info is None or self.info.is_main:
            print(*args)

    def fit(self, resume: str = "auto") -> dict:
        """Train; returns a summary (run dir, step, last losses, clips/s, checkpoint; "stopped" after SIGTERM)."""
        self.info = self.task.info = D.init_distributed(self.cfg.train.device)
        stop_request, previous = _catch_sigterm()
        self.lock = RunLock(self.cfg.train.output_dir)
        try:
            return self._fit(resume, stop_request)
        except OSError as e:
            if e.errno not in _WRITE_ERRORS:
                raise
            # a full disk or a read-only file system met by a log line, a picture or a checkpoint
            good = newest_intact(self.cfg.train.output_dir)
            kept = f"the last good checkpoint is {good}" if good else "no checkpoint of this run is on disk yet"
            raise UserError(f"could not write {e.filename or 'in train.output_dir=' + str(self.cfg.train.output_dir)}: "
                            f"{e.strerror}; {kept}") from None
        finally:
            self.lock.release()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            D.cleanup()

    def evaluate(self, resume: str = "auto") -> dict:
        """Evaluate the checkpoint `resume` names (default: the run's last) with the task's `evaluate`, no training;
        returns {"step", "eval"}."""
        self.info = self.task.info = D.init_distributed(self.cfg.train.device)
        try:
            t = self.cfg.train
            self.amp_dtype = resolve_amp(t.amp, self.info.device)
            self.task.build_dataset()
            torch.manual_seed(t.seed)
            self.model = self.task.build_model().to(self.info.device)
            checkpointer = make_checkpointer(t, t.output_dir, self.info)
            path = checkpointer.resume_path(resume)
            if path is None:
                raise UserError(f"no checkpoint to evaluate in {t.output_dir} (pass --resume PATH)")
            self._check_kind(path)
            step = checkpointer.load(path, self.model).get("step", 0)
            self.say(f"evaluating {path} at step {step}")
            return {"step": step, "eval": self.task.evaluate(self, step)}
        finally:
            D.cleanup()

    def _check_kind(self, path) -> None:
        kind = read_state(path).get("kind", "pretrain")
        if kind != self.task.kind:
            raise UserError(f"{path} is not a {self.task.noun} checkpoint (it holds a {kind} run): set train.output_dir "
                            f"to a directory of its own{self.task.other_kind_hint}")

    def eval_model(self) -> torch.nn.Module:
        """The model whole on this rank, for evaluation and pictures: `self.model`, or under FSDP a plain copy with the
        gathered weights (an all-gather: every rank calls this together, then may run it alone)."""
        if self.parallel is None or self.parallel.sharded is None:
            return self.model
        device = self.info.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's generators go on
            plain = self.task.build_model().to(device)
        plain.load_state_dict(self.parallel.full_state_dict())
        return plain.eval()

    def log(self, step: int, metrics: dict, prefix: str = "") -> None:
        self.logger.log(step, metrics, prefix)

    def log_image(self, step: int, name: str, path) -> None:
        """A picture the task wrote (PNG) to every logger that shows pictures (TensorBoard, W&B, MLflow)."""
        self.logger.log_image(step, name, path)

    def _fit(self, resume: str, stop_request: dict) -> dict:
        cfg, task, info = self.cfg, self.task, self.info
        t, device = cfg.train, info.device
        run_dir = Path(t.output_dir)
        dataset = task.build_dataset()
        plan = make_plan(cfg, TrainData.num_videos(dataset), info.world_size, task.lr_per_video)
        amp_dtype = self.amp_dtype = resolve_amp(t.amp, device)

        # ---- the model: identical init on every rank (DDP also broadcasts rank 0's weights)
        torch.manual_seed(t.seed)
        model = self.model = task.build_model().to(device)
        scaler = LossScaler(amp_dtype, device)
        torch.manual_seed(D.derive_seed(t.seed, info.rank))  # any global-RNG use (drop path) differs per rank
        data = TrainData(dataset, cfg, info, plan.steps_per_epoch * t.accum_steps)

        # ---- one run per directory (a second one refuses before it reads or writes anything there); outputs
        # checked before the compute is spent: writable, room for a checkpoint (numbered + `last`)
        D.on_main_then_share(self.lock.acquire)
        D.on_main_then_share(lambda: _check_outputs(run_dir, 2 * checkpoint_bytes(model)))

        # ---- which checkpoint to continue from; every rank must agree before any of them reads it
        checkpointer = make_checkpointer(t, run_dir, info)
        ckpt_path = checkpointer.resume_path(resume)
        step = 0
        if ckpt_path is not None:
            self._check_kind(ckpt_path)
            step = int(read_state(ckpt_path).get("step", 0))
        if info.world_size > 1:  # (rank 0 writes checkpoints; others read them)
            spread = D.all_reduce_max(torch.tensor([float(step), -float(step)]))
            if spread[0] != -spread[1]:
                raise UserError(f"ranks disagree on the checkpoint to resume from (steps {int(-spread[1])}..{int(spread[0])}): "
                                f"train.output_dir={run_dir} must be on a file system shared by all nodes, or pass --resume PATH readable by all")
        if step >= plan.total_steps:  # a finished run started again: nothing to train, and say so
            self.say(f"{task.noun} in {run_dir} is complete: step {step} of {plan.total_steps} (checkpoint {ckpt_path}); "
                     "nothing to do. To train longer raise train.max_steps or train.epochs (the schedule change is "
                     "named); to start over use another train.output_dir or --resume none")
            return {"run_dir": str(run_dir), "step": step, "checkpoint": str(ckpt_path), "complete": True, **task.state()}
        if plan.warmup_asked:
            self.say(f"warning: the warm-up ({plan.warmup_asked} steps: train.warmup_steps / train.warmup_epochs) is longer than "
                     f"the run ({plan.total_steps} steps); it is cut to the run, which then ends at the peak lr without "
                     "the cosine decay: shorten the warm-up or lengthen the run")
        if ckpt_path is None:
            task.init_weights(model, self.say)

        # ---- wrapped (DDP / FSDP, compile), then the optimiser over the parameters as wrapped (FSDP: this rank's
        # shards), then the checkpoint into both
        parallel = self.parallel = Parallel(t.parallel, info, t.compile, amp_dtype)
        net = parallel.wrap(model)
        optimizer = build_optimizer(model, lr=plan.lr, weight_decay=t.weight_decay, betas=t.betas, lr_scale_fn=task.lr_scale())
        if ckpt_path is not None:
            state = checkpointer.load(ckpt_path, model, optimizer, restore_rng=True)
            data.load_state_dict(state)
            scaler.load_state_dict(state.get("loss_scaler", {}))
            _note_config_changes(state.get("config", {}), cfg, self.say)
            _note_schedule_change(state.get("plan"), plan, step, self.say)
            self.say(f"resumed from {ckpt_path} at step {step} (epoch {data.epoch}, batch {data.pos})")
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            C.save_config(cfg, run_dir / "config.yaml")
        D.barrier()

        self.logger = MetricLogger(run_dir, t.loggers, enabled=info.is_main, resume_step=step if ckpt_path is not None else None,
                                   config=C.to_dict(cfg))
        self.say(f"{task.noun} {task.describe()} on {device} x {info.world_size} rank(s)"
                 f"{f' ({t.parallel})' if info.world_size > 1 else ''}, amp={amp_dtype or 'fp32'}")
        per = " videos" if task.lr_per_video else ""
        self.say(f"  {TrainData.num_videos(dataset)} videos{' (streamed from shards)' if data.streaming else ''}; effective batch "
                 f"{plan.global_batch} clips = {t.batch_size} x {t.accum_steps} accum x {info.world_size} ranks x "
                 f"{cfg.data.num_samples} samples; lr = {t.base_lr:g} x {plan.lr_batch}{per}/256 = "
                 f"{plan.lr:.3e} (min {plan.min_lr:.2e}, warm-up from {plan.warmup_lr:.2e})")
        if task.details():
            self.say(f"  {task.details()}")
        self.say(f"  {plan.total_steps} steps ({plan.steps_per_epoch}/epoch), warm-up {plan.warmup_steps}; run dir {run_dir}")
        bar = self.bar = ProgressBar(plan.total_steps, task.kind, enabled=info.is_main, initial=step)

        params = [p for p in model.parameters() if p.requires_grad]
        last_ckpt = ckpt_path
        clips_done, t_start = 0, time.perf_counter()
        summary = self.summary = {"run_dir": str(run_dir), **task.state()}
        stop = False
        net.train()

        while step < plan.total_steps and not stop:
            with data.batches() as batches:  # workers are reaped on every way out, errors included
                while not data.epoch_done and step < plan.total_steps:
                    t0 = time.perf_counter()
                    sums: Dict[str, float] = {}
                    skipped = 0
                    for micro in range(t.accum_steps):
                        batch = data.next(batches)
                        with parallel.no_sync(net, sync=micro == t.accum_steps - 1):
                            with autocast(device, amp_dtype):
                                out = task.step(net, batch, At(step, micro, data.epoch))
                            scaler.backward(out["loss"] / t.accum_steps)
                        for k, v in out.items():
                            sums[k] = sums.get(k, 0.0) + float(v.detach().float())
                        skipped += int(batch.get("skipped", 0))
                        clips_done += batch["video"].shape[0]
                    scaler.unscale_(optimizer)
                    norm = parallel.clip_grad_norm_(params, t.clip_grad if t.clip_grad > 0 else float("inf"))
                    # one small collective: mean of every logged value over ranks, the skip count, and the
                    # finiteness / stop verdict every rank must share
                    names = list(sums)
                    local = torch.tensor([*sums.values(), float(norm), skipped, float(stop_request["signal"] is not None)],
                                         dtype=torch.float64)
                    red = D.all_reduce_mean(local) if info.world_size > 1 else local
                    values = {k: float(v) / t.accum_steps for k, v in zip(names, red[: len(names)].tolist())}
                    grad_norm = float(red[len(names)])
                    data.skipped += int(round(float(red[len(names) + 1]) * info.world_size))
                    stop = float(red[len(names) + 2]) > 0
                    loss = values["loss"]
                    # with fp16 an inf/nan gradient is an overflow: the scaler skips that step and lowers the scale
                    if not (math.isfinite(loss) and (scaler.enabled or math.isfinite(grad_norm))):
                        checkpointer.close()
                        bar.close()
                        self.logger.close()
                        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                        raise NonFiniteLossError(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} "
                                                 f"(epoch {data.epoch}); stopping, {where}. Lower train.base_lr, set train.clip_grad, "
                                                 "or try train.amp=none")
                    lr = plan.lr_at(step)
                    set_lr(optimizer, lr)
                    scaler.step(optimizer)
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    dt = time.perf_counter() - t0
                    final = step == plan.total_steps

                    if step % t.log_every == 0 or final:
                        rate = clips_done * info.world_size / (time.perf_counter() - t_start)
                        row = {**values, "lr": lr, "grad_norm": grad_norm, "epoch": data.epoch, "clips_per_s": rate,
                               "step_time": dt, "skipped_videos_epoch": data.skipped, "peak_mem_mb": peak_memory_mb(device)}
                        if scaler.enabled:
                            row["loss_scale"] = scaler.scale()
                        self.log(step, row)
                        bar.update(step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                        summary.update(loss=loss, clips_per_s=rate, peak_mem_mb=row["peak_mem_mb"])
                    if data.epoch_done and data.skipped:
                        bar.write(f"epoch {data.epoch}: skipped {data.skipped} unreadable video(s) (see warnings above)")
                    if step % t.save_every == 0 or final or stop:
                        state = {"step": step, **data.state_dict(), "config": C.to_dict(cfg), "world_size": info.world_size,
                                 "loss_scaler": scaler.state_dict(), "kind": task.kind, "plan": plan.schedule(), **task.state()}
                        last_ckpt = checkpointer.save(step, model, optimizer, state, numbered=step % t.save_every == 0)
                    task.after_step(self, step, final)
                    checkpointer.poll()
                    if stop:
                        break

        checkpointer.close()  # a checkpoint still being written (async) is completed
        bar.close()
        self.logger.close()
        summary.update(step=step, checkpoint=str(last_ckpt) if last_ckpt else None, epoch=data.epoch)
        if stop:
            self.say(f"stopped by signal at step {step}/{plan.total_steps}; saved {last_ckpt}; run the same command again to continue")
            summary["stopped"] = True
        else:
            self.say(task.done(summary))
        return summary


def make_checkpointer(t, run_dir, info: D.DistInfo) -> Checkpointer:
    """Single files (rank 0 writes) with DDP; sharded folders (every rank writes its part) with FSDP."""
    if t.parallel == "fsdp":
        return ShardedCheckpointer(run_dir, t.keep_last, info.is_main, info.world_size, info.rank, async_save=t.async_checkpoint)
    return Checkpointer(run_dir, t.keep_last, info.is_main, info.world_size)
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _check_outputs(run_dir: Path, need_bytes: int) -> None:
    check_output_dir(run_dir, "train.output_dir", need_bytes)
    ckpt_dir = run_dir / CKPT_DIR
    if ckpt_dir.exists():
        check_output_dir(ckpt_dir, "train.output_dir (its checkpoints folder)")
    for stale in remove_stale_temps(run_dir):  # left by writes that were killed; we hold the run's lock
        print(f"removed {stale} (an unfinished checkpoint write of an earlier run)")


def _catch_sigterm():
    """SIGTERM (cluster preemption, `kill`) asks the loop to finish the current step, save `last` and return; a
    second SIGTERM ends the process at once (the step may be stuck, e.g. in a collective whose peer is gone).
    Returns ({"signal": None until it arrives}, the previous handler or None). Only the main thread can
    install handlers (elsewhere SIGTERM keeps its default)."""
    box: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        return box, None

    def handler(signum, frame):
        if box["signal"] is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        box["signal"] = signum

    return box, signal.signal(signal.SIGTERM, handler)


def _note_config_changes(saved: dict, cfg, say) -> None:
    """A resumed run with a different model/data/batch setup is not a continuation; say which keys changed."""
    now = C.to_dict(cfg)
    changed = [f"{sec}.{k}" for sec in now for k in now[sec] if isinstance(now[sec], dict)
               and isinstance(saved.get(sec), dict) and k in saved[sec] and saved[sec][k] != now[sec][k]]
    if changed:
        say(f"note: resuming with changed config keys: {', '.join(changed)}")


def _note_schedule_change(saved: Optional[dict], plan: Plan, step: int, say) -> None:
    """A resume under another lr schedule (a larger max_steps, more epochs, another warm-up, batch or lr) continues
    on the new curve from `step`; name what changed and where the lr jumps."""
    if not saved:
        return  # checkpoints written before the plan was saved
    now = plan.schedule()
    changed = [f"{k} {saved[k]:g} -> {now[k]:g}" for k in now if k in saved and abs(saved[k] - now[k]) > 1e-12 * max(abs(saved[k]), 1)]
    if not changed:
        return
    old = lr_at(step, saved["total_steps"], saved["warmup_steps"], saved["lr"], saved["min_lr"], saved["warmup_lr"])
    say(f"note: the lr schedule changed on resume ({', '.join(changed)}): from step {step} the run follows the new "
        f"schedule; lr at step {step} is {plan.lr_at(step):.3e} (it was {old:.3e} on the old one)")
