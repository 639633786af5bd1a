"""``unlearn run``: prepare -> references -> sweep -> replicate -> assemble, tracked in MLflow.

Every stage is keyed by what it depends on and skips work that exists, so the
same command resumes a crashed run and re-running a finished config trains
nothing.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import yaml

from pipelines.assemble import assemble
from pipelines.config import ExperimentConfig
from pipelines.probes import ProbeSettings, reference_probes
from pipelines.references import make_units, reference_summary, run_references
from pipelines.store import ResultsStore
from pipelines.sweep import (
    SweepContext,
    best_hparams,
    planned_trials,
    probe_salt,
    replicate,
    sweep_method,
    trial_key,
)
from pipelines.tracking import Tracker, absolute_tracking_uri, git_commit
from unlearn_core.data.datasets import load_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.io import atomic_write_text
from unlearn_core.methods import requirements
from unlearn_core.train.recipe import Recipe

# The retrain row comes from the references: never train the gold standard twice.
REFERENCE_METHOD = "retrain"


def _say(message: str) -> None:
    print(message, flush=True)


class _Bar:
    """A tqdm bar driven by counts; quiet when output is not a terminal."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="model" if "ref" in desc else "trial",
                        disable=None, leave=True, file=sys.stderr)

    def set(self, value: int) -> None:
        self.bar.n = value
        self.bar.refresh()

    def add(self, value: int = 1) -> None:
        self.bar.update(value)

    def close(self) -> None:
        self.bar.close()


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Our own stage lines and progress bars replace Tune's tables and banners.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging

    import ray

    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def run_experiment(
    config: ExperimentConfig,
    *,
    smoke: bool = False,
    tracking_uri: str | None = None,
    results_dir: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
) -> dict:
    started = time.perf_counter()
    if smoke:
        config = config.smoked()
    results = results_dir or config.results_dir
    store = ResultsStore.create(results, config.name)
    uri = absolute_tracking_uri(tracking_uri or config.tracking_uri, results)

    _say(f"[prepare] {config.dataset.name}, forget {config.forget}")
    dataset = load_dataset(config.dataset.name, root=config.dataset.root,
                           download=config.dataset.download, **config.dataset.options)
    split = config.split
    manifest = make_manifest(dataset, config.forget, split.seed, SplitOptions(
        val_fraction=split.val_fraction, test_fraction=split.test_fraction,
        retain_subset_per_class=split.retain_subset_per_class, max_train=split.max_train))
    manifest.write(store.root)  # refuses a different split in the same folder
    atomic_write_text(store.root / "config.yaml",
                      yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    sizes = manifest.sizes()
    _say(f"[prepare] manifest {manifest.hash}: " + " ".join(f"{k}={v}" for k, v in
                                                            sizes.items() if v))

    tracker = Tracker(uri, config.name, {"git_commit": git_commit(),
                                         "manifest_hash": manifest.hash,
                                         "config_hash": config.config_hash()})
    def ensure_ray() -> None:  # started only when there is work for it
        _init_ray(address, num_cpus)

    methods = [m for m in config.methods if m.name != REFERENCE_METHOD]
    record_updates = any("update_recording" in requirements(m.name) for m in methods)
    units = make_units(config, manifest.hash, record_updates)

    with tracker.parent(f"run-{time.strftime('%Y%m%d-%H%M%S')}"):
        tracker.log_params({"dataset": config.dataset.name, "forget": config.forget,
                            "model": config.source.model, "references": config.references.count,
                            "replicates": config.replicates, "smoke": smoke})
        tracker.log_artifact(store.root / "config.yaml")
        tracker.log_artifact(store.root / "manifest.parquet")

        _say(f"[references] source + {config.references.count} retrained models "
             f"({sum(not (store.model_info_path(u.key)).exists() for u in units)} to train)")
        bar = _Bar(len(units), "references")
        bar.set(len(units) - sum(not store.model_info_path(u.key).exists() for u in units))
        done_before = bar.bar.n
        if any(not store.model_info_path(u.key).exists() for u in units):
            ensure_ray()
        wall = run_references(config, units, dataset, manifest, store,
                              progress=lambda n: bar.set(done_before + n))
        bar.set(len(units))
        bar.close()
        summary = reference_summary(store, units)
        probes = ProbeSettings.from_config(config.metrics)
        salt = probe_salt(probes)
        probed_keys = [u.key for u in units if u.role == "retrain"][:config.metrics.references]
        if probes.any and probed_keys:
            _say(f"[references] probes (distance/relearn/degree) of {len(probed_keys)} "
                 "references, for the retrain row")
        bar = _Bar(len(probed_keys) if probes.any else 0, "reference probes")
        ref_probes = reference_probes(
            store, units[0].key, probed_keys, units[0].model, dataset, manifest, probes,
            recipe=Recipe.from_dict(units[0].recipe),
            source_forget_acc=summary.source_metrics.get("forget/acc"), salt=salt,
            device=_device(config), progress=bar.add)
        bar.close()
        with tracker.nested("references", {"stage": "references"}):
            storage = store.updates_dir(units[0].key)
            tracker.log_metrics({**{f"reference/{k}": v for k, v in summary.metrics.items()},
                                 "reference/count": len(units) - 1,
                                 "reference/train_s_mean": summary.retrain_seconds,
                                 "reference/stage_wall_s": wall,
                                 **({"source/update_storage_bytes": _folder_bytes(storage)}
                                    if storage.exists() else {})})

        source = units[0]
        context = SweepContext(
            dataset=dataset, manifest=manifest, store=store, source_key=source.key,
            source_model=source.model, source_recipe=source.recipe, references=summary,
            objective_metric=config.objective.metric, objective_mode=config.objective.mode,
            mia_max_per_class=config.mia_max_per_class,
            reference_keys=tuple(u.key for u in units if u.role == "retrain"),
            probes=probes, source_sparsity=config.source.sparsity,
        )
        total_trials = sum(planned_trials(m) for m in methods)
        _say(f"[sweep] {len(methods)} method(s), up to {total_trials} trials, "
             f"objective {config.objective.mode} {config.objective.metric}")
        bar = _Bar(total_trials, "sweep")
        best = {}
        with tracker.nested("sweep", {"stage": "sweep"}):
            for method in methods:
                device = "cuda" if method.resources.gpu > 0 else "cpu"
                records = sweep_method(dataclasses.replace(context, device=device), method,
                                       progress=bar.add, ensure_ray=ensure_ray)
                best[method.name] = best_hparams(records, config.objective.mode)
                with tracker.nested(method.name, {"stage": "sweep", "method": method.name}):
                    for record in records:
                        tracker.log_trial(record)
                failed = sum(r["status"] == "failed" for r in records)
                stopped = sum(r["status"] == "stopped" for r in records)  # by ASHA
                _say(f"[sweep] {method.name}: {len(records)} trials"
                     f"{f', {failed} failed' if failed else ''}"
                     f"{f', {stopped} stopped early' if stopped else ''}; "
                     f"best {best[method.name]}")
        bar.close()

        jobs = [{"method": name, "hparams": hp, "seed": seed}
                for name, hp in best.items() if hp is not None
                for seed in range(config.replicates)]
        _say(f"[replicate] {len(jobs)} runs: best config x {config.replicates} seeds")
        bar = _Bar(len(jobs), "replicate")
        cpu = max(m.resources.cpu for m in methods) if methods else 1
        gpu = max(m.resources.gpu for m in methods) if methods else 0
        replicate(dataclasses.replace(context, device="cuda" if gpu > 0 else "cpu"), jobs,
                  {"cpu": cpu, "gpu": gpu}, progress=bar.add, ensure_ray=ensure_ray)
        bar.close()
        replicate_keys = {
            name: [trial_key(source.key, name, hp, seed, salt)
                   for seed in range(config.replicates)]
            for name, hp in best.items() if hp is not None
        }
        with tracker.nested("replicate", {"stage": "replicate"}):
            for name, keys in replicate_keys.items():
                with tracker.nested(name, {"stage": "replicate", "method": name}):
                    for key in keys:
                        tracker.log_trial(store.read_json(store.trial_path(name, key)))

        order = [m.name for m in config.methods]
        if REFERENCE_METHOD not in order:
            order.append(REFERENCE_METHOD)
        store.write_json(store.root / "summary.json", {
            "experiment": config.name, "methods": order, "replicates": replicate_keys,
            "references": [u.key for u in units if u.role == "retrain"],
            "source": source.key, "best": best, "manifest": manifest.hash,
            "reference_probes": ref_probes,
            "config_hash": config.config_hash(),
        })
        _say("[assemble] tables and plots")
        assembled = assemble(store.root)
        with tracker.nested("assemble", {"stage": "assemble"}):
            for method, row in assembled["rows"].items():
                tracker.log_metrics({f"{method}/{k}": v for k, v in
                                     row.get("fscore", {}).items()})
            for path in sorted(assembled["tables"].iterdir()):
                tracker.log_artifact(path, "tables")
            for path in assembled["plots"]:
                tracker.log_artifact(path, "plots")
    elapsed = time.perf_counter() - started
    _say("")
    _say(assembled["markdown"])
    _say(f"results  {store.root}")
    _say(f"table    {assembled['tables'] / 'results.md'}")
    _say(f"mlflow   {uri}   (view: mlflow ui --backend-store-uri {uri})")
    _say(f"done in {elapsed:.1f}s")
    return {"store": store, "uri": uri, "assembled": assembled, "seconds": elapsed}


def _device(config: ExperimentConfig) -> str:
    """Where the driver probes references: the config's device, else CUDA when present."""
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def quickstart_config_path() -> Path:
    return Path(__file__).parent / "configs" / "quickstart.yaml"
