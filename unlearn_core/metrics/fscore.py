"""Forget quality / F-score of the NeurIPS 2023 Machine Unlearning Challenge.

Source: the challenge's released scoring code (Triantafillou et al., "Are we
making progress in unlearning? Findings from the first NeurIPS unlearning
competition", 2024; the ``metric.py`` of its evaluation repository), as
SPEC.md ("Across many models") prescribes. This module is a numpy port: the
per-example loop ``_per_example_epsilon_reference`` follows the released code
line by line, and ``per_example_epsilons`` computes the same numbers from
sorted values and counts, vectorised over examples and thresholds.

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

Vectorised algorithm (``per_example_epsilons``)
-----------------------------------------------
eps of a threshold depends only on its counts (TP, FP) in {0..N}^2, so one
table ``E[TP, FP]`` (N+1 x N+1) holds every possible value (inf for perfect,
-inf for skipped). Each example's values are sorted once; counts for any
threshold are ``searchsorted`` positions. The single-rule grid (~100 x range
thresholds) is evaluated in full. The double-rule grid (~160 000 intervals)
is split into blocks of consecutive (j, k); for a block, every interval lies
inside [min l, max r] and contains [max l, min r], so TP <= TP_hi and
FP >= FP_lo, and ``U[TP_hi, FP_lo]`` with ``U[a, b] = max E[a' <= a, b' >= b]``
(eps grows with TP and falls with FP) bounds the whole block. Branch and
bound: 16 x 16 blocks are bounded and the most promising one evaluated; the
survivors are split into 4 x 4 blocks, bounded again, and evaluated exactly
best bound first, dropping every block whose bound cannot beat the best eps
found so far (and stopping at eps >= 50, which clips to the cap anyway). The
result is the exact max over the full grid (same counts, same table entries
as the reference); on Gaussian-like data it evaluates ~0.4 % of the grid
plus ~1 500 block bounds per example.

Examples are processed in batches of ``_BATCH`` (``_batch_epsilons``), every
step vectorised across the batch (the previous one-example-at-a-time loop is
kept as ``_per_example_epsilons_loop``; the tests require bit-identical
output):

- The 2N values of an example are pooled and sorted, w[0..2N-1], with running
  counts of each set. Any threshold in the gap (w[m-1], w[m]] has the same
  counts (``#set >= w[m]``), so the single rule is the max of E over the gaps
  that hold at least one threshold: O(N) per example, not O(#thresholds).
  Whether a gap holds one comes from ``_grid_count`` (how many grid values are
  <= x), exact: an estimate by division, corrected and checked against the
  grid values computed with numpy's own linspace expressions (``k * step +
  start``, last = stop; tested against ``searchsorted`` on ``np.linspace``).
  The counts #w <= r_j of all right thresholds come the same way (a bincount
  of ``_grid_count`` over the pooled values, then a cumsum).
- Counts #w < l for arbitrary l use a per-example bucket index (``_Batch``):
  bucket = floor((v - g0) * ginv), a nondecreasing function applied alike to
  data and queries, so values in lower (higher) buckets are certainly below
  (above) l. The bucket alone gives lower / upper counts, enough for valid
  block bounds; exact counts (cells) binary-search the values of l's bucket
  only, all queries at once.
- Branch and bound across the batch: bounds of every coarse block of every
  example on dense arrays; the top coarse block of each example evaluated in
  full; the surviving coarse blocks split into fine blocks with bucket bounds;
  fine blocks sorted per example by bound and evaluated in rounds (4 per
  example, doubling each round), pruning against each example's best after
  each round.

Speed (scripts/bench_fscore.py, 2 loaded CPUs, CPU seconds, 5 000 examples):
about 1.8x the per-example loop at N = 32 and 1.3x at N = 256; ~1x at N =
512. The work is now bound by numpy's per-element cost (~650 coarse bounds
and a few hundred exact cells per example), not by Python overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
PEAKY_RATIO = 0.01  # smaller range / larger range below this -> eps = cap
DOUBLE_BUFFER = 2.0  # the released code's ``buffer``
BIN_WIDTH = 0.5
LOG_EPS = 1e-45  # added inside both logs of the statistic, as the released code

# Block sizes of the branch-and-bound over the double-threshold grid (rows j
# of right thresholds x columns k of left thresholds): coarse blocks are
# bounded first, the survivors split into fine blocks, which are bounded and
# then evaluated exactly in rounds. Tuned at N = 512 (scripts/bench_fscore.py).
_COARSE = 16
_FINE = 4
_FINE_PER_ROUND = 64  # ~1000 thresholds per round: amortises Python overhead
# Batched path: examples per batch, buckets of the count index, fine blocks per
# example in the first evaluation round (doubling every round).
_BATCH = 64
_BUCKETS = 1024
_FIRST_ROUND = 4
_CORRECTIONS = 1


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


# --------------------------------------------------------------------------
# shared pieces


def _validate(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if r.ndim == 1:
        r = r[:, None]
    if u.ndim != 2 or u.shape != r.shape:
        raise ValueError(
            "unlearned and retrained values must both be [n_models, n_examples] with the "
            f"same shape, got {u.shape} and {r.shape}"
        )
    if u.shape[0] < 2:
        raise ValueError(f"need at least 2 models per set, got {u.shape[0]}")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("values must be finite")
    return u, r


def _split_pos_neg(u: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the set with the larger median is positive (ties: unlearned)."""
    retrain_is_positive = np.median(r, axis=0) > np.median(u, axis=0)
    pos = np.where(retrain_is_positive, r, u)
    neg = np.where(retrain_is_positive, u, r)
    return pos, neg


