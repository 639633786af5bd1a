"""pipelines.tracking against real MLflow: SQLite stores under tmp_path, one real server."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.tracking import Tracker, check_tracking_uri
from unlearn_core.errors import UserInputError

TAGS = {"git_commit": "abc", "manifest_hash": "m1", "config_hash": "c1"}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow database with its tables made once (a new one takes seconds to migrate)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def uri(tmp_path, empty_db) -> str:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def record(key: str, stage: str = "sweep", status: str = "ok", **changes) -> dict:
    return {"trial_key": key, "method": "finetune", "stage": stage, "seed": 0,
            "hparams": {"lr": 0.1, "epochs": 2}, "status": status,
            "error": "boom: it diverged" if status == "failed" else None,
            "metrics": {"forget/acc": 0.25, "test/acc": 0.9, "bad": float("nan")},
            "objective": 0.5, "seconds": 1.5, **changes}


def all_runs(uri: str, experiment: str = "exp") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              max_results=1000)


def trials(uri: str) -> list:
    return [r for r in all_runs(uri) if "trial_key" in r.data.tags]


def sweep(tracker: Tracker, key: str = "results/exp", records=(), name: str = "run-1") -> dict:
    """One `unlearn run`: parent, sweep stage, finetune stage, its trials logged."""
    with tracker.parent(name, key) as parent_id:
        with tracker.nested("sweep", {"stage": "sweep"}) as sweep_id:
            method_id = tracker.stage_run("finetune", {"stage": "sweep", "method": "finetune"},
                                          sweep_id)
            logged = [tracker.log_trial(r, method_id) for r in records]
    return {"parent": parent_id, "sweep": sweep_id, "method": method_id, "logged": logged}


def test_same_record_twice_gives_one_run_also_from_a_rerun(uri):
    first = sweep(Tracker(uri, "exp", TAGS), records=[record("k1"), record("k1")])
    assert first["logged"] == [True, False]
    rerun = sweep(Tracker(uri, "exp", TAGS), records=[record("k1")], name="run-2")
    assert rerun["logged"] == [False]
    assert len(trials(uri)) == 1
    # the same trial key in another stage (a replicate) is another run
    tracker = Tracker(uri, "exp", TAGS)
    with tracker.parent("run-3", "results/exp"):
        replicate = tracker.stage_run("replicate", {"stage": "replicate"})
        assert tracker.log_trial(record("k1", stage="replicate"), replicate)
        assert not tracker.log_trial(record("k1", stage="replicate"), replicate)
    assert sorted(r.data.tags["stage"] for r in trials(uri)) == ["replicate", "sweep"]


def test_resumed_parent_adds_exactly_the_new_trial_and_reuses_runs(uri):
    first = sweep(Tracker(uri, "exp", TAGS), records=[record("k1"), record("k2")])
    before = {r.info.run_id for r in all_runs(uri)}
    assert len(before) == 5  # parent, sweep, finetune, two trials

    second_tracker = Tracker(uri, "exp", {**TAGS, "git_commit": "def"})
    second = sweep(second_tracker, records=[record("k1"), record("k2"), record("k3")],
                   name="run-2")
    assert second["logged"] == [False, False, True]
    for run in ("parent", "sweep", "method"):
        assert second[run] == first[run], run
    after = all_runs(uri)
    new = [r for r in after if r.info.run_id not in before]
    assert len(after) == 6 and [r.data.tags["trial_key"] for r in new] == ["k3"]
    parent = second_tracker.client.get_run(first["parent"])
    assert parent.info.run_name == "run-1"  # found again, not renamed
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["git_commit"] == "def"  # the commit of the latest run of it
    # a parent with another key is another run
    third = sweep(Tracker(uri, "exp", TAGS), key="results/other", records=[record("k4")])
    assert third["parent"] != first["parent"] and third["logged"] == [True]


def test_nested_structure_status_params_and_metrics(uri):
    tracker = Tracker(uri, "exp", TAGS)
    with tracker.parent("run-1", "results/exp") as parent_id:
        assert tracker.client.get_run(parent_id).info.status == "RUNNING"
        with tracker.nested("sweep", {"stage": "sweep"}) as sweep_id:
            method_id = tracker.stage_run("finetune", {"stage": "sweep", "method": "finetune"},
                                          sweep_id)
            # same name, other tags: another stage run; same name and tags: the same one
            other = tracker.stage_run("finetune", {"stage": "sweep", "method": "other"},
                                      sweep_id)
            assert other != method_id
            assert tracker.stage_run("finetune", {"method": "finetune", "stage": "sweep"},
                                     sweep_id) == method_id
            assert tracker.log_trial(record("ok1"), method_id)
            assert tracker.log_trial(record("bad1", status="failed"), method_id)
            assert tracker.log_trial(record("stop1", status="stopped"), method_id)
        tracker.log_metrics({"reference/acc": 0.5, "skipped": float("inf")})
        tracker.log_metrics({"stage/metric": 1.0}, run_id=sweep_id)
    runs = {r.info.run_id: r for r in all_runs(uri)}
    parent = runs[parent_id]
    assert "mlflow.parentRunId" not in parent.data.tags and parent.data.tags["run_key"]
    assert parent.data.metrics == {"reference/acc": 0.5}
    assert runs[sweep_id].data.tags["mlflow.parentRunId"] == parent_id
    assert runs[sweep_id].data.metrics == {"stage/metric": 1.0}
    assert runs[method_id].data.tags["mlflow.parentRunId"] == sweep_id
    assert runs[method_id].data.tags["git_commit"] == "abc"
    assert {runs[i].info.status for i in (parent_id, sweep_id, method_id)} == {"FINISHED"}
    by_key = {r.data.tags["trial_key"]: r for r in runs.values() if "trial_key" in r.data.tags}
    assert set(by_key) == {"ok1", "bad1", "stop1"}
    for run in by_key.values():
        assert run.data.tags["mlflow.parentRunId"] == method_id
        assert run.data.tags["stage"] == "sweep" and run.data.tags["method"] == "finetune"
        assert run.data.tags["manifest_hash"] == "m1"
        assert run.data.params == {"lr": "0.1", "epochs": "2", "seed": "0"}
        assert run.data.metrics == {"forget/acc": 0.25, "test/acc": 0.9, "objective": 0.5,
                                    "time/unlearn_s": 1.5}
    assert by_key["ok1"].info.status == "FINISHED"
    assert by_key["stop1"].info.status == "FINISHED"
    assert by_key["stop1"].data.tags["status"] == "stopped"
    assert by_key["bad1"].info.status == "FAILED"
    assert by_key["bad1"].data.tags["status"] == "failed"
    assert by_key["bad1"].data.tags["error"] == "boom: it diverged"
    assert "error" not in by_key["ok1"].data.tags


def test_trials_logged_from_another_thread_while_fluent_runs_are_open(uri, monkeypatch):
    """As from a Ray Tune callback: other code holds MLflow's fluent runs open meanwhile."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)  # restored afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri exports it too
    mlflow.set_tracking_uri(uri)
    tracker = Tracker(uri, "exp", TAGS)
    other = tracker.client.create_experiment("other")
    with tracker.parent("run-1", "results/exp"):
        method_id = tracker.stage_run("finetune", {"stage": "sweep", "method": "finetune"})
        with (mlflow.start_run(experiment_id=other),
              mlflow.start_run(experiment_id=other, nested=True) as inner):
            logged = []
            thread = threading.Thread(
                target=lambda: logged.append(tracker.log_trial(record("k1"), method_id)))
            thread.start()
            thread.join()
            logged.append(tracker.log_trial(record("k2"), method_id))
            assert mlflow.active_run().info.run_id == inner.info.run_id
    assert logged == [True, True]
    assert {r.data.tags["mlflow.parentRunId"] for r in trials(uri)} == {method_id}
    assert len(tracker.client.search_runs([other])) == 2  # untouched


