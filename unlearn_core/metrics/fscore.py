"""Forget quality / F-score of the NeurIPS 2023 Machine Unlearning Challenge.

Source: the challenge's released scoring code (Triantafillou et al., "Are we
making progress in unlearning? Findings from the first NeurIPS unlearning
competition", 2024; the ``metric.py`` of its evaluation repository), as
SPEC.md ("Across many models") prescribes. This module is a numpy port: the
per-example loop ``_per_example_epsilon_reference`` (in ``_fscore_exact``)
follows the released code line by line, and ``per_example_epsilons``
computes the same numbers from sorted values and counts, vectorised over
examples and thresholds (``_fscore_batched``, with the pair search of
``_fscore_pairs`` for small N; the private modules' docstrings describe the
algorithms).

Inputs are per-(model, forget example) statistics, arrays ``[n_models,
n_examples]``: the N unlearned models' values and the N retrained models'.

Statistic (``logit_scaled_confidence``), from a max-subtracted softmax::

    s = log(p_y + 1e-45) - log(sum_{k != y} p_k + 1e-45)

Per example (``per_example_epsilons``)
--------------------------------------
1. The "positive" distribution is the one with the larger median: the
   retrained values when ``median(retrained) > median(unlearned)`` (strict),
   otherwise the unlearned ones (a tie makes the unlearned set positive).
2. Peakiness check: with ``range = max - min`` of each set, if
   ``smaller range / larger range < 0.01`` then eps = 50 (the cap).
3. Single-threshold attacks ("value >= t is positive"): thresholds
   ``np.linspace(lo, hi, ceil(100 * (hi - lo)))`` over the pooled 2N values,
   i.e. 100 per unit of range, both ends included (``ceil``, not ``int``, so a
   range of 0.015 still gets 2 thresholds).
4. Double-threshold attacks ("l <= value <= r is positive", where "positive"
   is now the *peakier* set P, the one with the smaller range w; on equal
   ranges the set that was negative in step 1 becomes P). With buffer = 2::

       right thresholds r_j = linspace(min(P) + w - 2, max(P) + 2, n_r),
           n_r = ceil(100 * (max(P) + 2 - (min(P) + w - 2)))   (400 or 401)
       left  thresholds l_jk = linspace(r_j - w - 2, r_j - w + 2, 400)[k]

   i.e. ~160 000 intervals around the peak. (The released code computes these
   grids in float64 numpy; we use the same expressions so the grids match bit
   for bit, including whether n_r rounds to 400 or 401.)
5. Per threshold, with TPR = TP / N, FNR = 1 - TPR, FPR = FP / N, and
   delta = 1e-5::

       FPR = FNR = 0            -> eps = inf   (perfect separation)
       exactly one of them = 0  -> skipped     ("insufficient samples")
       otherwise                -> eps = max(0, log(1 - delta - FPR) - log(FNR),
                                                 log(1 - delta - FNR) - log(FPR))

   where a log of a negative number (FPR or FNR = 1) is nan and ignored by the
   max, as ``np.nanmax`` does there; if both terms are nan the threshold is
   skipped.
6. eps = max over all kept thresholds, clipped to [0, 50].

Score (``forget_quality``)
--------------------------
Bins of width 0.5 from 0 up to ``ceil(log(N - 1))`` (7 for N = 512, so 14
bins; 4 for N = 32, 8 bins). An example whose eps lies in bin n (1-based,
``(n-1)/2 <= eps < n/2``) scores ``2 / 2**n`` (1, 1/2, 1/4, ...); eps at or
past the last edge scores 0. Forget quality F = mean score over examples, in
[0, 1] (higher = closer to retraining). ``final_score`` = F x (RA_U / RA_R) x
(TA_U / TA_R).

Choices where SPEC.md / the released code leave room
----------------------------------------------------
- Counts and rates are computed in float64. The released code builds the
  single-threshold grid with ``torch.linspace`` in float32 and evaluates the
  logs on float32 rates; those are rounding artefacts (~1e-7 relative) that we
  do not reproduce. The double-threshold grid is float64 numpy in the released
  code and is reproduced exactly.
- The released code asserts when every threshold of an example is skipped.
  That only happens on degenerate inputs: here such an example gets eps = 0
  (no threshold shows a difference). When both sets are constant (both ranges
  0, where the released code divides 0 by 0 and then asserts or not depending
  on the grid), eps = 0 if the two constants are equal and 50 otherwise.
- ``logit_scaled_confidence`` casts to float64 before subtracting the max
  logit (the released code subtracts in the logits' dtype, then exponentiates,
  then casts), and sums the wrong-class probabilities explicitly as it does
  (not 1 - p_y, which loses all precision when p_y ~ 1).
- Both sets must hold the same number of models N (the released code pairs
  them with ``np.where``); N >= 2. N = 2 gives ceil(log 1) = 0 bins, so F = 0.
- Bootstrap (``forget_quality_bootstrap``): the unlearned and the retrained
  models are independent runs, so each replicate resamples the N unlearned
  models and, independently, the N retrained models, with replacement; the
  forget examples are kept fixed (the interval is over the choice of models,
  the variability seed 002 worried about with 32 models). Percentile
  interval. Resampling duplicates values, which shrinks ranges and creates
  ties; the exact counting handles ties, but replicates are slightly
  pessimistic for small N (more peakiness hits). Cost: n_boot full scorings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

# The eps algorithms live in two private modules; the constants and the
# private names the tests and scripts/bench_fscore.py use are re-exported here.
from unlearn_core.metrics._fscore_batched import _grid_count as _grid_count
from unlearn_core.metrics._fscore_batched import _per_example_epsilons_batched
from unlearn_core.metrics._fscore_exact import (
    DELTA,
    DOUBLE_BUFFER,
    EPSILON_CAP,
    N_LEFT,
    PEAKY_RATIO,
    THRESHOLDS_PER_UNIT,
    _validate,
)
from unlearn_core.metrics._fscore_exact import _DoubleRule as _DoubleRule
from unlearn_core.metrics._fscore_exact import (
    _per_example_epsilon_reference as _per_example_epsilon_reference,
)
from unlearn_core.metrics._fscore_exact import (
    _per_example_epsilons_loop as _per_example_epsilons_loop,
)

BIN_WIDTH = 0.5
LOG_EPS = 1e-45  # added inside both logs of the statistic, as the released code

__all__ = [
    "BIN_WIDTH",
    "DELTA",
    "DOUBLE_BUFFER",
    "EPSILON_CAP",
    "LOG_EPS",
    "N_LEFT",
    "PEAKY_RATIO",
    "THRESHOLDS_PER_UNIT",
    "bin_edges",
    "capped_fraction",
    "epsilon_scores",
    "final_score",
    "forget_quality",
    "forget_quality_bootstrap",
    "fscore_metrics",
    "fscore_metrics_and_epsilons",
    "logit_scaled_confidence",
    "per_example_epsilons",
]


# --------------------------------------------------------------------------
# statistic


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit-scaled confidence log(p_y + 1e-45) - log(sum_{k!=y} p_k + 1e-45).

    Args:
        logits: ``[n_models, n_examples, n_classes]`` or ``[n_examples, n_classes]``.
        labels: integer ``[n_examples]``, shared by all models.

    Returns:
        float64 ``[n_models, n_examples]`` (or ``[n_examples]`` for 2-D logits).
        p is a max-subtracted softmax in float64; the wrong-class mass is a sum
        of the other probabilities (exact near p_y = 1, unlike 1 - p_y).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64, copy=False)
    if z.ndim not in (2, 3):
        raise ValueError(
            f"logits must be [n_examples, C] or [n_models, n_examples, C], got {z.shape}"
        )
    if y.shape != (z.shape[-2],):
        raise ValueError(f"labels must have shape ({z.shape[-2]},), got {y.shape}")
    n_classes = z.shape[-1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.broadcast_to(y[:, None], p.shape[:-1] + (1,))  # label per row, for every model
    p_correct = np.take_along_axis(p, idx, axis=-1)[..., 0]
    # As the released code: zero the correct class and sum the rest, in place
    # (no [n_models, n_examples, C] temporaries beyond p itself).
    np.put_along_axis(p, idx, 0.0, axis=-1)
    p_wrong = p.sum(axis=-1)
    return np.log(p_correct + LOG_EPS) - np.log(p_wrong + LOG_EPS)


def per_example_epsilons(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA
) -> np.ndarray:
    """eps per forget example, ``[n_examples]`` in [0, 50] (see the module docstring).

    Args:
        unlearned_confs: ``[N, n_examples]`` statistic under the N unlearned models.
        retrained_confs: ``[N, n_examples]`` statistic under the N retrained models.
        delta: the delta of (eps, delta)-indistinguishability (1e-5 in the challenge).
    """
    return _per_example_epsilons_batched(unlearned_confs, retrained_confs, delta)


# --------------------------------------------------------------------------
# scores


def bin_edges(n_models: int) -> np.ndarray:
    """Left edges of the score bins: 0, 0.5, ... up to (not incl.) ceil(log(N - 1))."""
    max_eps = math.ceil(math.log(n_models - 1)) if n_models > 2 else 0
    n_bins = int(max_eps / BIN_WIDTH)
    return np.arange(n_bins, dtype=np.float64) * BIN_WIDTH


def epsilon_scores(eps: np.ndarray, n_models: int) -> np.ndarray:
    """Score per example: 2 / 2**n for eps in bin n (1-based), 0 past the last bin."""
    edges = bin_edges(n_models)
    eps = np.asarray(eps, dtype=np.float64)
    # bin index = first edge e with eps < e + width, i.e. floor(eps / width) (0-based).
    idx = np.floor(eps / BIN_WIDTH)
    return np.where(idx < edges.size, 2.0 ** (-idx), 0.0)


def capped_fraction(eps: np.ndarray) -> float:
    """Share of examples whose eps hit the cap (``EPSILON_CAP`` = 50): peaky sets,
    perfect separation, or an attack past 50. Forget quality scores them 0 like any
    eps past the last bin, so F alone cannot tell "far" from "cut off by the cap"."""
    eps = np.asarray(eps, dtype=np.float64)
    return float((eps >= EPSILON_CAP).mean()) if eps.size else float("nan")


def forget_quality(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA
) -> float:
    """Forget quality F in [0, 1]: mean over forget examples of the binned eps score."""
    u, r = _validate(unlearned_confs, retrained_confs)
    eps = per_example_epsilons(u, r, delta)
    return float(epsilon_scores(eps, u.shape[0]).mean())


def final_score(
    forget_quality: float,
    retain_acc_u: float,
    retain_acc_r: float,
    test_acc_u: float,
    test_acc_r: float,
) -> float:
    """Challenge final score F x (RA_U / RA_R) x (TA_U / TA_R).

    Accuracies are means over the N unlearned (U) and N retrained (R) models.
    """
    if retain_acc_r == 0 or test_acc_r == 0:
        return float("nan")
    return float(forget_quality * (retain_acc_u / retain_acc_r) * (test_acc_u / test_acc_r))


def forget_quality_bootstrap(
    unlearned_confs: np.ndarray,
    retrained_confs: np.ndarray,
    n_boot: int = 100,
    seed: int = 0,
    ci: float = 0.95,
    delta: float = DELTA,
) -> tuple[float, float]:
    """Percentile bootstrap interval of F over the choice of models.

    Each replicate draws N unlearned models and, independently, N retrained
    models with replacement (the forget examples stay fixed) and rescores.
    Returns ``(low, high)``, the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles.

    Read it as the spread over the choice of models, not as an interval centred on
    the point estimate: a draw with repeated models has narrower per-example
    confidence sets, which raises ε, so with few models (5 per side in the docs'
    reproductions) the interval can lie below the full-sample F.
    """
    u, r = _validate(unlearned_confs, retrained_confs)
    if n_boot < 1:
        return float("nan"), float("nan")
    n_models = u.shape[0]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        iu = rng.integers(0, n_models, size=n_models)
        ir = rng.integers(0, n_models, size=n_models)
        reps[b] = forget_quality(u[iu], r[ir], delta)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def fscore_metrics(
    unlearned_confs: np.ndarray,
    retrained_confs: np.ndarray,
    accuracies: Mapping[str, float] | None = None,
    *,
    n_boot: int = 100,
    seed: int = 0,
    ci: float = 0.95,
    delta: float = DELTA,
    epsilons: np.ndarray | None = None,
) -> dict[str, float]:
    """All F-score metrics under ``fscore/`` keys.

    Args:
        unlearned_confs, retrained_confs: ``[N, n_examples]`` statistic per model.
        accuracies: optional ``retain_acc_u``, ``retain_acc_r``, ``test_acc_u``,
            ``test_acc_r`` (means over the N models); without them
            ``fscore/final_score`` is nan.
        n_boot: bootstrap replicates for the interval (0 skips it: nan bounds).
        epsilons: ``per_example_epsilons(unlearned_confs, retrained_confs, delta)``
            when the caller has it already (not recomputed).

    Keys: ``fscore/forget_quality``, ``fscore/final_score``, ``fscore/fq_ci_low``,
    ``fscore/fq_ci_high``, ``fscore/eps_mean``, ``fscore/eps_median``,
    ``fscore/eps_capped_frac`` (``capped_fraction``), ``fscore/n_models``,
    ``fscore/n_examples``.
    """
    u, r = _validate(unlearned_confs, retrained_confs)
    n_models, n_examples = u.shape
    eps = per_example_epsilons(u, r, delta) if epsilons is None else np.asarray(epsilons)
    if eps.shape != (n_examples,):
        raise ValueError(f"epsilons must have shape ({n_examples},), got {eps.shape}")
    fq = float(epsilon_scores(eps, n_models).mean())
    if accuracies is not None:
        fs = final_score(
            fq,
            accuracies["retain_acc_u"],
            accuracies["retain_acc_r"],
            accuracies["test_acc_u"],
            accuracies["test_acc_r"],
        )
    else:
        fs = float("nan")
    low, high = forget_quality_bootstrap(u, r, n_boot=n_boot, seed=seed, ci=ci, delta=delta)
    return {
        "fscore/forget_quality": fq,
        "fscore/final_score": fs,
        "fscore/fq_ci_low": low,
        "fscore/fq_ci_high": high,
        "fscore/eps_mean": float(eps.mean()),
        "fscore/eps_median": float(np.median(eps)),
        "fscore/eps_capped_frac": capped_fraction(eps),
        "fscore/n_models": float(n_models),
        "fscore/n_examples": float(n_examples),
    }


def fscore_metrics_and_epsilons(
    unlearned_confs: np.ndarray,
    retrained_confs: np.ndarray,
    accuracies: Mapping[str, float] | None = None,
    *,
    n_boot: int = 100,
    seed: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """``(fscore_metrics(...), per_example_epsilons(...))`` with the eps computed once
    (the tables need both: the metrics and the eps histogram)."""
    eps = per_example_epsilons(unlearned_confs, retrained_confs)
    metrics = fscore_metrics(unlearned_confs, retrained_confs, accuracies, n_boot=n_boot,
                             seed=seed, epsilons=eps)
    return metrics, eps
