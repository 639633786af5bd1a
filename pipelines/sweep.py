"""sweep and replicate stages: trials, and each method's plan of them.

``plan_method`` decides a method's sweep on the driver (configs, resources, searcher);
``schedule.run_schedule`` runs every method's sweep and replicates in one Tune run.

Each trial loads the source checkpoint, unlearns, evaluates against the
references and stores its per-sample outputs and a trial record (JSON, named
by the trial key = hash of source, method, hparams, seed). A trial whose record
exists returns it without work, so a re-run (or a run resumed after the driver
was killed) repeats only the trials that were in flight, and no trial is ever
stored twice. A trial that raises or diverges (non-finite weights or outputs) is
recorded as failed with its reason; the sweep goes on.

``search: asha`` (methods with ``REPORTS_EPOCHS``; the Tune side is in
``asha.py``): configs are drawn on the driver as for ``random``; each trial
evaluates its model after every epoch but the last (``epoch_metrics``:
accuracies, the headline MIA, disparity) and reports it to Ray Tune's
``ASHAScheduler`` (time = epochs, ``max_t`` = the most epochs any config asks
for). A trial ASHA stops is recorded by the driver, the moment ASHA decides,
with ``status: "stopped"``, ``stopped_by: "asha"``, ``epochs_run`` and the
metrics and objective of its last reported epoch; it writes no per-sample
outputs. A stopped record is "done" for ASHA sweeps only (so a resumed ASHA
sweep skips it); any other run of the same trial key (a random sweep, a
replicate) reruns the trial to the end and replaces it. The best config is
chosen among finished ("ok") trials only: a stopped trial's metrics are those
of a partly trained model, and ASHA always lets at least the first trial at
every rung finish.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pipelines.evaluate import (
    HELDOUT_OBJECTIVE,
    ReferenceSummary,
    compared_metrics,
    heldout_metrics,
    model_metrics,
)
from pipelines.keys import SWEEP_SEED, normalise_hparams, stable_hash
from pipelines.probes import ProbeSettings, probe_model
from pipelines.store import ResultsStore
from pipelines.tune_space import merged_space, tune_param_space
from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.methods import (
    get_method,
    is_zero_glance,
    make_hparams,
    needs_retrain_model,
    requirements,
)
from unlearn_core.methods.task import ForgetSetAccessError, StopUnlearning, make_task
from unlearn_core.outputs import outputs_table, split_logits
from unlearn_core.search import grid_configs, sample_configs
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.recorder import RecordedUpdates
from unlearn_core.train.source import build_model
from unlearn_core.train.sparsity import SparsityGuard, masks_from_zeros


@dataclass
class SweepContext:
    """Everything a trial needs; sent to the workers once (``tune.with_parameters``)."""

    dataset: ImageDataset
    manifest: SplitManifest
    store: ResultsStore
    source_key: str
    source_model: str
    source_recipe: dict
    references: ReferenceSummary
    objective_metric: str
    objective_mode: str
    mia_max_per_class: int
    reference_keys: tuple[str, ...] = ()
    device: str = "cpu"
    source_sparsity: float = 0.0  # > 0: pruned weights stay zero through unlearning (004)
    # model probes (distance, relearn, degree); off unless the run enables them
    probes: ProbeSettings = field(
        default_factory=lambda: ProbeSettings(distance=False, relearn=False, degree=False))
    # Tune restarts a trial lost to infrastructure (worker/node death) this many times
    max_retries: int = 3
    # objective.zero_glance: how zero-glance methods are tuned without reading D_f,
    # "heldout" (held-out test metrics) or "fixed" (one config, no search)
    zero_glance_objective: str = "heldout"

    @property
    def trial_salt(self) -> str:
        """What else shapes a trial's record: the probe settings (not the unlearning)."""
        return probe_salt(self.probes)


# Bumped when a probe's computation changes, so stored records with old values rerun.
PROBES_VERSION = 2  # 2: relearn compares within half a count step


def probe_salt(probes: ProbeSettings) -> str:
    return stable_hash(asdict(probes), PROBES_VERSION) if probes.any else ""


def trial_key(source_key: str, method: str, hparams: dict, seed: int, salt: str = "") -> str:
    parts = (source_key, method, normalise_hparams(hparams), seed) + ((salt,) if salt else ())
    return f"{method}-" + stable_hash(*parts)


