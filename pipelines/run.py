"""``unlearn run``: prepare -> references -> sweep -> replicate -> assemble, tracked in MLflow.

Every stage is keyed by what it depends on and skips work that exists, so the
same command resumes a crashed run and re-running a finished config trains
nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipelines import assembly_cache
from pipelines.config import ExperimentConfig
from pipelines.keys import replicate_seeds, stable_hash
from pipelines.lock import RunLock
from pipelines.probes import ProbeSettings, reference_probes
from pipelines.progress import StageClock, build_plan
from pipelines.references import is_done, make_units, reference_summary, run_references
from pipelines.schedule import run_schedule
from pipelines.store import ResultsStore
from pipelines.sweep import plan_method, planned_trials
from pipelines.tracking import Tracker, absolute_tracking_uri, git_commit
from pipelines.trial import SweepContext, probe_salt
from unlearn_core.data.datasets import load_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.methods import requirements
from unlearn_core.storage import worker_env
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


def _init_ray(address: str | None, num_cpus: int | None,
              env_vars: dict[str, str] | None = None) -> None:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Our own stage lines and progress bars replace Tune's tables and banners.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging

    import ray

    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if ray.is_initialized():
        return
    # Workers on other nodes reach the results store as the driver does: the S3
    # variables travel in the job's environment (never in a file).
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env)


def _default_tracking_uri(store: ResultsStore) -> str:
    """MLflow in SQLite beside the results when they are local, else in the working folder."""
    local = store.store.local_root
    folder = local.parent if local is not None else Path.cwd()
    return f"sqlite:///{folder / 'mlflow.db'}"


class _TrialLog:
    """Logs each trial to MLflow as it finishes (called from Tune's driver callback), under
    one run per method inside the stage run; a trial already logged is not logged again."""

    def __init__(self, tracker: Tracker, store: ResultsStore, stage: str, stage_id: str) -> None:
        self.tracker, self.store, self.stage, self.stage_id = tracker, store, stage, stage_id
        self.method_runs: dict[str, str] = {}

    def method_run(self, method: str) -> str:
        if method not in self.method_runs:
            self.method_runs[method] = self.tracker.stage_run(
                method, {"stage": self.stage, "method": method}, self.stage_id)
        return self.method_runs[method]

    def __call__(self, method: str, key: str) -> None:
        record = self.store.read_trial(method, key)
        if record is not None:
            self.log(record)

    def log(self, record: dict) -> None:
        if record.get("status") != "lost":  # lost: not a result, nothing was stored
            self.tracker.log_trial(record, self.method_run(record["method"]))


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
    store = ResultsStore.create(results_dir or config.results_dir, config.name)
    uri = absolute_tracking_uri(tracking_uri or config.tracking_uri
                                or _default_tracking_uri(store), Path.cwd())
    # made first: it checks the URI, so an unreachable server fails now, not after training
    tracker = Tracker(uri, config.name, {"git_commit": git_commit(),
                                         "config_hash": config.config_hash()})
    with RunLock(store.store):
        return _run_locked(config, store, tracker, smoke, address, num_cpus, started)


def _run_locked(config: ExperimentConfig, store: ResultsStore, tracker: Tracker, smoke: bool,
                address: str | None, num_cpus: int | None, started: float) -> dict:
    uri = tracker.uri
    clock = StageClock(store, "prepare")  # stage wall times: status, report
    _say(f"[prepare] {config.dataset.name}, forget {config.forget}")
    dataset = load_dataset(config.dataset.name, root=config.dataset.root,
                           download=config.dataset.download, **config.dataset.options)
    split = config.split
    manifest = make_manifest(dataset, config.forget, split.seed, SplitOptions(
        val_fraction=split.val_fraction, test_fraction=split.test_fraction,
        retain_subset_per_class=split.retain_subset_per_class, max_train=split.max_train))
    store.write_manifest(manifest)  # refuses a different split in the same experiment
    config_text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    store.write_text("config.yaml", config_text)
    sizes = manifest.sizes()
    _say(f"[prepare] manifest {manifest.hash}: " + " ".join(f"{k}={v}" for k, v in
                                                            sizes.items() if v))

    tracker.tags["manifest_hash"] = manifest.hash  # on every run made from here on
    env = {} if store.store.is_local else worker_env()

    def ensure_ray() -> None:  # started only when there is work for it
        _init_ray(address, num_cpus, env)

    methods = [m for m in config.methods if m.name != REFERENCE_METHOD]
    record_updates = any("update_recording" in requirements(m.name) for m in methods)
    units = make_units(config, manifest.hash, record_updates)
    store.write_plan(build_plan(config, manifest.hash, units, methods, smoke))  # status

    run_key = stable_hash(config.config_hash(), store.uri)
    with tracker.parent(f"run-{config.name}", run_key) as parent_id, \
            tempfile.TemporaryDirectory(prefix="unlearn-artifacts-") as staging:
        tracker.log_params({"dataset": config.dataset.name, "forget": config.forget,
                            "model": config.source.model, "references": config.references.count,
                            "replicates": config.replicates, "smoke": smoke,
                            "results": store.uri})
        (Path(staging) / "config.yaml").write_text(config_text)
        (Path(staging) / "manifest.parquet").write_bytes(manifest.to_parquet_bytes())
        tracker.log_artifact(Path(staging) / "config.yaml")
        tracker.log_artifact(Path(staging) / "manifest.parquet")

        clock.mark("references")
        to_train = sum(not is_done(store, u) for u in units)
        _say(f"[references] source + {config.references.count} retrained models "
             f"({to_train} to train)")
        bar = _Bar(len(units), "references")
        done_before = len(units) - to_train
        bar.set(done_before)
        if to_train:
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
        storage = store.updates_bytes(units[0].key)
        tracker.log_metrics({**{f"reference/{k}": v for k, v in summary.metrics.items()},
                             "reference/count": len(units) - 1,
                             "reference/train_s_mean": summary.retrain_seconds,
                             "reference/stage_wall_s": wall,
                             **({"source/update_storage_bytes": storage} if storage else {})},
                            run_id=tracker.stage_run("references", {"stage": "references"},
                                                     parent_id))

        source = units[0]
        context = SweepContext(
            dataset=dataset, manifest=manifest, store=store, source_key=source.key,
            source_model=source.model, source_recipe=source.recipe, references=summary,
            objective_metric=config.objective.metric, objective_mode=config.objective.mode,
            mia_max_per_class=config.mia_max_per_class,
            reference_keys=tuple(u.key for u in units if u.role == "retrain"),
            probes=probes, source_sparsity=config.source.sparsity,
            max_retries=config.max_retries,
            zero_glance_objective=config.objective.zero_glance,
        )
        clock.mark("sweep")
        total_trials = sum(planned_trials(m, config.objective.zero_glance) for m in methods)
        _say(f"[sweep] {len(methods)} method(s), up to {total_trials} trials, "
             f"objective {config.objective.mode} {config.objective.metric}; each method's "
             f"best config x {config.replicates} seeds as soon as its sweep is done")
        # one Tune run for every method's sweep and replicates (schedule.py): a method's
        # replicates start while others still sweep; assembly waits for the last one
        bars = {"sweep": _Bar(total_trials, "sweep"),
                "replicate": _Bar(len(replicate_seeds(config.replicates)) * len(methods),
                                  "replicate")}
        logs = {stage: _TrialLog(tracker, store, stage,
                                 tracker.stage_run(stage, {"stage": stage}, parent_id))
                for stage in ("sweep", "replicate")}
        result = run_schedule(
            context, [plan_method(context, m) for m in methods], config.replicates,
            progress=lambda stage, n: bars[stage].add(n), ensure_ray=ensure_ray,
            on_record=lambda stage, method, key: logs[stage](method, key))
        for bar in bars.values():
            bar.close()
        best = result.best
        for name, records in result.sweeps.items():
            for record in records:  # those stored by an earlier, interrupted run
                logs["sweep"].log(record)
            labels = {"failed": "failed", "stopped": "stopped early",  # stopped: by ASHA
                      "lost": "lost (re-run to retry)"}
            counts = "".join(f", {n} {label}" for status, label in labels.items()
                             if (n := sum(r["status"] == status for r in records)))
            _say(f"[sweep] {name}: {len(records)} trials{counts}; best {best[name]}")

        clock.mark("replicate")  # the stage clock: replicates ran within the pass above
        records = result.replicates
        _say(f"[replicate] {len(records)} runs: best config x {config.replicates} seeds")
        for record in records:
            logs["replicate"].log(record)
        lost = [r["trial_key"] for r in records if r["status"] == "lost"]
        if lost:
            _say(f"[replicate] {len(lost)} replicate(s) lost to infrastructure failures; "
                 "the table leaves them out (re-run to retry)")
        replicate_keys = {name: [] for name, hp in best.items() if hp is not None}
        for record in records:  # in job order: method, then seed
            if record["status"] != "lost":
                replicate_keys[record["method"]].append(record["trial_key"])

        order = [m.name for m in config.methods]
        if REFERENCE_METHOD not in order:
            order.append(REFERENCE_METHOD)
        store.write_json("summary.json", {
            "experiment": config.name, "methods": order, "replicates": replicate_keys,
            "references": [u.key for u in units if u.role == "retrain"],
            "source": source.key, "best": best, "manifest": manifest.hash,
            "reference_probes": ref_probes,
            "config_hash": config.config_hash(),
        })
        clock.mark("assemble")
        # the inputs as this assembly reads them, and where its tables are logged
        inputs = assembly_cache.fingerprint(store, uri, parent_id)
        if assembly_cache.unchanged(store, inputs):
            _say("[assemble] nothing changed since the last assembly: its tables stand")
            assembled = {"markdown": store.store.read_text("tables/results.md")}
            clock.finish()
        else:
            _say("[assemble] tables and plots")
            assembled = _assemble_and_log(store, tracker, parent_id, clock, Path(staging))
            assembly_cache.mark(store, inputs)  # last: the tables and their logging are done
    elapsed = time.perf_counter() - started
    _say("")
    _say(assembled["markdown"])
    _say(f"results  {store.uri}")
    _say(f"table    {store.store.url('tables/results.md')}")
    _say(f"mlflow   {uri}   (view: mlflow ui --backend-store-uri {uri})")
    _say(f"done in {elapsed:.1f}s")
    return {"store": store, "uri": uri, "assembled": assembled, "seconds": elapsed}


def _assemble_and_log(store: ResultsStore, tracker, parent_id: str, clock,
                      staging: Path) -> dict:
    """Assemble the tables and plots and log them, with the HTML report, to MLflow."""
    # imported here: scikit-learn, matplotlib and the metrics cost ~2 s of every CLI call
    from pipelines.assemble import assemble
    from pipelines.report import write_report

    assembled = assemble(store)
    assemble_id = tracker.stage_run("assemble", {"stage": "assemble"}, parent_id)
    tracker.log_metrics({f"{method}/{k}": v for method, row in assembled["rows"].items()
                         for k, v in row.get("fscore", {}).items()}, run_id=assemble_id)
    for path in sorted(Path(assembled["tables"]).iterdir()):
        tracker.log_artifact(path, "tables", run_id=assemble_id)
    for path in assembled["plots"]:
        tracker.log_artifact(path, "plots", run_id=assemble_id)
    shutil.rmtree(Path(assembled["tables"]).parent, ignore_errors=True)  # local staging
    clock.finish()
    tracker.log_artifact(write_report(store, staging / "report.html"),
                         run_id=assemble_id)  # one self-contained HTML file
    return assembled


def _device(config: ExperimentConfig) -> str:
    """Where the driver probes references: the config's device, else CUDA when present."""
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
