"""Batched per-example eps of the challenge F-score (the path ``per_example_epsilons`` takes).

Private to ``unlearn_core.metrics.fscore``; the same numbers as the per-example
branch and bound of ``_fscore_exact`` (whose docstring describes the block
bounds), vectorised across examples.

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
- For N <= ``_PAIR_MAX_N`` (40) the double rule first runs the pair search of
  ``_fscore_pairs`` (the max over the reachable (#w < l, #w <= r) pairs, checked
  exactly, best first); only the examples it leaves unsettled go through the
  branch and bound, starting from its best value.

Speed (scripts/bench_fscore.py, 2 loaded CPUs, CPU seconds, 5 000 examples):
about 1.8x the per-example loop at N = 32 and 1.3x at N = 256; ~1x at N =
512. The work is now bound by numpy's per-element cost (~650 coarse bounds
and a few hundred exact cells per example), not by Python overhead. The pair
search (2026-12-02, same machine, loaded): at N = 32 about 2x the branch and
bound alone, at N = 5 about 4.5x; break-even near N = 48.
"""

from __future__ import annotations

import numpy as np

from unlearn_core.metrics._fscore_exact import (
    _COARSE,
    _FINE,
    DELTA,
    DOUBLE_BUFFER,
    EPSILON_CAP,
    N_LEFT,
    THRESHOLDS_PER_UNIT,
    _eps_tables,
    _offsets,
    _sorted_sets,
    _split,
)
from unlearn_core.metrics._fscore_pairs import _PAIR_MAX_N, _double_rule_pairs, _grid_count

# Batched path: examples per batch, buckets of the count index, fine blocks per
# example in the first evaluation round (doubling every round).
_BATCH = 64
_BUCKETS = 1024
_FIRST_ROUND = 4


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
    pairs: bool = True,
) -> np.ndarray:
    """max(best, double-rule eps) per example: for N <= ``_PAIR_MAX_N`` first the pair
    search (``_fscore_pairs``), then batched branch and bound for the examples it left."""
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
    if pairs and n <= _PAIR_MAX_N:
        best, settled = _double_rule_pairs(w, cum_p, b, last, start, stop, best, table)
        rest = np.flatnonzero(~settled)
        if rest.size:  # not settled within the pair checks: branch and bound from best
            best[rest] = _double_rule_batch(w[rest], from_pos[rest], pos[rest], neg[rest],
                                            pos_diff[rest], neg_diff[rest], best[rest],
                                            table, upper, pairs=False)
        return best
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


def _per_example_epsilons_batched(
    unlearned_confs: np.ndarray, retrained_confs: np.ndarray, delta: float = DELTA
) -> np.ndarray:
    """``per_example_epsilons``: examples in batches of ``_BATCH`` (``_batch_epsilons``)."""
    pos, neg, pos_diff, neg_diff, eps, rest = _sorted_sets(unlearned_confs, retrained_confs)
    table, upper = _eps_tables(pos.shape[1], float(delta))
    idx = np.flatnonzero(rest)
    for b0 in range(0, idx.size, _BATCH):
        i = idx[b0 : b0 + _BATCH]
        e = _batch_epsilons(pos[i], neg[i], pos_diff[i], neg_diff[i], table, upper)
        eps[i] = np.where(e == -np.inf, 0.0, np.minimum(e, EPSILON_CAP))
    return eps
