"""``random_topk_perturb`` (Random-TopK): Random-k with the Top-K entries forced in.

Seed 000 (Zuo et al.), §4.3.4: "K in k% parameter selected by Random-k is
replaced by those chosen by Top-K". The mask keeps Random-k's size round(k·n)
and holds the K most forget-sensitive entries (Eq. 3-4, as ``topk_perturb``)
plus round(k·n) − K entries drawn uniformly from the rest; those are set to
ε·w_rand (Eq. 5) and the model is trained on CE(D_RE) + λ·JS on D_UL
(Eq. 6-8). See ``topk_perturb`` for w_rand, the JS reference and open choices.
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
    random_topk_mask,
    sensitivity,
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
    # k, share of all parameter entries; seed 000 §4.3.1/§4.3.4: 5 %
    ratio: float = hparam(0.05, ge=0, le=1)
    # K forced into the mask; seed 000 §4.3.2/§4.3.4: 45 (ResNet18)
    top_k: int = hparam(45, ge=0)
    # ε of Eq. 5; seed 000: "a small value", none given: our choice
    eps: float = hparam(0.01, ge=0, le=1)
    # w_rand of Eq. 5: Rand(w.shape) of Alg. 1 l.10 (U[0,1)); or "normal"
    w_rand: str = hparam("uniform", choices=W_RAND)
    # Eq. 5 w=ε·w_rand; "interpolate": Alg. 1 l.12 w=(1−ε)w+ε·w_rand
    perturb_rule: str = hparam("replace", choices=PERTURB_RULES)
    # forget samples in the Eq. 4 pass; 0 = all of D_UL (our choice)
    sensitivity_samples: int = hparam(0, ge=0)
    # λ of Eq. 8; seed 000 §4.3.1: 0.1
    lam: float = hparam(0.1, ge=0)
    # P(w,x) in Eq. 6-8: "source" (Alg. 1 l.16) or "retrain" (§3.2.2)
    js_reference: str = hparam("source", choices=JS_REFERENCES)
    # training epochs on D_RE; seed 000 §4.3.4 / Fig. 8: 100
    epochs: int = hparam(100, ge=0)
    # Adam learning rate; seed 000 §4.3.1: Adam, 1e-4 (stated for EU-K/CF-K)
    lr: float = hparam(1e-4, gt=0)
    # not given in seed 000; project default
    batch_size: int = hparam(128, ge=1)
    # True: update only the masked entries (Theorem 1)
    train_only_perturbed: bool = hparam(False)


SEARCH_SPACE: SearchSpace = {
    "ratio": Uniform(0.005, 0.2),
    "top_k": IntUniform(1, 100),
    "eps": LogUniform(1e-4, 1.0),
    "lam": LogUniform(1e-3, 10.0),
    "lr": LogUniform(1e-5, 1e-2),
    "epochs": IntUniform(1, 100),
}



def perturb(model: nn.Module, task: UnlearnTask, hp: Hparams) -> Masks:
    """Sensitivity, the mixed mask and Eq. 5 on ``model`` in place; returns the mask."""
    scores = sensitivity(model, task.forget, max_samples=hp.sensitivity_samples, seed=task.seed)
    masks = random_topk_mask(scores, hp.ratio, hp.top_k, seed=task.seed)
    perturb_(model, masks, eps=hp.eps, w_rand=hp.w_rand, rule=hp.perturb_rule, seed=task.seed)
    return masks


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    model = prepare_model(model, task.device)
    masks = perturb(model, task, hp)
    return train_after_perturbation(model, task, hp, masks)
