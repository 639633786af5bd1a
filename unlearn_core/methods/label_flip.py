"""``label_flip``: train on D_f relabelled with random wrong labels (seed 001, §3.2.3).

Seed 001 (after Graves et al. 2020): "incorrect labels are randomly assigned to
the targeted data samples", then the model is trained on this modified D_f for a
few iterations (w'_e = w'_{e−1} − α' ∇L(D'_t, w'), Eq. 8 without the selection
matrix). Each forget sample gets one label drawn uniformly from the C − 1
classes other than its own, once per run (seeded by the task seed), so no
sample is ever trained on its true label. The naive counterpart of
``label_flip_partial``, which runs the same recipe with layer-wise partial updates.

Seed 001 states no unlearning learning rate or epoch count; the defaults reuse
its one stated training setting (batch 128, lr 0.001) and ``grad_ascent``'s
optimiser (SGD, momentum 0.9, no weight decay) and epoch count (5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from unlearn_core.methods.common import EpochEnd, method_recipe
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import fit

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # epochs on relabelled D_f; seed 001 gives none ("few iterations"), as GA: 5
    epochs: int = hparam(5, ge=1)
    # α' of Eq. 8; seed 001 §5 states only the training lr: 0.001
    lr: float = hparam(1e-3, gt=0)
    # seed 001 §5: 128
    batch_size: int = hparam(128, ge=1)
    # SGD momentum; as grad_ascent (method_recipe default): 0.9
    momentum: float = hparam(0.9, ge=0, lt=1)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-4, 1e-1),
    "momentum": Uniform(0.0, 0.9),
}


def flipped_labels(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A random wrong label per sample: uniform over the other C − 1 classes, never y."""
    if num_classes < 2:
        raise ValueError("label flipping needs at least 2 classes")
    generator = torch.Generator().manual_seed(seed)
    offset = torch.randint(1, num_classes, (len(labels),), generator=generator)
    return (labels.cpu() + offset) % num_classes


def flipped_forget_set(task: UnlearnTask) -> DeviceData:
    """D'_t: the forget set with every label replaced by a random wrong one."""
    forget = task.forget
    return forget.with_labels(flipped_labels(forget.labels, task.num_classes, task.seed))


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, momentum=hp.momentum,
                           weight_decay=0.0)
    fit(model, flipped_forget_set(task), recipe, seed=task.seed, hooks=[EpochEnd(task)])
    return model
