"""Pair search for the double-threshold rule of the challenge F-score, small N.

Private to ``unlearn_core.metrics.fscore``; used by ``_fscore_batched`` before its
branch and bound, giving the very same eps (the max over the same table entries).

An interval [l, r] of the double rule has counts that depend only on two positions
in the example's 2N pooled sorted values w: a = #w < l (l in the gap (w[a-1], w[a]])
and b = #w <= r (r in [w[b-1], w[b])). So each grid cell (j, k) falls in one pair
(a, b), whose table value V(a, b) = E[TP, FP], TP = #P among w[a..b-1], FP likewise
for Q, is the cell's eps. The max over the grid is then the largest V(a, b) over
the pairs that some grid cell reaches ("achievable"):

- every pair's V at once, (2N + 1)^2 per example (cheap for small N);
- pairs no cell can reach are dropped up front: b must be #w <= r_j of some row j,
  and the gap of a must meet the left grids of those rows;
- the rest, best V first, are checked exactly: for each row j of the pair's b, the
  first left threshold above w[a-1] (an exact grid count, ``_grid_count``) must be
  <= w[a]. The first achievable pair is the max, and the example is settled.

Pairs whose gap is narrower than the grid step (~0.01) can fail the check; an
example not settled within ``_PAIR_ROUNDS`` checks goes on to the branch and bound
with the best value found so far (a value of a real cell, so a valid lower bound).
The left thresholds are the released code's float64 expressions (``k * step +
start``, the last one ``stop``), as everywhere in the batched path.
"""

from __future__ import annotations

import numpy as np

from unlearn_core.metrics._fscore_exact import N_LEFT

# Pair search for N up to this ((2N + 1)^2 pairs per example; past ~48 the branch and
# bound is faster; table indices and ranks are int16, so (N + 1)^2 must stay < 2^15);
# checks of the best candidates per example before the branch and bound takes over.
_PAIR_MAX_N = 40
_PAIR_ROUNDS = 6
_CORRECTIONS = 1


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


