"""``adversarial_unlearning`` (DAU): discriminative adversarial unlearning, seed paper 004.

An attacker A (``_attacker.MIATransformer``, Yuan & Zhang 2022) learns to tell the
defender's outputs on the forget set D_f (members, label 1) from those on the
validation set D_v (non-members, label 0); the defender D (the model) keeps its
task on D_r while defeating the attacker, plus a Barlow Twins term pulling D_f
features toward D_v features. Per iteration (Algorithm 1):

1. a batch (x_r, y_r) of D_r and batches of D_f and D_v (equal size B' =
   min(B, |D_f|, |D_v|), so chance accuracy is 0.5);
2. D(x)' = [softmax D(x), Δ(x), onehot(y)] on the D_f and D_v batches (§3.1);
3. attacker step, ascent on L_A = mean log A(D(x_f)') + mean log(1 − A(D(x_v)'))
   (Alg. 1 line 7; implemented as descent on the binary cross-entropy = −L_A);
4. defender step, descent on L_D + α L_A + β V_ss (Eq. 1-3, Alg. 1 line 8):
   L_D = CE on the D_r batch; L_A through the just-updated (frozen) attacker,
   differentiated through D(x) and Δ(x) of both sets; V_ss (Eq. 2) =
   Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², with C the cross-correlation of the
   mean-centred ``forward_features`` of the D_f and D_v batches (row b of one
   paired with row b of the other), each column divided by its norm.

Choices (the paper is silent unless cited):
- attacker pre-trained for 1000 iterations on D = D_r ∪ D_f (members) vs D_v
  (§4.2, "Training Adjustments"), on views of the source computed once (the
  defender does not move while pre-training);
- class-wise forgetting (``task.forget_classes`` non-empty): α = 0 from
  iteration 30 on (§4.2);
- defender: SGD, momentum 0.9, weight decay 5e-4 (the Unlearn-Sparse recipe the
  seed's baselines share), lr 0.01 (§4.2: random dense; 0.03 for random on 95 %
  sparse, 0.02 class-wise: set ``lr`` in the config);
- attacker: Adam, lr 1e-3, weight decay 5e-4, the optimiser Yuan & Zhang's code
  uses to train an attacker inside a min-max game (``train_defend_adv``);
- batch size B and run length are not given: B = 128, one pass over D_r
  (seed 004's run time, 8 min against 4.9 min for 10 FT epochs, suggests
  about one pass);
- the D_f / D_v views run with the defender in eval mode (the behaviour the
  attacker and every MIA see; no dropout noise in Δ), the D_r step in train mode;
  no augmentation on the views, the data's own on D_r;
- ``defender_objective="non_saturating"`` is §3.3's GAN variant (the defender
  minimises the attacker's loss on flipped membership labels);
- weights that are exactly zero in the source (a 95 % OMP-sparse model) stay
  zero (``keep_sparsity``), as in Unlearn-Sparse, whose protocol seed 004 uses.

``adversarial_unlearn`` returns the model and its history (per-iteration
attacker accuracy on the iteration's D_f / D_v batches before the attacker's
step, α, losses; ``pretrain_acc``: the pre-trained attacker's balanced accuracy
on all of D_f vs D_v); ``unlearn`` sets it as ``model.dau_history``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._attacker import MIATransformer, defender_view
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.loop import prepare_model, seed_everything
from unlearn_core.train.sparsity import apply_masks, masks_from_zeros

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch (pass over D_r)
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)
DEFENDER_OBJECTIVES = ("minimax", "non_saturating")  # Eq. 1; §3.3's GAN variant


@dataclass(frozen=True)
class Hparams:
    # passes over D_r, one min-max iteration per D_r batch; not given (run time)
    epochs: int = hparam(1, ge=1)
    # defender SGD lr η_D; seed 004 §4.2: 0.01 (random, dense)
    lr: float = hparam(0.01, gt=0)
    # B of Alg. 1 for D_r, D_f, D_v batches; not given in seed 004
    batch_size: int = hparam(128, ge=1)
    # defender SGD momentum; Unlearn-Sparse recipe: 0.9
    momentum: float = hparam(0.9, ge=0, lt=1)
    # defender weight decay; Unlearn-Sparse recipe: 5e-4
    weight_decay: float = hparam(5e-4, ge=0)
    # α, attacker-objective weight in Eq. 1; seed 004 §4.2: 0.9
    alpha: float = hparam(0.9, ge=0)
    # β, V_ss weight in Eq. 3; seed 004 §4.2: 0.001
    beta: float = hparam(0.001, ge=0)
    # λ, off-diagonal weight in Eq. 2; seed 004 / Zbontar et al.: 5e-3
    bt_lambda: float = hparam(5e-3, ge=0)
    # n noisy copies averaged in Δ(x); seed 004 §3.1: 10
    num_noise: int = hparam(10, ge=1)
    # σ of the input noise in Δ(x), normalised units; Yuan & Zhang: 1e-3
    noise_std: float = hparam(1e-3, gt=0)
    # attacker Adam lr η_A; Yuan & Zhang code: 1e-3
    attacker_lr: float = hparam(1e-3, gt=0)
    # attacker weight decay; Yuan & Zhang code: 5e-4
    attacker_weight_decay: float = hparam(5e-4, ge=0)
    # attacker steps on D vs D_v before the loop; seed 004: 1000
    pretrain_iterations: int = hparam(1000, ge=0)
    # class-wise: α = 0 from this iteration; seed 004: 30
    classwise_alpha_iterations: int = hparam(30, ge=0)
    # "minimax" (Eq. 1) or "non_saturating" (§3.3 variant)
    defender_objective: str = hparam("minimax", choices=DEFENDER_OBJECTIVES)
    # exact zeros of the source stay zero; Unlearn-Sparse protocol
    keep_sparsity: bool = hparam(True)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "lr": LogUniform(1e-3, 1e-1),
    "alpha": Uniform(0.0, 2.0),
    "beta": LogUniform(1e-5, 1e-1),
    "bt_lambda": LogUniform(1e-4, 1e-1),
    "noise_std": Choice((1e-3, 1.0)),  # Yuan & Zhang's σ, or seed 004's literal ε ~ N(0, 1)
    "attacker_lr": LogUniform(1e-4, 1e-2),
    "pretrain_iterations": IntUniform(100, 2000),
    "classwise_alpha_iterations": IntUniform(0, 200),
    "defender_objective": Choice(("minimax", "non_saturating")),
}


def barlow_twins_loss(z_f: torch.Tensor, z_v: torch.Tensor, lam: float) -> torch.Tensor:
    """V_ss of Eq. 2: C_ij = Σ_b z^f_bi z^v_bj / (‖z^f_·i‖ ‖z^v_·j‖) on mean-centred features."""
    a = F.normalize(z_f.float() - z_f.float().mean(0), dim=0, eps=1e-8)
    b = F.normalize(z_v.float() - z_v.float().mean(0), dim=0, eps=1e-8)
    c = a.T @ b
    diagonal = torch.diagonal(c)
    on = (1.0 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lam * off


def alpha_at(iteration: int, hp: Hparams, classwise: bool) -> float:
    """α at 0-based ``iteration``: 0 from ``classwise_alpha_iterations`` on if class-wise."""
    if classwise and iteration >= hp.classwise_alpha_iterations:
        return 0.0
    return hp.alpha


def _stream(data: DeviceData, size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Endless random batches of exactly ``size`` rows (reshuffled every pass), no augmentation."""
    while True:
        yield from data.batches(size, shuffle=True, generator=generator, augment=False,
                                drop_last=True)


