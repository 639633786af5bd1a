"""Data-parallel training for ``fit``: shard each global batch by rank, sum gradients.

Uses whatever ``torch.distributed`` default process group the caller set up
(Ray Train's ``TorchTrainer``, ``torchrun``, or a test's ``init_process_group``);
no Ray here. Every rank holds the whole training set and draws the same global
batch from the same seeded generator (so order and augmentation never diverge),
then keeps only its contiguous 1/W slice of it. After ``backward`` each rank
scales its gradients by its share of the batch (rows / global rows) and one
all-reduce sums them, so every rank steps with the gradient of the global batch's
mean loss: the model equals single-process training on the full batch up to the
order of float additions. Shares differ by at most one row; a rank whose share is
empty (a last batch smaller than W) contributes zeros.

Limits (same as DistributedDataParallel): BatchNorm normalises each shard with
the shard's own statistics (its running mean is averaged across ranks, which is
exact; its running variance is an approximation), and dropout masks are drawn per
rank. The loss must be a mean over the batch's rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from unlearn_core.train.device_data import Batch

BUCKET_BYTES = 64 * 2**20  # all-reduce in flat buffers of at most this size


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; an error if there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed training needs a torch.distributed process group: "
            "call torch.distributed.init_process_group first (Ray Train's TorchTrainer does)"
        )
    return dist.get_rank(), dist.get_world_size()


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n rows; the first n % size get one more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_batch(batch: Batch, rank: int, size: int) -> Batch:
    start, stop = shard_bounds(len(batch.y), rank, size)
    return Batch(batch.x[start:stop], batch.y[start:stop], batch.ids[start:stop])


def all_reduce_sum_(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum each tensor across ranks in place, a few flat buffers at a time.

    Every rank must pass tensors of the same shapes, dtypes and order.
    """
    for bucket in _buckets(tensors, bucket_bytes):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            dist.all_reduce(bucket[0])
            continue
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            t.copy_(part.view_as(t))


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0,
               bucket_bytes: int = BUCKET_BYTES) -> None:
    """Overwrite each tensor in place with rank ``src``'s copy."""
    for bucket in _buckets(list(tensors), bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.broadcast(flat, src)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            t.copy_(part.view_as(t))


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive runs of same dtype and device, each at most ``bucket_bytes`` (or one tensor)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1][-1] if buckets else None
        nbytes = t.numel() * t.element_size()
        if last is None or last.dtype != t.dtype or last.device != t.device \
                or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


class GradientSync:
    """Sums the optimizer's gradients (and averages BatchNorm statistics) across ranks.

    ``sync(share)`` runs between ``backward`` and ``optimizer.step``; ``share`` is
    this rank's rows / the global batch's rows. One all-reduce per step for models
    with under ``BUCKET_BYTES`` of gradients, and no host synchronisation after the
    first step. Which parameters get a gradient is agreed at the first step (a
    parameter no rank's loss reaches keeps ``grad=None``, so the optimizer skips it
    as in single-process training) and must not change with the data afterwards
    (DistributedDataParallel's default assumption too).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # Running statistics: the only buffers a training step changes.
        self.buffers = [b for m in model.modules() if isinstance(m, _NormBase)
                        and m.track_running_stats
                        for b in (m.running_mean, m.running_var)
                        if b is not None and b.is_floating_point()]
        self.rank, self.size = world()
        self.pattern: tuple[bool, ...] | None = None

    def broadcast_model(self, src: int = 0) -> None:
        """Make every rank's parameters and buffers rank ``src``'s (start and end of fit)."""
        with torch.no_grad():
            broadcast_([p.data for p in self.model.parameters()] + list(self.model.buffers()),
                       src)

    @torch.no_grad()
    def sync(self, share: float) -> None:
        if self.size == 1:
            return
        have = tuple(p.grad is not None for p in self.params)
        if self.pattern is None:
            device = self.params[0].device if self.params else None
            flags = torch.tensor(have, dtype=torch.float32, device=device)
            dist.all_reduce(flags)
            self.pattern = tuple(f > 0 for f in flags.tolist())
        elif share > 0 and have != self.pattern:
            raise RuntimeError(
                "data-parallel fit: the set of parameters with a gradient changed between "
                "steps; the loss must reach the same parameters at every step"
            )
        grads = []
        for p, used in zip(self.params, self.pattern, strict=True):
            if used:
                if p.grad is None:  # an empty share: contribute zeros
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        tensors = grads + self.buffers
        if tensors:
            torch._foreach_mul_(tensors, share)
            all_reduce_sum_(tensors)

    def reduce_loss(self, loss_sum: torch.Tensor, seen: int) -> tuple[float, int]:
        """Global (sum of loss x rows, rows) of an epoch, from every rank's shares."""
        if self.size == 1:
            return float(loss_sum), seen
        total = torch.stack([loss_sum.detach().float(),
                             torch.tensor(float(seen), device=loss_sum.device)])
        dist.all_reduce(total)
        return float(total[0]), int(round(float(total[1])))


def agree(flag: bool, device: torch.device | str = "cpu", src: int = 0) -> bool:
    """Rank ``src``'s ``flag`` on every rank; also a barrier (a collective every rank joins)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src)
    return bool(value.item() > 0)


def barrier(device: torch.device | str = "cpu") -> None:
    """A barrier that works on every backend (an all-reduce of one number on ``device``)."""
    dist.all_reduce(torch.zeros(1, device=device))
