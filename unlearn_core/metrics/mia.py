"""Membership-inference family: the metric-based attacks and the loss-LR attack.

Sources:
- Song & Mittal, "Systematic evaluation of privacy risks of machine learning
  models" (USENIX Security 2021): features correctness, confidence p_y,
  entropy, modified entropy (Mentr, their Eq. 5-6) and the probability vector.
- Seed 004, §4.1 and §4.4 (after Jia et al. 2023 / SalUn's ``SVC_MIA``): an
  SVM (RBF kernel, C=3, gamma="auto") is fitted on retain (member, 1) vs test
  (non-member, 0), class-balanced, then applied to D_f; MIA-efficacy =
  TN/|D_f| = share of forget samples called non-member. The ``confidence``
  attack is the headline ``mia/efficacy``.
- Seed 002, §2.2 and Table 1: per-attack MIA score, its gap to the retrained
  model, and the mean gap over correctness/confidence/entropy/prob.
- NeurIPS 2023 Machine Unlearning Challenge starting kit: logistic regression
  on per-sample CE losses, forget (member) vs test (non-member), class-balanced,
  cross-validated with StratifiedShuffleSplit(n_splits=10, random_state=0).

Efficacies and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .common import LOG_FLOOR, SplitOutputs, as_logits_labels, cross_entropy, softmax

ATTACKS = ("correctness", "confidence", "entropy", "modified_entropy", "prob")
HEADLINE_ATTACK = "confidence"  # SalUn / seed 004 report this one as MIA-efficacy
# The four attacks seed 002 averages into its "best attack MIA" column (Table 1).
GAP_MEAN_ATTACKS = ("correctness", "confidence", "entropy", "prob")
MAX_PER_CLASS = 5000  # SVC fitting is O(n^2): cap each class of the attack's training set


def _neg_log(x: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(x, LOG_FLOOR))


def entropy(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy −Σ_k p_k log p_k in nats, per row (Salem et al. 2018)."""
    p = np.asarray(probs, dtype=np.float64)
    return (p * _neg_log(p)).sum(axis=1)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy (Mentr), per row, in nats.

    Mentr(p, y) = −(1 − p_y) log p_y − Σ_{k≠y} p_k log(1 − p_k), with every
    log argument floored at 1e-30 as in their reference code. (This is the
    formula itself, not the indexing in Unlearn-Sparse's ``m_entropy``, which
    applies ``labels`` to whole columns and uses log p where log(1 − p) is meant.)
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    rows = np.arange(p.shape[0])
    terms = p * _neg_log(1.0 - p)  # k ≠ y terms: −p_k log(1 − p_k)
    p_y = p[rows, y]
    terms[rows, y] = (1.0 - p_y) * _neg_log(p_y)  # k = y term: −(1 − p_y) log p_y
    return terms.sum(axis=1)


