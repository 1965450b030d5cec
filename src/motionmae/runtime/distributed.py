"""torch.distributed plumbing: init from torchrun's environment, rank helpers, a resumable sharded sampler, and
per-video means gathered over ranks.

A single process (no torchrun) is world size 1 and never touches torch.distributed, so every helper
here is safe to call unconditionally. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Tuple

import numpy as np
import torch
import torch.distributed as dist

from motionmae.errors import UserError
from motionmae.runtime.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Without them (or WORLD_SIZE=1) this is a single process: no process group is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Only rank 0 writes logs, checkpoints and pictures."""
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    """All-reduce ('sum' | 'max') a copy of `t`; NCCL only reduces CUDA tensors, so CPU tensors visit the GPU."""
    t = t.clone()
    if not is_dist():
        return t
    op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        g = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(g, op=op)
        return g.to(t.device)
    dist.all_reduce(t, op=op)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a copy; `t` itself is left alone)."""
    return _all_reduce(t, "sum") / get_world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, "sum")


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, "max")


def on_main_then_share(fn):
    """Run `fn()` on rank 0 only; every rank returns its result, or raises the UserError it raised, of the same class
    (so a refusal on rank 0, e.g. a locked run directory, ends every rank instead of leaving the others waiting in a
    collective)."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            error = (type(e), str(e))
    if is_dist():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error[0](error[1])
    return result


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def derive_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from integer keys, e.g. (seed, epoch, index): one independent stream per key tuple."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])


class ShardedSampler(torch.utils.data.Sampler):
    """DistributedSampler-style sharding that can start mid-epoch.

    Each epoch, one permutation of the dataset (seeded by (seed, epoch), identical on every rank) is
    cut to a multiple of `world_size` (drop_last) or padded by wrapping around, and rank r takes
    positions r, r + world, r + 2*world, ... So the union of the ranks' k-th batches of size b is the
    k-th batch of size world*b of a single process: more ranks change nothing but the speed.
    `set_epoch(epoch, start=i)` skips the first i samples of this rank's shard (exact resume without
    decoding the skipped videos).
    """

    def __init__(self, num_samples: int, world_size: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        self.n, self.world, self.rank = num_samples, world_size, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard_length(self) -> int:
        return self.n // self.world if self.drop_last else -(-self.n // self.world)

    def __len__(self) -> int:
        return max(self.shard_length() - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.shard_length() * self.world
        if total > len(order):  # pad by wrapping around (drop_last=False)
            order = (order * (total // max(len(order), 1) + 1))[:total]
        order = order[:total]
        return iter(order[self.rank :: self.world][self.start :])


class PerVideoMean:
    """Accumulates per-row values (one row per view) into a per-video mean, keyed by dataset index.

    A video padded in twice by a sampler, or split across batches, still gets the plain mean of its views.
    `result()` gathers over ranks and returns (means (N, ...), labels (N, L), indices (N,)) sorted by index.
    """

    def __init__(self):
        self.sums: dict = {}  # index -> [sum, count, label]

    def add(self, index, values: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.view(values.shape[0], -1)
        for row, idx in enumerate(torch.as_tensor(index).view(-1).tolist()):
            entry = self.sums.setdefault(idx, [0.0, 0, labels[row]])
            entry[0] = entry[0] + values[row]
            entry[1] += 1

    def __len__(self) -> int:
        return len(self.sums)

    def result(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sums = self.sums
        if is_dist():
            gathered = [None] * get_world_size()
            dist.all_gather_object(gathered, sums)
            sums = {}
            for part in gathered:
                for idx, (s, n, lab) in part.items():
                    entry = sums.setdefault(idx, [0.0, 0, lab])
                    entry[0], entry[1] = entry[0] + s, entry[1] + n
        if not sums:
            raise ValueError("no videos were seen")
        index = sorted(sums)
        means = torch.stack([sums[i][0] / sums[i][1] for i in index])
        labels = torch.stack([sums[i][2] for i in index])
        return means, labels, torch.tensor(index, dtype=torch.int64)
