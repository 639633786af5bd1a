"""ASHA sweeps (``search: asha``): the Ray Tune side of per-epoch reporting.

Configs are drawn on the driver as for ``random`` (``sweep.plan_method``); each
trial runs ``trial.run_trial`` with an ``EpochReporter`` as the method's epoch
callback, which evaluates the model after every epoch but the last and reports
it to the method's own ``ASHAScheduler`` (time = epochs; ``schedule.py`` routes each
ASHA trial to its method's). A trial the scheduler stops is
recorded by the driver (``stopped_trial_recorder``) with ``status: "stopped"``
and the metrics of its last reported epoch. Record rules (what counts as done,
how a record is marked stopped) live in ``trial.py`` beside ``run_trial``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from pipelines.evaluate import epoch_metrics
from pipelines.keys import normalise_hparams
from pipelines.sweep import _job_key
from pipelines.trial import SweepContext, _mark_stopped, run_trial
from unlearn_core.methods import epochs_hparam, make_hparams
from unlearn_core.outputs import split_logits

ASHA_WORST = 1e30  # a finite stand-in for ±inf: ASHA's rung quantiles turn inf into nan


def planned_epochs(ctx: SweepContext, method: str, hparams: dict) -> int | None:
    """How many epochs a trial will report (its ``EPOCHS_HPARAM``; None there means the
    source recipe's epochs); None if the method does not report or the hparams are bad."""
    field_name = epochs_hparam(method)
    if field_name is None:
        return None
    try:
        value = getattr(make_hparams(method, hparams), field_name)
    except Exception:  # run_trial records the error
        return None
    return int(ctx.source_recipe["epochs"] if value is None else value)


def asha_objective(value: float | None, mode: str) -> float:
    """The objective as ASHA sees it: nan when missing (ASHA then ignores the trial's
    result), a large finite worst when non-finite (a diverged or failed trial)."""
    if value is None:
        return math.nan
    if not math.isfinite(value):
        return ASHA_WORST if mode == "min" else -ASHA_WORST
    return float(value)


def asha_settings(ctx: SweepContext, method_cfg, jobs: list[dict]) -> dict:
    """The method's ``ASHAScheduler`` settings (``schedule`` builds one per ASHA method):
    time = epochs, ``max_t`` = the most epochs any of its configs asks for."""
    epochs = [planned_epochs(ctx, j["method"], j["hparams"]) for j in jobs]
    max_t = max([e for e in epochs if e] or [1])
    return {"max_t": max_t, "grace_period": min(method_cfg.asha.grace_period, max_t),
            "reduction_factor": method_cfg.asha.reduction_factor}


class EpochReporter:
    """An ASHA trial's epoch callback (runs in the Tune worker): evaluate the model after
    each epoch but the last and ``tune.report`` it (one Tune iteration per epoch).

    The last epoch is reported by the trial itself, with its full record, once stored;
    so a trial that ran all its epochs is always recorded as finished. When ASHA stops
    the trial, ``tune.report`` does not return (Ray ends the worker thread with
    ``SystemExit``): the driver has already recorded it (``stopped_trial_recorder``).
    """

    def __init__(self, ctx: SweepContext, key: str, seed: int, epochs: int | None) -> None:
        self.ctx, self.key, self.seed, self.epochs = ctx, key, seed, epochs
        self.started = time.perf_counter()
        self.overhead = 0.0  # seconds spent here (evaluating, waiting on the driver)

    def __call__(self, model: torch.nn.Module, epoch: int) -> None:
        if self.epochs is not None and epoch >= self.epochs:
            return
        from ray import tune

        entered = time.perf_counter()
        ctx = self.ctx
        device = next(model.parameters()).device
        per_split = split_logits(model, ctx.dataset, ctx.manifest, device)
        if not all(np.isfinite(logits).all() for _, _, logits in per_split.values()):
            raise FloatingPointError(f"diverged: non-finite outputs (NaN/inf) at epoch {epoch}")
        metrics = epoch_metrics(per_split, ctx.references, objective=ctx.objective_metric,
                                mia_max_per_class=ctx.mia_max_per_class, seed=self.seed)
        seconds = entered - self.started - self.overhead  # the method's time so far
        try:
            tune.report({"objective": asha_objective(metrics.get(ctx.objective_metric),
                                                      ctx.objective_mode),
                         "failed": False, "trial_key": self.key, "epoch": epoch,
                         "epoch_metrics": metrics, "seconds": seconds})
        finally:
            self.overhead += time.perf_counter() - entered


def asha_trial(ctx: SweepContext, job: dict) -> None:
    """One ASHA trial: ``run_trial`` with an ``EpochReporter``, then its final report."""
    from ray import tune

    epochs = planned_epochs(ctx, job["method"], job["hparams"])
    reporter = EpochReporter(ctx, _job_key(ctx, job), job["seed"], epochs)
    record = run_trial(ctx, job["method"], job["hparams"], job["seed"], job["stage"],
                       job.get("sweep_key"), epoch_callback=reporter)
    tune.report({"objective": asha_objective(record["objective"], ctx.objective_mode),
                 "failed": record["status"] != "ok", "trial_key": record["trial_key"],
                 "epoch": record.get("epochs_run", epochs)})


def stopped_record(ctx: SweepContext, job: dict, result: dict) -> dict:
    """The record of a trial ASHA stopped, from its last epoch report."""
    record = {"trial_key": result["trial_key"], "method": job["method"],
              "stage": job["stage"], "seed": job["seed"], "sweep_key": job.get("sweep_key"),
              "hparams": normalise_hparams(job["hparams"]), "status": "stopped",
              "error": None, "metrics": {}, "objective": None, "seconds": None}
    _mark_stopped(record, result["epoch"], result["epoch_metrics"], "asha",
                  result.get("seconds"), ctx)
    return record


def stopped_trial_recorder(ctx: SweepContext):
    """A Tune callback (runs in the driver) writing the record of every trial the
    scheduler stopped. Tune calls it when it decides to stop the trial, before it
    releases the worker (blocked in ``tune.report``), so the record is written once,
    by the driver, whatever happens to the worker afterwards."""
    from ray.tune import Callback

    class StoppedTrialRecorder(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            job = trial.config.get("__job")
            # an epoch report that ended the trial (done): the scheduler stopped it
            if not job or not result.get("done") or "epoch_metrics" not in result:
                return
            if not ctx.store.trial_done(job["method"], result["trial_key"]):
                ctx.store.write_trial(stopped_record(ctx, job, result))

    return StoppedTrialRecorder()
