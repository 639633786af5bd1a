"""One scheduling pass for every method's sweep and replicates: a single Ray Tune run.

A run used to sweep its methods one after another (one Tune run each, ~13 s of fixed
cost per method whatever its trial count) and then replicate every method's best
config in one more Tune run, so the cluster waited for the slowest method's sweep
before any replicate started. Here one Tune run does it all:

- ``schedule_searcher`` (a Tune ``Searcher``) suggests the sweep trials of all methods,
  interleaved (explicit jobs drawn on the driver for random/grid/asha, or a per-method
  ``OptunaSearch`` it delegates to); when a method's last sweep trial ends it picks
  that method's best config (``best_hparams``) and suggests its replicates at once,
  while other methods may still be sweeping. It ends the run when nothing is left.
- ``schedule_scheduler`` (a Tune ``TrialScheduler``) hands each ASHA method's trials to
  that method's own ``ASHAScheduler`` (so ASHA compares a trial only with its own
  method's) and lets every other trial run to the end; it starts pending replicates
  before pending sweep trials, since they are the last work of a finished method.

Records and trial keys are those of ``trial.run_trial``: a folder written by the
per-method scheduling resumes here without rerunning anything, and stored trials are
skipped on the driver (no Ray started when nothing is left).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.keys import replicate_jobs, stable_hash
from pipelines.sweep import (
    MethodPlan,
    _job_done,
    _trainable,
    best_hparams,
    job_records,
    sweep_done,
    sweep_records,
)
from pipelines.trial import SweepContext

# progress(stage, n) and on_record(stage, method, trial key), stage "sweep" | "replicate"
Progress = Callable[[str, int], None]
OnRecord = Callable[[str, str, str], None]


@dataclass
class ScheduleResult:
    sweeps: dict[str, list[dict]]  # method -> its sweep's records
    best: dict[str, dict | None]  # method -> best hparams (None: no finished trial)
    replicates: list[dict]  # replicate records in job order (method, then seed)
    tune_runs: int = 0  # Tune runs started (0 when everything was stored)


def method_replicates(plan: MethodPlan, best: dict | None, count: int) -> list[dict]:
    """A method's replicate jobs (``keys.replicate_jobs``: seeds disjoint from sweeps)."""
    return [{**j, "stage": "replicate"} for j in replicate_jobs({plan.method: best}, count)]


def _job_config(plan: MethodPlan, job: dict) -> dict:
    return {"__job": job, "__device": plan.device, "__resources": plan.resources}


@dataclass
class _MethodState:
    """One method's place in the pass: sweep trials to suggest, then its replicates."""

    plan: MethodPlan
    sweep: deque = field(default_factory=deque)  # explicit sweep jobs not yet suggested
    optuna: object | None = None  # OptunaSearch for ``search: optuna``
    optuna_left: int = 0  # Optuna suggestions still to make
    running: set = field(default_factory=set)  # sweep trial ids suggested, not complete
    replicates: deque | None = None  # None until the sweep is over and best is known

    def sweeping(self) -> bool:
        return bool(self.sweep) or self.optuna_left > 0 or bool(self.running)


def schedule_searcher(ctx: SweepContext, states: list[_MethodState], replicates: int):
    """The pass's Tune ``Searcher`` (the class is made here: Ray is imported only when a
    run has work for it)."""
    from ray.tune.search import Searcher

    class _Searcher(Searcher):
        def __init__(self) -> None:
            super().__init__(metric="objective", mode=ctx.objective_mode)
            self.owner: dict[str, _MethodState] = {}
            self.turn = itertools.cycle(range(len(states)))

        def suggest(self, trial_id: str):
            for _ in range(len(states)):  # round robin: all methods' trials interleave
                state = states[next(self.turn)]
                config = self._next(state, trial_id)
                if config is not None:
                    self.owner[trial_id] = state
                    return config
            idle = all(not s.sweeping() and s.replicates is not None and not s.replicates
                       for s in states)
            return Searcher.FINISHED if idle else None  # None: wait for running trials

        def _next(self, state: _MethodState, trial_id: str) -> dict | None:
            plan = state.plan
            if state.sweep:
                state.running.add(trial_id)
                return _job_config(plan, state.sweep.popleft())
            if state.optuna_left > 0:
                suggested = state.optuna.suggest(trial_id)
                if suggested is None:
                    return None
                state.optuna_left -= 1
                state.running.add(trial_id)
                return {**suggested, **plan.optuna_constants, "__device": plan.device,
                        "__resources": plan.resources}
            if state.running:
                return None  # its best is not known before its last sweep trial ends
            if state.replicates is None:  # the sweep just ended: its replicates now
                best = best_hparams(sweep_records(ctx, plan), ctx.objective_mode)
                state.replicates = deque(
                    j for j in method_replicates(plan, best, replicates)
                    if not _job_done(ctx, j))
            if state.replicates:
                return _job_config(plan, state.replicates.popleft())
            return None

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            state = self.owner.get(trial_id)
            if state is not None and state.optuna is not None and trial_id in state.running:
                state.optuna.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            state = self.owner.pop(trial_id, None)
            if state is None or trial_id not in state.running:
                return
            state.running.discard(trial_id)
            if state.optuna is not None:
                state.optuna.on_trial_complete(trial_id, result=result, error=error)

    return _Searcher()


def _method_of(trial) -> tuple[str | None, bool, str]:
    """(method, is an ASHA trial, stage) of a Tune trial, from its config."""
    config = trial.config or {}
    job = config.get("__job") or {}
    return (job.get("method") or config.get("__method"), bool(job.get("asha")),
            job.get("stage", "sweep"))


