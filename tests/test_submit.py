"""``unlearn submit`` and ``unlearn jobs``: Ray's Jobs API on a real cluster with token auth.

The fast tests check the address forms, the runtime environment (code shipped, nothing
installed, secrets only in ``env_vars``) and that bad input ends in one line and exit
status 2. The slow ones start a Ray cluster with the dashboard (Jobs API) on 127.0.0.1
and Ray's token authentication on, whose worker nodes carry no S3 credentials and share
no disk with this process: whatever a job writes to S3 got there through the job's own
environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines import jobs, submit
from pipelines.cli import main
from tests.services import RayCluster, free_ports, is_alive, wait_for
from unlearn_core.storage import Store

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "pipelines" / "configs" / "quickstart.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------- fast


@pytest.mark.parametrize("given,url", [
    ("http://10.0.0.5:8265", "http://10.0.0.5:8265"),
    ("https://ray.example.org/", "https://ray.example.org"),
    ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("ray://head:10001", "http://head:8265"),  # Ray Client: the dashboard on the same host
    ("head:6379", "http://head:8265"),  # the GCS
    ("head", "http://head:8265"),
])
def test_address_forms(given, url, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert jobs.resolve_address(given) == url
    monkeypatch.setenv("RAY_ADDRESS", given)
    assert jobs.resolve_address(None) == url


@pytest.mark.parametrize("given", ["auto", "local", "grpc://head:1", "http://a:b@head:8265",
                                   "http://head:8265/some/path", "http://head:port"])
def test_addresses_refused(given):
    from unlearn_core.errors import UserInputError

    with pytest.raises(UserInputError, match="8265"):
        jobs.resolve_address(given)


def test_token_is_read_as_ray_reads_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.auth_token() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token()[0] == "from-home"
    assert jobs.auth_token("http://127.0.0.1:8265")[0] == "from-home"
    # the home-folder token is not sent to another machine unless RAY_AUTH_MODE=token
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert jobs.auth_token("http://ray-head.example:8265") == (None, "")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert jobs.auth_token("http://ray-head.example:8265")[0] == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_token()[0] == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == ("from-env", "RAY_AUTH_TOKEN")


def test_runtime_env_ships_the_code_installs_nothing_and_forwards_secrets(tmp_path):
    environ = {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ENDPOINT_URL": "http://s3:8333",
               "MLFLOW_TRACKING_PASSWORD": "pw", "MLFLOW_TRACKING_USERNAME": "me",
               "AWS_REGION": "", "HOME": "/root", "RAY_AUTH_TOKEN": "never-forwarded"}
    env = submit.runtime_env(tmp_path, submit.forwarded_env(environ))
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(env)
    assert env["working_dir"] == str(tmp_path)
    assert env["env_vars"] == {**submit.BASE_ENV_VARS, "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                               "AWS_ENDPOINT_URL": "http://s3:8333",
                               "MLFLOW_TRACKING_PASSWORD": "pw",
                               "MLFLOW_TRACKING_USERNAME": "me"}

    # What Ray uploads (its own packaging, with the excludes): every module and config of
    # both packages, and none of the caches, results or databases lying among them.
    from ray._private.runtime_env.packaging import create_package

    for folder in map(Path, env["py_modules"]):
        junk = [folder / "__pycache__" / "junk.pyc", folder / "results" / "x.parquet",
                folder / "mlruns" / "meta.yaml", folder / "mlflow.db"]
        for path in junk:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"junk")
        try:
            target = tmp_path / f"{folder.name}.zip"
            create_package(str(folder), target, include_gitignore=True,
                           include_parent_dir=True, excludes=env["excludes"])
            names = set(zipfile.ZipFile(target).namelist())
        finally:
            for path in junk:
                path.unlink()
                if path.parent != folder and not any(path.parent.iterdir()):
                    path.parent.rmdir()
        wanted = {f"{folder.name}/{p.relative_to(folder)}" for p in folder.rglob("*")
                  if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
        assert wanted and wanted <= names, sorted(wanted - names)
        assert not any(n.endswith((".pyc", ".db", ".parquet")) or "/mlruns/" in n
                       for n in names), names


def test_dry_run_shows_the_job_without_secret_values(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    code, out, err = run(capsys, "submit", str(QUICKSTART), "--smoke", "--dry-run",
                         "--results", "s3://bucket/prefix", "--tracking-uri",
                         "http://mlflow:5000")
    assert code == 0, err
    assert ("entrypoint: python -m pipelines.cli run quickstart.yaml --address auto --smoke "
            "--results s3://bucket/prefix --tracking-uri http://mlflow:5000") in out
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in out and "s3cr3t-value" not in out


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(yaml.safe_dump({"name": "x", "methods": [{"name": "nope"}]}))
    cases = [
        (["submit", str(tmp_path / "missing.yaml"), "--address", dead], "does not exist"),
        (["submit", str(QUICKSTART), "--address", dead, "--results", "s3://b/p",
          "--tracking-uri", "http://m:5000"], "cannot reach the Ray Jobs API"),
        (["submit", str(QUICKSTART), "--address", dead], "relative path"),
        (["submit", str(QUICKSTART), "--address", dead, "--results", "s3://b/p",
          "--tracking-uri", "http://me:pw@m:5000"], "holds credentials"),
        (["submit", str(QUICKSTART), "--address", "auto", "--results", "s3://b/p",
          "--tracking-uri", "http://m:5000"], "names no cluster"),
        (["jobs", "list", "--address", dead], "cannot reach"),
        (["jobs", "status", "raysubmit_x", "--address", dead], "cannot reach"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in one_line_error(err), (argv, err)
    code, _, err = run(capsys, "submit", str(bad_yaml), "--address", dead)
    assert code == 2 and "methods.0.name" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def jobs_cluster(s3_server, tmp_path_factory) -> Iterator[RayCluster]:
    """Head with the Jobs API and 2 one-CPU workers, token auth on. The workers get no S3
    credentials of their own and see an empty tmpfs over pytest's temp folder."""
    cluster = RayCluster.start(num_workers=2, dashboard=True,
                               isolate_path=tmp_path_factory.getbasetemp())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def submitter(jobs_cluster, s3_env, monkeypatch) -> tuple[RayCluster, str]:
    """This process as a submitter: the cluster's token in RAY_AUTH_TOKEN, S3 settings in
    AWS_* (``s3_env``); returns (cluster, bucket)."""
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", jobs_cluster.auth_token)
    return jobs_cluster, s3_env


