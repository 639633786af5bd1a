"""The many-model metrics of the assemble stage: which models each row compares, and
the tasks that compute them (run by :mod:`pipelines.tasks_pool`).

F-score (NeurIPS 2023 forget quality) at one N for every row
-------------------------------------------------------------
The score of two sets drawn from the same distribution depends on the set size N
(about 0.19 at N = 8 and 0.24 at N = 5 on the docs' reproductions: the bins end at
ceil(ln(N − 1)) and small sets are easier to tell apart by chance), so rows scored
at different N are not comparable. ``fscore_plan`` therefore scores every row,
``retrain`` included, at the same N:

- N = the smallest replicate count among the method rows (those with >= 2 models
  with outputs; a row with more uses its first N), at most the reference count;
  with no method row, half the references.
- Every row is compared with the same retrained set, ``references[:N]``: rows then
  differ only in their own (unlearned) side. A method row compares its first N
  replicates with it (as before this plan, so its numbers stay put when N is its
  replicate count).
- The ``retrain`` row stands for a perfect method: ``references[N:2N]``, N other
  retrained models, against ``references[:N]``. Its score is the value two sets
  from one distribution reach at this N, the ceiling to read the others against.
  With fewer than 2N references it is not scored ("–"), and the table's note says
  so (never a silent half-vs-half at another N).

``fscore_notes`` gives the caption lines the tables print (N, the sets, why a row
is not scored); the main table's "F-score N" column repeats N per row, so the CSV
(and what reads it) states it too. Accuracies of the final score are means over the very models
scored (SPEC: "averaged over the N unlearned and N retrained models").

U-LiRA (``ulira_metrics`` with leave-one-out fits) uses all replicates against all
references, and for ``retrain`` half against half; it needs >= 3 models per set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.tables import REFERENCE_ROW, mean_metric
from pipelines.tasks_pool import Task, run_tasks
from unlearn_core.metrics.fscore import fscore_metrics_and_epsilons
from unlearn_core.metrics.ulira import ulira_metrics

__all__ = ["FSCORE_BOOT", "ULIRA_MIN_MODELS", "FscorePlan", "add_many_model_metrics",
           "add_ulira", "apply_results", "fscore_notes", "fscore_plan", "fscore_tasks",
           "ulira_tasks"]

ULIRA_MIN_MODELS = 3  # leave-one-out fits need >= 3 models per set
FSCORE_BOOT = 50  # bootstrap replicates of the forget quality's interval (config default)
FSCORE_MIN_MODELS = 2  # the eps of one model against one model is not defined


@dataclass(frozen=True)
class FscorePlan:
    """The F-score's model sets: every scored row at ``n`` models per side."""

    n: int
    n_references: int
    sets: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # row -> why it is not scored


def _present(row: dict, confidences: dict[str, np.ndarray]) -> list[str]:
    return [i for i in row["model_ids"] if i in confidences]


def fscore_plan(rows: dict[str, dict], confidences: dict[str, np.ndarray]) -> FscorePlan:
    """Which models each row's F-score compares, all rows at one N (module docstring)."""
    refs = _present(rows[REFERENCE_ROW], confidences) if REFERENCE_ROW in rows else []
    counts = {m: len(_present(row, confidences)) for m, row in rows.items()
              if m != REFERENCE_ROW}
    scored = [c for c in counts.values() if c >= FSCORE_MIN_MODELS]
    n = min(min(scored), len(refs)) if scored else len(refs) // 2
    plan = FscorePlan(n=n, n_references=len(refs))
    for method, row in rows.items():
        if method == REFERENCE_ROW:
            if n < FSCORE_MIN_MODELS:
                plan.skipped[method] = f"{len(refs)} reference(s): too few to compare"
            elif len(refs) < 2 * n:
                plan.skipped[method] = (f"needs 2N = {2 * n} references (N against N "
                                        f"others), has {len(refs)}")
            else:
                plan.sets[method] = (refs[n:2 * n], refs[:n])
        elif counts[method] < FSCORE_MIN_MODELS:
            plan.skipped[method] = f"{counts[method]} replicate(s) with outputs: too few"
        elif n < FSCORE_MIN_MODELS:
            plan.skipped[method] = f"{len(refs)} reference(s) with outputs: too few"
        else:
            plan.sets[method] = (_present(row, confidences)[:n], refs[:n])
    return plan


def fscore_notes(plan: FscorePlan) -> list[str]:
    """Caption lines of the main table: the N of every F-score cell, the sets compared,
    and the rows left out (and why)."""
    if not plan.sets:
        return ["Forget Q. / F-score: no row has enough models to score."]
    n = plan.n
    notes = [f"Forget Q. / F-score: N = {n} models per side in every row: each method's "
             f"first {n} replicates vs references[:{n}]; retrain: references[{n}:{2 * n}] "
             f"vs references[:{n}] (the value of two sets from one distribution at this N)."]
    notes += [f"Forget Q. / F-score of {m}: not scored, {why}."
              for m, why in plan.skipped.items()]
    return notes


