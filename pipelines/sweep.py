"""sweep and replicate stages: each method's plan of trials (``trial.py`` runs one).

``plan_method`` decides a method's sweep on the driver (configs, resources, searcher);
``schedule.run_schedule`` runs every method's sweep and replicates in one Tune run.

``search: asha`` (methods with ``REPORTS_EPOCHS``; the Tune side is in ``asha.py``):
configs are drawn on the driver as for ``random``, and ASHA may stop a trial after
any epoch (``max_t`` = the most epochs any config asks for; how a stopped trial is
recorded: ``trial.py``). The best config is chosen among finished ("ok") trials
only: a stopped trial's metrics are those of a partly trained model, and ASHA
always lets at least the first trial at every rung finish.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipelines.keys import SWEEP_SEED, best_record, normalise_hparams, stable_hash
from pipelines.trial import (
    SweepContext,
    _is_done,
    _rescored,
    _worst,
    objective_context,
    run_trial,
    trial_key,
)
from pipelines.tune_space import merged_space, tune_param_space
from unlearn_core.methods import get_method, is_zero_glance
from unlearn_core.search import grid_configs, sample_configs


def _trainable(config: dict, ctx: SweepContext) -> None:
    from ray import tune

    if config.get("__device"):  # the trial's method's device (its resources ask a GPU)
        ctx = dataclasses.replace(ctx, device=config["__device"])
    job = config.get("__job")
    if job is not None and job.get("asha"):  # reports every epoch to the ASHA scheduler
        from pipelines.asha import asha_trial

        return asha_trial(ctx, job)
    if job is not None:  # explicit (method, hparams, seed): drawn on the driver
        record = run_trial(ctx, job["method"], job["hparams"], job["seed"], job["stage"],
                           job.get("sweep_key"))
    else:  # drawn by an adaptive searcher (Optuna) inside Tune
        values = {k: v for k, v in config.items() if not k.startswith("__")}
        record = run_trial(ctx, config["__method"], {**config["__fixed"], **values},
                           config["__seed"], "sweep", config["__sweep_key"])
    tune.report({"objective": record["objective"], "failed": record["status"] != "ok",
                 "trial_key": record["trial_key"]})


def _job_key(ctx: SweepContext, job: dict) -> str:
    return trial_key(ctx.source_key, job["method"], job["hparams"], job["seed"], ctx.trial_salt)


def job_records(ctx: SweepContext, jobs: list[dict]) -> list[dict]:
    """Each job's stored record, or its ``lost_record`` when it has none: the driver
    never fails on a missing record."""
    records = [ctx.store.read_trial(j["method"], _job_key(ctx, j)) for j in jobs]
    return [_rescored(ctx, r) if r is not None else lost_record(ctx, j)
            for r, j in zip(records, jobs, strict=True)]


def lost_record(ctx: SweepContext, job: dict) -> dict:
    """An in-memory record (never stored) for a job whose every try was lost to
    infrastructure: it is not a result, so a re-run tries it again."""
    return {"trial_key": _job_key(ctx, job), "method": job["method"], "stage": job["stage"],
            "seed": job["seed"], "sweep_key": job.get("sweep_key"),
            "hparams": normalise_hparams(job["hparams"]), "status": "lost",
            "error": f"lost to infrastructure failures after {ctx.max_retries} retries",
            "metrics": {}, "objective": _worst(ctx.objective_mode), "seconds": None}


def _fixed_only(method: str, zero_glance_objective: str) -> bool:
    """``objective.zero_glance: fixed``: a zero-glance method runs one config, no search."""
    return zero_glance_objective == "fixed" and is_zero_glance(method)


def planned_trials(method_cfg, zero_glance_objective: str = "heldout") -> int:
    space = merged_space(get_method(method_cfg.name).SEARCH_SPACE, method_cfg.space,
                         method_cfg.fixed)
    if not space or _fixed_only(method_cfg.name, zero_glance_objective):
        return 1
    return len(grid_configs(space)) if method_cfg.search == "grid" else method_cfg.trials


@dataclass
class MethodPlan:
    """One method's sweep, decided on the driver (``plan_method``); ``schedule`` runs it."""

    method: str
    key: str  # the sweep key: every sweep record carries it
    seed: int
    resources: dict  # {"cpu": ..., "gpu": ...} per trial, replicates included
    device: str
    jobs: list[dict]  # explicit sweep jobs (random, grid, asha, a single config)
    trials: int = 0  # search: optuna, how many suggestions
    optuna_space: dict | None = None  # search: optuna, the Tune search space
    optuna_constants: dict = field(default_factory=dict)  # what an Optuna trial also needs
    asha: dict | None = None  # search: asha, ASHAScheduler's settings
    done_before: int = 0  # search: optuna, sweep trials already stored