@pytest.mark.slow
def test_submit_follow_quickstart_to_s3_then_jobs_show_it(submitter, capsys, tmp_path):
    cluster, bucket = submitter
    url = cluster.dashboard_url
    results = f"s3://{bucket}/q"
    code, out, err = run(capsys, "submit", str(QUICKSTART), "--smoke", "--address", url,
                         "--results", results, "--tracking-uri",
                         f"sqlite:///{tmp_path}/mlflow.db", "--follow")
    assert code == 0, out[-3000:] + err[-3000:]
    job_id = out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} SUCCEEDED" in err
    assert f"results  {results}/quickstart-digits-class3-smoke" in out  # the job's logs

    store = Store.at(f"{results}/quickstart-digits-class3-smoke", create=False)
    assert store.exists("tables/results.md") and store.exists("manifest.parquet")
    assert len(store.list("models", suffix=".safetensors")) == 3  # source + 2 references

    code, out, _ = run(capsys, "jobs", "list", "--address", url)
    assert code == 0 and any(line.split()[:2] == [job_id, "SUCCEEDED"]
                             for line in out.splitlines())
    code, out, _ = run(capsys, "jobs", "status", job_id, "--address", url)
    assert code == 0 and out.startswith(f"{job_id} SUCCEEDED")
    code, out, _ = run(capsys, "jobs", "logs", job_id, "--address", url)
    assert code == 0 and "[assemble] tables and plots" in out
    code, _, err = run(capsys, "jobs", "status", "raysubmit_nosuchjob", "--address", url)
    assert code == 2 and "raysubmit_nosuchjob" in one_line_error(err)


@pytest.mark.slow
def test_wrong_or_missing_token_is_refused(submitter, capsys, monkeypatch, tmp_path):
    cluster, _ = submitter
    argv = ["submit", str(QUICKSTART), "--smoke", "--address", cluster.dashboard_url,
            "--results", "s3://b/p", "--tracking-uri", "http://m:5000"]
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "refused the token from RAY_AUTH_TOKEN" in one_line_error(err)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    code, _, err = run(capsys, "jobs", "list", "--address", cluster.dashboard_url)
    assert code == 2 and "requires a token" in one_line_error(err)


# A run whose sweep lasts long enough to stop the job in the middle of it.
STOP_CONFIG = {
    "name": "stop-resume",
    "dataset": {"name": "digits"},
    "forget": "classes=3",
    "split": {"max_train": 600},
    "source": {"model": "mlp", "recipe": {"epochs": 4, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 2},
    "methods": [{"name": "original"}, {"name": "retrain"},
                {"name": "finetune", "trials": 1, "fixed": {"epochs": 150}}],
    "replicates": 1,
    "mia_max_per_class": 200,
    "metrics": {"relearn": {"enabled": False}, "distance": False, "references": 0},
}


@pytest.mark.slow
def test_stop_a_running_job_then_run_resumes_its_work(submitter, capsys, tmp_path):
    cluster, bucket = submitter
    url = cluster.dashboard_url
    config = tmp_path / "stop.yaml"
    config.write_text(yaml.safe_dump(STOP_CONFIG))
    results, tracking = f"s3://{bucket}/s", f"sqlite:///{tmp_path}/mlflow.db"
    code, out, err = run(capsys, "submit", str(config), "--address", url, "--results",
                         results, "--tracking-uri", tracking)
    assert code == 0, err
    job_id = out.strip()

    def logs() -> str:
        code, out, _ = run(capsys, "jobs", "logs", job_id, "--address", url)
        assert code == 0
        return out

    wait_for(lambda: "[sweep]" in logs(), 240, "the job to reach its sweep", interval=1.0)
    code, out, err = run(capsys, "jobs", "stop", job_id, "--address", url)
    assert code == 0 and out.strip() == f"{job_id} STOPPED", out + err
    code, out, _ = run(capsys, "jobs", "status", job_id, "--address", url)
    assert out.startswith(f"{job_id} STOPPED")

    store = Store.at(f"{results}/stop-resume", create=False)
    assert not store.exists("summary.json"), "stopped before it finished"
    if store.exists("lock.json"):  # the stopped driver's lock: taken over once it is gone
        holder = store.read_json("lock.json")
        wait_for(lambda: not is_alive(holder["pid"]), 30, "the stopped driver to exit")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    s3 = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # from s3_env
    env.update(PYTHONUNBUFFERED="1", **cluster.driver_env(), **s3)
    rerun = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(config), "--address",
         cluster.address, "--results", results, "--tracking-uri", tracking],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "[references] source + 2 retrained models (0 to train)" in rerun.stdout
    assert store.exists("summary.json") and store.exists("tables/results.md")

