"""references stage: the source model and N retrained references as one Ray Train job.

One ``TorchTrainer`` (Train V2) job trains many models: worker r of W trains
units r, r+W, r+2W, ... Each finished model is written at once (safetensors
checkpoint, per-sample outputs, an info JSON written last), so a restarted job
skips finished seeds; each worker reports to Ray Train once, at the end
(``ray.train.report`` is a barrier and costs seconds per call).
Never one Ray job per small model: the scheduling overhead is paid once.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.evaluate import ReferenceSummary, mean_metrics, model_metrics
from pipelines.keys import stable_hash
from pipelines.store import ResultsStore
from unlearn_core.checkpoint import save_checkpoint
from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.outputs import logits_matrix, outputs_table, read_outputs, split_logits
from unlearn_core.outputs import write_outputs as write_output_table
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import fit
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.recorder import UpdateRecorder
from unlearn_core.train.source import train_model
from unlearn_core.train.sparsity import MaskHook, prune_model


@dataclass(frozen=True)
class TrainUnit:
    """One model to train: the source or one retrained reference."""

    key: str
    role: str  # "source" or "retrain"
    seed: int
    model: str
    recipe: dict
    sparsity: float = 0.0
    record_updates: bool = False


def make_units(config, manifest_hash: str, record_updates: bool) -> list[TrainUnit]:
    """The source first, then the references; keys depend only on what shapes each model."""
    source, refs = config.source, config.references
    source_recipe = source.recipe.model_dump(mode="json")
    ref_recipe = config.reference_recipe().model_dump(mode="json")
    units = [TrainUnit(
        key="source-" + stable_hash(manifest_hash, source.model, source_recipe, source.seed,
                                    source.sparsity, record_updates),
        role="source", seed=source.seed, model=source.model, recipe=source_recipe,
        sparsity=source.sparsity, record_updates=record_updates,
    )]
    for i in range(refs.count):
        seed = refs.seed_start + i
        units.append(TrainUnit(
            key="retrain-" + stable_hash(manifest_hash, source.model, ref_recipe, seed,
                                         source.sparsity),
            role="retrain", seed=seed, model=source.model, recipe=ref_recipe,
            sparsity=source.sparsity,
        ))
    return units


def is_done(store: ResultsStore, unit: TrainUnit) -> bool:
    return store.model_info_path(unit.key).exists()


def train_unit(unit: TrainUnit, dataset: ImageDataset, manifest: SplitManifest,
               store: ResultsStore, device, mia_max_per_class: int = 5000) -> dict:
    """Train, evaluate and store one model. The info JSON is written last: it marks done."""
    recipe = Recipe.from_dict(unit.recipe)
    hooks = [UpdateRecorder(store.updates_dir(unit.key), seed=unit.seed)] \
        if unit.record_updates else []
    if hooks and store.updates_dir(unit.key).exists():
        # A crash mid-recording left a partial folder: start it again.
        shutil.rmtree(store.updates_dir(unit.key))
    trained = train_model(dataset, manifest, unit.model, recipe, role=unit.role, seed=unit.seed,
                          device=device, hooks=hooks)
    seconds = trained.fit.seconds
    if unit.sparsity > 0:
        masks = prune_model(trained.model, unit.sparsity)
        view = "train" if unit.role == "source" else "retain"
        data = DeviceData.from_dataset(dataset, manifest.ids(view), device)
        seconds += fit(trained.model, data, recipe, seed=unit.seed + 1,
                       hooks=[MaskHook(masks)]).seconds
    return store_trained_unit(unit, trained.model, seconds, dataset, manifest, store, device,
                              mia_max_per_class)


def _train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: train this rank's share of the units, one round at a time.

    With ``data_parallel`` every worker trains every unit instead, on its shard of
    each batch (``train_units_data_parallel``).
    """
    import ray
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))
    dataset, manifest = ray.get(loop_config["data_ref"])
    store: ResultsStore = loop_config["store"]
    units: list[TrainUnit] = loop_config["units"]
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else torch.device("cpu")
    if loop_config.get("data_parallel"):
        # Every rank trains every unit together, on its shard of each batch.
        finished = train_units_data_parallel(units, dataset, manifest, store, device,
                                             loop_config["mia_max_per_class"])
        ray.train.report({"finished": finished})
        return
    rounds = (len(units) + world - 1) // world
    finished = 0
    for round_index in range(rounds):
        position = round_index * world + rank
        if position < len(units) and not is_done(store, units[position]):
            train_unit(units[position], dataset, manifest, store, device,
                       loop_config["mia_max_per_class"])
            finished += 1
    # One report per worker at the end: ray.train.report is a barrier across workers,
    # and per-model reports cost seconds each. Each finished model is already on disk
    # (its info JSON written last), which is what a restarted job checks to skip it,
    # and what the driver's progress bar counts.
    ray.train.report({"finished": finished})


def train_units_data_parallel(units: list[TrainUnit], dataset: ImageDataset,
                              manifest: SplitManifest, store: ResultsStore, device,
                              mia_max_per_class: int = 5000) -> int:
    """Every rank of the torch.distributed group trains each unit together, in order.

    Rank 0 decides which units are done (one broadcast per unit, which is also the
    barrier that keeps ranks in step while rank 0 evaluates and writes the last
    one). Returns how many units this call trained (the same on every rank).
    """
    from unlearn_core.train.distributed import agree, barrier, world

    rank, _ = world()
    finished = 0
    for unit in units:
        if not agree(rank == 0 and not is_done(store, unit), device):
            continue
        train_unit_data_parallel(unit, dataset, manifest, store, device, mia_max_per_class)
        finished += 1
    barrier(device)  # rank 0 has written the last unit before any rank reports
    return finished


