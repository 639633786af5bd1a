"""Small helpers shared by methods (no method-specific branching here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unlearn_core.train.device_data import Batch
from unlearn_core.train.recipe import Recipe

if TYPE_CHECKING:
    from unlearn_core.methods.task import UnlearnTask


def method_recipe(
    epochs: int, lr: float, batch_size: int = 128, optimizer: str = "sgd",
    momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "constant",
) -> Recipe:
    """A fine-tuning recipe for a method's own training phase (no augmentation change)."""
    return Recipe(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
        nesterov=False, weight_decay=weight_decay, schedule=schedule,
    ).validate()


def negative_cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """−CE: descending it ascends the loss (gradient ascent on D_f)."""
    return -F.cross_entropy(logits.float(), batch.y)


class EpochEnd:
    """``fit`` / ``train_epochs`` hook reporting each finished epoch to ``task.end_epoch``
    (``fit`` counts epochs from 0, ``end_epoch`` from 1)."""

    def __init__(self, task: UnlearnTask) -> None:
        self.task = task

    def on_epoch_end(self, model: torch.nn.Module, epoch: int, loss: float) -> None:
        self.task.end_epoch(model, epoch + 1)
