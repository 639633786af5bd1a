"""Helpers shared by seed 002's methods (soft_relabel, gradient_surgery, activation_pruning,
random_labels): the AdamW optimiser and the small epoch loop of the paper's released code.

The released code (github.com/sachit3022/unlearning) trains every phase with
``torch.optim.AdamW`` (decoupled weight decay), which ``unlearn_core.train``'s
``make_optimizer`` does not offer, and steps its LR schedulers once per epoch;
``train_epochs`` is that loop. Nothing here branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.loop import autocast

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (betas (0.9, 0.999), as in the released code)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward pass as ``fit`` does it: channels_last and bf16 autocast on CUDA, float32 out."""
    if x.device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device):
        return model(x).float()


def set_lr(optimizer: torch.optim.Optimizer, base: list[float], factor: float) -> None:
    for group, lr in zip(optimizer.param_groups, base, strict=True):
        group["lr"] = lr * factor


def train_epochs(
    model: nn.Module,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: LossFn,
    lr_factor: Callable[[int], float] = lambda epoch: 1.0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    hooks: Sequence[object] = (),
) -> list[float]:
    """``epochs`` shuffled passes over ``data``; the LR is base × ``lr_factor(epoch)``.

    ``penalty(model)`` is added to every step's loss (gradient surgery's L1 term).
    ``hooks``: objects with ``on_epoch_end(model, epoch, loss)`` (epoch from 0), as
    in ``fit`` (e.g. ``common.EpochEnd``). Returns the mean loss of each epoch.
    """
    base = [group["lr"] for group in optimizer.param_groups]
    losses: list[float] = []
    model.train()
    for epoch in range(epochs):
        set_lr(optimizer, base, lr_factor(epoch))
        total, seen = torch.zeros((), device=data.device), 0
        for batch in data.batches(batch_size, shuffle=True, generator=generator):
            loss = loss_fn(logits_of(model, batch.x), batch)
            if penalty is not None:
                loss = loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch.y)
            seen += len(batch.y)
        losses.append(float(total) / max(1, seen))
        for hook in hooks:
            hook.on_epoch_end(model, epoch, losses[-1])
    set_lr(optimizer, base, 1.0)
    return losses
