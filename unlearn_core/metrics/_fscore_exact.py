"""Exact per-example eps of the challenge F-score: shared tables and the loop path.

Private to ``unlearn_core.metrics.fscore`` (whose docstring defines the metric):
the constants of the released code, input checks, the eps table, the
threshold grids, the reference port of the released code
(``_per_example_epsilon_reference``) and the previous one-example-at-a-time
branch and bound (``_per_example_epsilons_loop``), kept to check the batched
path (``_fscore_batched``) against.

Vectorised per-example algorithm (``_per_example_epsilons_loop``)
-----------------------------------------------------------------
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
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
PEAKY_RATIO = 0.01  # smaller range / larger range below this -> eps = cap
DOUBLE_BUFFER = 2.0  # the released code's ``buffer``

# Block sizes of the branch-and-bound over the double-threshold grid (rows j
# of right thresholds x columns k of left thresholds): coarse blocks are
# bounded first, the survivors split into fine blocks, which are bounded and
# then evaluated exactly in rounds. Tuned at N = 512 (scripts/bench_fscore.py).
_COARSE = 16
_FINE = 4
_FINE_PER_ROUND = 64  # ~1000 thresholds per round: amortises Python overhead


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
