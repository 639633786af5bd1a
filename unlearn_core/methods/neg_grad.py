"""``neg_grad`` (NegGrad): seed 003's name for gradient ascent on D_f.

Seed 003 (Table I) uses NegGrad from Golatkar et al. 2020: "the network fine tuned
on D_f with negative gradients (gradient ascent)", which is exactly
``grad_ascent`` (seed 001, Eq. 5). This module is an alias, not a second
implementation: it re-exports ``grad_ascent``'s Hparams, SEARCH_SPACE and
``unlearn`` so that results list the baseline under seed 003's name.
"""

from unlearn_core.methods.grad_ascent import (
    EPOCHS_HPARAM,
    REPORTS_EPOCHS,
    SEARCH_SPACE,
    Hparams,
    unlearn,
)

__all__ = ["EPOCHS_HPARAM", "REPORTS_EPOCHS", "SEARCH_SPACE", "Hparams", "unlearn"]
