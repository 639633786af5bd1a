"""F-score / forget quality of the NeurIPS 2023 unlearning challenge.

The vectorised eps must equal the per-example port of the released code; the
score must behave as the challenge's (identical sets ~0.19, shifted lower,
collapsed 0) and hand-computed cases must come out exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_core.metrics import _fscore_batched as fsb
from unlearn_core.metrics import fscore as fs
from unlearn_core.metrics.fscore import (
    DELTA,
    EPSILON_CAP,
    _DoubleRule,
    _grid_count,
    _per_example_epsilon_reference,
    _per_example_epsilons_loop,
    bin_edges,
    capped_fraction,
    epsilon_scores,
    final_score,
    forget_quality,
    forget_quality_bootstrap,
    fscore_metrics,
    fscore_metrics_and_epsilons,
    logit_scaled_confidence,
    per_example_epsilons,
)


def reference_eps(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.array([_per_example_epsilon_reference(u[:, i], r[:, i]) for i in range(u.shape[1])])


def assert_matches_reference(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    fast = per_example_epsilons(u, r)
    ref = reference_eps(u, r)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)
    return fast


# --------------------------------------------------------------------------
# vectorised == reference


@pytest.mark.parametrize(
    ("n_models", "n_examples", "shift", "scale_u", "seed"),
    [
        (4, 40, 0.0, 1.0, 0),
        (4, 40, 1.0, 1.0, 1),
        (8, 30, 0.5, 2.0, 2),
        (32, 25, 0.0, 1.0, 3),
        (32, 25, 0.7, 0.5, 4),
        (32, 15, 0.0, 0.1, 5),  # narrow values: the grid is coarse relative to the data
        (33, 20, -0.4, 3.0, 6),  # odd N (median is a data point)
    ],
)
def test_vectorised_matches_reference_random(n_models, n_examples, shift, scale_u, seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(shift, scale_u, (n_models, n_examples))
    r = rng.normal(0.0, 1.0, (n_models, n_examples))
    assert_matches_reference(u, r)


@pytest.mark.parametrize(
    ("n_models", "decimals", "seed"), [(4, 0, 0), (32, 0, 1), (32, 1, 2), (16, 1, 3)]
)
def test_vectorised_matches_reference_with_ties(n_models, decimals, seed):
    # Rounded values: ties within and across the two sets, and data values that
    # coincide exactly with grid ends (min, max, max(P) +- 2, r - width - 2).
    rng = np.random.default_rng(seed)
    u = np.round(rng.normal(0.3, 1.5, (n_models, 25)), decimals)
    r = np.round(rng.normal(0.0, 1.5, (n_models, 25)), decimals)
    assert_matches_reference(u, r)


def test_vectorised_matches_reference_skewed_and_mixed():
    rng = np.random.default_rng(7)
    n = 32
    u = np.concatenate(
        [rng.gumbel(3, 1.5, (n, 8)), rng.normal(0, 0.4, (n, 8)), rng.exponential(2, (n, 8))], axis=1
    )
    r = np.concatenate(
        [rng.gumbel(3, 1.5, (n, 8)), rng.normal(0, 2.0, (n, 8)), -rng.exponential(2, (n, 8))],
        axis=1,
    )
    assert_matches_reference(u, r)


def test_vectorised_matches_reference_n512():
    rng = np.random.default_rng(8)
    u = rng.normal(0.2, 1.0, (512, 2))
    r = rng.normal(0.0, 1.0, (512, 2))
    assert_matches_reference(u, r)


def test_vectorised_matches_reference_degenerate():
    n = 8
    base = np.linspace(-1, 1, n)
    cols = [
        (np.zeros(n), np.zeros(n)),  # both constant, equal
        (np.zeros(n), np.ones(n)),  # both constant, different
        (np.full(n, 2.0), base),  # one constant
        (base, base),  # identical
        (base + 100.0, base),  # perfectly separated
        (base * 1e-3 + 0.5, base),  # range ratio 1e-3 < 0.01
        (base * 0.02, base),  # ratio 0.02: no shortcut, but [u] holds no r value: inf
        (base * 0.2, base),  # ratio 0.2, finite
    ]
    u = np.stack([c[0] for c in cols], axis=1)
    r = np.stack([c[1] for c in cols], axis=1)
    eps = assert_matches_reference(u, r)
    assert eps[0] == 0.0
    assert eps[1] == EPSILON_CAP
    assert eps[2] == EPSILON_CAP
    assert eps[4] == EPSILON_CAP
    assert eps[5] == EPSILON_CAP
    assert eps[6] == EPSILON_CAP
    assert eps[7] < EPSILON_CAP


def test_left_thresholds_bit_identical_to_linspace():
    # The vectorised grid must reproduce np.linspace(r - w - 2, r - w + 2, 400)
    # bit for bit, or ties between data and thresholds could flip.
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.sort(rng.normal(rng.normal(0, 5), rng.uniform(0.01, 3), 16))
        width = float(p[-1] - p[0])
        grid = _DoubleRule(p, p, width)
        jj, kk = np.divmod(np.arange(grid.n_right * fs.N_LEFT), fs.N_LEFT)
        ref = np.concatenate(
            [np.linspace(t - width - 2.0, t - width + 2.0, num=400) for t in grid.right]
        )
        assert np.array_equal(grid.left(jj, kk), ref)


def _batched_vs_loop_cases(n_models: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """~1 000 examples mixing regimes: Gaussian, shifted, scaled, rounded (ties),
    constant sets, near-peaky sets, duplicated values and bootstrap-like resamples."""
    rng = np.random.default_rng(seed)
    n = n_models
    blocks_u, blocks_r = [], []

    def add(u: np.ndarray, r: np.ndarray) -> None:
        blocks_u.append(u)
        blocks_r.append(r)

    mu = rng.normal(0, 3, 300)
    sig = rng.lognormal(0, 0.7, 300)
    add(rng.normal(mu + 0.3 * sig, sig, (n, 300)), rng.normal(mu, sig, (n, 300)))
    add(rng.normal(0.5, 0.3, (n, 100)), rng.normal(0, 2.0, (n, 100)))  # narrow vs wide
    add(np.round(rng.normal(0.2, 1, (n, 100)), 1), np.round(rng.normal(0, 1, (n, 100)), 1))
    add(np.round(rng.normal(0, 2, (n, 50))), np.round(rng.normal(0, 2, (n, 50))))
    c = np.round(rng.normal(0, 1, (1, 40)), 1)
    add(np.repeat(c, n, 0), np.round(rng.normal(0, 1, (n, 40)), 1))  # one constant set
    add(np.repeat(c, n, 0), np.repeat(c + (np.arange(40) % 2), n, 0))  # both constant
    base = rng.normal(0, 1, (n, 40))
    ratio = rng.choice([0.005, 0.0099, 0.01, 0.0101, 0.02, 0.05], 40)
    add(base * ratio + 0.3, rng.normal(0, 1, (n, 40)))  # around the peakiness cut
    add(base, base.copy())  # identical sets
    add(base + rng.normal(0, 1e-3, (n, 40)), base)  # nearly identical
    add(base + 10.0, base)  # separated
    # Bootstrap replicates: models resampled with replacement (many duplicates).
    u0, r0 = rng.normal(0.3, 1, (n, 100)), rng.normal(0, 1, (n, 100))
    for _ in range(2):
        add(u0[rng.integers(0, n, n)], r0[rng.integers(0, n, n)])
    # Values lying exactly on grid points: min(P) + w - 2 + j / 100 etc.
    grid = np.round(rng.normal(0, 1, (n, 60)) * 4) / 4
    add(grid, np.round(rng.normal(0.25, 1, (n, 60)) * 4) / 4)
    return np.concatenate(blocks_u, axis=1), np.concatenate(blocks_r, axis=1)


@pytest.mark.parametrize("n_models", [2, 5, 32, 100])
def test_batched_identical_to_per_example_loop(n_models):
    # The batched path must give the very same floats as the per-example one (both
    # take the max over the same table entries), whatever the batch boundaries.
    u, r = _batched_vs_loop_cases(n_models, seed=n_models)
    assert u.shape[1] >= 1000
    loop = _per_example_epsilons_loop(u, r)
    assert np.array_equal(per_example_epsilons(u, r), loop)
    # Other batch and bucket sizes (a batch of 7 splits the regimes across batches).
    for batch, buckets in ((7, 64), (1000, 4096)):
        old = fsb._BATCH, fsb._BUCKETS
        fsb._BATCH, fsb._BUCKETS = batch, buckets
        try:
            assert np.array_equal(per_example_epsilons(u[:, :400], r[:, :400]), loop[:400])
        finally:
            fsb._BATCH, fsb._BUCKETS = old


@pytest.mark.parametrize("n_models", [2, 3, 5, 16, 32, 40])
def test_pair_search_identical_to_branch_and_bound(n_models):
    # The pair search (small N) settles most examples itself and hands the rest to the
    # branch and bound: with any number of checks per example, the very same floats as
    # the branch and bound alone and the per-example loop.
    from unlearn_core.metrics import _fscore_pairs as fsp

    u, r = _batched_vs_loop_cases(n_models, seed=100 + n_models)
    loop = _per_example_epsilons_loop(u, r)
    assert fsp._PAIR_MAX_N >= n_models  # the pair search is the path taken here
    old = fsp._PAIR_ROUNDS, fsb._PAIR_MAX_N
    try:
        for rounds in (1, 2, 6, 50):
            fsp._PAIR_ROUNDS = rounds
            assert np.array_equal(per_example_epsilons(u, r), loop), rounds
        fsb._PAIR_MAX_N = 0  # branch and bound only
        assert np.array_equal(per_example_epsilons(u, r), loop)
    finally:
        fsp._PAIR_ROUNDS, fsb._PAIR_MAX_N = old


def test_batched_matches_reference_on_hard_cases():
    u, r = _batched_vs_loop_cases(5, seed=99)
    pick = np.random.default_rng(0).choice(u.shape[1], 60, replace=False)
    assert_matches_reference(u[:, pick], r[:, pick])


def test_grid_count_equals_searchsorted_on_linspace():
    # _grid_count must count np.linspace's own values exactly, data on grid points too.
    rng = np.random.default_rng(1)
    rows = 300
    start = rng.normal(0, 5, rows)
    span = rng.choice([0.0, 0.005, 0.01, 0.015, 1.0, 3.999999, 4.0, 17.3], rows)
    stop = start + span
    num = np.maximum(np.ceil(span * 100).astype(np.int64), 1)
    x = rng.uniform(-1, 1, (rows, 50)) * (span[:, None] + 0.1) + start[:, None]
    for i in range(rows):  # also exactly on grid values and the ends
        g = np.linspace(start[i], stop[i], int(num[i]))
        x[i, :10] = rng.choice(g, 10)
        x[i, 10], x[i, 11] = start[i], stop[i]
    for strict in (False, True):
        got = _grid_count(start, stop, num, x, strict=strict)
        for i in range(rows):
            g = np.linspace(start[i], stop[i], int(num[i]))
            side = "left" if strict else "right"
            assert np.array_equal(got[i], np.searchsorted(g, x[i], side=side)), i


def test_bootstrap_unchanged_by_batching():
    rng = np.random.default_rng(15)
    u = rng.normal(0.2, 1, (12, 80))
    r = rng.normal(0, 1, (12, 80))
    got = forget_quality_bootstrap(u, r, n_boot=6, seed=3)
    rng_b = np.random.default_rng(3)
    reps = []
    for _ in range(6):
        iu, ir = rng_b.integers(0, 12, 12), rng_b.integers(0, 12, 12)
        eps = _per_example_epsilons_loop(u[iu], r[ir])
        reps.append(epsilon_scores(eps, 12).mean())
    assert got == tuple(float(q) for q in np.quantile(reps, [0.025, 0.975]))


# --------------------------------------------------------------------------
# behaviour of the score


def test_identical_sets_score_near_null_value():
    # Same distribution for both sets. eps is the max over ~160 000 attacks of
    # finite-sample rates, so it is not 0: by simulation its mean is ~1.55 and
    # F ~ 0.18-0.20 for every N from 8 to 512 (e.g. N = 32: 0.184, N = 512:
    # 0.19), well below the ideal 1 and far above a bad unlearner's ~0.
    rng = np.random.default_rng(10)
    u = rng.normal(0, 1, (32, 600))
    r = rng.normal(0, 1, (32, 600))
    fq = forget_quality(u, r)
    assert 0.14 <= fq <= 0.24
    eps = per_example_epsilons(u, r)
    assert 1.3 <= eps.mean() <= 1.8


def test_shifted_set_scores_lower():
    rng = np.random.default_rng(11)
    r = rng.normal(0, 1, (32, 300))
    same = forget_quality(rng.normal(0, 1, (32, 300)), r)
    half = forget_quality(rng.normal(0.5, 1, (32, 300)), r)
    far = forget_quality(rng.normal(2.0, 1, (32, 300)), r)
    assert same > half > far
    assert far < 0.05


def test_collapsed_unlearned_set_gets_cap():
    rng = np.random.default_rng(12)
    r = rng.normal(0, 1, (32, 50))
    u = np.full((32, 50), 0.3)  # e.g. every unlearned model outputs the same thing
    eps = per_example_epsilons(u, r)
    assert np.all(eps == EPSILON_CAP)
    assert forget_quality(u, r) == 0.0


def test_perfectly_separated_is_infinite_clipped_and_scores_zero():
    u = np.array([[10.0], [10.5], [11.0], [11.5]])
    r = np.array([[0.0], [0.5], [1.0], [1.5]])
    # A threshold between the sets has FPR = FNR = 0: eps = inf, clipped to 50.
    assert per_example_epsilons(u, r)[0] == EPSILON_CAP
    assert _per_example_epsilon_reference(u[:, 0], r[:, 0]) == EPSILON_CAP
    assert forget_quality(u, r) == 0.0


def test_hand_computed_interleaved_case():
    # u = 0, 1, 2, 3 and r = u + 0.5 (N = 4). r has the larger median: positive.
    # Single thresholds give eps = 0 at best (every kept threshold has
    # FPR = 1 - FNR). Ranges are equal, so the double rule takes u as the peaky
    # set; the interval [1, 2] holds two u values and one r value: FNR = 1/2,
    # FPR = 1/4, eps = log(1 - delta - 1/2) - log(1/4) = log(2 - 4 delta). No
    # interval does better (two u values always enclose an r value).
    u = np.array([[0.0], [1.0], [2.0], [3.0]])
    r = u + 0.5
    expected = math.log(1 - DELTA - 0.5) - math.log(0.25)
    eps = per_example_epsilons(u, r)
    assert eps[0] == pytest.approx(expected, abs=1e-12)
    assert _per_example_epsilon_reference(u[:, 0], r[:, 0]) == pytest.approx(expected, abs=1e-12)
    # N = 4: bins of 0.5 up to ceil(log 3) = 2; eps in [0.5, 1) is bin 2: 1/2.
    assert forget_quality(u, r) == 0.5


def test_bins_for_512_models():
    edges = bin_edges(512)
    assert edges.size == 14
    np.testing.assert_array_equal(edges, np.arange(0, 7, 0.5))
    assert math.ceil(math.log(511)) == 7
    eps = np.array([0.0, 0.49, 0.5, 1.0, 6.49, 6.5, 6.999, 7.0, 20.0, 50.0])
    expected = [1, 1, 0.5, 0.25, 2.0**-12, 2.0**-13, 2.0**-13, 0, 0, 0]
    np.testing.assert_array_equal(epsilon_scores(eps, 512), expected)
    # Scores are 2 / 2**n for 1-based bin n.
    np.testing.assert_array_equal(epsilon_scores(edges, 512), 2.0 / 2.0 ** np.arange(1, 15))


def test_bins_other_sizes():
    assert bin_edges(32).size == 8  # ceil(log 31) = 4
    assert bin_edges(4).size == 4  # ceil(log 3) = 2
    assert bin_edges(2).size == 0  # log 1 = 0: no bin, every example scores 0


def test_final_score_arithmetic():
    assert final_score(0.5, 0.9, 0.9, 0.8, 0.8) == pytest.approx(0.5)
    assert final_score(0.4, 0.45, 0.9, 0.6, 0.8) == pytest.approx(0.4 * 0.5 * 0.75)
    assert final_score(0.4, 1.0, 0.8, 0.9, 0.9) == pytest.approx(0.5)  # RA_U > RA_R is rewarded
    assert math.isnan(final_score(0.4, 0.5, 0.0, 0.5, 0.5))


def test_logit_scaled_confidence_hand_computed():
    # p = softmax([0, ln 3]) = (1/4, 3/4); label 1: log(3/4) - log(1/4) = ln 3.
    s = logit_scaled_confidence(np.array([[0.0, math.log(3.0)]]), np.array([1]))
    assert s.shape == (1,)
    assert s[0] == pytest.approx(math.log(3.0), abs=1e-12)
    # Label 0: -ln 3. Max-subtraction makes huge logits safe.
    s = logit_scaled_confidence(np.array([[1000.0, 1000.0 + math.log(3.0)]]), np.array([0]))
    assert s[0] == pytest.approx(-math.log(3.0), abs=1e-9)


def test_logit_scaled_confidence_batched_and_saturated():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 7, 4))
    labels = rng.integers(0, 4, 7)
    s = logit_scaled_confidence(logits, labels)
    assert s.shape == (5, 7)
    for m in range(5):
        np.testing.assert_allclose(s[m], logit_scaled_confidence(logits[m], labels), rtol=1e-12)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    py = np.take_along_axis(p, np.broadcast_to(labels[None, :, None], (5, 7, 1)), -1)[..., 0]
    np.testing.assert_allclose(s, np.log(py) - np.log(1 - py), rtol=1e-9)
    # p_y ~ 1: the wrong-class mass is summed, so s keeps growing with the margin
    # (1 - p_y would round to 0 and give log(1e-45)).
    s = logit_scaled_confidence(np.array([[0.0, 60.0], [0.0, 70.0]]), np.array([1, 1]))
    np.testing.assert_allclose(s, [60.0, 70.0], rtol=1e-12)


def test_bootstrap_interval():
    rng = np.random.default_rng(13)
    u = rng.normal(0.3, 1, (16, 60))
    r = rng.normal(0, 1, (16, 60))
    low, high = forget_quality_bootstrap(u, r, n_boot=10, seed=1)
    assert 0.0 <= low <= high <= 1.0
    assert (low, high) == forget_quality_bootstrap(u, r, n_boot=10, seed=1)  # seeded


def test_fscore_metrics_keys():
    rng = np.random.default_rng(14)
    u = rng.normal(0, 1, (8, 30))
    r = rng.normal(0, 1, (8, 30))
    accs = {"retain_acc_u": 0.9, "retain_acc_r": 1.0, "test_acc_u": 0.8, "test_acc_r": 0.8}
    m = fscore_metrics(u, r, accs, n_boot=5)
    for key in (
        "fscore/forget_quality",
        "fscore/final_score",
        "fscore/fq_ci_low",
        "fscore/fq_ci_high",
        "fscore/eps_mean",
    ):
        assert key in m and isinstance(m[key], float)
    assert m["fscore/forget_quality"] == forget_quality(u, r)
    assert m["fscore/final_score"] == pytest.approx(m["fscore/forget_quality"] * 0.9)
    assert m["fscore/eps_mean"] == pytest.approx(per_example_epsilons(u, r).mean())
    no_boot = fscore_metrics(u, r, n_boot=0)
    assert math.isnan(no_boot["fscore/final_score"]) and math.isnan(no_boot["fscore/fq_ci_low"])


def test_input_validation():
    with pytest.raises(ValueError):
        per_example_epsilons(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        per_example_epsilons(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError):
        per_example_epsilons(np.full((4, 3), np.nan), np.zeros((4, 3)))


# --------------------------------------------------------------------------
# share of examples at the eps cap (fscore/eps_capped_frac)


def _four_cases() -> tuple[np.ndarray, np.ndarray]:
    """N = 4 models, 4 examples (columns), two of them at the cap by construction:
    0 peaky (u ranges 3, r 0.003: ratio 0.001 < 0.01), 1 perfectly separated (a
    threshold between the sets has FPR = FNR = 0: inf, clipped to 50), 2 identical
    sets (every threshold has TPR = FPR: eps 0), 3 interleaved (eps log(2 - 4 delta),
    ``test_hand_computed_interleaved_case``)."""
    base = np.array([0.0, 1.0, 2.0, 3.0])
    u = np.stack([base, base, base, base], axis=1)
    r = np.stack([0.001 * base, base + 10.0, base, base + 0.5], axis=1)
    return u, r


def test_capped_fraction_hand_computed():
    assert capped_fraction(np.array([0.0, 50.0, 49.99, 50.0])) == 0.5
    assert capped_fraction(np.array([EPSILON_CAP])) == 1.0
    assert capped_fraction(np.zeros(3)) == 0.0
    assert math.isnan(capped_fraction(np.zeros(0)))
    u, r = _four_cases()
    eps = per_example_epsilons(u, r)
    assert eps[0] == eps[1] == EPSILON_CAP
    assert eps[2] == 0.0
    assert eps[3] == pytest.approx(math.log(1 - DELTA - 0.5) - math.log(0.25), abs=1e-12)
    np.testing.assert_array_equal(eps, reference_eps(u, r))  # as the released code
    metrics = fscore_metrics(u, r, n_boot=0)
    assert metrics["fscore/eps_capped_frac"] == 0.5  # examples 0 and 1 of 4
    # the capped examples score 0, as any eps past the last bin: F alone cannot tell them
    # from merely distant ones. N = 4: eps 0 scores 1, eps in [0.5, 1) scores 1/2.
    assert metrics["fscore/forget_quality"] == (0 + 0 + 1 + 0.5) / 4


def test_capped_fraction_properties():
    rng = np.random.default_rng(21)
    u = rng.normal(0.0, 1.0, (6, 80))
    r = rng.normal(1.5, 1.0, (6, 80))
    u[:, :10] = 0.25 + 1e-4 * rng.normal(size=(6, 10))  # collapsed: peaky, at the cap
    eps = per_example_epsilons(u, r)
    frac = fscore_metrics(u, r, n_boot=0)["fscore/eps_capped_frac"]
    assert frac == np.mean(eps == EPSILON_CAP)
    assert frac >= 10 / 80
    # it depends on the examples' eps only: the models' order and the examples' order
    # do not change it
    order = rng.permutation(6)
    cols = rng.permutation(80)
    again = fscore_metrics(u[order][:, cols], r[rng.permutation(6)][:, cols], n_boot=0)
    assert again["fscore/eps_capped_frac"] == frac


def test_fscore_metrics_and_epsilons_compute_eps_once():
    rng = np.random.default_rng(22)
    u, r = rng.normal(0, 1, (5, 40)), rng.normal(0.3, 1, (5, 40))
    accs = {"retain_acc_u": 0.9, "retain_acc_r": 1.0, "test_acc_u": 0.8, "test_acc_r": 0.8}
    metrics, eps = fscore_metrics_and_epsilons(u, r, accs, n_boot=3)
    np.testing.assert_array_equal(eps, per_example_epsilons(u, r))
    assert metrics == fscore_metrics(u, r, accs, n_boot=3)
    with pytest.raises(ValueError, match="epsilons must have shape"):
        fscore_metrics(u, r, epsilons=eps[:-1])
