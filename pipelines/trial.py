"""One trial: unlearn once from the stored source, evaluate, store the record.

Each trial loads the source checkpoint, unlearns, evaluates against the
references and stores its per-sample outputs and a trial record (JSON, named
by the trial key = hash of source, method, hparams, seed). A trial whose record
exists returns it without work, so a re-run (or a run resumed after the driver
was killed) repeats only the trials that were in flight, and no trial is ever
stored twice. A trial that raises or diverges (non-finite weights or outputs) is
recorded as failed with its reason; the sweep goes on.

``search: asha`` (methods with ``REPORTS_EPOCHS``; the Tune side is in
``asha.py``): each trial evaluates its model after every epoch but the last
(``epoch_metrics``: accuracies, the headline MIA, disparity) and reports it to
Ray Tune's ``ASHAScheduler``. A trial ASHA stops is recorded by the driver, the
moment ASHA decides, with ``status: "stopped"``, ``stopped_by: "asha"``,
``epochs_run`` and the metrics and objective of its last reported epoch; it
writes no per-sample outputs. A stopped record is "done" for ASHA sweeps only
(so a resumed ASHA sweep skips it); any other run of the same trial key (a
random sweep, a replicate) reruns the trial to the end and replaces it.

``sweep.py`` plans each method's trials; ``schedule.py`` runs them in one Tune run.
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
from pipelines.keys import normalise_hparams, stable_hash
from pipelines.probes import ProbeSettings, probe_model
from pipelines.store import ResultsStore
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


# ------------------------------------------- stopped trials (search: asha; see asha.py)

def _is_done(record: dict, asha: bool) -> bool:
    """A stored record ends its trial, except a stopped one outside an ASHA sweep."""
    return record.get("status") != "stopped" or asha


def _mark_stopped(record: dict, epoch: int, metrics: dict, reason: str,
                  seconds: float | None, ctx: SweepContext) -> None:
    """Turn a trial record into a stopped one: the metrics of its last evaluated epoch."""
    record.update(status="stopped", error=None, epochs_run=int(epoch),
                  stopped_by=reason or None, metrics=dict(metrics), seconds=seconds)
    record["objective"] = _objective(objective_context(ctx, record["method"]), record)