def schedule_scheduler(asha: dict):
    """The pass's Tune ``TrialScheduler``: ``asha[method]`` (an ``ASHAScheduler``) decides
    for that method's ASHA trials, every other trial runs to the end; pending replicates
    start before pending sweep trials."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class _Scheduler(FIFOScheduler):
        def _route(self, trial) -> TrialScheduler | None:
            method, is_asha, _ = _method_of(trial)
            return asha.get(method) if is_asha else None

        def on_trial_add(self, tune_controller, trial) -> None:
            if (child := self._route(trial)) is not None:
                child.on_trial_add(tune_controller, trial)

        def on_trial_error(self, tune_controller, trial) -> None:
            if (child := self._route(trial)) is not None:
                child.on_trial_error(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if (child := self._route(trial)) is not None:
                return child.on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE

        def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
            if (child := self._route(trial)) is not None:
                child.on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial) -> None:
            if (child := self._route(trial)) is not None:
                child.on_trial_remove(tune_controller, trial)

        def choose_trial_to_run(self, tune_controller):
            pending = [t for t in tune_controller.get_trials() if t.status == Trial.PENDING]
            replicate = [t for t in pending if _method_of(t)[2] == "replicate"]
            if replicate or pending:
                return (replicate or pending)[0]
            return super().choose_trial_to_run(tune_controller)

    return _Scheduler()


def _callback(progress: Progress | None, on_record: OnRecord | None):
    """A Tune callback (runs in the driver) as each trial ends: advance its stage's bar
    and hand its stored record to ``on_record`` (MLflow logs it then, not at the end).
    A trial that errored has been retried by Tune already."""
    from ray.tune import Callback

    class RecordCallback(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            method, _, stage = _method_of(trial)
            key = (trial.last_result or {}).get("trial_key")
            if on_record is not None and method and key:
                on_record(stage, method, key)
            if progress:
                progress(stage, 1)

        def on_trial_error(self, iteration, trials, trial, **info):
            if progress:
                progress(_method_of(trial)[2], 1)

    return RecordCallback()


def _resources(config: dict):
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory(config.get("__resources") or {"cpu": 1})


def run_schedule(ctx: SweepContext, plans: list[MethodPlan], replicates: int,
                 progress: Progress | None = None, ensure_ray: Callable[[], None] | None = None,
                 on_record: OnRecord | None = None) -> ScheduleResult:
    """Sweep every planned method and replicate each one's best ``replicates`` times, in
    one Tune run (none when every trial is stored); return all their records."""
    states, asha = [], {}
    for plan in plans:
        state = _MethodState(plan)
        pending = [j for j in plan.jobs if not _job_done(ctx, j)]
        state.sweep.extend(pending)
        if progress:
            progress("sweep", plan.done_before if plan.optuna_space else
                     len(plan.jobs) - len(pending))
        if plan.optuna_space and not sweep_done(ctx, plan):
            state.optuna_left = plan.trials
        if not state.sweeping():  # stored: its replicates are known now
            best = best_hparams(sweep_records(ctx, plan), ctx.objective_mode)
            jobs = method_replicates(plan, best, replicates)
            state.replicates = deque(j for j in jobs if not _job_done(ctx, j))
            if progress:
                progress("replicate", len(jobs) - len(state.replicates))
        states.append(state)
    work = any(s.sweeping() or s.replicates for s in states)
    if work:
        if ensure_ray:
            ensure_ray()
        for state in states:
            plan = state.plan
            if state.optuna_left:
                from ray.tune.search.optuna import OptunaSearch

                state.optuna = OptunaSearch(metric="objective", mode=ctx.objective_mode,
                                            seed=plan.seed)
                state.optuna.set_search_properties(None, None, plan.optuna_space)
            if plan.asha is not None and state.sweep:
                from ray.tune.schedulers import ASHAScheduler

                asha[plan.method] = ASHAScheduler(
                    time_attr="training_iteration", metric="objective",
                    mode=ctx.objective_mode, **plan.asha)
        _tune(ctx, states, replicates, asha, progress, on_record)
    # from the store: the same best the pass used (its sweep records were final then)
    best = {p.method: best_hparams(sweep_records(ctx, p), ctx.objective_mode) for p in plans}
    jobs = [j for plan in plans for j in method_replicates(plan, best[plan.method], replicates)]
    return ScheduleResult(sweeps={p.method: sweep_records(ctx, p) for p in plans}, best=best,
                          replicates=job_records(ctx, jobs), tune_runs=int(work))


def _tune(ctx: SweepContext, states: list[_MethodState], replicates: int, asha: dict,
          progress: Progress | None, on_record: OnRecord | None) -> None:
    from ray import tune

    from pipelines.asha import stopped_trial_recorder
    from pipelines.references import ray_storage_path

    searcher = schedule_searcher(ctx, states, replicates)
    name = "schedule-" + stable_hash([s.plan.key for s in states], replicates, length=12)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, ctx=ctx), _resources),
        param_space={},
        tune_config=tune.TuneConfig(num_samples=-1, search_alg=searcher,
                                    scheduler=schedule_scheduler(asha), reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=ray_storage_path(ctx.store), verbose=0,
            # an ASHA-stopped trial is recorded first, so it is logged like any other
            callbacks=[stopped_trial_recorder(ctx), _callback(progress, on_record)],
            # a trial lost with its worker or node (or to an I/O error) runs again; a
            # method's own failure never raises (run_trial records it), so is not retried
            failure_config=tune.FailureConfig(max_failures=ctx.max_retries)),
    )
    tuner.fit()