def _eps_from_rates(
    tpr: np.ndarray, fnr: np.ndarray, fpr: np.ndarray, tnr: np.ndarray, delta: float
) -> np.ndarray:
    """Per-threshold eps exactly as the released code: inf, nan (= skipped) or >= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.log(1.0 - delta - fpr) - np.log(fnr)
        t2 = np.log(1.0 - delta - fnr) - np.log(fpr)
        eps = np.clip(np.fmax(t1, t2), 0.0, None)  # fmax == nanmax over the two terms
    both_zero = (fpr + fnr == 0) & (tpr + tnr == 2)
    one_zero = (fpr * fnr == 0) & ~both_zero
    eps = np.where(both_zero, np.inf, eps)
    return np.where(one_zero, np.nan, eps)


@lru_cache(maxsize=8)
def _eps_tables(n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """E[tp, fp]: eps of a threshold with tp of n positives and fp of n negatives
    predicted positive (-inf = skipped); U[a, b] = max E[a' <= a, b' >= b]."""
    tp = np.arange(n + 1, dtype=np.float64)[:, None]
    fp = np.arange(n + 1, dtype=np.float64)[None, :]
    tpr = np.broadcast_to(tp / n, (n + 1, n + 1))
    fpr = np.broadcast_to(fp / n, (n + 1, n + 1))
    # The complements are computed as counts of the complementary event, the way
    # a mean of booleans gives them, so they match the reference bit for bit.
    fnr = np.broadcast_to((n - tp) / n, (n + 1, n + 1))
    tnr = np.broadcast_to((n - fp) / n, (n + 1, n + 1))
    e = _eps_from_rates(tpr, fnr, fpr, tnr, delta)
    e = np.where(np.isnan(e), -np.inf, e)
    u = np.maximum.accumulate(e, axis=0)
    u = np.maximum.accumulate(u[:, ::-1], axis=1)[:, ::-1]
    e.setflags(write=False)
    u = np.ascontiguousarray(u)
    u.setflags(write=False)
    return e, u


def _n_thresholds(lo: float, hi: float) -> int:
    return int(np.ceil((hi - lo) * THRESHOLDS_PER_UNIT))


def _right_thresholds(peak_min: float, peak_max: float, width: float) -> np.ndarray:
    """Right thresholds r_j of the double rule, with the released code's expressions:
    linspace(min(P) + width - buffer, max(P) + buffer, ceil(100 * (hi - lo)))."""
    lo = peak_min + width - DOUBLE_BUFFER
    hi = peak_max + DOUBLE_BUFFER
    return np.linspace(lo, hi, num=_n_thresholds(lo, hi))


N_LEFT = int(np.ceil(2 * DOUBLE_BUFFER * THRESHOLDS_PER_UNIT))  # 400 left thresholds per row


# --------------------------------------------------------------------------
# reference: a per-example port of the released code


def _per_example_epsilon_reference(u: np.ndarray, r: np.ndarray, delta: float = DELTA) -> float:
    """eps of one example from its N unlearned values ``u`` and N retrained ``r``.

    A plain port of the released ``_get_epsilons`` loop body: rates are means of
    boolean comparisons over models for every threshold (chunked over
    thresholds only to bound memory). Slow (~160 000 x N comparisons per set);
    used to check ``per_example_epsilons``.
    """
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    if np.median(r) > np.median(u):
        pos, neg = r, u
    else:
        pos, neg = u, r
    pos_diff = pos.max() - pos.min()
    neg_diff = neg.max() - neg.min()
    if pos_diff == 0 and neg_diff == 0:  # documented choice: both constant
        return 0.0 if pos[0] == neg[0] else EPSILON_CAP
    largest = pos_diff if pos_diff > neg_diff else neg_diff
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    if smallest / largest < PEAKY_RATIO:
        return EPSILON_CAP

    best = -np.inf

    def update(tpr: np.ndarray, fnr: np.ndarray, fpr: np.ndarray, tnr: np.ndarray) -> None:
        nonlocal best
        e = _eps_from_rates(tpr, fnr, fpr, tnr, delta)
        if np.any(~np.isnan(e)):
            best = max(best, float(np.nanmax(e)))

    # Double-threshold rule: positive = peakier set, predicted positive = in [l, r].
    p_conf, n_conf = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
    width = smallest
    right = _right_thresholds(p_conf.min(), p_conf.max(), width)
    for j0 in range(0, len(right), 25):
        rr = np.repeat(right[j0 : j0 + 25], N_LEFT)  # [m]
        ll = np.concatenate(
            [
                np.linspace(tr - width - DOUBLE_BUFFER, tr - width + DOUBLE_BUFFER, num=N_LEFT)
                for tr in right[j0 : j0 + 25]
            ]
        )

        def is_pp(c: np.ndarray, ll: np.ndarray = ll, rr: np.ndarray = rr) -> np.ndarray:
            return (ll[None, :] <= c[:, None]) & (c[:, None] <= rr[None, :])

        pp_pos, pp_neg = is_pp(p_conf), is_pp(n_conf)
        update(pp_pos.mean(0), (~pp_pos).mean(0), pp_neg.mean(0), (~pp_neg).mean(0))

    # Single-threshold rule: predicted positive = value >= t.
    both = np.concatenate([pos, neg])
    lo, hi = both.min(), both.max()
    thr = np.linspace(lo, hi, _n_thresholds(lo, hi))
    for t0 in range(0, len(thr), 10_000):
        t = thr[t0 : t0 + 10_000]
        ge_pos = pos[:, None] >= t[None, :]
        ge_neg = neg[:, None] >= t[None, :]
        update(ge_pos.mean(0), (~ge_pos).mean(0), ge_neg.mean(0), (~ge_neg).mean(0))

    if best == -np.inf:  # every threshold skipped (released code: assertion error)
        return 0.0
    return float(np.clip(best, 0.0, EPSILON_CAP))


# --------------------------------------------------------------------------
# vectorised


_K_FLOAT = np.arange(N_LEFT, dtype=np.float64)  # k as numpy's linspace sees it


@lru_cache(maxsize=4)
def _coarse_blocks(n_right: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coarse blocks (j0, j1, k0, k1) tiling the n_right x 400 grid (same for every example)."""
    j0 = np.arange(0, n_right, _COARSE)
    k0 = np.arange(0, N_LEFT, _COARSE)
    j0, k0 = np.repeat(j0, k0.size), np.tile(k0, j0.size)
    out = (j0, np.minimum(j0 + _COARSE, n_right) - 1, k0, np.minimum(k0 + _COARSE, N_LEFT) - 1)
    for a in out:
        a.setflags(write=False)
    return out


