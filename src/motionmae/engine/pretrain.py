"""`motionmae pretrain`: the MotionMAE / VideoMAE pretraining task, run by the engine's `Trainer`.

What is pretraining-specific: the model (`models/pretrain.py`), the masks -- seeded per clip from
(seed, epoch, index, repeat), so masks are tied to the clip, not to the rank or the batch slot, and 2 ranks x
batch b see the masks 1 rank x batch 2b sees -- the weights a new run may start from (`train.init`), and
reconstruction pictures every `train.viz_every` steps (`pictures/`). The loop itself is engine/trainer.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from motionmae import config as C
from motionmae import viz
from motionmae.data.datasets import check_source
from motionmae.data.shards import build_dataset
from motionmae.data.transforms import to_model_input
from motionmae.engine.trainer import At, Task, Trainer
from motionmae.errors import UserError
from motionmae.models.pretrain import PretrainModel
from motionmae.models.state import load_matching
from motionmae.objective.masking import decoder_mask, make_mask
from motionmae.runtime.checkpoint import load_model_state
from motionmae.runtime.distributed import derive_seed

# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser) -> None:
    C.add_config_arguments(
        parser,
        "a preset name (motionmae-sha-base, videomae-base, pretrain-ssv2, pretrain-k400, pretrain-ucf101, demo, ...) or a "
        "YAML file; default: the built-in defaults",
        "config overrides, e.g. data.train=lists/train.csv train.batch_size=16 model.size=small")
    parser.add_argument("--resume", default="auto", metavar="PATH|auto|none",
                        help="continue from a checkpoint file or run directory; auto (default): from OUTPUT_DIR's last checkpoint if there is one")


def run(args) -> int:
    cfg = C.load_config(args.config, args.overrides)
    if args.print_config:
        print(C.config_text(cfg), end="")
        return 0
    summary = pretrain(cfg, resume=args.resume)
    return 143 if summary.get("stopped") else 0  # 128 + SIGTERM: the run is not finished


def pretrain(cfg: C.PretrainConfig, resume: str = "auto") -> dict:
    """Train per `cfg`; returns a summary dict (final step, last loss, run dir, checkpoint path, clips/s)."""
    return Trainer(cfg, PretrainTask(cfg)).fit(resume)


# ----------------------------------------------------------------------------------------------
# the task


def clip_masks(cfg: C.PretrainConfig, video: torch.Tensor, index: torch.Tensor, epoch: int, device
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Boolean (B, N) masks, True = masked, for the uint8 clips `video` (B, C, T, H, W), and with dual masking
    (`mask.decoder_ratio` > 0) the decoder's masks (else None). Clip b's masks are drawn from a generator seeded by
    (seed, epoch, index[b], r), r counting earlier clips of the same video in this batch (repeated sampling): the
    encoder's first, then the decoder's, so turning dual masking on leaves the encoder's masks as they were."""
    grid, m = cfg.model.grid(), cfg.mask
    seen: dict = {}
    rows, dec_rows = [], []
    for b, i in enumerate(index.tolist()):
        r = seen.get(i, 0)
        seen[i] = r + 1
        g = torch.Generator().manual_seed(derive_seed(cfg.train.seed, epoch, i, r))
        rows.append(make_mask(m.kind, 1, grid, m.ratio, g, clip=video[b : b + 1, :, : cfg.model.num_frames]))
        if m.decoder_ratio > 0:
            dec_rows.append(decoder_mask(rows[-1], grid, m.decoder_ratio, g))
    mask = torch.cat(rows).to(device, non_blocking=True)
    return mask, (torch.cat(dec_rows).to(device, non_blocking=True) if dec_rows else None)


class PretrainTask(Task):
    kind, noun = "pretrain", "pretraining"

    def __init__(self, cfg: C.PretrainConfig):
        super().__init__(cfg)
        self.dataset = None

    def build_dataset(self):
        check_source(self.cfg.data)
        o = self.cfg.objective
        self.dataset = build_dataset(self.cfg.data, "train", "pretrain", seed=self.cfg.train.seed,
                                     extra_frames=o.extra_frames, neighbor_gap=o.neighbor_gap)
        return self.dataset

    def build_model(self) -> torch.nn.Module:
        return PretrainModel(self.cfg)

    def init_weights(self, model: torch.nn.Module, say) -> None:
        """`train.init`: every tensor of a checkpoint's model; any missing, extra or mis-shaped key is an error."""
        if self.cfg.train.init:
            sd, _ = load_model_state(self.cfg.train.init)
            load_matching(model, sd, f"train.init={self.cfg.train.init}",
                          hint="convert it with the same model.decoder and objective.targets, or check model.* settings")
            say(f"initialised from {self.cfg.train.init}")

    def step(self, net, batch: dict, at: At):
        c = self.cfg
        device = self.info.device
        x = to_model_input(batch["video"], c.data.mean, c.data.std, device)
        mask, dec_mask = clip_masks(c, batch["video"], batch["index"], at.epoch, device)
        out = net(x, mask, dec_mask)
        return {k: v for k, v in out.items() if k == "loss" or k.startswith("loss_")}

    def describe(self) -> str:
        m = self.cfg.model
        d, n, _ = m.dims()
        return (f"ViT (dim {d}, depth {n}) {m.num_frames}x{m.img_size}, targets={'+'.join(self.cfg.objective.targets)}, "
                f"decoder={m.decoder}, mask={self.cfg.mask.kind}@{self.cfg.mask.ratio}"
                + (f", decoder mask running cell@{self.cfg.mask.decoder_ratio} (VideoMAE v2)" if self.cfg.mask.decoder_ratio else ""))

    def after_step(self, trainer: Trainer, step: int, final: bool) -> None:
        # viz_every > 0: every so many steps and at the end; 0: at the end only; < 0: never
        every = self.cfg.train.viz_every
        if every >= 0 and (final or (every > 0 and step % every == 0)):
            model = trainer.eval_model()  # every rank (FSDP gathers the weights); rank 0 draws
            if trainer.info.is_main:
                self.pictures(trainer, step, model)

    def pictures(self, trainer: Trainer, step: int, model) -> None:
        """Reconstruction pictures of the first training video (a fixed clip, so pictures are comparable across steps)."""
        run_dir = Path(self.cfg.train.output_dir)
        try:
            paths = viz.reconstruction_pictures_from_dataset(model, self.cfg, self.dataset, run_dir / "pictures",
                                                             f"step_{step:08d}", trainer.info.device, trainer.amp_dtype, step=step)
        except UserError as e:  # pictures must never stop a run
            trainer.bar.write(f"pictures skipped: {e}")
            return
        trainer.bar.write(f"pictures: {paths[0]}")
        trainer.log_image(step, "reconstruction", paths[0])

    def done(self, summary: dict) -> str:
        run_dir = Path(summary["run_dir"])
        return (f"done: {summary['step']} steps, {summary.get('clips_per_s', 0):.1f} clips/s, peak memory "
                f"{summary.get('peak_mem_mb', 0):.0f} MB; checkpoint {summary.get('checkpoint')}; metrics {run_dir / 'metrics.jsonl'}; "
                f"pictures {run_dir / 'pictures'}")
