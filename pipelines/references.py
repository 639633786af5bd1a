"""references stage: the source model and N retrained references, as a pool of Ray tasks.

Each model is one Ray task (``max_retries``: a task lost with its worker or node
is run again elsewhere; an I/O error is retried too). Idle workers pull the next
model from Ray's queue, so a lost node costs only the models in flight on it,
never a fixed share. Each finished model is written through the results store
(safetensors checkpoint, per-sample outputs, then the info JSON, written last,
which commits it), so a restarted run skips finished models. The dataset goes
to the workers once, through the object store; worker processes are reused
across tasks, so imports are paid once per worker.

Packs (``references.pack``, default auto): one task trains several references at
once, stacked over a model axis (``unlearn_core.train.stacked``), then evaluates
and writes each exactly as a one-model task does; a lost task loses its pack
only. Units that cannot be stacked (the source with its update recorder, pruned
models, models with dropout) go one per task, with the reason logged.

``references.data_parallel`` (one large model across all workers) is one Ray
Train job instead (``train_units_data_parallel``).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.evaluate import ReferenceSummary, mean_metrics, model_metrics
from pipelines.keys import stable_hash
from pipelines.store import ResultsStore
from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.outputs import logits_matrix, outputs_table, read_output_files, split_logits
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
    return store.model_done(unit.key)


def train_unit(unit: TrainUnit, dataset: ImageDataset, manifest: SplitManifest,
               store: ResultsStore, device, mia_max_per_class: int = 5000) -> dict:
    """Train, evaluate and store one model. The info JSON is written last: it marks done."""
    recipe = Recipe.from_dict(unit.recipe)
    # The recording goes to this node's disk first, then to the store (index last).
    with tempfile.TemporaryDirectory(prefix="unlearn-updates-") as scratch:
        recording = Path(scratch) / "updates"
        hooks = [UpdateRecorder(recording, seed=unit.seed)] if unit.record_updates else []
        trained = train_model(dataset, manifest, unit.model, recipe, role=unit.role,
                              seed=unit.seed, device=device, hooks=hooks)
        seconds = trained.fit.seconds
        if unit.sparsity > 0:
            masks = prune_model(trained.model, unit.sparsity)
            view = "train" if unit.role == "source" else "retain"
            data = DeviceData.from_dataset(dataset, manifest.ids(view), device)
            seconds += fit(trained.model, data, recipe, seed=unit.seed + 1,
                           hooks=[MaskHook(masks)]).seconds
        if hooks:
            store.put_updates(unit.key, recording)  # before the info JSON commits the model
    return store_trained_unit(unit, trained.model, seconds, dataset, manifest, store, device,
                              mia_max_per_class)


def _pack_task(units: list[TrainUnit], data, store: ResultsStore, use_gpu: bool, cpus: float,
               mia_max_per_class: int, fit_memory: bool) -> list[str]:
    """One pack of models (often one), in a Ray worker. Idempotent: a retried task skips
    the models committed before the failure and trains the rest from scratch."""
    import torch

    from pipelines.reference_packs import train_pack

    torch.set_num_threads(max(1, int(cpus)))
    todo = [u for u in units if not is_done(store, u)]
    dataset, manifest = data
    device = torch.device("cuda") if use_gpu else torch.device("cpu")
    if len(todo) == 1:
        train_unit(todo[0], dataset, manifest, store, device, mia_max_per_class)
    elif todo:
        train_pack(todo, dataset, manifest, store, device, mia_max_per_class, fit_memory)
    return [u.key for u in units]


def _train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker (``data_parallel``): every rank trains every unit together, on its
    shard of each batch (``train_units_data_parallel``)."""
    import ray
    import ray.train
    import torch

    torch.set_num_threads(max(1, int(loop_config["cpus_per_worker"])))
    dataset, manifest = ray.get(loop_config["data_ref"])
    store: ResultsStore = loop_config["store"]
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else torch.device("cpu")
    finished = train_units_data_parallel(loop_config["units"], dataset, manifest, store, device,
                                         loop_config["mia_max_per_class"])
    # One report at the end: ray.train.report is a barrier across workers.
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
    with tempfile.TemporaryDirectory(prefix="unlearn-updates-") as scratch:
        folder = Path(scratch) / "updates"
        hooks = [UpdateRecorder(folder, seed=unit.seed)] if recording else []
        data = DeviceData.from_dataset(dataset, manifest.ids(TRAIN_VIEW[unit.role]), device)
        model = build_model(unit.model, dataset, unit.seed)
        seconds = fit(model, data, recipe, seed=unit.seed, hooks=hooks, distributed=True).seconds
        if unit.sparsity > 0:
            masks = prune_model(model, unit.sparsity)  # same weights on every rank: same masks
            seconds += fit(model, data, recipe, seed=unit.seed + 1, hooks=[MaskHook(masks)],
                           distributed=True).seconds
        if rank != 0:
            return None
        if recording:
            store.put_updates(unit.key, folder)
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
    store.save_model(unit.key, model, info)
    table = outputs_table(per_split, method=unit.role, hparams_hash="", seed=unit.seed,
                          model_id=unit.key)
    store.write_outputs(table, unit.role, unit.key)
    store.write_model_info(unit.key, info)  # last: commits the model
    return info