def test_tracker_pickles_as_ray_tune_pickles_callbacks(uri):
    from ray import cloudpickle

    tracker = Tracker(uri, "exp", TAGS)
    with tracker.parent("run-1", "results/exp"):
        method_id = tracker.stage_run("finetune", {"stage": "sweep", "method": "finetune"})
        assert tracker.log_trial(record("k1"), method_id)
        copy = cloudpickle.loads(cloudpickle.dumps(tracker))
        assert not copy.log_trial(record("k1"), method_id)
        assert copy.log_trial(record("k2"), method_id)
    assert len(trials(uri)) == 2


def test_block_that_raises_fails_the_parent_and_its_open_stage_runs(uri):
    tracker = Tracker(uri, "exp", TAGS)
    with pytest.raises(RuntimeError, match="driver"):
        with tracker.parent("run-1", "results/exp") as parent_id:
            stage_id = tracker.stage_run("sweep", {"stage": "sweep"})
            raise RuntimeError("driver lost")
    assert tracker.client.get_run(parent_id).info.status == "FAILED"
    assert tracker.client.get_run(stage_id).info.status == "FAILED"
    # the resumed run finishes both
    again = sweep(Tracker(uri, "exp", TAGS), records=[record("k1")])
    assert again["parent"] == parent_id and again["sweep"] == stage_id
    assert {r.info.status for r in all_runs(uri)} == {"FINISHED"}


