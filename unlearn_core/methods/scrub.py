"""``scrub`` (SCRUB, Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): a
student, initialised as the original model, moves away from it (the teacher) on D_f and
stays close to it on D_r. Baseline of seed paper 002.

Losses (SCRUB Eq. 1-3; code: meghdadk/SCRUB ``thirdparty/repdistiller``):
- max-step on a D_f batch: minimise −KL_T(teacher ‖ student), i.e. maximise the
  divergence, with KL_T(p_t ‖ p_s) = T² / B · Σ p_t (log p_t − log p_s), p = softmax(z / T)
  (``DistillKL``);
- min-step on a D_r batch: minimise γ · CE(student, y) + α · KL_T(teacher ‖ student).
Schedule (``large_scale_unlearning.ipynb``): for epoch = 1 … epochs, a full max pass over
D_f if epoch ≤ msteps, then a full min pass over D_r; one SGD optimiser (momentum 0.9,
weight decay 5e-4) shared by both; LR × decay^(#milestones < epoch). Defaults are that
notebook's CIFAR settings: T = 4, α = 0.001, γ = 0.99, msteps = 2, 3 epochs,
lr 5e-4, milestones (3, 5, 9) × 0.1, forget batches of 512 and retain batches of 256.
The student trains in train mode, the teacher is the frozen source in eval mode.

(Seed 002's own SCRUB run used its trainer's ``AdverserialTrainer`` with α = 0.1, γ = 3 and
``nn.KLDivLoss`` on two softmaxes; the brief asks for SCRUB's own defaults.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._seed002 import logits_of
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import Batch
from unlearn_core.train.loop import prepare_model, seed_everything

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch (max + min pass)
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # SGDA epochs; SCRUB large_scale_unlearning.ipynb sgda_epochs=3
    epochs: int = hparam(3, ge=1)
    # first epochs that also run a max pass on D_f; SCRUB notebook msteps=2
    msteps: int = hparam(2, ge=0)
    # SGD LR of both passes; SCRUB notebook sgda_learning_rate
    lr: float = hparam(5e-4, gt=0)
    # SGD momentum; SCRUB notebook sgda_momentum
    momentum: float = hparam(0.9, ge=0, lt=1)
    # SGD weight decay; SCRUB notebook sgda_weight_decay
    weight_decay: float = hparam(5e-4, ge=0)
    # weight of KL_T on D_r in the min-step (SCRUB Eq. 3); notebook
    alpha: float = hparam(0.001, ge=0)
    # weight of CE on D_r in the min-step (SCRUB Eq. 3); notebook
    gamma: float = hparam(0.99, ge=0)
    # softmax temperature T of DistillKL; SCRUB notebook kd_T=4
    kd_T: float = hparam(4.0, gt=0)
    # LR milestones (epochs); SCRUB notebook
    lr_decay_epochs: tuple[int, ...] = hparam((3, 5, 9), ge=1)
    # LR factor per milestone passed; SCRUB notebook
    lr_decay_rate: float = hparam(0.1, gt=0, le=1)
    # D_f batch of the max pass; SCRUB notebook forget_loader
    forget_batch_size: int = hparam(512, ge=1)
    # D_r batch of the min pass; SCRUB notebook retain_loader
    batch_size: int = hparam(256, ge=1)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "msteps": IntUniform(1, 5),
    "lr": LogUniform(1e-4, 1e-2),
    "alpha": LogUniform(1e-4, 1.0),
    "gamma": Uniform(0.1, 3.0),
    "kd_T": Uniform(1.0, 8.0),
}


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               T: float) -> torch.Tensor:
    """KL_T(teacher ‖ student) · T² per sample (SCRUB's ``DistillKL``)."""
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * (T**2) / student_logits.shape[0]


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def max_step(student: nn.Module, teacher: nn.Module, batch: Batch,
             optimizer: torch.optim.Optimizer, hp: Hparams) -> float:
    """One max-step on a D_f batch: descend −KL_T(teacher ‖ student)."""
    with torch.no_grad():
        teacher_logits = logits_of(teacher, batch.x)
    return _step(optimizer, -distill_kl(logits_of(student, batch.x), teacher_logits, hp.kd_T))


def min_step(student: nn.Module, teacher: nn.Module, batch: Batch,
             optimizer: torch.optim.Optimizer, hp: Hparams) -> float:
    """One min-step on a D_r batch: descend γ·CE + α·KL_T(teacher ‖ student)."""
    with torch.no_grad():
        teacher_logits = logits_of(teacher, batch.x)
    logits = logits_of(student, batch.x)
    loss = hp.gamma * F.cross_entropy(logits, batch.y) \
        + hp.alpha * distill_kl(logits, teacher_logits, hp.kd_T)
    return _step(optimizer, loss)


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    student = prepare_model(model, task.device)
    teacher = task.source_copy()
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=hp.lr,
                                momentum=hp.momentum, weight_decay=hp.weight_decay)
    student.train()
    for epoch in range(1, hp.epochs + 1):
        passed = sum(epoch > m for m in hp.lr_decay_epochs)
        for group in optimizer.param_groups:
            group["lr"] = hp.lr * hp.lr_decay_rate**passed
        if epoch <= hp.msteps:
            for batch in task.forget.batches(hp.forget_batch_size, shuffle=True,
                                             generator=generator):
                max_step(student, teacher, batch, optimizer, hp)
        for batch in task.retain.batches(hp.batch_size, shuffle=True, generator=generator):
            min_step(student, teacher, batch, optimizer, hp)
        task.end_epoch(student, epoch)
    return student