def run_references(config, units: list[TrainUnit], dataset: ImageDataset,
                   manifest: SplitManifest, store: ResultsStore, progress=None) -> float:
    """Train every unit not yet done; return the stage's wall time.

    ``progress(n)`` is called with the number of units finished by this call so far.
    """
    pending = [u for u in units if not is_done(store, u)]
    if not pending:
        return 0.0
    start = time.perf_counter()
    if config.references.data_parallel:
        _run_data_parallel(config, pending, dataset, manifest, store, progress)
    else:
        _run_pool(config, pending, dataset, manifest, store, progress)
    missing = [u.key for u in units if not is_done(store, u)]
    if missing:
        raise RuntimeError(f"references stage finished without models {missing}")
    return time.perf_counter() - start


def _run_pool(config, pending: list[TrainUnit], dataset: ImageDataset,
              manifest: SplitManifest, store: ResultsStore, progress=None) -> None:
    """One Ray task per pack of models; the cluster's free workers pull them in order."""
    import ray

    from pipelines.reference_packs import auto_pack_size, make_packs

    refs = config.references
    use_gpu = refs.gpus_per_worker > 0
    size = refs.pack or auto_pack_size(pending, dataset, _pool_slots(refs), use_gpu)
    packs = make_packs(pending, dataset, size)
    task = ray.remote(_pack_task).options(
        num_cpus=refs.cpus_per_worker, num_gpus=refs.gpus_per_worker,
        max_retries=config.max_retries,  # worker/node death: run again elsewhere
        retry_exceptions=[OSError],  # I/O errors (object store, network) are transient
        name="reference",
    )
    data_ref = ray.put((dataset, manifest))  # once through the object store
    waiting = {task.remote(pack, data_ref, store, use_gpu, refs.cpus_per_worker,
                           config.mia_max_per_class, refs.pack == 0): len(pack)
               for pack in packs}
    finished, failed, errors = 0, 0, []
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.5,
                            fetch_local=False)
        for ref in ready:
            count = waiting.pop(ref)
            try:
                ray.get(ref)
                finished += count
            except Exception as err:  # retries exhausted: the other packs still finish
                failed += count
                errors.append(err)
        if ready and progress is not None:
            progress(finished)
    if errors:
        raise RuntimeError(f"{len(errors)} reference task(s) ({failed} model(s)) failed after "
                           f"{config.max_retries} retries; the others are stored and a "
                           f"re-run trains only the missing ones. First error: {errors[0]}")


def _pool_slots(refs) -> int:
    """How many pool tasks the Ray cluster runs at once (its CPUs or GPUs per task)."""
    import ray

    total = ray.cluster_resources()
    if refs.gpus_per_worker > 0:
        return max(1, int(total.get("GPU", 0) // refs.gpus_per_worker))
    return max(1, int(total.get("CPU", 1) // refs.cpus_per_worker))


def _run_data_parallel(config, pending: list[TrainUnit], dataset: ImageDataset,
                       manifest: SplitManifest, store: ResultsStore, progress=None) -> None:
    """All workers train each unit together, as one Ray Train job."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    refs = config.references
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
        },
        scaling_config=ScalingConfig(num_workers=refs.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"references-{stable_hash([u.key for u in pending], length=8)}",
            storage_path=ray_storage_path(store),
            # a failed worker restarts the job; finished units are skipped
            failure_config=FailureConfig(max_failures=config.max_retries),
        ),
    )
    error: list[BaseException] = []

    def target() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in the driver thread below
            error.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
        if progress is not None:
            progress(sum(is_done(store, u) for u in pending))
    if error:
        raise error[0]


def ray_storage_path(store: ResultsStore) -> str:
    """Where Ray Train/Tune keep their own state: this driver's temporary folder.

    Our records in the store are the source of truth; Ray's run state is only for
    Ray, and a local path keeps it off the object store and out of the results.
    """
    return str(Path(tempfile.gettempdir()) / "unlearn-ray" / stable_hash(store.uri, length=12))


def reference_summary(store: ResultsStore, units: list[TrainUnit]) -> ReferenceSummary:
    """Mean reference metrics, stacked forget logits and the source's metrics."""
    infos = {u.key: store.read_model_info(u.key) for u in units}
    refs = [u for u in units if u.role == "retrain"]
    source = next(u for u in units if u.role == "source")
    mean = mean_metrics([infos[u.key]["metrics"] for u in refs])
    # only the committed references' files, only the forget rows and the columns used
    files = [store.store.path(store.outputs_rel("retrain", u.key)) for u in refs]
    table = read_output_files(store.store.fs, files, splits=("forget",),
                              columns=("model_id", "sample_id", "label", "logits", "split"))
    forget_logits, _, _ = logits_matrix(table, "forget")
    return ReferenceSummary(
        metrics=mean,
        forget_logits=forget_logits,
        retrain_seconds=float(np.mean([infos[u.key]["train_seconds"] for u in refs])),
        source_metrics=infos[source.key]["metrics"],
    )
