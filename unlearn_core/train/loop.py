"""The one training loop: source training, retraining and every method's fine-tuning.

Plain PyTorch: an optimizer, a per-step LR schedule, bf16 autocast and
channels_last on CUDA, optional ``torch.compile``, and hooks (duck-typed objects
with any of ``on_train_start(model, optimizer)``, ``before_step(model, batch)``,
``after_step(model, batch, epoch, step)``, ``on_epoch_end(model, epoch, loss)``,
``on_train_end(model)``) for the update recorder and pruning masks.
``fit(..., distributed=True)`` trains one model data-parallel across the ranks of
a ``torch.distributed`` process group (see ``unlearn_core.train.distributed``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.distributed import GradientSync, shard_batch
from unlearn_core.train.recipe import Recipe

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]

# Data-parallel ranks draw dropout from seed + rank * this (rank 0 as a single process).
RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(device: torch.device, deterministic: bool) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed), nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device; channels_last on CUDA, where convolutions run faster in it."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(params: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base LR at a given optimizer step (per-step schedules)."""
    epoch = step / max(1, steps_per_epoch)
    if recipe.warmup_epochs > 0 and epoch < recipe.warmup_epochs:
        return (step + 1) / (recipe.warmup_epochs * steps_per_epoch)
    if recipe.schedule == "cosine":
        total = max(1, recipe.epochs * steps_per_epoch)
        warm = recipe.warmup_epochs * steps_per_epoch
        progress = min(1.0, (step - warm) / max(1.0, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch)
    )


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch.y, label_smoothing=label_smoothing)

    return loss


@dataclass
class FitResult:
    steps: int = 0
    seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


def _call(hooks: Sequence[object], name: str, *args) -> None:
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(*args)


def fit(
    model: nn.Module,
    data: DeviceData,
    recipe: Recipe,
    *,
    seed: int,
    hooks: Sequence[object] = (),
    loss_fn: LossFn | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    progress: bool = False,
    desc: str = "train",
    distributed: bool = False,
) -> FitResult:
    """Train ``model`` in place on ``data`` following ``recipe``.

    Same seed, same device, same recipe: same weights (order, augmentation and
    dropout all come from ``seed``). ``parameters`` restricts what is optimised
    (e.g. only the last K layers); ``loss_fn(logits, batch)`` replaces the
    cross-entropy.

    ``distributed=True``: every rank of the default ``torch.distributed`` process
    group calls ``fit`` with the same model, data, recipe and seed; all draw the
    same global batch of ``recipe.batch_size`` rows, each forwards its contiguous
    1/W slice of it, and the gradients are summed (weighted by each slice's share
    of rows) before every optimizer step, so each rank ends with the weights that
    single-process training on the full batches gives (up to float summation
    order; BatchNorm and dropout excepted, as with DDP). ``loss_fn`` must then be
    a mean over the batch's rows. Hooks run on every rank and see the global
    batch; install side-effecting ones (the update recorder) on one rank only.
    """
    recipe.validate()
    device = data.device
    configure_determinism(device, recipe.deterministic)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    model = prepare_model(model, device)
    forward = torch.compile(model) if recipe.compile else model
    optimizer = make_optimizer(parameters if parameters is not None else model.parameters(), recipe)
    sync = GradientSync(model, optimizer) if distributed else None
    if sync is not None:
        sync.broadcast_model()  # the same start on every rank, whatever each one did before
        torch.manual_seed(seed + RANK_SEED_STRIDE * sync.rank)  # distinct dropout per rank
    steps_per_epoch = max(1, math.ceil(len(data) / recipe.batch_size))
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    loss_fn = loss_fn or cross_entropy_loss(recipe.label_smoothing)
    channels_last = device.type == "cuda"
    result = FitResult()
    start = time.perf_counter()
    _call(hooks, "on_train_start", model, optimizer)
    bar = _progress(recipe.epochs, desc) if progress else None
    model.train()
    for epoch in range(recipe.epochs):
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for batch in data.batches(recipe.batch_size, shuffle=True, generator=generator,
                                  augment=recipe.augment):
            # Data-parallel: every rank drew the same global batch; keep this rank's slice.
            part = batch if sync is None else shard_batch(batch, sync.rank, sync.size)
            _call(hooks, "before_step", model, batch)
            optimizer.zero_grad(set_to_none=True)
            if len(part.y):  # a data-parallel slice of a short last batch can be empty
                x = part.x.contiguous(memory_format=torch.channels_last) if channels_last \
                    else part.x
                with autocast(device):
                    logits = forward(x)
                loss = loss_fn(logits, part)
                loss.backward()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(part.y)
                seen += len(part.y)
            if sync is not None:
                sync.sync(len(part.y) / len(batch.y))
            optimizer.step()
            scheduler.step()
            _call(hooks, "after_step", model, batch, epoch, result.steps)
            result.steps += 1
        if sync is not None:
            total, seen = sync.reduce_loss(loss_sum, seen)
            epoch_loss = total / max(1, seen)
        else:
            epoch_loss = float(loss_sum) / max(1, seen)
        result.epoch_losses.append(epoch_loss)
        _call(hooks, "on_epoch_end", model, epoch, epoch_loss)
        if bar is not None:
            bar.set_postfix(loss=f"{epoch_loss:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if sync is not None:
        sync.broadcast_model()  # insurance: rank 0's weights everywhere (pruning ties etc.)
    _call(hooks, "on_train_end", model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """Float32 logits for every row of ``data``, in order, on the CPU."""
    device = data.device
    was_training = model.training
    model.eval()
    chunks = []
    for batch in data.batches(batch_size, shuffle=False, augment=False):
        x = batch.x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" \
            else batch.x
        with autocast(device):
            chunks.append(model(x).float())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks).cpu()


def accuracy(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> float:
    if len(data) == 0:
        return float("nan")
    logits = predict_logits(model, data, batch_size)
    return float((logits.argmax(1) == data.labels.cpu()).float().mean())