def _stack(confidences: dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    return np.stack([confidences[i] for i in ids])


def _mean_of(rows: dict[str, dict], ids: Sequence[str], key: str) -> float:
    """Mean of a per-model metric over the given model ids (of any row)."""
    metrics = {i: m for row in rows.values()
               for i, m in zip(row["model_ids"], row["metrics"], strict=True)}
    return mean_metric([metrics[i] for i in ids if i in metrics], key)


def fscore_tasks(rows: dict[str, dict], confidences: dict[str, np.ndarray],
                 n_boot: int = FSCORE_BOOT) -> tuple[FscorePlan, list[Task]]:
    """The plan, and per scored row one task: its F-score metrics and per-example eps."""
    plan = fscore_plan(rows, confidences)
    tasks = []
    for method, (unlearned_ids, retrained_ids) in plan.sets.items():
        u, r = _stack(confidences, unlearned_ids), _stack(confidences, retrained_ids)
        accuracies = {"retain_acc_u": _mean_of(rows, unlearned_ids, "retain/acc"),
                      "test_acc_u": _mean_of(rows, unlearned_ids, "test/acc"),
                      "retain_acc_r": _mean_of(rows, retrained_ids, "retain/acc"),
                      "test_acc_r": _mean_of(rows, retrained_ids, "test/acc")}
        # cost ~ examples x scorings (the bootstrap rescores n_boot times); the
        # per-example work hardly grows with the model count, which only breaks ties
        n_models, n_examples = u.shape
        tasks.append(Task("fscore", method, fscore_metrics_and_epsilons, (u, r, accuracies),
                          {"n_boot": n_boot}, n_examples * (n_boot + 1) + n_models))
    return plan, tasks


def _ulira_sets(method: str, row: dict, refs: list[str]) -> tuple[list[str], list[str]]:
    """(unlearned ids, retrained ids): half vs half of the references for ``retrain``,
    else all replicates vs all references."""
    if method == REFERENCE_ROW:
        half = len(refs) // 2
        return refs[:half], refs[half:2 * half]
    return list(row["model_ids"]), list(refs)


def ulira_tasks(rows: dict[str, dict], confidences: dict[str, np.ndarray]) -> list[Task]:
    """Per row where both sets hold >= 3 models: its U-LiRA metrics."""
    refs = _present(rows[REFERENCE_ROW], confidences)
    tasks = []
    for method, row in rows.items():
        present = {**row, "model_ids": _present(row, confidences)}
        unlearned_ids, retrained_ids = _ulira_sets(method, present, refs)
        if min(len(unlearned_ids), len(retrained_ids)) < ULIRA_MIN_MODELS:
            continue
        u, r = _stack(confidences, unlearned_ids), _stack(confidences, retrained_ids)
        tasks.append(Task("ulira", method, ulira_metrics, (u, r), {}, u.shape[1]))
    return tasks


def apply_results(rows: dict[str, dict], tasks: list[Task], results: list,
                  plan: FscorePlan | None = None) -> dict[str, np.ndarray]:
    """Store each task's result in its row (``row["fscore"]``, ``row["ulira"]``; with a
    plan, ``row["fscore_sets"]``: the ids compared); return the per-example eps per
    method, in row order."""
    epsilons = {}
    for task, result in zip(tasks, results, strict=True):
        if task.kind == "fscore":
            rows[task.method]["fscore"], epsilons[task.method] = result
        else:
            rows[task.method][task.kind] = result
    if plan is not None:
        for method, (unlearned_ids, retrained_ids) in plan.sets.items():
            rows[method]["fscore_sets"] = {"unlearned": unlearned_ids,
                                           "retrained": retrained_ids}
    return {m: epsilons[m] for m in rows if m in epsilons}


def add_ulira(rows: dict[str, dict], confidences: dict[str, np.ndarray],
              workers: int | None = 1) -> None:
    """Add ``row["ulira"]`` (``ulira_metrics``) where both sets hold >= 3 models."""
    tasks = ulira_tasks(rows, confidences)
    apply_results(rows, tasks, run_tasks(tasks, workers))


def add_many_model_metrics(rows: dict[str, dict], confidences: dict[str, np.ndarray],
                           workers: int | None = None, n_boot: int = FSCORE_BOOT
                           ) -> tuple[FscorePlan, dict[str, np.ndarray]]:
    """F-score (``fscore_plan``) and U-LiRA of every row as one batch of tasks (one
    process pool); returns the F-score plan and the per-example eps per method."""
    plan, tasks = fscore_tasks(rows, confidences, n_boot)
    tasks += ulira_tasks(rows, confidences)
    return plan, apply_results(rows, tasks, run_tasks(tasks, workers), plan)
