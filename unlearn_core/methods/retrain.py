"""``retrain``: the gold standard, a model trained from scratch on D_r only.

Uses the source's own recipe (architecture, optimiser, schedule) so that the
only difference from the source is the missing forget set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from unlearn_core.methods.common import EpochEnd
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.models import create_model
from unlearn_core.search import SearchSpace, hparam
from unlearn_core.train.loop import fit

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: epochs reported (ASHA's time axis); None:
# the source recipe's epochs


@dataclass(frozen=True)
class Hparams:
    epochs: int | None = hparam(None, ge=1)  # None: the source recipe's epochs


SEARCH_SPACE: SearchSpace = {}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    if task.train_recipe is None or not task.model_name:
        raise ValueError("retrain needs the source's model name and training recipe in the task")
    recipe = task.train_recipe if hp.epochs is None else replace(task.train_recipe,
                                                                 epochs=hp.epochs)
    images = task.retain.images
    torch.manual_seed(task.seed)
    fresh = create_model(task.model_name, task.num_classes, images.shape[1], images.shape[2])
    fit(fresh, task.retain, recipe, seed=task.seed, hooks=[EpochEnd(task)])
    return fresh
