"""`scripts/local_cluster.sh up | status | down`: the real services, on 127.0.0.1 only.

One cluster for the whole module (starting it is the cost: 1.5-3 minutes on a loaded 2-core
machine): ``up`` prints only export lines; with them S3, MLflow (basic auth) and Ray (token
auth, a head with no CPUs and two worker nodes; a submitted job runs) answer; nothing
listens beyond loopback, no secret is on a command line, the secret files are 0600; ``up``
again reprints the same exports; ``down`` leaves none of the processes alive.

Issue 11's acceptance runs here too, on the same cluster rather than a second one: with the
exports of ``eval "$(scripts/local_cluster.sh up)"``, ``unlearn submit
pipelines/configs/quickstart.yaml --smoke --results s3://unlearn/try --follow`` ends
SUCCEEDED, the MLflow server lists that experiment's parent, stage and trial runs (and
answers 401 without credentials), and ``down`` (the module's last test) leaves none of the
recorded processes, the job's included, running.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines import local_cluster as lc
from pipelines import procs
from pipelines.local_ray import gpu_split
from pipelines.local_services import BUCKET
from pipelines.local_state import DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "local_cluster.sh"


def script(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # Nothing of this session's Ray/S3/MLflow settings reaches the script.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env[DIR_ENV] = str(state)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def evaluated(exports: str) -> dict[str, str]:
    """The environment a shell has after ``eval "$(... up)"``."""
    out = subprocess.run(["bash", "-c", 'eval "$1" && env -0', "_", exports],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]})
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("local-cluster")
    try:
        started = script(state, "up")
        assert started.returncode == 0, started.stderr[-4000:]
        yield state, started.stdout
    finally:
        stopped = script(state, "down", "--purge")
        assert stopped.returncode == 0, stopped.stderr[-4000:]


@pytest.mark.slow
def test_up_prints_only_exports_that_eval_into_the_environment(cluster):
    state, stdout = cluster
    lines = stdout.strip().splitlines()
    assert lines and all(line.startswith("export ") for line in lines), stdout
    env = evaluated(stdout)
    assert env == {**env, **lc.cluster_env(state)}
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    assert env["RAY_AUTH_MODE"] == "token"
    assert Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        assert env[name].startswith("http://127.0.0.1:"), name


@pytest.mark.slow
def test_secrets_are_in_0600_files_and_on_no_command_line(cluster):
    state, stdout = cluster
    for name in ("secrets.json", "ray_auth_token", "s3_identities.json", "mlflow_auth.ini"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    values = list(json.loads((state / "secrets.json").read_text()).values())
    values = [v for v in values if len(v) > 8] + [(state / "ray_auth_token").read_text()]
    assert len(values) >= 5
    for service in lc.status(state).values():
        for pid in procs.members(service["pid"]):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert not any(v in args for v in values), f"a secret on pid {pid}'s command line"


@pytest.mark.slow
def test_s3_answers_with_the_keys_only(cluster):
    import pyarrow.fs as pafs

    env = lc.cluster_env(cluster[0])

    def fs(secret: str) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"), scheme="http",
            access_key=env["AWS_ACCESS_KEY_ID"], secret_key=secret,
            region=env["AWS_REGION"], connect_timeout=2, request_timeout=10)

    good = fs(env["AWS_SECRET_ACCESS_KEY"])
    with good.open_output_stream(f"{BUCKET}/probe/hello.txt") as out:
        out.write(b"hello")
    with good.open_input_stream(f"{BUCKET}/probe/hello.txt") as stream:
        assert stream.read() == b"hello"
    with pytest.raises(OSError):
        fs("wrong-secret").get_file_info(pafs.FileSelector(f"{BUCKET}/probe"))


@pytest.mark.slow
def test_mlflow_requires_its_credentials_and_keeps_artifacts_in_s3(cluster, monkeypatch):
    import pyarrow.fs as pafs
    from mlflow import MlflowClient

    env = lc.cluster_env(cluster[0])
    search = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=5"
    assert http(search)[0] == 401
    wrong = base64.b64encode(f"{env['MLFLOW_TRACKING_USERNAME']}:nope".encode()).decode()
    assert http(search, {"Authorization": f"Basic {wrong}"})[0] == 401
    # MLflow 3's host-header check: a name other than loopback's is refused
    assert http(search, {"Host": "example.com"})[0] in (400, 403)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("local-cluster-probe")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "m", 1.5)
    client.log_text(run.info.run_id, "artifact text", "probe/a.txt")
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert [e.name for e in client.search_experiments()].count("local-cluster-probe") == 1
    s3 = pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"), scheme="http",
        access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"])
    found = s3.get_file_info(pafs.FileSelector(f"{BUCKET}/mlflow-artifacts", recursive=True))
    assert any(f.path.endswith("probe/a.txt") for f in found), [f.path for f in found]


@pytest.mark.slow
def test_ray_has_a_cpu_less_head_and_two_workers_behind_its_token(cluster):
    state = cluster[0]
    env = lc.cluster_env(state)
    nodes_url = f"{env['RAY_ADDRESS']}/api/v0/nodes?limit=100&detail=1"
    assert http(nodes_url)[0] == 401
    assert http(nodes_url, {"Authorization": "Bearer wrong"})[0] == 403
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    status, body = http(nodes_url, {"Authorization": f"Bearer {token}"})
    assert status == 200
    nodes = [n for n in json.loads(body)["data"]["result"]["result"] if n["state"] == "ALIVE"]
    assert len(nodes) == 3
    heads = [n for n in nodes if n["is_head_node"]]
    assert len(heads) == 1 and heads[0]["resources_total"].get("CPU", 0) == 0
    assert all(n["resources_total"]["CPU"] >= 1 for n in nodes if not n["is_head_node"])
    assert {n["node_ip"] for n in nodes} == {"127.0.0.1"}


@pytest.mark.slow
def test_a_ray_job_submitted_with_the_exports_runs_tasks_on_the_workers(cluster, tmp_path):
    # The Jobs API (dashboard, token), a driver on the head that reaches the GCS on
    # 127.0.0.1, and tasks placed on the worker nodes (the head has no CPUs).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env |= lc.cluster_env(cluster[0])
    # address "auto", as `unlearn submit`'s job runs `unlearn run --address auto`
    driver = ("import ray; ray.init(address='auto'); f = ray.remote(lambda i: i * i); "
              "print('SUM', sum(ray.get([f.remote(i) for i in range(5)])))")
    job = subprocess.run(["ray", "job", "submit", "--address", env["RAY_ADDRESS"], "--",
                          "python", "-c", driver], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert job.returncode == 0 and "SUM 30" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]


@pytest.mark.slow
def test_everything_listens_on_loopback_only_and_status_says_up(cluster):
    state = cluster[0]
    report = lc.status(state)
    assert {"ray-head", "ray-worker-1", "ray-worker-2", "s3", "postgres", "mlflow"} == set(report)
    for name, info in report.items():
        assert info["up"], name
        sockets = info["listening"]
        assert sockets, f"{name} listens on nothing"
        wide = [s for s in sockets if not procs.is_loopback(s[1])]
        assert not wide, f"{name} listens beyond loopback: {wide}"
        ports = {port for _, _, port in sockets}
        wanted = {"ray-head": ("gcs", "dashboard"), "s3": ("s3.port",), "postgres": ("port",),
                  "mlflow": ("port",)}.get(name, ("node_manager",))
        assert {info["ports"][k] for k in wanted} <= ports, name
    shown = script(state, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert len([line for line in shown.stdout.splitlines() if " up " in line]) == 6
    assert "WARNING" not in shown.stdout


QUICKSTART_SMOKE = "quickstart-digits-class3-smoke"  # the experiment `--smoke` names


@pytest.mark.slow
def test_submit_quickstart_with_the_exports_succeeds_and_mlflow_lists_its_runs(
        cluster, monkeypatch):
    # Exactly the README's commands: the shell that ran `eval "$(... up)"`, no flags beyond
    # the issue's. The job's tracking must reach the MLflow server through the exported
    # MLFLOW_TRACKING_* variables (forwarded into the job's environment, never on a
    # command line); its results go to the cluster's S3.
    state, exports = cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env |= evaluated(exports)
    env.pop("PWD", None)
    # `unlearn` is the console script for pipelines.cli:main (pyproject.toml)
    job = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "submit", "pipelines/configs/quickstart.yaml",
         "--smoke", "--results", f"s3://{BUCKET}/try", "--follow"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    job_id = job.stdout.splitlines()[0]
    assert f"job {job_id} SUCCEEDED" in job.stderr

    from mlflow import MlflowClient

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(QUICKSTART_SMOKE)
    assert experiment is not None, "the job's experiment is not on the MLflow server"
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    parents = [r for r in runs if parent_of[r.info.run_id] is None]
    assert [r.info.run_name for r in parents] == [f"run-{QUICKSTART_SMOKE}"]
    parent = parents[0].info.run_id
    stages = {r.info.run_name for r in runs if parent_of[r.info.run_id] == parent}
    assert {"references", "sweep", "replicate", "assemble"} <= stages, stages
    trials = [r for r in runs if r.data.tags.get("trial_key")]
    assert {r.data.tags["stage"] for r in trials} == {"sweep", "replicate"}
    for trial in trials:  # trial -> method run -> stage run -> the parent run
        assert parent_of[parent_of[trial.info.run_id]] in parent_of
        assert parent_of[parent_of[parent_of[trial.info.run_id]]] == parent
    assert all(r.info.status == "FINISHED" for r in parents + trials)

    # Without credentials, the same server refuses the same question.
    search = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/search"
    body = json.dumps({"experiment_ids": [experiment.experiment_id]}).encode()
    request = urllib.request.Request(search, data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401

    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"), scheme="http",
        access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"])
    table = f"{BUCKET}/try/{QUICKSTART_SMOKE}/tables/results.md"
    assert s3.get_file_info(table).type == pafs.FileType.File, "results not in the cluster's S3"


@pytest.mark.slow
def test_up_again_reprints_the_same_exports_and_down_leaves_nothing(cluster):
    state, first = cluster
    again = script(state, "up", timeout=60)
    assert again.returncode == 0 and again.stdout == first, again.stderr
    processes = set()
    for info in lc.status(state).values():
        processes |= {(p, t) for p in procs.members(info["pid"]) if (t := procs.start_time(p))}
    assert len(processes) > 10
    stopped = script(state, "down")
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    assert not [p for p, t in processes if procs.start_time(p) == t], "processes left running"
    recorded = json.loads((state / "state.json").read_text())["services"]
    assert not recorded, f"services still recorded after down: {sorted(recorded)}"
    assert script(state, "status").returncode == 3
    # the data and secrets stay for the next `up` (the fixture's `down --purge` removes them)
    assert (state / "secrets.json").exists()


# ---------------------------------------------------------------------------- no cluster


def test_listening_reads_this_processes_sockets_from_proc():
    import socket

    with socket.socket() as tcp, socket.socket(socket.AF_INET6) as tcp6:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        tcp6.bind(("::", 0))
        tcp6.listen()
        found = procs.listening({os.getpid()})
        assert ("tcp", "127.0.0.1", tcp.getsockname()[1]) in found
        assert ("tcp6", "::", tcp6.getsockname()[1]) in found
    assert procs.is_loopback("127.0.0.1") and procs.is_loopback("::1")
    assert procs.is_loopback("::ffff:127.0.0.1")  # how Ray's gRPC servers show up
    assert not any(map(procs.is_loopback, ("0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1")))
    assert procs.proc_net_ip("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"


def test_visible_gpus_are_dealt_to_worker_nodes_without_overlap(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert gpu_split(2) == ["0,2", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_split(2) == ["", ""]
