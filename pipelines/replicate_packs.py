"""Packs of replicates: a retrain-style method's replicates trained stacked in one trial.

A method whose module defines ``unlearn_stacked(task, hp, seeds)`` (``retrain``:
each replicate is a fresh model trained on D_r with its own seed, what a
reference is) can train its replicates together, stacked over a model axis
(``unlearn_core.train.stacked``). The scheduling pass then hands out one Tune
trial per pack of replicate jobs (``pack_job``) instead of one per replicate;
``run_trial_pack`` trains the pack and evaluates and stores each replicate
exactly as ``sweep.run_trial`` does: same trial key, record, metrics and
per-sample outputs (plus ``stacked_models``, the pack it trained in). The
unlearning time of each is the pack's time divided by its models, as for
stacked references. A resumed pack trains only its replicates not yet stored.

Packs are used only where stacking pays and is exact (``stacks_replicates``):
the method opts in, the source model can be stacked (no dropout), stacking pays
on the method's device (``stacking_pays``: not convolutions on the CPU), and the
source is dense (a pruned source keeps per-model masks).
"""

from __future__ import annotations

import functools
import time

import torch

from pipelines.sweep import (
    SweepContext,
    commit_trial,
    evaluate_trial,
    load_source,
    mark_failed,
    new_record,
    objective_context,
    run_trial,
    trial_key,
    trial_task,
)
from unlearn_core.methods import get_method, make_hparams
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.stacked import (
    MAX_PACK,
    StackingUnsupported,
    pack_capacity,
    stacking_pays,
    stacking_problem,
)

PACK_STAGE = "replicate"


def stacks_replicates(ctx: SweepContext, method: str, device: str) -> bool:
    """Whether ``method``'s replicates train as stacked packs on ``device``."""
    if ctx.source_sparsity > 0 or not hasattr(get_method(method), "unlearn_stacked"):
        return False
    return _stackable(ctx.source_model, ctx.dataset.num_classes, ctx.dataset.in_channels,
                      ctx.dataset.image_size, device)


@functools.cache
def _stackable(model: str, num_classes: int, in_channels: int, image_size: int,
               device: str) -> bool:
    from unlearn_core.models import create_model

    with torch.device("meta"):  # structure only
        probe = create_model(model, num_classes, in_channels, image_size)
    return stacking_problem(probe) is None and stacking_pays(probe, torch.device(device))


def pack_jobs(jobs: list[dict]) -> list[dict]:
    """Replicate jobs of one method and hparams as pack jobs of at most ``MAX_PACK``:
    ``{"method", "hparams", "stage", "pack": [job, ...]}``. The trial itself splits a
    pack into what its device's memory holds (``pack_capacity``)."""
    return [{"method": jobs[i]["method"], "hparams": jobs[i]["hparams"],
             "stage": PACK_STAGE, "pack": jobs[i:i + MAX_PACK]}
            for i in range(0, len(jobs), MAX_PACK)]


def run_trial_pack(ctx: SweepContext, jobs: list[dict]) -> list[dict]:
    """Run the replicate ``jobs`` (one method, one hparams, distinct seeds) stacked; return
    their records in job order. Stored ones are returned as they are; if the models cannot
    be stacked after all, each job runs alone (``run_trial``)."""
    method, values = jobs[0]["method"], jobs[0]["hparams"]
    if any(j["method"] != method or j["hparams"] != values for j in jobs):
        raise ValueError("a replicate pack holds jobs of one method and one hparams")
    ctx = objective_context(ctx, method)
    records: dict[int, dict] = {}
    todo = []
    for job in jobs:
        key = trial_key(ctx.source_key, method, values, job["seed"], ctx.trial_salt)
        stored = ctx.store.read_trial(method, key)
        if stored is not None and stored.get("status") != "stopped":
            records[job["seed"]] = {**stored, "cached": True}
        else:
            todo.append(new_record(key, method, values, job["seed"], job["stage"],
                                   job.get("sweep_key")))
    if todo:
        for record in _train_pack(ctx, method, todo):
            records[record["seed"]] = record
    return [records[j["seed"]] for j in jobs]


def _train_pack(ctx: SweepContext, method: str, records: list[dict]) -> list[dict]:
    device = torch.device(ctx.device)
    source = load_source(ctx).to(device)  # outside the try: an I/O error is retried
    try:
        hp = make_hparams(method, records[0]["hparams"])
        task = trial_task(ctx, method, source, records[0]["seed"], device)
        recipe = Recipe.from_dict(ctx.source_recipe)
        size = pack_capacity(source, recipe, tuple(task.retain.images.shape[1:]), device)
    except Exception as err:  # the method's own failure, recorded for every replicate
        for record in records:
            mark_failed(record, err)
            commit_trial(ctx, record, None)
        return records
    done = []
    for first in range(0, len(records), max(1, size)):
        chunk = records[first:first + max(1, size)]
        if len(chunk) == 1:
            done.append(_alone(ctx, chunk[0]))
            continue
        try:
            done += _train_chunk(ctx, method, chunk, source, task, hp, device)
        except StackingUnsupported:  # not stackable after all: each alone, as ever
            done += [_alone(ctx, record) for record in chunk]
    return done


def _alone(ctx: SweepContext, record: dict) -> dict:
    return run_trial(ctx, record["method"], record["hparams"], record["seed"],
                     record["stage"], record["sweep_key"])


def _train_chunk(ctx: SweepContext, method: str, records: list[dict], source, task, hp,
                 device: torch.device) -> list[dict]:
    start = time.perf_counter()
    try:
        models = get_method(method).unlearn_stacked(task, hp, [r["seed"] for r in records])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except StackingUnsupported:
        raise
    except Exception as err:  # the method's own failure: a result for each replicate
        for record in records:
            mark_failed(record, err)
            commit_trial(ctx, record, None)
        return records
    seconds = (time.perf_counter() - start) / len(records)  # each model's share
    for record, model in zip(records, models, strict=True):
        record["seconds"] = seconds
        record["stacked_models"] = len(records)
        table = None
        try:
            table = evaluate_trial(ctx, record, model, source, task, hp, device)
        except Exception as err:  # a diverged replicate fails alone
            mark_failed(record, err)
        commit_trial(ctx, record, table)
    return records