def train_unit_data_parallel(unit: TrainUnit, dataset: ImageDataset, manifest: SplitManifest,
                             store: ResultsStore, device,
                             mia_max_per_class: int = 5000) -> dict | None:
    """``train_unit`` across every rank: train data-parallel, then rank 0 evaluates and stores.

    Called on every rank of the torch.distributed group with the same arguments.
    Returns the info dict on rank 0, None elsewhere.
    """
    from unlearn_core.train.distributed import world
    from unlearn_core.train.source import TRAIN_VIEW, build_model

    rank, size = world()
    recipe = Recipe.from_dict(unit.recipe)
    recording = unit.record_updates and rank == 0  # hooks see every rank's batch: one writer
    if recording and store.updates_dir(unit.key).exists():
        shutil.rmtree(store.updates_dir(unit.key))  # a crash mid-recording: start again
    hooks = [UpdateRecorder(store.updates_dir(unit.key), seed=unit.seed)] if recording else []
    data = DeviceData.from_dataset(dataset, manifest.ids(TRAIN_VIEW[unit.role]), device)
    model = build_model(unit.model, dataset, unit.seed)
    seconds = fit(model, data, recipe, seed=unit.seed, hooks=hooks, distributed=True).seconds
    if unit.sparsity > 0:
        masks = prune_model(model, unit.sparsity)  # same weights on every rank: same masks
        seconds += fit(model, data, recipe, seed=unit.seed + 1, hooks=[MaskHook(masks)],
                       distributed=True).seconds
    if rank != 0:
        return None
    return store_trained_unit(unit, model, seconds, dataset, manifest, store, device,
                              mia_max_per_class, extra={"data_parallel_workers": size})


def store_trained_unit(unit: TrainUnit, model, seconds: float, dataset: ImageDataset,
                       manifest: SplitManifest, store: ResultsStore, device,
                       mia_max_per_class: int = 5000, extra: dict | None = None) -> dict:
    """Evaluate and store a trained model exactly as ``train_unit`` does; info JSON last."""
    per_split = split_logits(model, dataset, manifest, device)
    metrics = model_metrics(per_split, mia_max_per_class=mia_max_per_class, seed=unit.seed)
    info = {**asdict(unit), "train_seconds": seconds, "metrics": metrics,
            "manifest": manifest.hash, **(extra or {})}
    save_checkpoint(model, store.model_path(unit.key), info)
    table = outputs_table(per_split, method=unit.role, hparams_hash="", seed=unit.seed,
                          model_id=unit.key)
    write_output_table(table, store.outputs, experiment=store.experiment, role=unit.role,
                       writer_id=unit.key)
    store.write_json(store.model_info_path(unit.key), info)
    return info


def run_references(config, units: list[TrainUnit], dataset: ImageDataset,
                   manifest: SplitManifest, store: ResultsStore, progress=None) -> float:
    """Train every unit not yet done as one Ray Train job; return the job's wall time."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    pending = [u for u in units if not is_done(store, u)]
    if not pending:
        return 0.0
    refs = config.references
    data_parallel = refs.data_parallel
    # data-parallel: every worker trains every unit; otherwise one unit per worker at most
    workers = refs.workers if data_parallel else min(refs.workers, len(pending))
    use_gpu = refs.gpus_per_worker > 0
    resources = {"CPU": refs.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = refs.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "data_ref": ray.put((dataset, manifest)),  # once through the object store
            "store": store, "units": pending, "use_gpu": use_gpu,
            "cpus_per_worker": refs.cpus_per_worker,
            "mia_max_per_class": config.mia_max_per_class,
            "data_parallel": data_parallel,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"references-{stable_hash([u.key for u in pending], length=8)}",
            storage_path=str(store.root / "ray"),
            # a failed worker restarts the job; finished units are skipped
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    start = time.perf_counter()
    error: list[BaseException] = []

    def target() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in the driver thread below
            error.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    done_before = len(units) - len(pending)
    while thread.is_alive():
        thread.join(timeout=0.5)
        if progress is not None:
            progress(sum(is_done(store, u) for u in units) - done_before)
    if error:
        raise error[0]
    missing = [u.key for u in units if not is_done(store, u)]
    if missing:
        raise RuntimeError(f"references stage finished without models {missing}")
    return time.perf_counter() - start


def reference_summary(store: ResultsStore, units: list[TrainUnit]) -> ReferenceSummary:
    """Mean reference metrics, stacked forget logits and the source's metrics."""
    infos = {u.key: store.read_json(store.model_info_path(u.key)) for u in units}
    refs = [u for u in units if u.role == "retrain"]
    source = next(u for u in units if u.role == "source")
    mean = mean_metrics([infos[u.key]["metrics"] for u in refs])
    table = read_outputs(store.outputs, experiment=store.experiment, role="retrain")
    ref_keys = {u.key for u in refs}
    table = table.filter(pc.is_in(table.column("model_id"), value_set=pa.array(sorted(ref_keys))))
    forget_logits, _, _ = logits_matrix(table, "forget")
    return ReferenceSummary(
        metrics=mean,
        forget_logits=forget_logits,
        retrain_seconds=float(np.mean([infos[u.key]["train_seconds"] for u in refs])),
        source_metrics=infos[source.key]["metrics"],
    )