def _row_ranges(b: np.ndarray, last: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Per example and value v in [0, n_pos): the rows j with b[j] == v, as jlo..jhi
    (empty when jhi < jlo). b is nondecreasing over the rows up to ``last``; the rows
    past it are padding."""
    n_ex, n_rows = b.shape
    rows = np.arange(n_rows)
    padded = np.where(rows <= last[:, None], b, n_pos)  # padding sorts past every value
    offset = (np.arange(n_ex) * (n_pos + 1))[:, None]
    flat = (padded + offset).ravel()  # sorted: each row nondecreasing, rows apart
    values = np.arange(n_pos)[None, :] + offset
    base = (np.arange(n_ex) * n_rows)[:, None]
    jlo = np.searchsorted(flat, values, side="left") - base
    jhi = np.searchsorted(flat, values, side="right") - 1 - base
    return jlo, jhi


def _double_rule_pairs(
    w: np.ndarray,
    cum_p: np.ndarray,
    b: np.ndarray,
    last: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    best: np.ndarray,
    table: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(max(best, double-rule eps) where settled, else a lower bound; settled mask).

    ``w``: sorted pooled values [n_ex, 2N]; ``cum_p[e, a]``: #P among w[:a]; ``b[e, j]``
    = #w <= r_j; ``last``: each example's last row; ``start`` / ``stop``: each row's
    left grid ends (``_double_rule_batch``'s arrays). Pairs are ranked by the rank of
    their table value (int16: half the memory traffic of float64, same order)."""
    n_ex, n_w = w.shape
    n_pos = n_w + 1
    if table.size >= 1 << 15:
        raise ValueError(f"pair search needs (N + 1)^2 < 2^15, got {table.size}")
    jlo, jhi = _row_ranges(b, last, n_pos)
    n_rows = b.shape[1]
    jlo_c, jhi_c = np.clip(jlo, 0, n_rows - 1), np.clip(jhi, 0, n_rows - 1)
    # the gap of a: l in (w[a-1], w[a]]
    gap_lo = np.concatenate([np.full((n_ex, 1), -np.inf), w], axis=1)
    gap_hi = np.concatenate([w, np.full((n_ex, 1), np.inf)], axis=1)
    # V(a, b) as the rank of table[TP, FP] among the table's distinct values
    distinct, rank = np.unique(table, return_inverse=True)
    rank = rank.reshape(-1).astype(np.int16)
    best_rank = (np.searchsorted(distinct, best, side="right") - 1).astype(np.int16)
    cum_p16 = cum_p.astype(np.int16)
    cum_q16 = (np.arange(n_pos, dtype=np.int16) - cum_p16).astype(np.int16)
    tp = cum_p16[:, None, :] - cum_p16[:, :, None]  # [e, a, b]
    fp = cum_q16[:, None, :] - cum_q16[:, :, None]
    np.maximum(tp, 0, out=tp)
    np.maximum(fp, 0, out=fp)
    tp *= np.int16(table.shape[1])
    tp += fp
    value = rank[tp]
    # Reachable at all: b is some row's, and the gap of a meets [start of its first
    # row, stop of its last] (grid ends grow with j; the pad only admits more pairs).
    l_min = np.take_along_axis(start, jlo_c, 1)
    l_max = np.take_along_axis(stop, jhi_c, 1)
    pad = 1e-9 * (1.0 + np.maximum(np.abs(l_min), np.abs(l_max)))
    l_min = np.where(jhi >= jlo, l_min - pad, np.inf)[:, None, :]  # no row: unreachable
    reach = (gap_hi[:, :, None] >= l_min) & (gap_lo[:, :, None] <= (l_max + pad)[:, None, :])
    reach &= value > best_rank[:, None, None]
    cand = np.where(reach, value, np.int16(-1)).reshape(n_ex, -1)
    n_cand = reach.reshape(n_ex, -1).sum(axis=1)
    # The best candidate of each example first (most are reached), then, for those that
    # failed, the next _PAIR_ROUNDS - 1 best, best first.
    examples = np.arange(n_ex)
    first = np.argmax(cand, axis=1)
    top_value = cand[examples, first]
    live = np.flatnonzero(top_value > best_rank)
    found = np.zeros(n_ex, dtype=bool)
    checked = np.minimum(n_cand, 1)
    if live.size:
        a, v = np.divmod(first[live], n_pos)
        ok = _achievable(live, a, v, jlo, jhi, start, stop, gap_lo, gap_hi)
        found[live[ok]] = True
        best_rank[live[ok]] = top_value[live[ok]]
        rest = live[~ok & (n_cand[live] > 1)]
        k = min(_PAIR_ROUNDS, cand.shape[1])
        if rest.size and k > 1:
            part = cand[rest]
            part[np.arange(rest.size), first[rest]] = -1  # checked already
            top = np.argpartition(part, part.shape[1] - (k - 1), axis=1)[:, -(k - 1):]
            values = np.take_along_axis(part, top, axis=1)
            order = np.argsort(-values.astype(np.int32), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            values = np.take_along_axis(values, order, axis=1)
            checked[rest] = k
            done = np.zeros(rest.size, dtype=bool)
            for i in range(k - 1):
                now = np.flatnonzero(~done & (values[:, i] > best_rank[rest]))
                if now.size == 0:
                    break
                a, v = np.divmod(top[now, i], n_pos)
                ok = _achievable(rest[now], a, v, jlo, jhi, start, stop, gap_lo, gap_hi)
                done[now[ok]] = True
                found[rest[now[ok]]] = True
                best_rank[rest[now[ok]]] = values[now[ok], i]
    best = np.where(found, distinct[best_rank], best)
    # settled: a pair reached (the max), or every candidate checked and none reached
    return best, found | (n_cand <= checked)


def _achievable(e: np.ndarray, a: np.ndarray, v: np.ndarray, jlo: np.ndarray,
                jhi: np.ndarray, start: np.ndarray, stop: np.ndarray, gap_lo: np.ndarray,
                gap_hi: np.ndarray) -> np.ndarray:
    """Whether some cell (j, k) of example e has #w <= r_j = v and #w < l_jk = a: in a
    row j of v, the first left threshold above w[a-1] is <= w[a]."""
    j0, j1 = jlo[e, v], jhi[e, v]
    count = j1 - j0 + 1
    owner = np.repeat(np.arange(e.size), count)
    first = np.cumsum(count) - count
    jj = np.repeat(j0, count) + (np.arange(owner.size) - np.repeat(first, count))
    ee, aa = e[owner], a[owner]
    s0, s1 = start[ee, jj], stop[ee, jj]
    below = gap_lo[ee, aa]
    k = _grid_count(s0, s1, np.full(s0.size, N_LEFT), below[:, None], strict=False)[:, 0]
    step = (s1 - s0) / (N_LEFT - 1)
    with np.errstate(invalid="ignore"):
        left = np.where(k == N_LEFT - 1, s1, k * step + s0)
    inside = (k < N_LEFT) & (left <= gap_hi[ee, aa])
    return np.bincount(owner, weights=inside, minlength=e.size) > 0
