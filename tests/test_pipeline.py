"""The real pipeline path in smoke mode: local Ray (2 CPUs), MLflow in SQLite, Parquet.

Slow (Ray start-up, worker processes); run in CI anyway.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from unlearn_core.outputs import read_outputs

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "pipe",
    "dataset": {"name": "digits"},
    "forget": "classes=3",
    "split": {"max_train": 600},
    "source": {"model": "mlp", "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 3, "workers": 2},
    "methods": [
        {"name": "original"},
        {"name": "retrain"},
        {"name": "finetune", "trials": 2, "fixed": {"epochs": 1}},
        {"name": "grad_ascent", "trials": 3, "fixed": {"epochs": 1}},
    ],
    "replicates": 2,
    "mia_max_per_class": 200,
}


def write_config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for sub in ("models", "trials", "outputs") for p in (root / sub).rglob("*")
            if p.is_file()}


def test_smoke_run_then_rerun_trains_nothing(tmp_path, capsys):
    from pipelines.config import load_config
    from pipelines.run import run_experiment

    config = load_config(write_config(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_experiment(config, tracking_uri=uri, results_dir=str(tmp_path / "results"),
                           num_cpus=2)
    root = first["store"].root
    table = (root / "tables" / "results.md").read_text()
    for method in ("original", "retrain", "finetune", "grad_ascent"):
        assert f"| {method} |" in table
    assert "Forget Q." in table and (root / "tables" / "results.tex").exists()
    assert (root / "plots" / "accuracy.png").stat().st_size > 0
    # a retrained reference never predicts the forgotten class well
    retrain_row = next(line for line in table.splitlines() if line.startswith("| retrain |"))
    assert retrain_row.split("|")[3].strip().startswith("0.00")

    outputs = read_outputs(root / "outputs")
    roles = set(outputs.column("role").to_pylist())
    assert roles == {"source", "retrain", "unlearned"}
    assert outputs.schema.field("logits").type.list_size == 10

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs_before = len(mlflow.search_runs(experiment_names=["pipe"], output_format="list"))
    before = snapshot(root)
    start = time.perf_counter()
    second = run_experiment(config, tracking_uri=uri, results_dir=str(tmp_path / "results"),
                            num_cpus=2)
    assert snapshot(root) == before, "a re-run must not train or rewrite anything"
    assert (root / "tables" / "results.md").read_text() == table
    # nothing new to assemble: the tables stand (assembly_cache), and say so
    assert "nothing changed since the last assembly" in capsys.readouterr().out
    assert second["seconds"] < first["seconds"]
    print(f"first {first['seconds']:.1f}s, re-run {time.perf_counter() - start:.1f}s")

    runs = mlflow.search_runs(experiment_names=["pipe"], output_format="list")
    assert len(runs) == runs_before, "a re-run with no new work must add no MLflow run"
    by_id = {r.info.run_id: r for r in runs}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # the re-run resumes the experiment's parent run
    stages = {r.info.run_name for r in runs
              if by_id.get(r.data.tags.get("mlflow.parentRunId")) in parents}
    assert {"references", "sweep", "replicate", "assemble"} <= stages
    trials = [r for r in runs if r.data.tags.get("trial_key")]
    assert {r.data.tags["stage"] for r in trials} == {"sweep", "replicate"}
    assert len(trials) == len({(r.data.tags["stage"], r.data.tags["trial_key"])
                               for r in trials}), "a trial was logged twice"
    assert all(r.data.tags["git_commit"] and r.data.tags["manifest_hash"] for r in trials)
    finetune = next(r for r in trials if r.data.tags["method"] == "finetune")
    assert "lr" in finetune.data.params and "forget/acc" in finetune.data.metrics


def test_driver_killed_mid_sweep_resumes_without_duplicates(tmp_path):
    """kill -9 the driver during the sweep; the re-run completes, each trial exactly once."""
    config = write_config(tmp_path, name="crash",
                          methods=[{"name": "finetune", "trials": 6, "fixed": {"epochs": 2}}])
    results = tmp_path / "results"
    command = [sys.executable, "-m", "pipelines.cli", "run", str(config), "--results",
               str(results), "--num-cpus", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials_dir = results / "crash" / "trials" / "finetune"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and driver.poll() is None:
            if trials_dir.exists() and len(list(trials_dir.glob("*.json"))) >= 1:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (
            f"the run ended (code {driver.returncode}) before it could be killed; "
            f"{sorted(p.name for p in (results / 'crash').rglob('*'))[:50]}")
        os.kill(driver.pid, signal.SIGKILL)  # the driver only, as a crash would
        driver.wait()
    finally:
        time.sleep(1)
        try:  # then clean up the local Ray processes the driver left behind
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_before = len(list(trials_dir.glob("*.json")))
    assert 1 <= done_before < 6
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = list(trials_dir.glob("*.json"))
    sweep = [p for p in records if '"stage": "sweep"' in p.read_text()]
    assert len(sweep) == 6  # every sweep trial exactly once (files are keyed by trial)
    outputs = read_outputs(results / "crash" / "outputs", role="unlearned")
    model_ids = outputs.column("model_id").to_pylist()
    keys = [f"{m}:{s}" for m, s in zip(model_ids, outputs.column("sample_id").to_pylist(),
                                       strict=True)]
    assert len(keys) == len(set(keys)), "a (model, sample) row was stored twice"
    assert len(set(model_ids)) == len(records)
    assert pc.count_distinct(outputs.column("model_id")).as_py() == len(records)