@lru_cache(maxsize=4)
def _offsets(size: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Row / column offsets of the cells (or sub-block corners, step ``size``)
    of a span x span block, flattened."""
    o = np.arange(0, span, size)
    dj, dk = np.repeat(o, o.size), np.tile(o, o.size)
    dj.setflags(write=False)
    dk.setflags(write=False)
    return dj, dk


class _DoubleRule:
    """The double-threshold grid of one example, for bounding and evaluating blocks.

    ``p`` / ``q`` are the sorted peakier / other values; rows j are right
    thresholds r_j, columns k left thresholds l_jk. For an interval,
    TP = #P in [l, r] = #P <= r - #P < l (0 when l > r), likewise FP with Q.
    """

    def __init__(self, p: np.ndarray, q: np.ndarray, width: float) -> None:
        self.p, self.q = p, q
        self.right = _right_thresholds(p[0], p[-1], width)
        self.n_right = self.right.shape[0]
        # #P <= r_j and #Q <= r_j for every row (the right edge is inclusive).
        self.p_le_r = np.searchsorted(p, self.right, side="right")
        self.q_le_r = np.searchsorted(q, self.right, side="right")
        # Row j's left grid is np.linspace(start_j, stop_j, 400), which numpy
        # computes as k * ((stop - start) / 399) + start, the last entry = stop;
        # the same expressions here give the same bits (tested).
        self.start = self.right - width - DOUBLE_BUFFER
        self.stop = self.right - width + DOUBLE_BUFFER
        self.step = (self.stop - self.start) / (N_LEFT - 1)
        # l grows with k, and with j up to rounding of the per-row step (a few
        # ulps times k): bounds pad the l range by far more than that.
        self.pad = 1e-9 * (1.0 + max(abs(self.start[0]), abs(self.stop[-1])))

    def left(self, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        out = _K_FLOAT[k] * self.step[j] + self.start[j]
        return np.where(k == N_LEFT - 1, self.stop[j], out)

    def bounds(
        self, j0: np.ndarray, j1: np.ndarray, k0: np.ndarray, k1: np.ndarray, upper: np.ndarray
    ) -> np.ndarray:
        """Upper bound of eps over each block of rows [j0, j1] x columns [k0, k1].

        Every interval of the block lies inside [l(j0, k0), r_j1] and contains
        [l(j1, k1), r_j0], so TP <= TP_hi and FP >= FP_lo; ``upper`` is monotone.
        """
        l_min = self.left(j0, k0) - self.pad
        l_max = self.left(j1, k1) + self.pad
        tp_hi = self.p_le_r[j1] - np.searchsorted(self.p, l_min, side="left")
        fp_lo = self.q_le_r[j0] - np.searchsorted(self.q, l_max, side="left")
        return upper[np.maximum(tp_hi, 0), np.maximum(fp_lo, 0)]

    def evaluate(
        self,
        j0: np.ndarray,
        j1: np.ndarray,
        k0: np.ndarray,
        k1: np.ndarray,
        size: int,
        table: np.ndarray,
    ) -> float:
        """Exact max eps over every cell of the blocks (each at most size x size).

        Offsets past a clipped block's edge are clamped to it: a cell counted
        twice does not change a max.
        """
        dj, dk = _offsets(1, size)
        jj = np.minimum(j0[:, None] + dj, j1[:, None]).ravel()
        kk = np.minimum(k0[:, None] + dk, k1[:, None]).ravel()
        ll = self.left(jj, kk)
        tp = self.p_le_r[jj] - np.searchsorted(self.p, ll, side="left")
        fp = self.q_le_r[jj] - np.searchsorted(self.q, ll, side="left")
        return float(table[np.maximum(tp, 0), np.maximum(fp, 0)].max())


def _split(
    j0: np.ndarray, j1: np.ndarray, k0: np.ndarray, k1: np.ndarray, span: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split blocks of at most span x span into sub-blocks of size x size.

    Sub-blocks starting past a clipped block's edge are clamped onto it
    (duplicates only repeat work).
    """
    dj, dk = _offsets(size, span)
    sj0 = np.minimum(j0[:, None] + dj, j1[:, None]).ravel()
    sk0 = np.minimum(k0[:, None] + dk, k1[:, None]).ravel()
    sj1 = np.minimum(sj0 + (size - 1), np.repeat(j1, dj.size))
    sk1 = np.minimum(sk0 + (size - 1), np.repeat(k1, dk.size))
    return sj0, sj1, sk0, sk1


def _example_epsilon(
    pos: np.ndarray,
    neg: np.ndarray,
    pos_diff: float,
    neg_diff: float,
    table: np.ndarray,
    upper: np.ndarray,
) -> float:
    """Max eps (before clipping; -inf if every threshold is skipped) of one
    example from its *sorted* positive / negative values."""
    n = pos.shape[0]

    # Single-threshold rule, evaluated in full: tp = #pos >= t, fp = #neg >= t.
    lo = min(pos[0], neg[0])
    hi = max(pos[-1], neg[-1])
    thr = np.linspace(lo, hi, _n_thresholds(lo, hi))
    best = -np.inf
    if thr.size:
        tp = n - np.searchsorted(pos, thr, side="left")
        fp = n - np.searchsorted(neg, thr, side="left")
        best = float(table[tp, fp].max())
    if best >= EPSILON_CAP:  # clipped to the cap whatever else is found
        return best

    # Double-threshold rule. The released code's order: width = the smaller
    # range; the positive set becomes the peakier one (the old negative on
    # equal ranges).
    width = neg_diff if pos_diff > neg_diff else pos_diff
    p_conf, n_conf = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
    grid = _DoubleRule(p_conf, n_conf, width)

    # Level 1: coarse blocks; evaluate the most promising one to raise ``best``.
    j0, j1, k0, k1 = _coarse_blocks(grid.n_right)
    bound = grid.bounds(j0, j1, k0, k1, upper)
    top = int(np.argmax(bound))
    if bound[top] > best:
        t = slice(top, top + 1)
        best = max(best, grid.evaluate(j0[t], j1[t], k0[t], k1[t], _COARSE, table))
    alive = bound > best
    if best >= EPSILON_CAP or not alive.any():
        return best
    # Level 2: split the surviving coarse blocks into fine ones and bound those.
    j0, j1, k0, k1 = _split(j0[alive], j1[alive], k0[alive], k1[alive], _COARSE, _FINE)
    bound = grid.bounds(j0, j1, k0, k1, upper)
    order = np.flatnonzero(bound > best)
    order = order[np.argsort(-bound[order], kind="stable")]
    # Evaluate fine blocks exactly, best bound first, pruning between rounds.
    while order.size:
        b, order = order[:_FINE_PER_ROUND], order[_FINE_PER_ROUND:]
        best = max(best, grid.evaluate(j0[b], j1[b], k0[b], k1[b], _FINE, table))
        if best >= EPSILON_CAP:
            break
        order = order[bound[order] > best]
    return best


def _sorted_sets(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared prologue: sorted positive / negative rows (one per example), their
    ranges, and eps already decided (both constant, peaky) with a mask of the rest."""
    u, r = _validate(unlearned_confs, retrained_confs)
    n_examples = u.shape[1]
    pos, neg = _split_pos_neg(u, r)
    # One sort per example; rows = examples so each searchsorted sees a contiguous array.
    pos = np.ascontiguousarray(np.sort(pos, axis=0).T)
    neg = np.ascontiguousarray(np.sort(neg, axis=0).T)
    pos_diff = pos[:, -1] - pos[:, 0]
    neg_diff = neg[:, -1] - neg[:, 0]
    largest = np.where(pos_diff > neg_diff, pos_diff, neg_diff)
    smallest = np.where(pos_diff > neg_diff, neg_diff, pos_diff)

    eps = np.empty(n_examples, dtype=np.float64)
    both_const = largest == 0
    eps[both_const] = np.where(pos[both_const, 0] == neg[both_const, 0], 0.0, EPSILON_CAP)
    with np.errstate(divide="ignore", invalid="ignore"):
        peaky = ~both_const & (smallest / largest < PEAKY_RATIO)
    eps[peaky] = EPSILON_CAP
    return pos, neg, pos_diff, neg_diff, eps, ~both_const & ~peaky


def _per_example_epsilons_loop(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA
) -> np.ndarray:
    """``per_example_epsilons`` one example at a time (``_example_epsilon``): the
    previous implementation, kept to check the batched one against."""
    pos, neg, pos_diff, neg_diff, eps, rest = _sorted_sets(unlearned_confs, retrained_confs)
    table, upper = _eps_tables(pos.shape[1], float(delta))
    for i in np.flatnonzero(rest):
        e = _example_epsilon(pos[i], neg[i], float(pos_diff[i]), float(neg_diff[i]), table, upper)
        eps[i] = 0.0 if e == -np.inf else min(e, EPSILON_CAP)
    return eps


# --------------------------------------------------------------------------
# batched (the path ``per_example_epsilons`` takes)


def _grid_count(
    start: np.ndarray, stop: np.ndarray, num: np.ndarray, x: np.ndarray, strict: bool
) -> np.ndarray:
    """Per row i, how many of ``np.linspace(start[i], stop[i], num[i])`` are <= x[i, m]
    (``strict``: < x[i, m]), for every m; ``num >= 1``. Exact.

    The grid values are numpy's own expressions (``k * step + start``, the last one
    ``stop``), which are nondecreasing in k; the count is first estimated by division,
    then corrected by comparing with those values and checked (a row whose check
    fails, never seen, falls back to ``np.searchsorted`` on ``np.linspace``).
    """
    div = num - 1
    step = np.where(div > 0, (stop - start) / np.maximum(div, 1), 0.0)[:, None]
    start_, stop_, last = start[:, None], stop[:, None], div[:, None]
    has_step = step > 0

    def value(k: np.ndarray) -> np.ndarray:
        out = k.astype(np.float64) * step + start_
        return np.where((k == last) & (last > 0), stop_, out)

    def counted(t: np.ndarray) -> np.ndarray:
        return t < x if strict else t <= x

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.floor((x - start_) / np.where(has_step, step, 1.0)) + 1.0
    q = np.where(has_step, q, 1.0)
    count = np.clip(q, 0, num[:, None]).astype(np.int64)
    for _ in range(_CORRECTIONS):
        count += (count <= last) & counted(value(np.minimum(count, last)))
        count -= (count > 0) & ~counted(value(np.maximum(count - 1, 0)))
    ok = ((count > last) | ~counted(value(np.minimum(count, last)))) & (
        (count == 0) | counted(value(np.maximum(count - 1, 0)))
    )
    for i in np.flatnonzero(~ok.all(axis=1)):  # pragma: no cover - safety net
        grid = np.linspace(start[i], stop[i], int(num[i]))
        count[i] = np.searchsorted(grid, x[i], side="left" if strict else "right")
    return count


class _Batch:
    """Per-example state of a batch of examples (rows), for the double rule.

    ``w`` holds each example's 2N pooled values, sorted; ``cum_p[i, a]`` counts the
    peakier set P among the first a of them (``cum_q`` the other set). An interval
    [l, r] then has TP = cum_p[#w <= r] - cum_p[#w < l] and FP likewise. Counts
    ``#w < l`` come from a bucket index: each value goes to bucket
    ``floor((v - g0) * ginv)`` (clipped), a nondecreasing function, so only the
    values in the query's own bucket need comparing (a binary search over them).
    """

    def __init__(
        self, w: np.ndarray, in_p: np.ndarray, cum_p: np.ndarray, g0: np.ndarray, g1: np.ndarray
    ):
        n_rows, n_w = w.shape
        self.n_w = n_w
        self.w_flat = w.ravel()
        self.cum_p = cum_p
        self.g0 = g0
        self.ginv = _BUCKETS / (g1 - g0)
        b = self._bucket(np.arange(n_rows)[:, None], w)
        nb = _BUCKETS + 2
        hist = np.bincount((b + nb * np.arange(n_rows)[:, None]).ravel(), minlength=n_rows * nb)
        cnt = np.zeros((n_rows, nb + 1), dtype=np.int64)
        np.cumsum(hist.reshape(n_rows, nb), axis=1, out=cnt[:, 1:])
        self.cnt_flat = cnt.ravel()
        # The same counts for P alone (``cnt_p[i, b]`` = #P in buckets < b) and Q.
        hist = np.bincount(
            (b + nb * np.arange(n_rows)[:, None]).ravel(),
            weights=in_p.ravel(),
            minlength=n_rows * nb,
        ).astype(np.int64)
        self.cnt_p = np.zeros((n_rows, nb + 1), dtype=np.int64)
        np.cumsum(hist.reshape(n_rows, nb), axis=1, out=self.cnt_p[:, 1:])
        self.cnt_q = cnt - self.cnt_p
        self.iters = int(np.diff(cnt, axis=1).max()).bit_length()

    def _bucket(self, e: np.ndarray, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            b = np.floor((x - self.g0[e]) * self.ginv[e])
        return np.clip(b, -1, _BUCKETS).astype(np.int64) + 1

    def count_lt_range(self, e: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds lo <= #w < x <= hi, from the bucket of x alone."""
        base = self._bucket(e, x) + e * (_BUCKETS + 3)
        return self.cnt_flat[base], self.cnt_flat[base + 1]

    def count_lt(self, e: np.ndarray, x: np.ndarray) -> np.ndarray:
        """#w < x exactly (w of example e)."""
        lo, hi = self.count_lt_range(e, x)
        act = np.flatnonzero(hi > lo)
        if act.size:
            lo_a, hi_a, x_a = lo[act], hi[act], x[act]
            row = e[act] * self.n_w
            for _ in range(self.iters):
                live = lo_a < hi_a
                mid = (lo_a + hi_a) >> 1
                below = self.w_flat[row + np.minimum(mid, self.n_w - 1)] < x_a
                lo_a = np.where(live & below, mid + 1, lo_a)
                hi_a = np.where(live & ~below, mid, hi_a)
            lo[act] = lo_a
        return lo


def _batch_epsilons(
    pos: np.ndarray,
    neg: np.ndarray,
    pos_diff: np.ndarray,
    neg_diff: np.ndarray,
    table: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """``_example_epsilon`` for a batch of examples (rows of sorted ``pos`` / ``neg``),
    vectorised across them; the same max over the same table entries."""
    n_ex, n = pos.shape
    pooled = np.concatenate([pos, neg], axis=1)
    order = np.argsort(pooled, axis=1, kind="stable")
    w = np.take_along_axis(pooled, order, axis=1)
    from_pos = order < n
    cum_pos = np.zeros((n_ex, 2 * n + 1), dtype=np.int64)
    np.cumsum(from_pos, axis=1, out=cum_pos[:, 1:])
    cum_neg = np.arange(2 * n + 1) - cum_pos

    # Single-threshold rule. The thresholds lying in (w[m-1], w[m]] all have
    # tp = #pos >= w[m] and fp = #neg >= w[m]: evaluate each gap holding a threshold.
    lo, hi = w[:, 0], w[:, -1]
    n_thr = np.ceil((hi - lo) * THRESHOLDS_PER_UNIT).astype(np.int64)
    n_le = _grid_count(lo, hi, n_thr, w, strict=False)  # thresholds <= w[m]
    holds = np.diff(n_le, axis=1, prepend=0) > 0
    single = table[n - cum_pos[:, :-1], n - cum_neg[:, :-1]]
    best = np.where(holds, single, -np.inf).max(axis=1)

    todo = np.flatnonzero(best < EPSILON_CAP)  # the others clip to the cap anyway
    if todo.size:
        best[todo] = _double_rule_batch(
            w[todo],
            from_pos[todo],
            pos[todo],
            neg[todo],
            pos_diff[todo],
            neg_diff[todo],
            best[todo],
            table,
            upper,
        )
    return best


def _double_rule_batch(
    w: np.ndarray,
    from_pos: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    pos_diff: np.ndarray,
    neg_diff: np.ndarray,
    best: np.ndarray,
    table: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """max(best, double-rule eps) per example: batched branch and bound."""
    n_ex, n = pos.shape
    best = best.copy()
    # The released code's order: width = the smaller range; P = the peakier set
    # (the old negative one on equal ranges).
    p_is_neg = pos_diff >= neg_diff
    width = np.where(pos_diff > neg_diff, neg_diff, pos_diff)
    p_min = np.where(p_is_neg, neg[:, 0], pos[:, 0])
    p_max = np.where(p_is_neg, neg[:, -1], pos[:, -1])
    cum_p = np.zeros((n_ex, 2 * n + 1), dtype=np.int64)
    in_p = from_pos != p_is_neg[:, None]
    np.cumsum(in_p, axis=1, out=cum_p[:, 1:])

    # Right thresholds r_j (rows), as _right_thresholds; rows past n_r are padding.
    r_lo = p_min + width - DOUBLE_BUFFER
    r_hi = p_max + DOUBLE_BUFFER
    n_r = np.ceil((r_hi - r_lo) * THRESHOLDS_PER_UNIT).astype(np.int64)
    n_rows = int(n_r.max())
    jj = np.arange(n_rows)
    r_step = np.where(n_r > 1, (r_hi - r_lo) / np.maximum(n_r - 1, 1), 0.0)
    right = jj * r_step[:, None] + r_lo[:, None]
    right = np.where(jj == (n_r - 1)[:, None], r_hi[:, None], right)
    # b_j = #w <= r_j, from #r < w[m] per pooled value (a bincount and a cumsum).
    r_lt = _grid_count(r_lo, r_hi, n_r, w, strict=True)
    hist = np.bincount(
        (r_lt + (n_rows + 1) * np.arange(n_ex)[:, None]).ravel(), minlength=n_ex * (n_rows + 1)
    )
    b = np.cumsum(hist.reshape(n_ex, n_rows + 1), axis=1)[:, :n_rows]
    a_p = np.take_along_axis(cum_p, b, axis=1)  # #P <= r_j
    a_q = b - a_p  # #Q <= r_j
    # Left grids, as _DoubleRule.
    start = right - width[:, None] - DOUBLE_BUFFER
    stop = right - width[:, None] + DOUBLE_BUFFER
    step = (stop - start) / (N_LEFT - 1)
    last = n_r - 1
    pad = 1e-9 * (1.0 + np.maximum(np.abs(start[:, 0]), np.abs(stop[np.arange(n_ex), last])))
    g0 = start[:, 0] - 1.0
    g1 = stop[np.arange(n_ex), last] + 1.0
    batch = _Batch(w, in_p, cum_p, g0, g1)
    start_f, stop_f, step_f = start.ravel(), stop.ravel(), step.ravel()
    a_p_f, a_q_f, cum_p_f = a_p.ravel(), a_q.ravel(), cum_p.ravel()
    n_cum = 2 * n + 1
    upper_f, table_f, n1 = upper.ravel(), table.ravel(), n + 1

    def left(e: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        f = e * n_rows + j
        out = k * step_f[f] + start_f[f]
        return np.where(k == N_LEFT - 1, stop_f[f], out)

    def counts(
        e: np.ndarray, j_tp: np.ndarray, a_tp: np.ndarray, j_fp: np.ndarray, a_fp: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """TP = #P in (a_tp-th pooled value, r_j_tp], FP likewise, clipped at 0."""
        cp_tp = cum_p_f[e * n_cum + a_tp]
        cp_fp = cum_p_f[e * n_cum + a_fp]
        tp = a_p_f[e * n_rows + j_tp] - cp_tp
        fp = a_q_f[e * n_rows + j_fp] - (a_fp - cp_fp)
        return np.maximum(tp, 0), np.maximum(fp, 0)

    def bounds(e, j0, j1, k0, k1, exact: bool) -> np.ndarray:
        l_min = left(e, j0, k0) - pad[e]
        l_max = left(e, j1, k1) + pad[e]
        if exact:
            a_lo, a_hi = batch.count_lt(e, l_min), batch.count_lt(e, l_max)
        else:
            a_lo = batch.count_lt_range(e, l_min)[0]
            a_hi = batch.count_lt_range(e, l_max)[1]
        tp, fp = counts(e, j1, a_lo, j0, a_hi)
        return upper_f[tp * n1 + fp]

    def evaluate(e, j0, j1, k0, k1, size: int) -> None:
        """best[e] = max(best[e], every cell of the blocks)."""
        dj, dk = _offsets(1, size)
        jc = np.minimum(j0[:, None] + dj, j1[:, None]).ravel()
        kc = np.minimum(k0[:, None] + dk, k1[:, None]).ravel()
        ec = np.repeat(e, dj.size)
        a = batch.count_lt(ec, left(ec, jc, kc))
        tp, fp = counts(ec, jc, a, jc, a)
        vals = table_f[tp * n1 + fp].reshape(-1, dj.size).max(axis=1)
        np.maximum.at(best, e, vals)

    def coarse_bounds(j0, j1, k0, k1) -> np.ndarray:
        """``bounds`` of every coarse block of every example at once, on dense
        [example, row block, column block] arrays (no flat gathers), from bucket
        counts of P and Q alone. Padding row blocks get -inf."""
        j0, j1, k0, k1 = (a.reshape(n_ex, n_jb, n_kb) for a in (j0, j1, k0, k1))
        rj0, rj1 = j0[:, :, 0], j1[:, :, 0]
        kf0, kf1 = k0[0, 0].astype(np.float64), k1[0, 0].astype(np.float64)
        l_min = kf0 * np.take_along_axis(step, rj0, 1)[:, :, None]
        l_min += (np.take_along_axis(start, rj0, 1) - pad[:, None])[:, :, None]
        l_max = kf1 * np.take_along_axis(step, rj1, 1)[:, :, None]
        l_max += np.take_along_axis(start, rj1, 1)[:, :, None]
        l_max[:, :, k1[0, 0] == N_LEFT - 1] = np.take_along_axis(stop, rj1, 1)[:, :, None]
        l_max += pad[:, None, None]
        # Queries lie well inside [g0, g1]: truncation is floor, no clipping needed.
        g0, ginv = batch.g0[:, None, None], batch.ginv[:, None, None]
        b_lo = ((l_min - g0) * ginv).astype(np.int64).reshape(n_ex, -1)
        b_hi = ((l_max - g0) * ginv).astype(np.int64).reshape(n_ex, -1)
        p_below = np.take_along_axis(batch.cnt_p, b_lo + 1, 1).reshape(l_min.shape)
        q_upto = np.take_along_axis(batch.cnt_q, b_hi + 2, 1).reshape(l_max.shape)
        tp = np.take_along_axis(a_p, rj1, 1)[:, :, None] - p_below
        fp = np.take_along_axis(a_q, rj0, 1)[:, :, None] - q_upto
        out = upper[np.maximum(tp, 0), np.maximum(fp, 0)]
        out[rj0 > last[:, None]] = -np.inf
        return out

    # Level 1: coarse blocks of every example, bounded from bucket counts alone.
    n_jb = -(-n_rows // _COARSE)
    cj0 = np.broadcast_to(np.arange(n_jb) * _COARSE, (n_ex, n_jb))
    cj1 = np.minimum(cj0 + (_COARSE - 1), last[:, None])
    ck0 = np.arange(0, N_LEFT, _COARSE)
    ck1 = np.minimum(ck0 + (_COARSE - 1), N_LEFT - 1)
    n_kb = ck0.size
    shape = (n_ex, n_jb, n_kb)
    ce = np.broadcast_to(np.arange(n_ex)[:, None, None], shape).ravel()
    cj0 = np.broadcast_to(cj0[:, :, None], shape).ravel()
    cj1 = np.broadcast_to(cj1[:, :, None], shape).ravel()
    ck0 = np.broadcast_to(ck0[None, None, :], shape).ravel()
    ck1 = np.broadcast_to(ck1[None, None, :], shape).ravel()
    cbound = coarse_bounds(cj0, cj1, ck0, ck1).reshape(n_ex, -1)
    # The most promising coarse block of each example, evaluated in full.
    top = np.argmax(cbound, axis=1)
    ex = np.flatnonzero(cbound[np.arange(n_ex), top] > best)
    if ex.size:
        t = ex * (n_jb * n_kb) + top[ex]
        evaluate(ex, cj0[t], cj1[t], ck0[t], ck1[t], _COARSE)
        cbound[ex, top[ex]] = -np.inf
    # Level 2: fine blocks of the surviving coarse ones (bucket bounds).
    alive = np.flatnonzero(((cbound > best[:, None]) & (best < EPSILON_CAP)[:, None]).ravel())
    if alive.size == 0:
        return best
    fe = np.repeat(ce[alive], _offsets(_FINE, _COARSE)[0].size)
    fj0, fj1, fk0, fk1 = _split(cj0[alive], cj1[alive], ck0[alive], ck1[alive], _COARSE, _FINE)
    fbound = bounds(fe, fj0, fj1, fk0, fk1, exact=False)
    keep = fbound > best[fe]
    fe, fj0, fj1, fk0, fk1, fbound = (a[keep] for a in (fe, fj0, fj1, fk0, fk1, fbound))
    order = np.lexsort((-fbound, fe))
    fe, fj0, fj1, fk0, fk1, fbound = (a[order] for a in (fe, fj0, fj1, fk0, fk1, fbound))
    first = np.searchsorted(fe, fe, side="left")
    rank = np.arange(fe.size) - first
    limit = _FIRST_ROUND
    while fe.size:
        now = rank < limit
        evaluate(fe[now], fj0[now], fj1[now], fk0[now], fk1[now], _FINE)
        keep = ~now & (fbound > best[fe]) & (best[fe] < EPSILON_CAP)
        fe, fj0, fj1, fk0, fk1, fbound, rank = (
            a[keep] for a in (fe, fj0, fj1, fk0, fk1, fbound, rank)
        )
        limit *= 2
    return best


def per_example_epsilons(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA
) -> np.ndarray:
    """eps per forget example, ``[n_examples]`` in [0, 50] (see the module docstring).

    Args:
        unlearned_confs: ``[N, n_examples]`` statistic under the N unlearned models.
        retrained_confs: ``[N, n_examples]`` statistic under the N retrained models.
        delta: the delta of (eps, delta)-indistinguishability (1e-5 in the challenge).
    """
    pos, neg, pos_diff, neg_diff, eps, rest = _sorted_sets(unlearned_confs, retrained_confs)
    table, upper = _eps_tables(pos.shape[1], float(delta))
    idx = np.flatnonzero(rest)
    for b0 in range(0, idx.size, _BATCH):
        i = idx[b0 : b0 + _BATCH]
        e = _batch_epsilons(pos[i], neg[i], pos_diff[i], neg_diff[i], table, upper)
        eps[i] = np.where(e == -np.inf, 0.0, np.minimum(e, EPSILON_CAP))
    return eps


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
) -> dict[str, float]:
    """All F-score metrics under ``fscore/`` keys.

    Args:
        unlearned_confs, retrained_confs: ``[N, n_examples]`` statistic per model.
        accuracies: optional ``retain_acc_u``, ``retain_acc_r``, ``test_acc_u``,
            ``test_acc_r`` (means over the N models); without them
            ``fscore/final_score`` is nan.
        n_boot: bootstrap replicates for the interval (0 skips it: nan bounds).

    Keys: ``fscore/forget_quality``, ``fscore/final_score``, ``fscore/fq_ci_low``,
    ``fscore/fq_ci_high``, ``fscore/eps_mean``, ``fscore/eps_median``,
    ``fscore/eps_capped_frac`` (share of examples at eps = 50), ``fscore/n_models``,
    ``fscore/n_examples``.
    """
    u, r = _validate(unlearned_confs, retrained_confs)
    n_models, n_examples = u.shape
    eps = per_example_epsilons(u, r, delta)
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
        "fscore/eps_capped_frac": float((eps >= EPSILON_CAP).mean()),
        "fscore/n_models": float(n_models),
        "fscore/n_examples": float(n_examples),
    }
