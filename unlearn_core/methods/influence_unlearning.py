"""``influence_unlearning`` (IU): one influence-function step with a WoodFisher inverse.

The IU baseline of seed 004 (Koh & Liang 2017) as Unlearn-Sparse implements it
(Jia et al. 2023, ``optim/unlearn/Wfisher.py``, ``--unlearn wfisher``):

    w' = w + α · F̂⁻¹ v,   v = (n_f / n) · (ḡ_f − ḡ_r),   n = n_f + n_r,

with ḡ_f, ḡ_r the mean cross-entropy gradients over all of D_f and all of D_r
(model in eval mode, float32). At a stationary point of the training loss
(n_f ḡ_f + n_r ḡ_r = 0), v = −ḡ_r: a Newton step on the retain loss, i.e. the
influence-function estimate of retraining without D_f, scaled by α.

F̂ is the WoodFisher (Singh & Alistarh 2020) empirical Fisher with damping λ over
m per-sample gradients g_i of D_r samples:

    F̂ = λ I + (1/m) Σ_i g_i g_iᵀ,

whose inverse the Sherman–Morrison recursion F̂_0⁻¹ = λ⁻¹ I,
F̂_k⁻¹ = F̂_{k−1}⁻¹ − F̂_{k−1}⁻¹ g_k g_kᵀ F̂_{k−1}⁻¹ / (m + g_kᵀ F̂_{k−1}⁻¹ g_k) builds.
``woodfisher_ihvp`` computes F̂⁻¹ v in the closed form of that recursion
(Woodbury identity, G = [g_1 … g_m]ᵀ):

    F̂⁻¹ v = (v − Gᵀ (m λ I_m + G Gᵀ)⁻¹ G v) / λ,

identical in exact arithmetic, one Cholesky solve of an m × m system;
``woodfisher_ihvp_recursive`` is the literal recursion (used to check it).

Bounded step. At a stationary point v = −ḡ_r and F̂ stands for the Hessian of the
mean retain loss, so F̂⁻¹ v is one Newton step toward the retain-loss minimum: Koh &
Liang's first-order estimate of the retrained weights (removing each z ∈ D_f is
upweighting it by ε = −1/n). α = 1 is that whole estimate and α < 1 a damped
Newton step; α > 1 extrapolates past the estimate, which the derivation does not
support, so α ∈ (0, 1]. The estimate itself is a second-order Taylor model, valid
only near w, and with small damping λ the directions outside the span of the m
gradients are scaled by 1/λ; so the update is also held in a trust region
(Nocedal & Wright 2006, ch. 4) of radius ρ·‖w‖ over the trainable weights: a
longer step α F̂⁻¹ v is shortened to that radius along its own direction. ρ is
relative to ‖w‖ so that one value serves every model. Before this bound, a sweep
over α up to 20 and λ down to 1e-4 on a 95 % sparse class-wise source took steps
many times ‖w‖ long and collapsed retain accuracy to 20 %.

Defaults follow the released code: m = 1000 (its N), λ = 1 (its recursion starts
from the identity), α = 0.2 (README's IU command); ρ = 0.1 is ours: at the other
defaults the step on digits' MLP is 0.04-0.3 % of ‖w‖ (dense and 95 % sparse,
random and class-wise), so the cap binds only at a sweep's extremes (λ ≤ 1e-2,
where it kept RA at 95-100 % against 14-96 % unbounded). Deviations: the released
recursion carries a single running vector (``o_vec``) in place of F̂_{k−1}⁻¹ g_k,
which is not the WoodFisher inverse and drops the first sample; here F̂⁻¹ v is
exact. The m samples are drawn at random (seeded) rather than the first m of the
loader. Per-sample gradients come from ``torch.func.vmap(grad)``; G is held on the
task's device (m × d floats: 45 GB for ResNet-18 at m = 1000; lower
``num_samples`` for larger models). Weights that are exactly zero in the source
(an OMP-sparse model) stay zero (``keep_sparsity``): the gradients and v are
masked, as Unlearn-Sparse's pruning re-parametrisation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import prepare_model, seed_everything
from unlearn_core.train.sparsity import masks_from_zeros


@dataclass(frozen=True)
class Hparams:
    # α, share of the Newton/influence step F̂⁻¹ v; Unlearn-Sparse README (wfisher): 0.2
    alpha: float = hparam(0.2, gt=0, le=1)
    # ρ, trust region ‖α F̂⁻¹ v‖ ≤ ρ‖w‖ (Nocedal & Wright ch. 4); ours: 0.1
    max_step_ratio: float = hparam(0.1, gt=0, le=1)
    # λ in F̂ = λI + (1/m) Σ g gᵀ; Unlearn-Sparse Wfisher.py: F̂_0 = I
    damping: float = hparam(1.0, gt=0)
    # m, D_r per-sample gradients in F̂; Unlearn-Sparse Wfisher.py: 1000
    num_samples: int = hparam(1000, ge=1)
    # batch for ḡ_f, ḡ_r (sums, so no effect on the result)
    batch_size: int = hparam(128, ge=1)
    # per-sample gradients computed at once (memory only)
    chunk_size: int = hparam(32, ge=1)
    # exact zeros of the source stay zero; Unlearn-Sparse protocol
    keep_sparsity: bool = hparam(True)


SEARCH_SPACE: SearchSpace = {
    "alpha": LogUniform(1e-2, 1.0),
    "max_step_ratio": LogUniform(1e-3, 1.0),
    "damping": LogUniform(1e-4, 10.0),
    "num_samples": IntUniform(100, 2000),
}


def woodfisher_ihvp(grads: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """(λI + GᵀG/m)⁻¹ v for G = ``grads`` [m, d], via the Woodbury identity."""
    m = grads.shape[0]
    gram = (grads @ grads.T).double()
    gram.diagonal().add_(m * damping)
    coef = torch.cholesky_solve((grads @ v).double().unsqueeze(1), torch.linalg.cholesky(gram))
    return (v - grads.T @ coef.squeeze(1).to(v.dtype)) / damping


def woodfisher_ihvp_recursive(grads: torch.Tensor, v: torch.Tensor, damping: float
                              ) -> torch.Tensor:
    """The same product by the literal Sherman–Morrison recursion (O(m² d); for checks)."""
    m = grads.shape[0]
    us: list[torch.Tensor] = []  # u_k = F̂_{k−1}⁻¹ g_k
    denominators: list[torch.Tensor] = []  # m + g_kᵀ u_k

    def apply(x: torch.Tensor) -> torch.Tensor:  # F̂_k⁻¹ x after the k updates so far
        out = x / damping
        for u, d in zip(us, denominators, strict=True):
            out = out - u * (u @ x) / d
        return out

    for g in grads:
        u = apply(g)
        us.append(u)
        denominators.append(m + g @ u)
    return apply(v)


def _params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def mean_gradient(model: nn.Module, data: DeviceData, batch_size: int) -> torch.Tensor:
    """Flat ḡ = (1/n) Σ_i ∇ CE(x_i, y_i) over ``data`` (model as it is: call in eval mode)."""
    params = list(_params(model).values())
    total = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    for batch in data.batches(batch_size, augment=False):
        loss = F.cross_entropy(model(batch.x).float(), batch.y, reduction="sum")
        total += torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    return total / max(1, len(data))


def per_sample_gradients(model: nn.Module, data: DeviceData, chunk_size: int) -> torch.Tensor:
    """[len(data), d] rows ∇ CE(x_i, y_i), by vmap over single-sample losses."""
    params = {name: p.detach() for name, p in _params(model).items()}
    buffers = dict(model.named_buffers())

    def loss(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0))

    sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    out = torch.empty(len(data), sum(p.numel() for p in params.values()),
                      device=data.device)
    row = 0
    for batch in data.batches(chunk_size, augment=False):
        grads = sample_grad(params, batch.x, batch.y)
        out[row:row + len(batch.y)] = torch.cat([grads[n].flatten(1) for n in params], dim=1)
        row += len(batch.y)
    return out


def _flat_mask(model: nn.Module) -> torch.Tensor | None:
    masks = masks_from_zeros(model)
    if all(bool(m.all()) for m in masks.values()):
        return None
    return torch.cat([masks[name].flatten().float() if name in masks
                      else torch.ones(p.numel(), device=p.device)
                      for name, p in _params(model).items()])


def influence_step(model: nn.Module, task: UnlearnTask, hp: Hparams) -> torch.Tensor:
    """The flat update F̂⁻¹ v (before α) for the model as it is."""
    model.eval()
    n_f, n_r = len(task.forget), len(task.retain)
    g_f = mean_gradient(model, task.forget, hp.batch_size)
    g_r = mean_gradient(model, task.retain, hp.batch_size)
    v = (n_f / (n_f + n_r)) * (g_f - g_r)
    generator = torch.Generator().manual_seed(task.seed)
    positions = torch.randperm(n_r, generator=generator)[: hp.num_samples]
    grads = per_sample_gradients(model, task.retain.subset(positions), hp.chunk_size)
    mask = _flat_mask(model) if hp.keep_sparsity else None
    if mask is not None:
        grads.mul_(mask)
        v = v * mask
    return woodfisher_ihvp(grads, v, hp.damping)


def bounded_update(step: torch.Tensor, weights: torch.Tensor, alpha: float,
                   max_step_ratio: float) -> torch.Tensor:
    """α·``step``, shortened along its direction to norm ρ‖``weights``‖ if longer."""
    update = alpha * step
    radius = max_step_ratio * float(torch.linalg.vector_norm(weights))
    norm = float(torch.linalg.vector_norm(update))
    return update * (radius / norm) if norm > radius else update


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    model = prepare_model(model, task.device)
    step = influence_step(model, task, hp)
    params = _params(model)
    with torch.no_grad():
        weights = torch.cat([p.detach().flatten() for p in params.values()])
        update = bounded_update(step, weights, hp.alpha, hp.max_step_ratio)
        start = 0
        for p in params.values():
            p.add_(update[start:start + p.numel()].view_as(p))
            start += p.numel()
    return model
