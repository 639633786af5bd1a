"""``gradient_surgery``: ascend the forget loss only along the part of its gradient that is
orthogonal to the retain gradient, then descend on D_r with a large initial LR and an
elastic-net penalty (seed paper 002, Sec. 3.2, Eq. 3).

Eq. 3 (one Gram-Schmidt step on stochastic gradients of the whole flattened parameter
vector):

    ∇L_R⊥ = ∇L_F − (∇L_Fᵀ ∇L_R / ∇L_Rᵀ ∇L_R) ∇L_R

Eq. 3 has no conflict test (unlike PCGrad): the retain component is always removed, so
every ascent step is orthogonal to the retain gradient of its step, to first order
leaving the retain loss unchanged. Sign: the paper's aim is to erase the forget set by
gradient *ascent*; the released code (github.com/sachit3022/unlearning,
``unl_algorithms/surgery.py``) stores −∇L_R⊥ as the gradient and lets SGD descend, i.e.
θ ← θ + lr·∇L_R⊥ (with momentum).

Schedule and constants from that code (the paper gives none): ascent = 3 passes over
D_f in batches of 2048, each paired with as many retain samples drawn with replacement,
SGD lr 0.09, momentum 0.95, no weight decay; descent = 4 epochs on D_r in batches of
1024 with AdamW (lr 2e-3, decoupled L2 5e-4) and an exponential LR decay ×0.5 per
epoch ("a rather large initial learning rate"), loss = CE + 1e-3 · Σ_tensors mean|w|
(the L1 half of the elastic net; AdamW's decay is the L2 half). The model stays in
train mode throughout, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._seed002 import adamw, logits_of, train_epochs
from unlearn_core.methods.common import EpochEnd
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.loop import prepare_model, seed_everything

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch of the descent phase:
EPOCHS_HPARAM = "epochs"  # ASHA's time axis. The ascent passes over D_f
# come first, unreported (the model repairs D_r only in the descent).


@dataclass(frozen=True)
class Hparams:
    # passes over D_f with the Eq. 3 step; 002 code surgery.py: range(3)
    ascent_epochs: int = hparam(3, ge=1)
    # SGD LR of the ascent; 002 code surgery.py: 9e-2
    ascent_lr: float = hparam(0.09, gt=0)
    # SGD momentum of the ascent; 002 code surgery.py: 0.95
    ascent_momentum: float = hparam(0.95, ge=0, lt=1)
    # D_f rows (= D_r rows drawn) per ascent step; surgery.py
    forget_batch_size: int = hparam(2048, ge=1)
    # descent epochs on D_r; 002 code surgery.py: epochs = 4
    epochs: int = hparam(4, ge=0)
    # initial AdamW LR of the descent; seed 002 §3.2 "rather large", surgery.py
    lr: float = hparam(2e-3, gt=0)
    # per-epoch exponential LR factor of the descent; surgery.py: 0.5
    lr_decay: float = hparam(0.5, gt=0, le=1)
    # L2 half of the elastic net (AdamW decoupled); surgery.py
    weight_decay: float = hparam(5e-4, ge=0)
    # L1 half: weight of Σ_tensors mean|w|; seed 002 §3.2, surgery.py lmb=1e-3
    l1: float = hparam(1e-3, ge=0)
    # D_r rows per descent step; 002 code surgery.py: 1024
    batch_size: int = hparam(1024, ge=1)


SEARCH_SPACE: SearchSpace = {
    "ascent_epochs": IntUniform(1, 5),
    "ascent_lr": LogUniform(1e-3, 0.2),
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-4, 1e-2),
    "lr_decay": Uniform(0.3, 1.0),
    "weight_decay": LogUniform(1e-5, 1e-2),
    "l1": LogUniform(1e-5, 1e-2),
}


def orthogonal_to(g_forget: torch.Tensor, g_retain: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``g_forget`` minus its projection on ``g_retain`` (unchanged if g_retain = 0)."""
    denom = torch.dot(g_retain.double(), g_retain.double())
    if denom == 0:
        return g_forget.clone()
    coef = torch.dot(g_forget.double(), g_retain.double()) / denom
    return g_forget - coef.to(g_forget.dtype) * g_retain


def flat_gradient(model: nn.Module, params: list[nn.Parameter], batch: Batch) -> torch.Tensor:
    """∇_θ CE on one batch, flattened over ``params`` (zeros where a parameter gets none)."""
    for p in params:
        p.grad = None
    F.cross_entropy(logits_of(model, batch.x), batch.y).backward()
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
    ])


def assign_gradient(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    start = 0
    for p in params:
        p.grad = flat[start : start + p.numel()].view_as(p).clone()
        start += p.numel()


def surgery_step(
    model: nn.Module, params: list[nn.Parameter], forget: Batch, retain: Batch,
    optimizer: torch.optim.Optimizer,
) -> torch.Tensor:
    """One ascent step along ∇L_R⊥ (Eq. 3); returns ∇L_R⊥."""
    g_forget = flat_gradient(model, params, forget)
    g_retain = flat_gradient(model, params, retain)
    step = orthogonal_to(g_forget, g_retain)
    assign_gradient(params, -step)  # the optimiser descends on −∇L_R⊥: ascent on L_F
    optimizer.step()
    return step


def sample_batch(data: DeviceData, n: int, generator: torch.Generator) -> Batch:
    """``n`` rows of ``data`` drawn uniformly with replacement (surgery.py's np.random.choice)."""
    index = torch.randint(len(data), (n,), generator=generator)
    return next(data.subset(index).batches(n, shuffle=False, generator=generator))


def l1_penalty(weight: float):
    def penalty(model: nn.Module) -> torch.Tensor:
        return weight * sum(p.abs().mean() for p in model.parameters() if p.requires_grad)

    return penalty


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    model = prepare_model(model, task.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    ascent = torch.optim.SGD(params, lr=hp.ascent_lr, momentum=hp.ascent_momentum,
                             weight_decay=0.0)
    for _ in range(hp.ascent_epochs):
        for fb in task.forget.batches(hp.forget_batch_size, shuffle=True, generator=generator):
            rb = sample_batch(task.retain, len(fb.y), generator)
            surgery_step(model, params, fb, rb, ascent)
    for p in params:
        p.grad = None

    def cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y)

    train_epochs(model, task.retain, adamw(model, hp.lr, hp.weight_decay), epochs=hp.epochs,
                 batch_size=hp.batch_size, generator=generator, loss_fn=cross_entropy,
                 lr_factor=lambda epoch: hp.lr_decay**epoch, penalty=l1_penalty(hp.l1),
                 hooks=[EpochEnd(task)])
    return model