def attack_features(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample attack features, each a 2-D float array [n, d] (d = 1 except ``prob``)."""
    z, y = as_logits_labels(logits, labels)
    p = softmax(z)
    rows = np.arange(len(y))
    return {
        "correctness": (z.argmax(axis=1) == y).astype(np.float64)[:, None],
        "confidence": p[rows, y][:, None],
        "entropy": entropy(p)[:, None],
        "modified_entropy": modified_entropy(p, y)[:, None],
        "prob": p,
    }


def balanced_subsample(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, cap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample rows of ``a`` and ``b`` (without replacement) to a common size.

    The size is min(len(a), len(b), cap): the larger set is cut to the smaller
    one's size so the attack cannot win by predicting the majority class, and
    ``cap`` bounds the cost of fitting.
    """
    n = min(len(a), len(b), cap if cap is not None else len(a))
    ia = rng.choice(len(a), size=n, replace=False) if n < len(a) else np.arange(len(a))
    ib = rng.choice(len(b), size=n, replace=False) if n < len(b) else np.arange(len(b))
    return a[ia], b[ib]


def svc_attack(
    member: np.ndarray,
    nonmember: np.ndarray,
    target: np.ndarray,
    *,
    max_per_class: int | None = MAX_PER_CLASS,
    seed: int = 0,
) -> float:
    """Fit SVC(rbf, C=3, gamma="auto") on member (1) vs non-member (0) features,
    class-balanced; return the share of ``target`` rows predicted non-member
    (seed 004's MIA-efficacy = TN/|D_f|). nan if any set is empty."""
    if len(member) == 0 or len(nonmember) == 0 or len(target) == 0:
        return float("nan")
    from sklearn.svm import SVC  # imported on first use: ~1 s of every CLI call otherwise

    rng = np.random.default_rng(seed)
    m, n = balanced_subsample(member, nonmember, rng, max_per_class)
    x = np.concatenate([m, n]).reshape(len(m) + len(n), -1)
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    clf = SVC(C=3, kernel="rbf", gamma="auto")
    clf.fit(x, y)
    return float(1.0 - clf.predict(target.reshape(len(target), -1)).mean())


def mia_metrics(
    outputs: SplitOutputs,
    *,
    attacks: Sequence[str] = ATTACKS,
    max_per_class: int | None = MAX_PER_CLASS,
    seed: int = 0,
) -> dict[str, float]:
    """The SVC metric attacks on one model: train on retain vs test, apply to forget.

    ``outputs`` must hold the "forget", "retain" and "test" splits. Keys:
    ``mia/{attack}/efficacy`` per attack and ``mia/efficacy`` (the confidence
    attack's, when it is run).
    """
    missing = {"forget", "retain", "test"} - set(outputs)
    if missing:
        raise KeyError(f"mia_metrics needs splits forget, retain, test; missing {sorted(missing)}")
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; known: {ATTACKS}")
    feats = {s: attack_features(*outputs[s]) for s in ("forget", "retain", "test")}
    out: dict[str, float] = {}
    for attack in attacks:
        out[f"mia/{attack}/efficacy"] = svc_attack(
            feats["retain"][attack],
            feats["test"][attack],
            feats["forget"][attack],
            max_per_class=max_per_class,
            seed=seed,
        )
    if f"mia/{HEADLINE_ATTACK}/efficacy" in out:
        out["mia/efficacy"] = out[f"mia/{HEADLINE_ATTACK}/efficacy"]
    return out


def loss_lr_mia(
    forget_losses: np.ndarray,
    test_losses: np.ndarray,
    *,
    n_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """The NeurIPS 2023 unlearning challenge starting kit's loss-based MIA.

    Members = per-sample CE losses on the forget set, non-members = on the test
    set; the larger set is subsampled (seeded) to the smaller one's size, then a
    LogisticRegression is scored by cross-validated accuracy with the kit's
    StratifiedShuffleSplit(n_splits, random_state=seed) (10 % held out per
    split). Key ``mia/loss_lr/accuracy``: 0.5 is ideal (forget set looks like
    unseen data), 1.0 means fully separable. nan when a set is too small to split.
    """
    f = np.asarray(forget_losses, dtype=np.float64).ravel()
    t = np.asarray(test_losses, dtype=np.float64).ravel()
    f, t = balanced_subsample(f, t, np.random.default_rng(seed))
    # StratifiedShuffleSplit's 10 % test fold needs at least one sample per class.
    if len(f) < 10:
        return {"mia/loss_lr/accuracy": float("nan")}
    x = np.concatenate([t, f])[:, None]
    y = np.concatenate([np.zeros(len(t)), np.ones(len(f))])
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    cv = StratifiedShuffleSplit(n_splits=n_splits, random_state=seed)
    scores = cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy")
    return {"mia/loss_lr/accuracy": float(scores.mean())}


def loss_lr_mia_from_outputs(outputs: SplitOutputs, **kwargs: int) -> dict[str, float]:
    """:func:`loss_lr_mia` on the CE losses of the "forget" and "test" splits."""
    return loss_lr_mia(cross_entropy(*outputs["forget"]), cross_entropy(*outputs["test"]), **kwargs)


def mia_gaps(
    metrics: Mapping[str, float], retrain_metrics: Mapping[str, float]
) -> dict[str, float]:
    """Gap of every MIA score to the retrained model's (seed 002, §2.2, Table 1).

    For each ``mia/{name}/efficacy`` or ``mia/{name}/accuracy`` present in both
    dicts: ``mia/{name}/gap`` = |metric − retrain|; ``mia/gap`` for the headline
    ``mia/efficacy``; ``mia/gap_mean`` = mean gap over seed 002's four attacks
    (correctness, confidence, entropy, prob: Table 1's last column) when all are
    present.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "mia" and parts[2] in ("efficacy", "accuracy"):
            if key in retrain_metrics:
                out[f"mia/{parts[1]}/gap"] = abs(float(value) - float(retrain_metrics[key]))
    headline = "mia/efficacy"
    if headline in metrics and headline in retrain_metrics:
        out["mia/gap"] = abs(float(metrics[headline]) - float(retrain_metrics[headline]))
    four = [out.get(f"mia/{a}/gap") for a in GAP_MEAN_ATTACKS]
    if all(g is not None for g in four):
        out["mia/gap_mean"] = float(np.mean(four))
    return out


def _finite_mean(values: Sequence[float | None]) -> float:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def mia_gaps_of_means(
    metrics: Sequence[Mapping[str, float]], retrain_metrics: Sequence[Mapping[str, float]]
) -> dict[str, float]:
    """A method's MIA gaps as seed 002's Table 1 reports them: per score,
    |mean over the method's replicates − mean over the retrained models|.

    Not the mean of per-replicate gaps (``mia_gaps`` of each replicate): each
    replicate's attack score carries the attack's own sampling noise, and
    |x − m| of a noisy x is biased upwards (two replicates at m ± 0.1 average to a
    gap of 0.1 although their mean sits on m). Means skip missing and non-finite
    values; a score without any finite value on either side gets no gap. Keys as
    ``mia_gaps``: ``mia/{name}/gap``, ``mia/gap`` (headline ``mia/efficacy``) and
    ``mia/gap_mean`` (mean of the four attacks' gaps, when all four exist).
    """
    keys = sorted({k for m in (*metrics, *retrain_metrics) for k in m
                   if k.startswith("mia/")})
    means = {k: _finite_mean([m.get(k) for m in metrics]) for k in keys}
    ref_means = {k: _finite_mean([m.get(k) for m in retrain_metrics]) for k in keys}
    finite = {k: v for k, v in means.items() if np.isfinite(v)}
    finite_refs = {k: v for k, v in ref_means.items() if np.isfinite(v)}
    return mia_gaps(finite, finite_refs)
