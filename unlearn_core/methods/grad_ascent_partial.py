"""``grad_ascent_partial``: gradient ascent on D_f with layer-wise partial updates (seed 001).

Eq. 10: w'_e = w'_{e−1} + α' ∇̃L(D_t, w'), with the layer-wise partial gradient of
Eq. 9 (S_{l,e} ⊙ ∇, S circularly shifted every epoch; see ``_partial``). Seed 001
§4.3 updates few weights in the early layers and more with depth, so the
selection density increases with depth by default. The paper gives no densities;
0.3 -> 0.9 (linear over ``parameter_layers``) is our choice, searchable.

Reuses ``grad_ascent``'s loss (−CE) and recipe (SGD, momentum 0.9, no weight
decay, its epochs and lr): with every density at 1 it gives exactly
``grad_ascent``'s weights, the naive counterpart of seed 001 Tables 5-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods._partial import SCHEDULE_SHAPES, SELECTION_INITS, partial_fit
from unlearn_core.methods.common import EpochEnd, method_recipe, negative_cross_entropy
from unlearn_core.methods.grad_ascent import Hparams as GradAscentHparams
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, Uniform, hparam

_GA = GradAscentHparams()  # the naive counterpart's defaults, kept in one place


REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # epochs on D_f (one S_{l,e} each); as grad_ascent: 5
    epochs: int = hparam(_GA.epochs, ge=1)
    # ascent step α' of Eq. 10; as grad_ascent: 1e-4
    lr: float = hparam(_GA.lr, gt=0)
    # seed 001 §5: 128
    batch_size: int = hparam(_GA.batch_size, ge=1)
    # SGD momentum; as grad_ascent (method_recipe default): 0.9
    momentum: float = hparam(0.9, ge=0, lt=1)
    # share of layer 1 selected by S_{1,e}; seed 001 §4.3: low (ours)
    density_start: float = hparam(0.3, ge=0, le=1)
    # share of the last layer selected; seed 001 §4.3: higher (ours)
    density_end: float = hparam(0.9, ge=0, le=1)
    # interpolation over depth (layer_schedule); ours
    density_shape: str = hparam("linear", choices=SCHEDULE_SHAPES)
    # S_{l,1} ones at random / evenly spaced positions; ours
    selection_init: str = hparam("random", choices=SELECTION_INITS)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-5, 1e-2),
    "density_start": Uniform(0.05, 1.0),
    "density_end": Uniform(0.5, 1.0),
    "density_shape": Choice(SCHEDULE_SHAPES),
    "selection_init": Choice(SELECTION_INITS),
}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, momentum=hp.momentum,
                           weight_decay=_GA.weight_decay)
    partial_fit(model, task.forget, recipe, seed=task.seed,
                densities=(hp.density_start, hp.density_end, hp.density_shape),
                init=hp.selection_init, loss_fn=negative_cross_entropy,
                hooks=[EpochEnd(task)])
    return model
