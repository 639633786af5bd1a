"""``eu_k`` (EU-K): re-initialise the last K layers and train only them on D_r.

Baseline of seed 000 (§4.1, after Goel et al. 2022): all parameters are held
constant except the last K layers, which are re-initialised and trained from
the beginning on D_RE (plain cross-entropy), K ∈ {5, 10}; Adam, lr 1e-4
(§4.3.1). A "layer" is one parameter tensor, as seed 000's Table 1 counts
them (its EU-5/EU-10 sizes are the last 5/10 tensors of ResNet18, VGG and
DenseNet; see ``_perturb.last_parameter_tensors``); Goel et al.'s code counts
Conv/Linear modules instead. Re-initialised values come from a fresh model of
the same architecture (its own init). Normalisation layers with no trained
parameter keep their running statistics. Epochs: not given; as Top-K (50).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods._perturb import last_parameter_tensors, reinitialise_, train_retain_js
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.loop import prepare_model

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # K, last parameter tensors re-initialised; seed 000 §4.1: 5 or 10
    layers: int = hparam(5, ge=1)
    # epochs on D_RE; not given in seed 000: as Top-K (Fig. 6: 50)
    epochs: int = hparam(50, ge=1)
    # Adam learning rate; seed 000 §4.3.1: 1e-4 for EU-K/CF-K
    lr: float = hparam(1e-4, gt=0)
    # not given in seed 000; project default
    batch_size: int = hparam(128, ge=1)


SEARCH_SPACE: SearchSpace = {
    "layers": Choice((5, 10)),
    "lr": LogUniform(1e-5, 1e-2),
    "epochs": IntUniform(1, 100),
}


def reinitialise(model: nn.Module, task: UnlearnTask, hp: Hparams) -> list[str]:
    """Re-initialise the last K layers in place; returns their parameter names."""
    names = last_parameter_tensors(model, hp.layers)
    reinitialise_(model, task, names)
    return names


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    model = prepare_model(model, task.device)
    names = reinitialise(model, task, hp)
    return train_retain_js(model, task, epochs=hp.epochs, lr=hp.lr, batch_size=hp.batch_size,
                           trainable=names)
