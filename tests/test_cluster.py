"""Off one machine: a Ray cluster whose nodes share no disk, results on a real S3 server.

The cluster (``ray_cluster`` in conftest) is a head with no CPUs and two 1-CPU worker
nodes, each a ``ray start`` process whose view of pytest's temp folder is an empty
tmpfs; the S3 server is SeaweedFS. Each run is the real CLI (``unlearn run``) in a
subprocess, as a user would start it. Tables are compared without the time column
(wall-clock seconds differ between any two runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unlearn_core.storage import Store

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).parent.parent / "pipelines" / "configs" / "quickstart.yaml"

# Enough references and trials that a node can be lost in the middle of each stage.
FAULT_CONFIG = {
    "name": "faults",
    "dataset": {"name": "digits"},
    "forget": "classes=3",
    "split": {"max_train": 600},
    "source": {"model": "mlp", "recipe": {"epochs": 8, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 6},
    "methods": [
        {"name": "original"},
        {"name": "retrain"},
        {"name": "finetune", "trials": 4, "fixed": {"epochs": 300}},  # seconds per trial
    ],
    "replicates": 2,
    "mia_max_per_class": 200,
    "metrics": {"relearn": {"enabled": False}, "distance": False, "references": 0},
}


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _unlearn(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _table(stdout: str) -> list[str]:
    """The main table's rows as printed, without the time column."""
    rows = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    drop = header.index("Time (s)") if "Time (s)" in header else None
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) != len(header):
            break  # the next table (MIA) starts
        out.append(" | ".join(c for j, c in enumerate(cells) if j != drop))
    return out


def _cluster_env(cluster, s3_server) -> dict[str, str]:
    return _env({**s3_server.env(), **cluster.driver_env()})


def _local_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".parquet", ".safetensors")]


def _write(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quickstart_on_a_cluster_with_s3_prints_the_local_table(ray_cluster, s3_server,
                                                                   tmp_path):
    local = _unlearn("run", str(QUICKSTART), "--smoke", "--results", str(tmp_path / "local"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/local.db", "--num-cpus", "2",
                     cwd=tmp_path, env=_env({}))
    assert local.returncode == 0, local.stderr[-3000:]

    work = tmp_path / "work"  # the driver's working folder: nothing lands here
    work.mkdir()
    bucket_uri = "s3://unlearn/try"
    env = _cluster_env(ray_cluster, s3_server)
    start = time.perf_counter()
    remote = _unlearn("run", str(QUICKSTART), "--smoke", "--address", ray_cluster.address,
                      "--results", bucket_uri, "--tracking-uri",
                      f"sqlite:///{tmp_path}/cluster.db", cwd=work, env=env)
    assert remote.returncode == 0, remote.stderr[-3000:]
    print(f"quickstart --smoke on the 3-node cluster with S3: {time.perf_counter() - start:.1f}s")
    assert _table(remote.stdout) == _table(local.stdout)
    assert not _local_files(work) and not (work / "s3:").exists()
    assert "results  s3://unlearn/try/quickstart-digits-class3-smoke" in remote.stdout

    tables = _unlearn("tables", f"{bucket_uri}/quickstart-digits-class3-smoke", cwd=work,
                      env=env)
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert _table(tables.stdout) == _table(local.stdout)
    assert not _local_files(work)

    # the workers wrote everything to the bucket, through the store
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        store = Store.at(f"{bucket_uri}/quickstart-digits-class3-smoke", create=False)
        assert len(store.list("models", suffix=".safetensors")) == 3  # source + 2 references
        assert store.exists("tables/results.md") and store.exists("manifest.parquet")
        assert not store.exists("lock.json"), "the run released its lock"


@pytest.fixture(scope="module")
def undisturbed_table(tmp_path_factory) -> list[str]:
    """FAULT_CONFIG's table from an undisturbed run (one local node)."""
    folder = tmp_path_factory.mktemp("undisturbed")
    config = _write(folder, FAULT_CONFIG)
    done = _unlearn("run", str(config), "--results", str(folder / "results"),
                    "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--num-cpus", "2",
                    cwd=folder, env=_env({}))
    assert done.returncode == 0, done.stderr[-3000:]
    return _table(done.stdout)


def _run_and_kill(cluster, s3_server, tmp_path, prefix: str, ready, worker: int):
    """Start FAULT_CONFIG on the cluster; kill worker node ``worker`` once ``ready(store)``;
    return the finished run and its store."""
    config = _write(tmp_path, FAULT_CONFIG)
    uri = f"s3://faults/{prefix}"
    command = [sys.executable, "-m", "pipelines.cli", "run", str(config), "--address",
               cluster.address, "--results", uri, "--tracking-uri",
               f"sqlite:///{tmp_path}/mlflow.db"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=_cluster_env(cluster, s3_server),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        store = Store.at(f"{uri}/faults", create=False)
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and not ready(store):
            time.sleep(0.1)
        assert driver.poll() is None, f"the run ended before the kill: {driver.stderr.read()}"
        cluster.kill_worker(worker)
        at_kill = {"models": len(store.list("models", suffix=".json")),
                   "trials": len(store.list("trials", suffix=".json", recursive=True))}
        stdout, stderr = driver.communicate(timeout=600)
        assert driver.returncode == 0, stderr[-3000:]
        return stdout, store, at_kill


def _logged_trials(tracking_db: Path, method: str) -> int:
    """Trial runs of ``method`` in the MLflow database, read while the driver writes it."""
    import mlflow

    if not tracking_db.exists():
        return 0
    try:
        client = mlflow.MlflowClient(f"sqlite:///{tracking_db}")
        experiment = client.get_experiment_by_name("faults")
        if experiment is None:
            return 0
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.method = '{method}'")
    except Exception:  # the driver is migrating or writing the database right now
        return 0
    return sum("trial_key" in r.data.tags for r in runs)


def _assert_recorded_once(store: Store, stdout: str, tracking_db: Path) -> None:
    infos = store.list("models", suffix=".json")
    assert len([p for p in infos if "/retrain-" in p]) == 6 and \
        len([p for p in infos if "/source-" in p]) == 1
    outputs = store.list("outputs", suffix=".parquet", recursive=True)
    models = {p.rsplit("/", 1)[1].removesuffix(".json") for p in infos}
    trials = {p.rsplit("/", 1)[1].removesuffix(".json")
              for p in store.list("trials", suffix=".json", recursive=True)}
    written = {p.rsplit("/", 1)[1].removesuffix(".parquet") for p in outputs}
    assert len(outputs) == len(written) and written <= models | trials
    assert models <= written
    summary = store.read_json("summary.json")
    assert [len(keys) for keys in summary["replicates"].values()] == [2, 2]
    assert "lost (re-run" not in stdout and "lost to infrastructure" not in stdout
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{tracking_db}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tracking_db}").get_experiment_by_name(
            "faults").experiment_id], max_results=1000)
    logged = [(r.data.tags["stage"], r.data.tags["trial_key"]) for r in runs
              if "trial_key" in r.data.tags]
    assert len(logged) == len(set(logged)), "a trial was logged to MLflow twice"
    assert {key for _, key in logged} == trials


