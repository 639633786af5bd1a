"""``topk_perturb`` (Top-K): perturb the K most forget-sensitive parameters, then train.

Seed 000 (Zuo et al.), §3.2 and Alg. 1:
1. sensitivity_{i,j} = |∂F(x, w)/∂w_{i,j}| from one forward/backward pass
   (Eq. 3-4), F = the source's cross-entropy on the forget set D_UL;
2. the K entries of largest sensitivity, over all parameters, are set to
   ε·w_rand (Eq. 5; Alg. 1 l.8), w_rand = Rand(w.shape) ~ U[0, 1) as in
   Alg. 1 l.10 (``w_rand="normal"``: N(0, 1));
3. Adam on L = CE(D_RE) + λ·JS(P_unlearned(x_f) ‖ P_ref(x_f)), x_f ∈ D_UL
   (Eq. 6-8, Alg. 1 l.14-18); P_ref is the source (Alg. 1 l.16, default) or the
   retrained model (§3.2.2's text; ``js_reference="retrain"`` reads
   ``task.extras["retrain_model"]``, which ``needs_retrain_model(hp)`` declares to
   the sweep, so it loads one only for such trials).

Open choices: the paper gives no ε (ours: 0.01), no learning rate for Top-K
(ours: Adam 1e-4, the only rate it states, for EU-K/CF-K), no batch size. Its
Theorem 1 says only the K entries are updated while training (δw_i = 0
elsewhere); Alg. 1 minimises L over all weights, which is the default here,
``train_only_perturbed=True`` gives Theorem 1's reading. The perturbation step
is ``perturb`` (testable on its own).
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
    sensitivity,
    topk_mask,
    train_after_perturbation,
)
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.loop import prepare_model

# the sweep reads this module's needs_retrain_model (methods/__init__.py)
needs_retrain_model = _perturb.needs_retrain_model

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # K of Eq. 5, entries; seed 000 §4.3.2: 45 ResNet18 (VGG 30, GoogLeNet 50)
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
    # training epochs on D_RE; seed 000 Fig. 1 and 6: 50
    epochs: int = hparam(50, ge=0)
    # Adam learning rate; seed 000 §4.3.1: Adam, 1e-4 (stated for EU-K/CF-K)
    lr: float = hparam(1e-4, gt=0)
    # not given in seed 000; project default
    batch_size: int = hparam(128, ge=1)
    # True: update only the K entries (seed 000 Theorem 1)
    train_only_perturbed: bool = hparam(False)


SEARCH_SPACE: SearchSpace = {
    "top_k": IntUniform(1, 100),  # seed 000 Fig. 5 scans 0-50
    "eps": LogUniform(1e-4, 1.0),
    "lam": LogUniform(1e-3, 10.0),
    "lr": LogUniform(1e-5, 1e-2),
    "epochs": IntUniform(1, 100),  # Fig. 5 and 8 train 100 epochs
}



def perturb(model: nn.Module, task: UnlearnTask, hp: Hparams) -> Masks:
    """Steps 1-2 (Eq. 3-5) on ``model`` in place; returns the mask of perturbed entries."""
    scores = sensitivity(model, task.forget, max_samples=hp.sensitivity_samples, seed=task.seed)
    masks = topk_mask(scores, hp.top_k)
    perturb_(model, masks, eps=hp.eps, w_rand=hp.w_rand, rule=hp.perturb_rule, seed=task.seed)
    return masks


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    model = prepare_model(model, task.device)
    masks = perturb(model, task, hp)
    return train_after_perturbation(model, task, hp, masks)
