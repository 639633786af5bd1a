"""``cf_k`` (CF-K): fine-tune only the last K layers on D_r (catastrophic forgetting).

Baseline of seed 000 (§4.1, after Goel et al. 2022): as ``eu_k`` but without
re-initialisation; all layers except the last K are held constant and the last
K are trained on D_RE with plain cross-entropy, K ∈ {5, 10}; Adam, lr 1e-4
(§4.3.1). A "layer" is one parameter tensor, as seed 000's Table 1 counts them
(see ``_perturb.last_parameter_tensors``). Epochs: not given; as Top-K (50).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods._perturb import last_parameter_tensors, train_retain_js
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, hparam

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    layers: int = hparam(5, ge=1)  # K, last parameter tensors fine-tuned; seed 000 §4.1: 5 or 10
    epochs: int = hparam(50, ge=1)  # epochs on D_RE; not given in seed 000: as Top-K (Fig. 6: 50)
    lr: float = hparam(1e-4, gt=0)  # Adam learning rate; seed 000 §4.3.1: 1e-4 for EU-K/CF-K
    batch_size: int = hparam(128, ge=1)  # not given in seed 000; project default


SEARCH_SPACE: SearchSpace = {
    "layers": Choice((5, 10)),
    "lr": LogUniform(1e-5, 1e-2),
    "epochs": IntUniform(1, 100),
}


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    names = last_parameter_tensors(model, hp.layers)
    return train_retain_js(model, task, epochs=hp.epochs, lr=hp.lr, batch_size=hp.batch_size,
                           trainable=names)