def test_node_lost_mid_references_costs_only_its_models(ray_cluster, s3_server, tmp_path,
                                                        undisturbed_table):
    def some_references_done(store: Store) -> bool:
        return len(store.list("models", suffix=".json")) >= 2

    stdout, store, at_kill = _run_and_kill(ray_cluster, s3_server, tmp_path, "refs",
                                           some_references_done, worker=0)
    assert at_kill["models"] < 7, "the node was lost after the references stage"
    _assert_recorded_once(store, stdout, tmp_path / "mlflow.db")
    assert _table(stdout) == undisturbed_table
    ray_cluster.add_worker()  # back to two workers for the next test


def test_node_lost_mid_sweep_retries_its_trials(ray_cluster, s3_server, tmp_path,
                                                undisturbed_table):
    def a_trial_logged(store: Store) -> bool:
        """A finetune trial is in MLflow already: trials are logged as they finish."""
        return bool(store.list("trials/finetune", suffix=".json")) and \
            _logged_trials(tmp_path / "mlflow.db", "finetune") > 0

    alive = [i for i, node in enumerate(ray_cluster.workers) if node.process.poll() is None]
    stdout, store, at_kill = _run_and_kill(ray_cluster, s3_server, tmp_path, "sweep",
                                           a_trial_logged, worker=alive[0])
    assert at_kill["models"] == 7 and at_kill["trials"] < 1 + 4, "not lost mid-sweep"
    _assert_recorded_once(store, stdout, tmp_path / "mlflow.db")
    records = [store.read_json(p) for p in store.list("trials/finetune", suffix=".json")]
    replicates = set(store.read_json("summary.json")["replicates"]["finetune"])
    sweep = {r["trial_key"] for r in records if r["stage"] == "sweep"}
    assert len(sweep) == 4 and {r["trial_key"] for r in records} == sweep | replicates
    assert _table(stdout) == undisturbed_table