def _worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def _finite_model(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def objective_context(ctx: SweepContext, method: str) -> SweepContext:
    """The context a trial of ``method`` runs and is judged in.

    The references learn the request's forgotten classes, so every trial also gets the
    held-out metrics (``evaluate.heldout_metrics``). A zero-glance method's objective is
    the held-out one (same mode as configured): its hyperparameters must not be chosen
    by D_f, which it may not read. Its reported metrics still evaluate D_f.
    """
    if not ctx.references.forget_classes and ctx.manifest.forget_classes():
        references = dataclasses.replace(
            ctx.references, forget_classes=tuple(ctx.manifest.forget_classes()))
        ctx = dataclasses.replace(ctx, references=references)
    if is_zero_glance(method) and ctx.objective_metric != HELDOUT_OBJECTIVE[ctx.objective_mode]:
        ctx = dataclasses.replace(ctx, objective_metric=HELDOUT_OBJECTIVE[ctx.objective_mode])
    return ctx


def _objective(ctx: SweepContext, record: dict) -> float:
    """A record's objective under ``ctx`` (worst when failed, missing or non-finite).

    Recomputed from the stored metrics on every read, so a record stored under another
    objective (or before the held-out metrics existed: they derive from the stored
    per-class test accuracies) is judged by the current one."""
    metrics = record.get("metrics") or {}
    value = metrics.get(ctx.objective_metric) if record.get("status") in ("ok", "stopped") \
        else None
    if value is None and metrics and ctx.objective_metric in HELDOUT_OBJECTIVE.values():
        value = heldout_metrics(metrics, ctx.references.source_metrics,
                                ctx.references.forget_classes).get(ctx.objective_metric)
    return float(value) if value is not None and math.isfinite(value) \
        else _worst(ctx.objective_mode)


def _rescored(ctx: SweepContext, record: dict) -> dict:
    method_ctx = objective_context(ctx, record["method"])
    return {**record, "objective": _objective(method_ctx, record)}


def _parsed_hparams(method: str, values: dict):
    """The method's Hparams, or None if invalid (the trial then records the error)."""
    try:
        return make_hparams(method, values)
    except Exception:
        return None


def _extras(ctx: SweepContext, device: torch.device, method: str, hp) -> dict:
    """Inputs beyond the task's own, only for a trial that asks for them: a retrained
    model (trained on D_r) when the method says its ``hp`` reads one (seed 000's
    ``js_reference="retrain"``, ``needs_retrain_model``). Never for a zero-glance method
    (``run_trial`` refuses one that asks). Loaded here, outside the method's try: a
    read error is infrastructure, retried."""
    if (hp is None or is_zero_glance(method) or not ctx.reference_keys
            or not needs_retrain_model(method, hp)):
        return {}  # a method that asks but gets none says so itself (js_reference_model)
    reference = build_model(ctx.source_model, ctx.dataset, seed=0)
    ctx.store.load_model(ctx.reference_keys[0], reference)
    return {"retrain_model": reference.to(device).eval().requires_grad_(False)}


def _refuse_glance(method: str, hp) -> None:
    if is_zero_glance(method) and needs_retrain_model(method, hp):
        raise ForgetSetAccessError(
            f"{method} is zero-glance (seed 003) but these hparams ask for a retrained "
            "model (retrain_model, trained on the full D_r): it gets none; change them")


def _sparsity_guard(ctx: SweepContext, model: torch.nn.Module) -> SparsityGuard | None:
    """On a pruned source (``source.sparsity``), keep every method's model as sparse."""
    if ctx.source_sparsity <= 0:
        return None
    guard = SparsityGuard(masks_from_zeros(model))
    guard.start(model)
    return guard


def _reported(method: str, task, hp) -> dict[str, float]:
    """Metrics only the method knows (seed 001's storage), computed after the timed part."""
    report = getattr(get_method(method), "reported_metrics", None)
    return {k: float(v) for k, v in report(task, hp).items()} if report else {}


def _probes(ctx: SweepContext, model, source, per_split, seed: int, device) -> dict[str, float]:
    if not ctx.probes.any:
        return {}
    refs = ctx.references.forget_logits
    return probe_model(
        model, source, ctx.dataset, ctx.manifest, ctx.probes,
        recipe=Recipe.from_dict(ctx.source_recipe),
        source_forget_acc=ctx.references.source_metrics.get("forget/acc"),
        forget_logits=per_split["forget"][2],
        reference_forget_logits=refs[0] if len(refs) else None,
        device=device, seed=seed,
    )


def run_trial(ctx: SweepContext, method: str, hparam_values: dict, seed: int,
              stage: str, sweep_key: str | None = None, epoch_callback=None) -> dict:
    """Unlearn once, evaluate, store; return the trial record (cached if already stored).

    ``epoch_callback(model, epoch)`` (ASHA) is called by the method after each epoch;
    if it raises ``StopUnlearning`` the trial is recorded as stopped.

    Failures are sorted by kind. The method's own failure (an exception, a diverged
    model) is a result: recorded once as failed, never retried. An infrastructure
    failure (reading the source or the update recording, writing the outputs or the
    record: ``OSError``) is raised, so that Tune retries the trial; nothing is
    recorded for it. The record is written last: it commits the trial.
    """
    hparam_values = normalise_hparams(hparam_values)
    ctx = objective_context(ctx, method)
    key = trial_key(ctx.source_key, method, hparam_values, seed, ctx.trial_salt)
    stored = ctx.store.read_trial(method, key)
    if stored is not None and _is_done(stored, asha=epoch_callback is not None):
        return {**_rescored(ctx, stored), "cached": True}
    record = {"trial_key": key, "method": method, "stage": stage, "seed": seed,
              "sweep_key": sweep_key,
              "hparams": hparam_values, "status": "ok", "error": None, "metrics": {},
              "objective": None, "seconds": None}
    device = torch.device(ctx.device)
    # inputs first, outside the method's try: an I/O error here is infrastructure
    source = build_model(ctx.source_model, ctx.dataset, seed=0)
    ctx.store.load_model(ctx.source_key, source)
    recording = None
    if "update_recording" in requirements(method):
        recording = RecordedUpdates(ctx.store.local_updates(ctx.source_key))
    extras = _extras(ctx, device, method, _parsed_hparams(method, hparam_values))
    table = None
    start = time.perf_counter()
    task = None
    try:
        hp = make_hparams(method, hparam_values)
        _refuse_glance(method, hp)
        model = copy.deepcopy(source)  # the copy to unlearn; the task keeps the source
        source = source.to(device)
        task = make_task(
            ctx.dataset, ctx.manifest, source, model_name=ctx.source_model,
            train_recipe=Recipe.from_dict(ctx.source_recipe), seed=seed, device=device,
            zero_glance=is_zero_glance(method), update_recording=recording,
            extras=extras,
        )
        task.epoch_callback = epoch_callback
        torch.manual_seed(seed)
        start = time.perf_counter()
        model = model.to(device)
        guard = _sparsity_guard(ctx, model)
        model = get_method(method).unlearn(model, task, hp)
        if guard is not None:
            model = guard.finish(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["seconds"] = time.perf_counter() - start - task.callback_seconds
        if not _finite_model(model):
            raise FloatingPointError("diverged: non-finite weights (NaN/inf)")
        per_split = split_logits(model, ctx.dataset, ctx.manifest, device)
        if not all(np.isfinite(logits).all() for _, _, logits in per_split.values()):
            raise FloatingPointError("diverged: non-finite outputs (NaN/inf)")
        metrics = model_metrics(per_split, mia_max_per_class=ctx.mia_max_per_class, seed=seed)
        metrics = compared_metrics(metrics, per_split, ctx.references, record["seconds"])
        metrics.update(_reported(method, task, hp))
        metrics.update(_probes(ctx, model, source, per_split, seed, device))
        record["metrics"] = metrics
        record["objective"] = _objective(ctx, record)
        table = outputs_table(per_split, method=method,
                              hparams_hash=stable_hash(hparam_values), seed=seed, model_id=key)
    except StopUnlearning as stop:  # an epoch callback ended the method early
        _mark_stopped(record, stop.epoch, stop.metrics, stop.reason,
                      time.perf_counter() - start - task.callback_seconds, ctx)
    except Exception as err:  # the method's own failure: a result, never fatal to the sweep
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc(limit=5)
    if record["objective"] is None or not math.isfinite(record["objective"]):
        record["objective"] = _worst(ctx.objective_mode)
    if table is not None:
        ctx.store.write_outputs(table, "unlearned", key)
    ctx.store.write_trial(record)  # last: the record commits the trial
    return record


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
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    pick = min if mode == "min" else max
    best = pick(sorted(ok, key=lambda r: r["trial_key"]), key=lambda r: r["objective"])
    return best["hparams"]


# ------------------------------------------- stopped trials (search: asha; see asha.py)

def _is_done(record: dict, asha: bool) -> bool:
    """A stored record ends its trial, except a stopped one outside an ASHA sweep."""
    return record.get("status") != "stopped" or asha


def _job_done(ctx: SweepContext, job: dict) -> bool:
    record = ctx.store.read_trial(job["method"], _job_key(ctx, job))
    return record is not None and _is_done(record, bool(job.get("asha")))


def _mark_stopped(record: dict, epoch: int, metrics: dict, reason: str,
                  seconds: float | None, ctx: SweepContext) -> None:
    """Turn a trial record into a stopped one: the metrics of its last evaluated epoch."""
    record.update(status="stopped", error=None, epochs_run=int(epoch),
                  stopped_by=reason or None, metrics=dict(metrics), seconds=seconds)
    record["objective"] = _objective(objective_context(ctx, record["method"]), record)
