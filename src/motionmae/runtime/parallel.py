"""How a model runs on several ranks: the one seam between the plain model and what the training step calls.

`train.parallel=ddp`: DistributedDataParallel when there is more than one rank (gradients all-reduced in
backward; `no_sync` on the accumulation micro-steps that do not step the optimiser); a single process runs the
model as is. `train.compile`: torch.compile around it. A sharded strategy (FSDP2) plugs in here: the engine
only calls `wrap`, `no_sync` and `unwrap_model`; checkpoints go through `runtime.checkpoint.Checkpointer`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from motionmae.errors import UserError
from motionmae.runtime.distributed import DistInfo

STRATEGIES = ("ddp",)


class Parallel:
    """`wrap(model) -> net` once; then `with no_sync(net, sync=False):` around micro-steps that must not all-reduce."""

    def __init__(self, kind: str, info: DistInfo, compile: bool = False):
        if kind not in STRATEGIES:
            raise UserError(f"train.parallel='{kind}' is not one of {', '.join(STRATEGIES)}")
        self.kind, self.info, self.compile = kind, info, compile
        self.ddp = None

    def wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.info.world_size > 1:
            device = self.info.device
            net = self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        return torch.compile(net) if self.compile else net

    def no_sync(self, net: nn.Module, sync: bool):
        """Skip the gradient all-reduce of this backward unless `sync` (always synced in a single process)."""
        return contextlib.nullcontext() if sync or self.ddp is None else self.ddp.no_sync()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
