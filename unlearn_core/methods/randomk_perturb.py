"""``randomk_perturb`` (Random-k): perturb a random share k of the parameters, then train.

Seed 000 (Zuo et al.), §3.2.1 and Alg. 1 l.10-12: a uniformly random set of
round(k·n) parameter entries (n = all trainable parameters; Table 1: 0.558M =
5 % of ResNet18's 11.17M) is set to ε·w_rand (Eq. 5), then the model is trained
on L = CE(D_RE) + λ·JS(P_unlearned(x_f) ‖ P_ref(x_f)) on D_UL (Eq. 6-8),
exactly as ``topk_perturb`` (see there for w_rand, the JS reference and the
open choices). Alg. 1 l.10-12 draws the mask per entry (``Rand < k``, so the
count is k·n on average) and interpolates, w = (1−ε)·w + ε·w_rand; we draw the
exact count and default to Eq. 5 (``perturb_rule="interpolate"`` gives l.12).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from unlearn_core.methods import _perturb
from unlearn_core.methods._perturb import (
    JS_REFERENCES,
    PERTURB_RULES,
    W_RAND,
    Masks,
    perturb_,
    random_mask,
    train_after_perturbation,
)
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.loop import prepare_model

# the sweep reads this module's needs_retrain_model (methods/__init__.py)
needs_retrain_model = _perturb.needs_retrain_model

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # k of Alg. 1 l.11, share of all parameter entries; seed 000 §4.3.1: 5 %
    ratio: float = hparam(0.05, ge=0, le=1)
    # ε of Eq. 5; seed 000: "a small value", none given: our choice
    eps: float = hparam(0.01, ge=0, le=1)
    # w_rand of Eq. 5: Rand(w.shape) of Alg. 1 l.10 (U[0,1)); or "normal"
    w_rand: str = hparam("uniform", choices=W_RAND)
    # Eq. 5 w=ε·w_rand; "interpolate": Alg. 1 l.12 w=(1−ε)w+ε·w_rand
    perturb_rule: str = hparam("replace", choices=PERTURB_RULES)
    # λ of Eq. 8; seed 000 §4.3.1: 0.1
    lam: float = hparam(0.1, ge=0)
    # P(w,x) in Eq. 6-8: "source" (Alg. 1 l.16) or "retrain" (§3.2.2)
    js_reference: str = hparam("source", choices=JS_REFERENCES)
    # training epochs on D_RE; seed 000 Fig. 1 and 6: 50
    epochs: int = hparam(50, ge=0)
    # Adam learning rate; seed 000 §4.3.1: Adam, 1e-4 (stated for EU-K/CF-K)
    lr: float = hparam(1e-4, gt=0)
    # not given in seed 000; project default
    batch_size: int = hparam(128, ge=1)
    # True: update only the masked entries (Theorem 1)
    train_only_perturbed: bool = hparam(False)


SEARCH_SPACE: SearchSpace = {
    "ratio": Uniform(0.005, 0.2),
    "eps": LogUniform(1e-4, 1.0),
    "lam": LogUniform(1e-3, 10.0),
    "lr": LogUniform(1e-5, 1e-2),
    "epochs": IntUniform(1, 100),
}



def perturb(model: nn.Module, task: UnlearnTask, hp: Hparams) -> Masks:
    """Alg. 1 l.10-12 / Eq. 5 on ``model`` in place; returns the mask of perturbed entries."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    masks = random_mask(params, hp.ratio, seed=task.seed)
    perturb_(model, masks, eps=hp.eps, w_rand=hp.w_rand, rule=hp.perturb_rule, seed=task.seed)
    return masks


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    model = prepare_model(model, task.device)
    masks = perturb(model, task, hp)
    return train_after_perturbation(model, task, hp, masks)
