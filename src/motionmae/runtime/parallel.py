"""How a model runs on several ranks: the one seam between the plain model and what the training step calls.

`train.parallel=ddp`: DistributedDataParallel when there is more than one rank (gradients all-reduced in
backward; `no_sync` on the accumulation micro-steps that do not step the optimiser); a single process runs the
model as is.

`train.parallel=fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`, torch >= 2.4): every transformer block is its own
unit and the model's remaining parameters (embeddings, norms, heads, mask tokens) the root's, so each rank holds
1/world of the weights, gradients and AdamW states; a block's weights are gathered for its forward and backward and
freed after. With bf16 autocast, FSDP's MixedPrecisionPolicy gathers the weights in bf16 and reduces gradients in
fp32 (the clip reaches the model in fp32: targets are computed from it). Accumulation micro-steps skip the gradient
reduce-scatter (`set_requires_gradient_sync`). Checkpoints are sharded (`runtime.checkpoint.ShardedCheckpointer`).
A single process runs the model as is (nothing to shard), with the same sharded checkpoints.

`train.compile`: torch.compile around the (wrapped) model: inductor on CUDA, and what torch picks elsewhere.
The engine only calls `wrap`, `no_sync`, `clip_grad_norm_` and `unwrap_model`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from motionmae.errors import UserError
from motionmae.models.vit import Block
from motionmae.runtime.distributed import DistInfo

STRATEGIES = ("ddp", "fsdp")

try:  # FSDP2: public from torch 2.6, under _composable in 2.4 / 2.5
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - depends on the torch build
    try:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        MixedPrecisionPolicy = fully_shard = None


def fsdp_available() -> bool:
    return fully_shard is not None and torch.distributed.is_available()


class Parallel:
    """`wrap(model) -> net` once; then `with no_sync(net, sync=False):` around micro-steps that must not reduce
    gradients, and `clip_grad_norm_` (which also works on sharded gradients)."""

    def __init__(self, kind: str, info: DistInfo, compile: bool = False, amp_dtype: Optional[torch.dtype] = None):
        if kind not in STRATEGIES:
            raise UserError(f"train.parallel='{kind}' is not one of {', '.join(STRATEGIES)}")
        if kind == "fsdp":
            if not fsdp_available():
                raise UserError(f"train.parallel=fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4 built with "
                                f"distributed support); this torch {torch.__version__} has none: use train.parallel=ddp")
            if amp_dtype == torch.float16:
                raise UserError("train.parallel=fsdp trains in bf16 or fp32 (train.amp=bf16 or none): fp16 loss scaling "
                                "is implemented for DDP only")
        self.kind, self.info, self.compile, self.amp_dtype = kind, info, compile, amp_dtype
        self.ddp = None
        self.sharded: Optional[nn.Module] = None  # the model, once fully_shard has sharded it

    def wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.info.world_size > 1 and self.kind == "ddp":
            device = self.info.device
            net = self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        elif self.info.world_size > 1:
            net = self.sharded = shard(model, self.info.device.type, self.info.world_size, self.amp_dtype)
        if not self.compile:
            return net
        # inductor (torch's default) compiles to Triton on CUDA and C++ on CPU; on CPU it needs a C++ compiler
        return torch.compile(net)

    def no_sync(self, net: nn.Module, sync: bool):
        """Skip the gradient reduction of this backward unless `sync` (always synced in a single process)."""
        if sync:
            return contextlib.nullcontext()
        if self.ddp is not None:
            return self.ddp.no_sync()
        if self.sharded is not None:
            return _fsdp_no_sync(self.sharded)
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict:
        """The sharded model's whole state dict on every rank (an all-gather: every rank calls it together)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.sharded, options=StateDictOptions(full_state_dict=True))

    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """torch's clip_grad_norm_; the total norm as a plain tensor (with FSDP it comes back as a DTensor)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def shard(model: nn.Module, device_type: str, world_size: int, amp_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """FSDP2 in place over all `world_size` ranks, on a mesh of the model's `device_type` (not whatever accelerator
    the machine has: a CPU run on a GPU node stays on gloo): each transformer `Block` a unit of its own, then the
    root for the rest. With `amp_dtype` (bf16) weights are gathered in it and gradients reduced in fp32; the root
    leaves its inputs as they are."""
    from torch.distributed.device_mesh import init_device_mesh

    # the outputs (predictions as reshaped views) are read, never changed in place: FSDP's warning does not apply
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device_type, (world_size,))
    if amp_dtype is not None:
        blocks = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
        root = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    else:
        blocks = root = MixedPrecisionPolicy()
    for m in model.modules():
        if isinstance(m, Block):
            fully_shard(m, mesh=mesh, mp_policy=blocks)
    fully_shard(model, mesh=mesh, mp_policy=root)
    return model


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers (FSDP2 shards in place)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
