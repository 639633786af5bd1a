"""``boundary_unlearning`` (Boundary Shrink; Chen et al. 2023, "Boundary Unlearning: Rapid
Forgetting of Deep Networks via Shifting the Decision Boundary", CVPR): relabel each
forget sample to its nearest wrong class, found by an adversarial step on the original
model, and fine-tune on D_f with those labels. Baseline of seed paper 002.

Neighbour search (Chen et al. Sec. 4.1, "neighbor searching"; their code's ``FGSM``):
x' = clip_[0,1](x + ε · sign(∇_x CE(f_source(x), y))) in pixel units (ε = 0.1), rounded to
the 8-bit grid, then y_nbi = the class f_source assigns to x'. The source stays frozen
(their ``test_model``); the attack is recomputed for every batch of every epoch on the
very images the step trains on. Then SGD (lr 1e-5, momentum 0.9, no weight decay) on
CE(f(x), y_nbi) for 10 epochs (their ``poison_epoch``).

Deviation: when the attack fails to cross the boundary (f_source(x') = y) Chen's code
keeps y as the "neighbour" label; here the label is the most probable class other than
y at x' (the "nearest but incorrect class" of their text), so a new label is never the
true one. Batch size (not fixed by the paper): 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods.common import EpochEnd, method_recipe
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import Batch
from unlearn_core.train.loop import fit

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # passes over D_f; Chen et al. 2023 code boundary_shrink poison_epoch=10
    epochs: int = hparam(10, ge=1)
    # SGD LR; Chen et al. 2023 code: 0.00001
    lr: float = hparam(1e-5, gt=0)
    # SGD momentum; Chen et al. 2023 code: 0.9
    momentum: float = hparam(0.9, ge=0, lt=1)
    # FGSM step ε in [0, 1] pixel units; Chen et al. 2023 code bound=0.1
    bound: float = hparam(0.1, gt=0, le=1)
    # D_f rows per step; not fixed by Chen et al.
    batch_size: int = hparam(128, ge=1)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 20),
    "lr": LogUniform(1e-6, 1e-3),
    "bound": Uniform(0.01, 0.3),
}


def fgsm(source: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float,
         mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One untargeted FGSM step of ``bound`` pixel units on normalised images (8-bit grid)."""
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(source(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    pixels = (x.detach() * std + mean + bound * grad.sign()).clamp(0.0, 1.0)
    pixels = torch.round(pixels * 255.0) / 255.0
    return (pixels - mean) / std


@torch.no_grad()
def neighbour_labels(source: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float,
                     mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, x_adv): the class the adversarial example lands in, never the true class."""
    x_adv = fgsm(source, x, y, bound, mean, std)
    logits = source(x_adv).float()
    logits[torch.arange(len(y), device=y.device), y] = float("-inf")
    return logits.argmax(1), x_adv


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    source = task.source_copy()
    forget = task.forget
    mean, std = forget.mean, forget.std

    def boundary_shrink_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        labels, _ = neighbour_labels(source, batch.x, batch.y, hp.bound, mean, std)
        return F.cross_entropy(logits.float(), labels)

    recipe = method_recipe(hp.epochs, hp.lr, hp.batch_size, momentum=hp.momentum,
                           weight_decay=0.0)
    fit(model, forget, recipe, seed=task.seed, loss_fn=boundary_shrink_loss,
        hooks=[EpochEnd(task)])
    return model
