"""``grad_ascent`` (GA, NegGrad): ascend the cross-entropy on D_f.

Seed 001, Eq. 5: w' = w + α ∇_w L(D_t, w), a few epochs on the targeted data;
also the NegGrad baseline of seed 003 and GA of seed 004 (Unlearn-Sparse:
5 epochs, lr in [1e-5, 1e-3]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods.common import EpochEnd, method_recipe, negative_cross_entropy
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.loop import fit

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # epochs on D_f; seed 004 / Unlearn-Sparse GA: 5
    epochs: int = hparam(5, ge=1)
    # ascent step α (Eq. 5, seed 001); Unlearn-Sparse range [1e-5, 1e-3]
    lr: float = hparam(1e-4, gt=0)
    # seed 001: 128
    batch_size: int = hparam(128, ge=1)
    # no decay: it would pull toward 0, not away from D_f
    weight_decay: float = hparam(0.0, ge=0)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-5, 1e-2),
}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, weight_decay=hp.weight_decay)
    fit(model, task.forget, recipe, seed=task.seed, loss_fn=negative_cross_entropy,
        hooks=[EpochEnd(task)])
    return model