def test_log_params_on_a_resumed_run(uri, tmp_path):
    for value in ("a", "a", "b", "a"):
        tracker = Tracker(uri, "exp", TAGS)
        with tracker.parent("run-1", "results/exp") as parent_id:
            tracker.log_params({"dataset": value, "replicates": 3})
            run = tracker.client.get_run(parent_id)
            assert run.data.params == {"dataset": "a", "replicates": "3"}
            changed = run.data.tags.get("changed_param/dataset")
            assert changed == (None if value == "a" else value)
    artifact = tmp_path / "config.yaml"
    artifact.write_text("name: exp\n")
    with tracker.parent("run-1", "results/exp") as parent_id:
        tracker.log_artifact(artifact)
        tracker.log_artifact(artifact, "tables")
    names = {a.path for a in tracker.client.list_artifacts(parent_id)}
    assert names == {"config.yaml", "tables"}
    # beside the database, not in the working directory
    root = tracker.client.get_run(parent_id).info.artifact_uri
    assert root.startswith((tmp_path / "mlartifacts").as_uri()), root


def test_logged_trials_are_read_back_page_by_page(uri, monkeypatch):
    sweep(Tracker(uri, "exp", TAGS), records=[record(f"k{i}") for i in range(5)])
    monkeypatch.setattr(Tracker, "page_size", 2)
    again = sweep(Tracker(uri, "exp", TAGS), records=[record(f"k{i}") for i in range(6)])
    assert again["logged"] == [False] * 5 + [True]
    assert len(trials(uri)) == 6


def test_keys_with_quotes_are_found_again(uri):
    key, name = "results/it's \"here\"", "it's"
    first = sweep(Tracker(uri, "exp", TAGS), key=key, records=[record("k1")])
    tracker = Tracker(uri, "exp", TAGS)
    with tracker.parent("run-2", key) as parent_id:
        again = tracker.stage_run(name, {"stage": "it's"})
        assert tracker.stage_run(name, {"stage": "it's"}) == again
    assert parent_id == first["parent"]
    assert len(all_runs(uri)) == 5


def test_tracker_outside_a_parent_needs_a_run_id(uri):
    tracker = Tracker(uri, "exp", TAGS)
    with pytest.raises(RuntimeError, match="no parent run is open"):
        tracker.log_metrics({"a": 1.0})


def test_deleted_experiment_is_a_user_error(uri):
    tracker = Tracker(uri, "exp", TAGS)
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(UserInputError, match="'exp'.*deleted.*restore"):
        Tracker(uri, "exp", TAGS)


# --- check_tracking_uri ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fails_fast(uri: str, **kwargs) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(UserInputError) as caught:
        check_tracking_uri(uri, **kwargs)
    seconds = time.monotonic() - start
    message = str(caught.value)
    assert uri in message and "\n" not in message, message
    return message, seconds


def test_closed_port_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    message, seconds = fails_fast(uri)
    assert seconds < 30 and "not reachable" in message, (seconds, message)
    with pytest.raises(UserInputError, match="not reachable"):
        Tracker(uri, "exp", TAGS)  # checked before anything else


def test_silent_server_fails_within_the_timeout():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        message, seconds = fails_fast(uri, timeout_s=2)
    assert seconds < 5 and "not reachable" in message, (seconds, message)


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_say_authentication_failed(code):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # /health answers as MLflow's does
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def do_POST(self):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"You are not authenticated.")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        message, seconds = fails_fast(uri)
    finally:
        server.shutdown()
        server.server_close()
    assert "authentication failed" in message and "MLFLOW_TRACKING_USERNAME" in message
    assert seconds < 30


def test_sqlite_folder_is_made_or_refused(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/new/folder/mlflow.db")
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "file").write_text("")
    message, _ = fails_fast(f"sqlite:///{tmp_path}/file/mlflow.db")
    assert "cannot create its folder" in message


def test_database_password_is_not_shown():
    with pytest.raises(UserInputError) as caught:
        check_tracking_uri(f"postgresql://me:secret@127.0.0.1:{free_port()}/mlflow",
                           timeout_s=5)
    assert "secret" not in str(caught.value) and "me:***@127.0.0.1" in str(caught.value)


@pytest.mark.slow
def test_real_server_passes_and_silent_one_fails_within_30s(tmp_path, capsys):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # closed in finally
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db", "--workers", "1"],
        start_new_session=True, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        start = time.monotonic()
        check_tracking_uri(uri)
        assert time.monotonic() - start < 30
        # the REST store: same dedupe and reuse as SQLite
        first = sweep(Tracker(uri, "exp", TAGS), records=[record("k1"), record("k2")])
        second = sweep(Tracker(uri, "exp", TAGS), records=[record("k2"), record("k3")])
        assert first["logged"] == [True, True] and second["logged"] == [False, True]
        assert second["parent"] == first["parent"] and second["method"] == first["method"]
        assert len(trials(uri)) == 3 and len(all_runs(uri)) == 6
        assert "View run" not in capsys.readouterr().out  # MLflow 3 prints it per run ended
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        message, seconds = fails_fast(silent_uri, timeout_s=600)  # never more than 30 s
    assert seconds < 30 and "not reachable" in message
