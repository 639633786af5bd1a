"""Membership-inference metrics: features against hand computations, the SVC
attacks and the loss-LR attack on separable and identical score sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_core.metrics.mia import (
    ATTACKS,
    attack_features,
    balanced_subsample,
    entropy,
    loss_lr_mia,
    mia_gaps,
    mia_gaps_of_means,
    mia_metrics,
    modified_entropy,
    svc_attack,
)

C = 10


def confident(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Member-like outputs: correct and very confident (p_y ~ 1)."""
    y = rng.integers(0, C, n)
    z = rng.normal(scale=0.1, size=(n, C))
    z[np.arange(n), y] += 12.0
    return z.astype(np.float32), y


def uniform(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-member-like outputs: nearly uniform probabilities (p_y ~ 1/C)."""
    y = rng.integers(0, C, n)
    return rng.normal(scale=0.1, size=(n, C)).astype(np.float32), y


# ---------------------------------------------------------------- features


def test_modified_entropy_hand_value():
    p = np.array([[0.7, 0.2, 0.1]])
    # −(1−.7) ln .7 − .2 ln(1−.2) − .1 ln(1−.1)
    hand = -0.3 * math.log(0.7) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9)
    assert modified_entropy(p, np.array([0]))[0] == pytest.approx(hand)
    assert hand == pytest.approx(0.1621673, abs=1e-6)
    # label on a small probability: −(1−.1) ln .1 − .7 ln .3 − .2 ln .8
    hand2 = -0.9 * math.log(0.1) - 0.7 * math.log(0.3) - 0.2 * math.log(0.8)
    assert modified_entropy(p, np.array([2]))[0] == pytest.approx(hand2)


def test_modified_entropy_clips_log_zero():
    # p_y = 0 would give log 0; p_k = 1 for k != y would give log(1 − 1).
    v = modified_entropy(np.array([[0.0, 1.0]]), np.array([0]))
    assert np.isfinite(v).all()
    assert v[0] == pytest.approx(2 * -math.log(1e-30))
    assert modified_entropy(np.array([[1.0, 0.0]]), np.array([0]))[0] == pytest.approx(0.0)


def test_entropy_hand_values():
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(math.log(2))
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0)


def test_attack_features_shapes_and_values():
    z = np.array([[math.log(3.0), 0.0], [0.0, 0.0]])
    f = attack_features(z, np.array([0, 1]))
    assert set(f) == set(ATTACKS)
    assert np.allclose(f["correctness"][:, 0], [1.0, 0.0])  # argmax of a tie is class 0
    assert np.allclose(f["confidence"][:, 0], [0.75, 0.5])
    assert np.allclose(f["prob"], [[0.75, 0.25], [0.5, 0.5]])
    for v in f.values():
        assert v.ndim == 2 and v.shape[0] == 2


# ---------------------------------------------------------------- balancing


def test_balanced_subsample_cuts_larger_set_and_is_seeded():
    a, b = np.arange(100), np.arange(1000, 1030)
    sa, sb = balanced_subsample(a, b, np.random.default_rng(1))
    assert len(sa) == len(sb) == 30
    assert np.array_equal(sb, b)  # the smaller set is kept whole
    assert len(set(sa.tolist())) == 30 and set(sa.tolist()) <= set(a.tolist())
    sa2, _ = balanced_subsample(a, b, np.random.default_rng(1))
    assert np.array_equal(sa, sa2)
    ca, cb = balanced_subsample(a, b, np.random.default_rng(1), cap=10)
    assert len(ca) == len(cb) == 10


def test_svc_attack_balances_unequal_sets():
    # Identical distributions, 10x more members: unbalanced, an SVM would call
    # (almost) everything a member (efficacy ~ 0); balanced, it is a coin flip.
    rng = np.random.default_rng(0)
    member = rng.normal(size=(3000, 1))
    nonmember = rng.normal(size=(300, 1))
    target = rng.normal(size=(2000, 1))
    eff = svc_attack(member, nonmember, target, seed=0)
    assert 0.25 < eff < 0.75


# ---------------------------------------------------------------- SVC attacks


@pytest.fixture(scope="module")
def separable():
    rng = np.random.default_rng(0)
    return {"retain": confident(400, rng), "test": uniform(400, rng)}, rng


def test_forget_like_test_is_forgotten(separable):
    base, rng = separable
    m = mia_metrics({**base, "forget": uniform(300, rng)})
    for attack in ("confidence", "entropy", "modified_entropy", "prob"):
        assert m[f"mia/{attack}/efficacy"] > 0.95, attack
    assert m["mia/efficacy"] == m["mia/confidence/efficacy"]


def test_forget_like_retain_is_remembered(separable):
    base, rng = separable
    m = mia_metrics({**base, "forget": confident(300, rng)})
    for attack in ATTACKS:
        assert m[f"mia/{attack}/efficacy"] < 0.05, attack


def test_identical_distributions_give_half():
    rng = np.random.default_rng(1)

    def mixed(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, C, n)
        z = rng.normal(size=(n, C))
        z[np.arange(n), y] += rng.uniform(0, 4, n)
        return z.astype(np.float32), y

    outputs = {"retain": mixed(1500), "test": mixed(1500), "forget": mixed(2000)}
    m = mia_metrics(outputs, attacks=("confidence", "entropy"))
    for attack in ("confidence", "entropy"):
        assert m[f"mia/{attack}/efficacy"] == pytest.approx(0.5, abs=0.2), attack


def test_mia_metrics_validates_inputs(separable):
    base, _ = separable
    with pytest.raises(KeyError):
        mia_metrics(base)  # no forget split
    with pytest.raises(ValueError):
        mia_metrics({**base, "forget": base["test"]}, attacks=("nope",))


def test_empty_forget_is_nan():
    assert math.isnan(svc_attack(np.ones((5, 1)), np.zeros((5, 1)), np.zeros((0, 1))))


# ---------------------------------------------------------------- loss LR


def test_loss_lr_identical_is_half():
    rng = np.random.default_rng(0)
    m = loss_lr_mia(rng.exponential(size=3000), rng.exponential(size=1000))
    assert m["mia/loss_lr/accuracy"] == pytest.approx(0.5, abs=0.06)


def test_loss_lr_separable_is_one():
    rng = np.random.default_rng(0)
    forget = rng.uniform(0.0, 0.1, 500)  # members: near-zero loss
    test = rng.uniform(2.0, 3.0, 200)  # non-members: high loss
    assert loss_lr_mia(forget, test)["mia/loss_lr/accuracy"] == pytest.approx(1.0)


def test_loss_lr_too_small_is_nan():
    assert math.isnan(loss_lr_mia(np.zeros(5), np.ones(5))["mia/loss_lr/accuracy"])


# ---------------------------------------------------------------- gaps


def test_mia_gaps_arithmetic():
    # Seed 002 Table 1, Finetune vs Retrain: gaps 6.8, 1.85, 4.39, 4.59 -> mean 4.41.
    method = {
        "mia/correctness/efficacy": 0.1412,
        "mia/confidence/efficacy": 0.5391,
        "mia/entropy/efficacy": 0.4507,
        "mia/prob/efficacy": 0.5673,
        "mia/efficacy": 0.5391,
        "mia/loss_lr/accuracy": 0.60,
        "test/acc": 0.9,
    }
    retrain = {
        "mia/correctness/efficacy": 0.2092,
        "mia/confidence/efficacy": 0.5206,
        "mia/entropy/efficacy": 0.4068,
        "mia/prob/efficacy": 0.5214,
        "mia/efficacy": 0.5206,
        "mia/loss_lr/accuracy": 0.52,
    }
    g = mia_gaps(method, retrain)
    assert g["mia/correctness/gap"] == pytest.approx(0.068)
    assert g["mia/confidence/gap"] == pytest.approx(0.0185)
    assert g["mia/loss_lr/gap"] == pytest.approx(0.08)
    assert g["mia/gap"] == pytest.approx(0.0185)
    assert g["mia/gap_mean"] == pytest.approx(0.0441, abs=1e-4)
    assert "test/gap" not in g and "mia/modified_entropy/gap" not in g


def test_mia_gaps_of_means_hand_computed():
    """Seed 002's estimator: |mean over replicates - mean over references| per score."""
    reps = [
        {"mia/correctness/efficacy": 0.5, "mia/confidence/efficacy": 0.1,
         "mia/entropy/efficacy": 0.3, "mia/prob/efficacy": 0.9, "mia/efficacy": 0.1,
         "mia/loss_lr/accuracy": 0.6, "test/acc": 0.7},
        {"mia/correctness/efficacy": 0.7, "mia/confidence/efficacy": 0.3,
         "mia/entropy/efficacy": 0.3, "mia/prob/efficacy": float("nan"), "mia/efficacy": 0.3,
         "mia/loss_lr/accuracy": 0.8},
    ]
    refs = [
        {"mia/correctness/efficacy": 0.4, "mia/confidence/efficacy": 0.2,
         "mia/entropy/efficacy": 0.1, "mia/prob/efficacy": 0.5, "mia/efficacy": 0.2},
        {"mia/correctness/efficacy": 0.6, "mia/confidence/efficacy": 0.2,
         "mia/entropy/efficacy": 0.3, "mia/prob/efficacy": 0.5, "mia/efficacy": 0.2},
    ]
    g = mia_gaps_of_means(reps, refs)
    assert g["mia/correctness/gap"] == pytest.approx(0.1)  # |0.6 - 0.5|
    # replicates at 0.1 and 0.3 straddle the references' 0.2: their mean sits on it, so
    # the gap is 0, where the mean of per-replicate gaps (|0.1-0.2|, |0.3-0.2|) says 0.1
    assert g["mia/confidence/gap"] == pytest.approx(0.0, abs=1e-15)
    assert np.mean([mia_gaps(m, {"mia/confidence/efficacy": 0.2})["mia/confidence/gap"]
                    for m in reps]) == pytest.approx(0.1)
    assert g["mia/entropy/gap"] == pytest.approx(0.1)  # |0.3 - 0.2|
    assert g["mia/prob/gap"] == pytest.approx(0.4)  # nan skipped: |0.9 - 0.5|
    assert g["mia/gap"] == pytest.approx(0.0, abs=1e-15)  # headline = confidence
    assert g["mia/gap_mean"] == pytest.approx((0.1 + 0.0 + 0.1 + 0.4) / 4)
    assert "mia/loss_lr/gap" not in g  # no reference value
    assert "test/gap" not in g
    # one attack without any reference value: no mean gap over the four
    partial = mia_gaps_of_means(reps, [{k: v for k, v in m.items() if "prob" not in k}
                                       for m in refs])
    assert "mia/gap_mean" not in partial and "mia/prob/gap" not in partial
    assert mia_gaps_of_means([], refs) == {}
