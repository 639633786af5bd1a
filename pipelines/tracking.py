"""MLflow tracking, from the driver process only (SQLite takes one writer).

One experiment per config name; a parent run per experiment folder (found
again by its ``run_key`` tag, so a re-run or a resumed run reopens it rather
than adding a second); a nested run per stage (and per method inside the
sweep), found again by parent + ``stage_key`` + tags; a nested run per trial
with its hparams as params and every finite metric. Tags: git commit, manifest
hash, config hash.

Every call goes through ``mlflow.MlflowClient`` with explicit run ids, never
through MLflow's fluent active-run stack: trials are logged when they finish,
from a Ray Tune callback on the driver, possibly while other code holds other
MLflow runs open. A trial is logged at most once per (stage, trial key) in the
experiment: the pairs already there are loaded once, when the ``Tracker`` is
made, and kept up to date as it logs, so a re-run or a resumed run adds runs
only for new work.

The tracking URI is always absolute: Tune changes the working directory of
trials, and MLflow 3's default ``sqlite:///mlflow.db`` is relative. For the
same reason a new experiment on a SQLite store keeps its artifacts beside the
database (``<db folder>/mlartifacts``), not in ``./mlruns`` of whatever folder
the driver started in. ``check_tracking_uri`` (called first by ``Tracker``)
fails in seconds, with one line naming the URI, when the server is down, does
not answer, or refuses the credentials, instead of MLflow's minutes of retries.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unlearn_core.errors import UserInputError

PARENT_TAG = "mlflow.parentRunId"
_MAX_CHECK_S = 25.0  # check_tracking_uri's ceiling, whatever timeout_s asks: < 30 s in all
_PARAM_CHARS = 500
_QUIET_LOCK = threading.Lock()  # one environment change at a time


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{(Path(results_dir).resolve() / 'mlflow.db')}"


def absolute_tracking_uri(uri: str | None, results_dir: str | Path) -> str:
    """Make a relative sqlite/file URI absolute; leave servers (http, databricks) alone."""
    if not uri:
        return default_tracking_uri(results_dir)
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return f"sqlite:///{Path(path).resolve()}" if not path.startswith("/") else uri
    if uri.startswith("file:"):
        return "file://" + str(Path(uri.removeprefix("file://").removeprefix("file:")).resolve())
    if re.match(r"^[a-z]+://", uri) or uri == "databricks":
        return uri
    raise UserInputError(
        f"tracking_uri {uri!r}: expected sqlite:///PATH, file:PATH or http(s)://HOST"
    )


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _finite(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            # MLflow metric names allow / but not some characters; ours are [a-z0-9_/]
            out[key] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# check_tracking_uri


def _redact(uri: str) -> str:
    """The URI without a password in it (``scheme://user:***@host``)."""
    return re.sub(r"^([a-z0-9+.-]+://[^/@:]*):[^/@]*@", r"\1:***@", uri, flags=re.I)


def _one_line(error: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _in_thread(call: Callable[[], Any], seconds: float) -> tuple[bool, Any, BaseException | None]:
    """Run ``call`` in a daemon thread for at most ``seconds``: (finished, result, error).

    A call still running at the deadline is abandoned (a daemon thread does not keep the
    process alive); every call made here has its own, shorter, network timeout anyway.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as error:  # handed back to the caller
            box["error"] = error

    thread = threading.Thread(target=target, name="check-tracking-uri", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    if thread.is_alive():
        return False, None, None
    return True, box.get("result"), box.get("error")


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ssl_context() -> ssl.SSLContext | None:
    """TLS settings as MLflow's client takes them from the environment."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return ssl._create_unverified_context()  # the user asked for it
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def _auth_failed(shown: str, detail: str) -> UserInputError:
    return UserInputError(
        f"tracking URI {shown}: authentication failed ({detail}); MLflow takes the credentials "
        "from the environment: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "(or MLFLOW_TRACKING_TOKEN)")


def _check_http(uri: str, shown: str, deadline: float, budget: float) -> None:
    base = uri.rstrip("/")

    def health() -> int:
        # any answer means a server is there; a 401/403 here is not the verdict on the
        # credentials (a proxy may guard /health too): the authenticated call below is
        left = max(0.5, deadline - time.monotonic())
        try:
            plain = re.sub(r"^([a-z]+://)[^/@]*@", r"\1", base, flags=re.I)  # no user:password
            with urllib.request.urlopen(f"{plain}/health", timeout=left,
                                        context=_ssl_context()) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    done, _, error = _in_thread(health, deadline - time.monotonic())
    if not done:
        raise UserInputError(f"tracking URI {shown} is not reachable (no answer from "
                             f"{_redact(base)}/health in {budget:.0f}s)")
    if error is not None:
        reason = getattr(error, "reason", error)  # URLError wraps the socket error
        raise UserInputError(f"tracking URI {shown} is not reachable ({_one_line(reason)})")

    def api() -> None:
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)

    left = deadline - time.monotonic()
    with _environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(left)))}):
        done, _, error = _in_thread(api, left)
    if not done:
        raise UserInputError(f"tracking URI {shown} is not reachable (its MLflow API gave "
                             f"no answer in {budget:.0f}s)")
    if error is None:
        return
    status = getattr(error, "get_http_status_code", lambda: None)()
    text = _one_line(str(error).replace(base, _redact(base)))  # MLflow's text has the URL
    if status in (401, 403):  # MlflowException/RestException: UNAUTHENTICATED, PERMISSION_DENIED
        raise _auth_failed(shown, text)
    raise UserInputError(f"tracking URI {shown} is not usable ({text})")