def plan_method(ctx: SweepContext, method_cfg, seed: int = SWEEP_SEED) -> MethodPlan:
    """A method's sweep: its configs, resources and searcher.

    Random and grid configs are drawn on the driver (seeded), so the trial set
    is known up front: stored trials are skipped without starting Ray, and a
    resumed sweep runs exactly the missing ones. Optuna draws adaptively inside
    Tune; a resumed Optuna sweep replays its seeded suggestions, and every
    suggestion already stored returns its record at once.
    """
    ctx = objective_context(ctx, method_cfg.name)  # a zero-glance method: held-out objective
    module = get_method(method_cfg.name)
    space = merged_space(module.SEARCH_SPACE, method_cfg.space, method_cfg.fixed)
    if _fixed_only(method_cfg.name, ctx.zero_glance_objective):
        space = {}  # seed 003's values (the Hparams defaults) and the config's fixed ones
    fixed = dict(method_cfg.fixed)
    sweep_key = stable_hash(ctx.source_key, method_cfg.name, fixed, repr(sorted(space.items())),
                            method_cfg.search, method_cfg.trials, seed)
    plan = MethodPlan(method=method_cfg.name, key=sweep_key, seed=seed, jobs=[],
                      resources={"cpu": method_cfg.resources.cpu,
                                 "gpu": method_cfg.resources.gpu},
                      device="cuda" if method_cfg.resources.gpu > 0 else "cpu")
    if method_cfg.search == "optuna" and space:
        done = [r for r in ctx.store.trials(method_cfg.name) if r.get("sweep_key") == sweep_key]
        return dataclasses.replace(
            plan, trials=method_cfg.trials, optuna_space=tune_param_space(space),
            optuna_constants={"__method": method_cfg.name, "__fixed": fixed, "__seed": seed,
                              "__sweep_key": sweep_key},
            done_before=min(len(done), method_cfg.trials))
    if not space:
        configs = [{}]
    elif method_cfg.search == "grid":
        configs = grid_configs(space)
    else:
        configs = sample_configs(space, method_cfg.trials, seed=int(sweep_key[:8], 16))
    plan.jobs = [{"method": method_cfg.name, "hparams": normalise_hparams({**fixed, **c}),
                  "seed": seed, "stage": "sweep", "sweep_key": sweep_key} for c in configs]
    search = "random" if _fixed_only(method_cfg.name, ctx.zero_glance_objective) \
        else method_cfg.search  # fixed: one config, nothing for ASHA to stop
    if search == "asha":  # drawn as for random; trials may stop early
        from pipelines.asha import asha_settings

        plan.jobs = [{**j, "asha": True} for j in plan.jobs]
        plan.asha = asha_settings(ctx, method_cfg, plan.jobs)
    return plan


def sweep_done(ctx: SweepContext, plan: MethodPlan) -> bool:
    """Every trial of the sweep is stored (an Optuna sweep: ``trials`` of them)."""
    if plan.optuna_space is not None:
        stored = [r for r in ctx.store.trials(plan.method) if r.get("sweep_key") == plan.key]
        return len(stored) >= plan.trials
    return all(_job_done(ctx, j) for j in plan.jobs)


def sweep_records(ctx: SweepContext, plan: MethodPlan) -> list[dict]:
    """The records of a sweep's trials (``lost_record`` for an explicit job without one)."""
    if plan.optuna_space is not None:
        return [_rescored(ctx, r) for r in ctx.store.trials(plan.method)
                if r.get("sweep_key") == plan.key]
    return job_records(ctx, plan.jobs)


def sweep_method(ctx: SweepContext, method_cfg, seed: int = SWEEP_SEED, progress=None,
                 ensure_ray=None, on_record=None) -> list[dict]:
    """Tune one method alone (no replicates); return the records of its sweep's trials.
    ``unlearn run`` schedules all its methods together (``schedule.run_schedule``)."""
    from pipelines.schedule import run_schedule

    result = run_schedule(
        ctx, [plan_method(ctx, method_cfg, seed)], 0,
        progress=(lambda _stage, n: progress(n)) if progress else None,
        ensure_ray=ensure_ray,
        on_record=(lambda _stage, method, key: on_record(method, key)) if on_record else None)
    return result.sweeps[method_cfg.name]


def best_hparams(records: list[dict], mode: str) -> dict | None:
    """The hparams of the best finished trial: failed and ASHA-stopped ones never win."""
    best = best_record([r for r in records if r["status"] == "ok"], mode)
    return None if best is None else best["hparams"]


def _job_done(ctx: SweepContext, job: dict) -> bool:
    record = ctx.store.read_trial(job["method"], _job_key(ctx, job))
    return record is not None and _is_done(record, bool(job.get("asha")))
