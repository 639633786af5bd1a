"""Packs of references: several retrained models trained stacked in one pool task.

``make_packs`` groups the units of one (role, model, recipe) that can be stacked
(``pack_problem``: no update recorder, no pruning, no dropout) into packs;
``train_pack`` trains a pack with ``unlearn_core.train.stacked.fit_stacked`` and
evaluates and stores each model through ``store_trained_unit``, exactly as a
one-model task does, so the store holds the same checkpoint, outputs and info
JSON (plus ``stacked_models``, the pack it trained in). Keys do not depend on the
pack: a stacked reference stands in for its one-at-a-time self (same weights up
to float rounding, ``tests/test_stacked.py``).
"""

from __future__ import annotations

import functools
import logging
import math

from pipelines.keys import stable_hash
from pipelines.references import TrainUnit, store_trained_unit, train_unit
from pipelines.store import ResultsStore
from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.stacked import (
    MAX_PACK,
    StackingUnsupported,
    fit_stacked,
    pack_capacity,
    stacking_pays,
    stacking_problem,
)

log = logging.getLogger(__name__)


def train_pack(units: list[TrainUnit], dataset: ImageDataset, manifest: SplitManifest,
               store: ResultsStore, device, mia_max_per_class: int = 5000,
               fit_memory: bool = True) -> list[dict]:
    """Train ``units`` (one model, recipe and role) stacked, then evaluate and store each
    as ``train_unit`` does (same checkpoint, outputs and info JSON, written last).

    ``fit_memory`` (``references.pack: 0``): train in chunks of ``pack_capacity``
    models (1 where stacking does not pay on this device, else what its memory budget
    holds); otherwise all at once (an explicit ``references.pack``). Models that cannot
    be stacked are trained one at a time by ``train_unit``, with the reason logged.
    """
    import torch

    from unlearn_core.train.source import TRAIN_VIEW, build_model

    first = units[0]
    if any((u.model, u.role, u.recipe) != (first.model, first.role, first.recipe)
           for u in units):
        raise ValueError("a pack holds units of one model, role and recipe")
    problems = {u.key: pack_problem(u, dataset) for u in units}
    if any(problems.values()):
        reason = next(p for p in problems.values() if p)
        log.warning("references: training %d model(s) one at a time: %s", len(units), reason)
        return [train_unit(u, dataset, manifest, store, device, mia_max_per_class)
                for u in units]
    recipe = Recipe.from_dict(first.recipe)
    data = DeviceData.from_dataset(dataset, manifest.ids(TRAIN_VIEW[first.role]), device)
    size = len(units)
    if fit_memory:
        with torch.device("meta"):  # the structure is enough to size it
            probe = build_model(first.model, dataset, first.seed)
        size = pack_capacity(probe, recipe, tuple(data.images.shape[1:]), data.device)
    infos = []
    for start in range(0, len(units), size):
        chunk = units[start:start + size]
        if len(chunk) == 1:  # nothing to stack with: exactly the one-model path
            infos.append(train_unit(chunk[0], dataset, manifest, store, device,
                                    mia_max_per_class))
            continue
        models = [build_model(u.model, dataset, u.seed) for u in chunk]  # as train_model
        try:
            results = fit_stacked(models, data, recipe, seeds=[u.seed for u in chunk])
        except StackingUnsupported as err:  # pack_problem missed it: still train them
            log.warning("references: training %d model(s) one at a time: %s", len(chunk), err)
            infos += [train_unit(u, dataset, manifest, store, device, mia_max_per_class)
                      for u in chunk]
            continue
        for unit, model, result in zip(chunk, models, results, strict=True):
            infos.append(store_trained_unit(unit, model, result.seconds, dataset, manifest,
                                            store, device, mia_max_per_class,
                                            extra={"stacked_models": len(chunk)}))
    return infos


def pack_problem(unit: TrainUnit, dataset: ImageDataset) -> str | None:
    """Why ``unit`` must train alone (None: it can share a stacked pack)."""
    if unit.record_updates:
        return "the update recorder hooks one model's optimizer"
    if unit.sparsity > 0:
        return "pruning and masked fine-tuning are per-model hooks"
    return _architecture_problem(unit.model, dataset.num_classes, dataset.in_channels,
                                 dataset.image_size)


@functools.cache
def _architecture_problem(name: str, num_classes: int, in_channels: int,
                          image_size: int) -> str | None:
    import torch

    from unlearn_core.models import create_model

    with torch.device("meta"):  # structure only: no memory, no initialisation work
        model = create_model(name, num_classes, in_channels, image_size)
    problem = stacking_problem(model)
    return None if problem is None else f"{name}: {problem}"


def make_packs(units: list[TrainUnit], dataset: ImageDataset, size: int) -> list[list[TrainUnit]]:
    """Pool tasks: units of one (role, model, recipe) in packs of at most ``size``; units
    that cannot be stacked one per task (the reason logged once per reason)."""
    singles: list[list[TrainUnit]] = []
    groups: dict[tuple, list[TrainUnit]] = {}
    reasons: dict[str, int] = {}
    for unit in units:
        problem = pack_problem(unit, dataset) if size > 1 else None
        if size <= 1 or problem is not None:
            singles.append([unit])
            if problem is not None and unit.role == "retrain":
                reasons[problem] = reasons.get(problem, 0) + 1
        else:
            groups.setdefault((unit.role, unit.model, stable_hash(unit.recipe)), []).append(unit)
    for problem, count in reasons.items():
        log.warning("references: %d model(s) train one per task: %s", count, problem)
    packs = [group[i:i + size] for group in groups.values()
             for i in range(0, len(group), size)]
    return singles + packs


def auto_pack_size(units: list[TrainUnit], dataset: ImageDataset, slots: int,
                   use_gpu: bool) -> int:
    """``references.pack: 0``: spread the references evenly over ``slots`` concurrent
    tasks, or 1 where stacking does not pay on the workers' device (``stacking_pays``).
    Each worker still splits its pack to fit its memory (``train_pack``)."""
    import torch

    from unlearn_core.models import create_model

    refs = [u for u in units if u.role == "retrain"]
    if not refs:
        return 1
    with torch.device("meta"):
        probe = create_model(refs[0].model, dataset.num_classes, dataset.in_channels,
                             dataset.image_size)
    if not stacking_pays(probe, torch.device("cuda" if use_gpu else "cpu")):
        return 1
    return max(1, min(MAX_PACK, math.ceil(len(refs) / max(1, slots))))