def _attacker_loss(attacker: nn.Module, member, nonmember, flip: bool = False):
    """Binary CE of A on (members -> 1, non-members -> 0), = −L_A; and the accuracy."""
    logits = attacker(*(torch.cat(parts) for parts in zip(member, nonmember, strict=True)))
    labels = torch.cat([torch.ones(len(member[0])), torch.zeros(len(nonmember[0]))])
    labels = labels.long().to(logits.device)
    accuracy = (logits.argmax(1) == labels).float().mean()
    return F.cross_entropy(logits, 1 - labels if flip else labels), accuracy


@torch.no_grad()
def _views(model: nn.Module, data: DeviceData, hp: Hparams, num_classes: int,
           generator: torch.Generator, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    parts = [defender_view(model, b.x, b.y, num_classes, hp.num_noise, hp.noise_std, generator)[1]
             for b in data.batches(chunk, augment=False)]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def _pretrain_attacker(model, attacker, optimizer, task, hp, size, generator, noise_gen):
    """§4.2: train A on the source's outputs for D (members) vs D_v; return D_f-vs-D_v accuracy."""
    model.eval()
    retain = _views(model, task.retain, hp, task.num_classes, noise_gen)
    forget = _views(model, task.forget, hp, task.num_classes, noise_gen)
    val = _views(model, task.val, hp, task.num_classes, noise_gen)
    members = tuple(torch.cat(pair) for pair in zip(retain, forget, strict=True))
    attacker.train()
    for _ in range(hp.pretrain_iterations):
        m = torch.randint(len(members[0]), (size,), generator=generator).to(task.device)
        v = torch.randint(len(val[0]), (size,), generator=generator).to(task.device)
        loss, _ = _attacker_loss(attacker, [t[m] for t in members], [t[v] for t in val])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    attacker.eval()
    with torch.no_grad():  # balanced accuracy over all of D_f and D_v
        hits_f = (attacker(*forget).argmax(1) == 1).float().mean()
        hits_v = (attacker(*val).argmax(1) == 0).float().mean()
    return float((hits_f + hits_v) / 2)


def adversarial_unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams
                        ) -> tuple[nn.Module, dict]:
    """Run DAU (Alg. 1); return the unlearned defender and the training history."""
    if hp.defender_objective not in DEFENDER_OBJECTIVES:
        raise ValueError(f"defender_objective {hp.defender_objective!r}: "
                         f"expected one of {DEFENDER_OBJECTIVES}")
    device = task.device
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    noise_gen = torch.Generator(device=device).manual_seed(task.seed)
    model = prepare_model(model, device)
    masks = {name: mask for name, mask in masks_from_zeros(model).items()
             if hp.keep_sparsity and not bool(mask.all())}  # only layers with pruned weights
    size = min(hp.batch_size, len(task.forget), len(task.val))
    attacker = MIATransformer(task.num_classes).to(device)
    a_opt = torch.optim.Adam(attacker.parameters(), lr=hp.attacker_lr,
                             weight_decay=hp.attacker_weight_decay)
    history: dict = {"pretrain_acc": _pretrain_attacker(model, attacker, a_opt, task, hp, size,
                                                        generator, noise_gen)}
    d_opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum,
                            weight_decay=hp.weight_decay)
    forget_batches = _stream(task.forget, size, generator)
    val_batches = _stream(task.val, size, generator)
    classwise = bool(task.forget_classes)
    records: dict[str, list] = {"attacker_acc": [], "alpha": [], "loss_d": [], "loss_a": [],
                                "v_ss": []}
    iteration = 0
    for epoch in range(hp.epochs):
        for batch_r in task.retain.batches(hp.batch_size, shuffle=True, generator=generator):
            alpha = alpha_at(iteration, hp, classwise)
            fb, vb = next(forget_batches), next(val_batches)
            model.eval()  # Alg. 1 line 5-6: D(x)' and features of D_f and D_v
            z_f, view_f = defender_view(model, fb.x, fb.y, task.num_classes, hp.num_noise,
                                        hp.noise_std, noise_gen, grad_sensitivity=alpha > 0)
            z_v, view_v = defender_view(model, vb.x, vb.y, task.num_classes, hp.num_noise,
                                        hp.noise_std, noise_gen, grad_sensitivity=alpha > 0)
            detached_f = [t.detach() for t in view_f]
            detached_v = [t.detach() for t in view_v]
            attacker.eval()
            with torch.no_grad():
                records["attacker_acc"].append(_attacker_loss(attacker, detached_f, detached_v)[1])
            attacker.train()  # Alg. 1 line 7: ascent on L_A
            loss_a, _ = _attacker_loss(attacker, detached_f, detached_v)
            a_opt.zero_grad(set_to_none=True)
            loss_a.backward()
            a_opt.step()
            attacker.eval()  # Alg. 1 line 8: descent on L_D + α L_A + β V_ss
            attacker.requires_grad_(False)
            model.train()
            loss_d = F.cross_entropy(model(batch_r.x).float(), batch_r.y)
            loss = loss_d
            if alpha > 0:
                flip = hp.defender_objective == "non_saturating"
                bce, _ = _attacker_loss(attacker, view_f, view_v, flip=flip)
                loss = loss + alpha * (bce if flip else -bce)  # minimax: L_A = −BCE
            v_ss = barlow_twins_loss(z_f, z_v, hp.bt_lambda)
            if hp.beta > 0:
                loss = loss + hp.beta * v_ss
            d_opt.zero_grad(set_to_none=True)
            loss.backward()
            d_opt.step()
            if masks:
                apply_masks(model, masks)
            attacker.requires_grad_(True)
            for key, value in (("alpha", alpha), ("loss_d", loss_d.detach()),
                               ("loss_a", -loss_a.detach()), ("v_ss", v_ss.detach())):
                records[key].append(value)
            iteration += 1
        task.end_epoch(model, epoch + 1)
    history.update({key: [float(v) for v in values] for key, values in records.items()})
    return model, history


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    model, history = adversarial_unlearn(model, task, hp)
    model.dau_history = history
    return model
