"""``label_flip_partial``: label flipping with layer-wise partial updates (seed 001, §4.2).

Eq. 8: w'_e = w'_{e−1} − α' ∇̃L(D'_t, w'), where D'_t is D_f with random wrong
labels (``label_flip.flipped_forget_set``) and Eq. 9 masks each layer's gradient
with a selection matrix S_{l,e}, circularly shifted every epoch
(``_partial``). Seed 001 updates many weights in the early layers (generic
features) and fewer with depth (class-specific ones): the selection density
decreases with depth by default. The paper gives no densities; 0.9 -> 0.3
(linear over ``parameter_layers``) is our choice, searchable.

Same recipe as ``label_flip`` (its naive counterpart): with every density at 1
the two give identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods._partial import SCHEDULE_SHAPES, SELECTION_INITS, partial_fit
from unlearn_core.methods.common import EpochEnd, method_recipe
from unlearn_core.methods.label_flip import flipped_forget_set
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, Uniform, hparam

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # epochs on relabelled D_f (one S_{l,e} each); as label_flip: 5
    epochs: int = hparam(5, ge=1)
    # α' of Eq. 8; seed 001 §5 states only the training lr: 0.001
    lr: float = hparam(1e-3, gt=0)
    # seed 001 §5: 128
    batch_size: int = hparam(128, ge=1)
    # SGD momentum; as label_flip: 0.9
    momentum: float = hparam(0.9, ge=0, lt=1)
    # share of layer 1 selected by S_{1,e}; seed 001 §4.2: high (ours)
    density_start: float = hparam(0.9, ge=0, le=1)
    # share of the last layer selected; seed 001 §4.2: lower (ours)
    density_end: float = hparam(0.3, ge=0, le=1)
    # interpolation over depth (layer_schedule); ours
    density_shape: str = hparam("linear", choices=SCHEDULE_SHAPES)
    # S_{l,1} ones at random / evenly spaced positions; ours
    selection_init: str = hparam("random", choices=SELECTION_INITS)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-4, 1e-1),
    "density_start": Uniform(0.5, 1.0),
    "density_end": Uniform(0.05, 1.0),
    "density_shape": Choice(SCHEDULE_SHAPES),
    "selection_init": Choice(SELECTION_INITS),
}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, momentum=hp.momentum,
                           weight_decay=0.0)
    partial_fit(model, flipped_forget_set(task), recipe, seed=task.seed,
                densities=(hp.density_start, hp.density_end, hp.density_shape),
                init=hp.selection_init, hooks=[EpochEnd(task)])
    return model
