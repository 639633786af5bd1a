"""Evaluate one model against the references: every per-model metric, namespaced.

Used by the sweep and replicate stages (inside Ray workers) and by assemble.
Pure computation over logits; no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unlearn_core.metrics.accuracy import accuracy_metrics, forgetting_metrics
from unlearn_core.metrics.disparity import average_disparity
from unlearn_core.metrics.mia import (
    HEADLINE_ATTACK,
    loss_lr_mia_from_outputs,
    mia_gaps,
    mia_metrics,
)
from unlearn_core.metrics.similarity import similarity_metrics
from unlearn_core.metrics.timing import time_metrics

SplitLogits = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # split -> ids, labels, logits


@dataclass
class ReferenceSummary:
    """What every trial compares against: the retrained references and the source."""

    metrics: dict[str, float]  # mean over references of their per-model metrics
    forget_logits: np.ndarray  # [n_refs, n_forget, C], rows in forget sample-id order
    retrain_seconds: float  # mean training time of one reference
    source_metrics: dict[str, float] = field(default_factory=dict)


def as_outputs(per_split: SplitLogits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: (logits, labels) for split, (_, labels, logits) in per_split.items()
            if len(labels)}


def model_metrics(per_split: SplitLogits, *, mia_max_per_class: int = 5000,
                  seed: int = 0) -> dict[str, float]:
    """Metrics of one model on its own: accuracies, UA, the five MIAs, the loss-LR MIA."""
    outputs = as_outputs(per_split)
    metrics = accuracy_metrics(outputs)
    if {"retain", "test", "forget"} <= set(outputs):
        metrics.update(mia_metrics(outputs, max_per_class=mia_max_per_class, seed=seed))
        metrics.update(loss_lr_mia_from_outputs(outputs))
    return metrics


def compared_metrics(
    metrics: dict[str, float],
    per_split: SplitLogits,
    references: ReferenceSummary,
    unlearn_seconds: float | None,
) -> dict[str, float]:
    """Metrics that need the references or the source: disparity, gaps, JS, FR/MRR, time."""
    out = dict(metrics)
    out.update(average_disparity(metrics, references.metrics))
    out.update(mia_gaps(metrics, references.metrics))
    forget_logits = per_split["forget"][2]
    if len(references.forget_logits):
        out.update(similarity_metrics(forget_logits, list(references.forget_logits)))
    source = references.source_metrics
    if "forget/acc" in source and "retain/acc" in source:
        out.update(forgetting_metrics(source["forget/acc"], metrics["forget/acc"],
                                      source["retain/acc"], metrics["retain/acc"]))
    if unlearn_seconds is not None:
        out.update(time_metrics(unlearn_seconds, references.retrain_seconds))
    return out


def epoch_metrics(
    per_split: SplitLogits,
    references: ReferenceSummary,
    *,
    objective: str,
    mia_max_per_class: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of an intermediate model (an ASHA trial after one of its epochs), cheaper
    than ``model_metrics`` + ``compared_metrics``.

    Accuracies and UA, only the headline MIA (one SVC fit, the confidence attack:
    ``mia/efficacy``), and what ``compared_metrics`` derives from them (disparity to the
    references, the headline MIA gap, JS to the references, FR/MRR); no loss-LR MIA,
    no time. That covers the default objective ``disparity/avg``; for any ``objective``
    it does not cover, the full set is computed instead, so the sweep's objective is
    always reported.
    """
    outputs = as_outputs(per_split)
    metrics = accuracy_metrics(outputs)
    if {"retain", "test", "forget"} <= set(outputs):
        metrics.update(mia_metrics(outputs, attacks=(HEADLINE_ATTACK,),
                                   max_per_class=mia_max_per_class, seed=seed))
    out = compared_metrics(metrics, per_split, references, None)
    if objective not in out:
        full = model_metrics(per_split, mia_max_per_class=mia_max_per_class, seed=seed)
        out = compared_metrics(full, per_split, references, None)
    return out


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*rows) if rows else set()
    return {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in sorted(keys)}
