"""``finetune`` (FT): continue training the source on D_r only.

Baseline of seeds 002, 003 and 004 (Warnecke et al. 2021; Jia et al. 2023's
Unlearn-Sparse setting: 10 epochs, lr in [0.01, 0.1]). Catastrophic forgetting
of D_f is the only unlearning mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods.common import EpochEnd, method_recipe
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.loop import fit

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # epochs on D_r; seed 004 / Unlearn-Sparse FT: 10
    epochs: int = hparam(10, ge=1)
    # SGD learning rate; Unlearn-Sparse FT range [0.01, 0.1]
    lr: float = hparam(0.01, gt=0)
    # seed 004 / Unlearn-Sparse: 256 on CIFAR; 128 for small sets
    batch_size: int = hparam(128, ge=1)
    # Unlearn-Sparse: 5e-4
    weight_decay: float = hparam(5e-4, ge=0)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 20),
    "lr": LogUniform(1e-3, 1e-1),
}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, weight_decay=hp.weight_decay)
    fit(model, task.retain, recipe, seed=task.seed, hooks=[EpochEnd(task)])
    return model