def _check_folder(shown: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"tracking URI {shown}: cannot create its folder {folder} "
                             f"({_one_line(error)})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"tracking URI {shown}: its folder {folder} is not writable")


def _check_database(uri: str, shown: str, deadline: float, budget: float) -> None:
    def connect() -> None:
        import sqlalchemy

        seconds = max(1, int(deadline - time.monotonic()))
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": seconds})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    done, _, error = _in_thread(connect, deadline - time.monotonic())
    if not done:
        raise UserInputError(f"tracking URI {shown} is not reachable (no answer in "
                             f"{budget:.0f}s)")
    if isinstance(error, ModuleNotFoundError):
        raise UserInputError(f"tracking URI {shown}: its database driver is not installed "
                             f"({_one_line(error)})")
    if error is not None:
        text = _one_line(getattr(error, "orig", None) or error)
        if re.search(r"authentication failed|access denied", text, re.I):
            raise UserInputError(f"tracking URI {shown}: authentication failed ({text})")
        raise UserInputError(f"tracking URI {shown} is not reachable ({text})")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (relative PATH: from the working
    directory, as SQLAlchemy reads it); None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def check_tracking_uri(uri: str, timeout_s: float = 20.0) -> None:
    """Raise ``UserInputError`` (one line naming the URI) unless MLflow can use ``uri``.

    Returns or raises within ``timeout_s`` (at most 25 s, whatever is asked). http(s): a
    plain GET of ``<uri>/health``, then one authenticated MLflow call with no retries
    (401/403: authentication failed). sqlite/file: the store's folder exists or can be made,
    and is writable. postgresql/mysql: a SQLAlchemy connect with ``connect_timeout``. Other
    schemes (databricks, ...) are left to MLflow.
    """
    budget = max(0.5, min(float(timeout_s), _MAX_CHECK_S))
    deadline = time.monotonic() + budget
    shown = _redact(uri)
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        _check_http(uri, shown, deadline, budget)
    elif scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is not None:
            _check_folder(shown, path.parent)
    elif scheme == "file":
        _check_folder(shown, Path(uri.removeprefix("file://").removeprefix("file:")).resolve())
    elif scheme.split("+")[0] in ("postgresql", "postgres", "mysql"):
        _check_database(uri, shown, deadline, budget)


# ---------------------------------------------------------------------------------------------
# Tracker


def _safe_value(value: str) -> bool:
    """Whether ``value`` can go between quotes in an MLflow search filter as it is."""
    return not re.search(r"['\"\\]", value)


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Beside the SQLite database, not ``./mlruns`` of the driver's working directory."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "experiment"
    return (path.parent / "mlartifacts" / folder).as_uri()


class Tracker:
    """The MLflow calls the pipeline makes, all by explicit run id (``MlflowClient``).

    ``with tracker.parent(name, key) as run_id`` opens (or reopens) the run of one
    experiment folder; ``stage_run``/``nested`` open (or reopen) a stage run under it;
    ``log_trial(record, stage_run_id)`` logs one trial once. ``log_params``,
    ``log_metrics`` and ``log_artifact`` go to ``run_id``, else to the open parent run.
    Thread-safe: a Ray Tune callback may log trials while the driver logs elsewhere; and
    picklable, as Ray Tune needs its callbacks to be (the copy makes its own client).
    """

    page_size = 5000  # runs per search_runs page

    def __init__(self, uri: str, experiment: str, tags: dict[str, str]) -> None:
        check_tracking_uri(uri)
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.tags = {str(k): str(v) for k, v in tags.items()}
        self.experiment_id = self._experiment(experiment)
        self._lock = threading.RLock()
        self._parents: list[str] = []  # open parent runs, innermost last
        self._stages: dict[str, list[str]] = {}  # parent run -> stage runs it ends
        self._logged = self._logged_trials()

    def __getstate__(self) -> dict:
        # Ray Tune pickles its callbacks (tuner.pkl, for Tuner.restore): no lock, no client
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "client")}

    def __setstate__(self, state: dict) -> None:
        from mlflow import MlflowClient

        self.__dict__.update(state)
        self._lock = threading.RLock()
        self.client = MlflowClient(self.uri)

    # -- lookups --------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(
                    name, artifact_location=_artifact_root(self.uri, name))
            except MlflowException as error:  # made meanwhile by another process
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise error from None
        if experiment.lifecycle_stage != "active":
            raise UserInputError(
                f"MLflow experiment {name!r} at {_redact(self.uri)} is deleted: restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                "or choose another experiment name")
        return experiment.experiment_id

    def _search(self, filter_string: str, order_by: list[str] | None = None) -> Iterator[Any]:
        """Every active run of the experiment that matches, page by page."""
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=self.page_size, order_by=order_by,
                                           page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _runs_tagged(self, key: str, value: str, also: str = "") -> Iterator[Any]:
        """Runs whose tag ``key`` is ``value``, oldest first (quotes: filtered here)."""
        clause = f"tags.`{key}` = '{value}'" if _safe_value(value) else f"tags.`{key}` LIKE '%'"
        runs = self._search(clause + (f" AND {also}" if also else ""),
                            order_by=["attributes.start_time ASC"])
        return (run for run in runs if run.data.tags.get(key) == value)

    def _logged_trials(self) -> set[tuple[str, str]]:
        return {(run.data.tags.get("stage", ""), run.data.tags["trial_key"])
                for run in self._search("tags.trial_key LIKE '%'")}

    def is_logged(self, stage: str, trial_key: str) -> bool:
        """Whether a run of this trial key in this stage is in the experiment."""
        with self._lock:
            return (stage, trial_key) in self._logged

    def _current_parent(self) -> str:
        with self._lock:
            if not self._parents:
                raise RuntimeError("no parent run is open: use `with tracker.parent(name, key)` "
                                   "or pass run_id")
            return self._parents[-1]

    # -- writes ---------------------------------------------------------------------------

    def _batch(self, run_id: str, metrics: dict[str, float] | None = None,
               params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """``log_batch`` in as few calls as MLflow's limits allow; the last tag goes last."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ts = [RunTag(k, v) for k, v in (tags or {}).items()]
        while ms or ps or ts:  # per call: 1000 metrics, 100 params, 100 tags, 1000 in all
            m, ms = ms[:1000], ms[1000:]
            room = min(100, 1000 - len(m))
            p, ps = ps[:room], ps[room:]
            room = min(100, 1000 - len(m) - len(p))
            t, ts = ts[:room], ts[room:]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)

    def _reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        self._batch(run_id, tags=self.tags)  # the commit and hashes of this run of it

    def _terminate(self, run_id: str, status: str) -> None:
        # against a server, MLflow 3's set_terminated fetches the run again and prints two
        # "View run/experiment at" lines to stdout: per trial, that is noise and a round trip
        with _QUIET_LOCK, _environ({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}):
            self.client.set_terminated(run_id, status)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run opened by ``stage_run`` (FINISHED, FAILED or KILLED)."""
        with self._lock:
            for stages in self._stages.values():
                if run_id in stages:
                    stages.remove(run_id)
        self._terminate(run_id, status)

    @contextlib.contextmanager
    def parent(self, name: str, key: str) -> Iterator[str]:
        """The parent run tagged ``run_key=key`` (made if none, named ``name``), as the run
        that ``log_*`` default to: RUNNING inside, then FINISHED, or FAILED if the block
        raises (KILLED on Ctrl-C). Stage runs still open under it end with it."""
        with self._lock:  # find or make, one thread at a time
            existing = next(self._runs_tagged("run_key", key), None)
            if existing is None:
                run_id = self.client.create_run(self.experiment_id, run_name=name,
                                                tags={**self.tags, "run_key": key}).info.run_id
            else:
                run_id = existing.info.run_id
                self._reopen(run_id)
            self._parents.append(run_id)
            self._stages[run_id] = []
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            with self._lock:
                self._parents.remove(run_id)
                stages = self._stages.pop(run_id)
            for stage in reversed(stages):
                self._terminate(stage, status)
            self._terminate(run_id, status)

    def stage_run(self, name: str, tags: dict, parent_id: str | None = None) -> str:
        """The id of the run ``name`` with these tags under ``parent_id`` (default: the open
        parent run), RUNNING: the existing one if any (tag ``stage_key`` = name, same tags),
        else a new one. It ends with its parent run, or by ``end_run``."""
        parent_id = parent_id or self._current_parent()
        own = {str(k): str(v) for k, v in tags.items()}
        signature = json.dumps(own, sort_keys=True)
        with self._lock:  # find or make, one thread at a time
            children = self._runs_tagged("stage_key", name,
                                         f"tags.`{PARENT_TAG}` = '{parent_id}'")
            existing = next((run for run in children
                             if run.data.tags.get("stage_tags") == signature), None)
            if existing is None:
                run_id = self.client.create_run(
                    self.experiment_id, run_name=name,
                    tags={**self.tags, **own, "stage_key": name, "stage_tags": signature,
                          PARENT_TAG: parent_id}).info.run_id
            else:
                run_id = existing.info.run_id
                self._reopen(run_id)
            owner = self._parents[-1] if self._parents else None
            if owner is not None and run_id not in self._stages[owner]:
                self._stages[owner].append(run_id)
        return run_id

    @contextlib.contextmanager
    def nested(self, name: str, tags: dict | None = None,
               parent_id: str | None = None) -> Iterator[str]:
        """``stage_run`` as a block: the run ends with it (FAILED if the block raises)."""
        run_id = self.stage_run(name, tags or {}, parent_id)
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            self.end_run(run_id, status)

    def log_params(self, params: dict, run_id: str | None = None) -> None:
        """Params as strings (500 characters at most). On a reopened run a param already
        there keeps its first value (MLflow refuses to change one); a different value is
        kept as the tag ``changed_param/<name>`` instead."""
        run_id = run_id or self._current_parent()
        values = {str(k): str(v)[:_PARAM_CHARS] for k, v in params.items()}
        run = self.client.get_run(run_id)
        logged = run.data.params
        self._batch(run_id,
                    params={k: v for k, v in values.items() if k not in logged},
                    tags={f"changed_param/{k}": v for k, v in values.items()
                          if k in logged and logged[k] != v})
        for k, v in values.items():  # back to the first value: the note is stale
            if logged.get(k) == v and f"changed_param/{k}" in run.data.tags:
                self.client.delete_tag(run_id, f"changed_param/{k}")

    def log_metrics(self, metrics: dict, run_id: str | None = None) -> None:
        """The finite ones, in one batch (non-numbers, NaN and infinities are left out)."""
        finite = _finite(metrics)
        if finite:
            self._batch(run_id or self._current_parent(), metrics=finite)

    def log_artifact(self, path: str | Path, folder: str | None = None,
                     run_id: str | None = None) -> None:
        self.client.log_artifact(run_id or self._current_parent(), str(path), folder)

    def log_trial(self, record: dict, parent_id: str) -> bool:
        """A run for one trial or replicate under ``parent_id`` (its method's stage run):
        params = hparams + seed, metrics = the finite metrics + objective + time/unlearn_s,
        FINISHED (FAILED for a failed trial). False, logging nothing, when this trial key
        was already logged in this stage of the experiment (a re-run, a resumed run)."""
        done = (record["stage"], record["trial_key"])
        tags = {**self.tags, "status": record["status"], "stage": record["stage"],
                "method": record["method"], PARENT_TAG: parent_id}
        if record.get("error"):
            tags["error"] = str(record["error"])[:5000]
        params = {str(k): str(v)[:_PARAM_CHARS]
                  for k, v in {**record["hparams"], "seed": record["seed"]}.items()}
        metrics = _finite({**record.get("metrics", {}), "objective": record.get("objective"),
                           "time/unlearn_s": record.get("seconds")})
        with self._lock:
            if done in self._logged:
                return False
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"{record['method']}-{record['trial_key'][-8:]}",
                tags=tags).info.run_id
            try:
                # trial_key last: a run cut short is not taken for a logged trial
                self._batch(run_id, metrics=metrics, params=params,
                            tags={"trial_key": record["trial_key"]})
                self._terminate(run_id, "FAILED" if record["status"] == "failed" else "FINISHED")
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.delete_run(run_id)
                raise
            self._logged.add(done)
        return True
