"""The local cluster's state folder and its processes (``pipelines/local_cluster.py``).

The folder holds ``state.json`` (ports, PIDs and start times, paths; no secrets), the 0600
secret files, ``logs/`` and the services' data. Each service runs detached, as a session of
its own, and is recorded by (PID, start time) before anything else can fail, so that
``down`` stops exactly what ``up`` started, never another process that got the PID again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.procs import is_ours, log_tail, members, start_time, wait_for, write_private

DIR_ENV = "UNLEARN_LOCAL_CLUSTER_DIR"
_REPO = Path(__file__).resolve().parent.parent
# In the repository (git-ignored) when run from a checkout; else (an installed package) home.
DEFAULT_DIR = (_REPO / ".local_cluster" if (_REPO / "pyproject.toml").exists()
               else Path.home() / ".unlearn" / "local_cluster")
# Seconds each service gets between SIGTERM (SIGINT: PostgreSQL's fast shutdown) and SIGKILL.
_GRACE = {"mlflow": 10.0, "postgres": 15.0, "s3": 3.0}


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the export lines."""
    print(f"[local_cluster] {message}", file=sys.stderr, flush=True)


class State:
    """The folder: ``state.json`` (ports, PIDs, paths; no secrets), ``secrets.json`` and
    ``ray_auth_token`` (0600), ``logs/``, and the services' data."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root or os.environ.get(DIR_ENV) or DEFAULT_DIR).resolve()
        self.file, self.secrets_file = self.root / "state.json", self.root / "secrets.json"
        self.token_file = self.root / "ray_auth_token"
        self.data: dict = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.data.setdefault("services", {})

    def save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.file)

    def secrets(self) -> dict[str, str]:
        """Generated once and kept: PostgreSQL and MLflow's admin take a password at their
        first start only, so the data in this folder goes with these values."""
        stored = json.loads(self.secrets_file.read_text()) if self.secrets_file.exists() else {}
        wanted = os.environ.get("UNLEARN_MLFLOW_PASSWORD")
        if stored and wanted and wanted != stored["mlflow_password"]:
            raise RuntimeError(
                f"UNLEARN_MLFLOW_PASSWORD differs from the admin password this cluster's "
                f"MLflow was created with ({self.secrets_file}); unset it, or `down --purge`")
        if not stored:
            stored = {
                "s3_access_key": "AK" + secrets.token_hex(9).upper(),
                "s3_secret_key": secrets.token_urlsafe(30),
                "pg_password": secrets.token_urlsafe(24),
                "mlflow_username": os.environ.get("UNLEARN_MLFLOW_USERNAME", "admin"),
                "mlflow_password": wanted or secrets.token_urlsafe(18),
                "flask_secret_key": secrets.token_hex(32),
            }
            write_private(self.secrets_file, json.dumps(stored, indent=1))
        if not self.token_file.exists():
            write_private(self.token_file, secrets.token_hex(32))
        return stored

    @contextlib.contextmanager
    def locked(self):
        """One up/down at a time per folder (made 0700: it holds the secrets and data)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield



def spawn(state: State, name: str, args: list[str], env: dict[str, str],
           ports: dict[str, int], user: pwd.struct_passwd | None = None) -> int:
    """Start ``args`` detached (a session of its own, surviving this process), log to
    ``logs/NAME.log``, and record it before anything else can fail."""
    logs = state.root / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    path = logs / f"{name}.log"
    if path.exists():  # a fresh log (readiness is read from it); the last run's is NAME.log.1
        path.replace(path.with_suffix(".log.1"))
    with open(path, "wb") as out:
        if user is not None:
            os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd="/" if user else state.root,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None)
    state.data["services"][name] = {"pid": process.pid, "start": start_time(process.pid),
                                    "ports": ports}
    state.save()
    return process.pid


def alive(state: State, name: str) -> bool:
    entry = state.data["services"].get(name)
    return bool(entry) and is_ours(entry["pid"], entry["start"])


def service_log(state: State, name: str, lines: int = 25) -> str:
    """The last lines of a service's log (for an error message)."""
    return log_tail(state.root / "logs" / f"{name}.log", lines)


def wait_ready(state: State, name: str, check: Callable[[], object], timeout: float,
               what: str) -> None:
    """Wait until ``check`` passes while service ``name`` runs; if it exits or the time is
    up, RuntimeError with the last lines of its log (what a user needs to see why)."""
    try:
        wait_for(check, timeout, what, alive=lambda: alive(state, name))
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{service_log(state, name)}") from err


def stop(state: State, names: list[str]) -> None:
    """Signal the services all at once (SIGTERM to each process group; PostgreSQL gets
    SIGINT, its fast shutdown), SIGKILL what is left of one after its grace time, and wait
    until no process of their sessions and trees is left. Forgets each service once gone."""
    leaders = {}
    for name in names:
        entry = state.data["services"][name]
        pid = entry["pid"]
        if is_ours(pid, entry["start"]):
            leaders[name] = pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if name == "postgres":
                    os.kill(pid, signal.SIGINT)  # its children follow it
                else:
                    os.killpg(pid, signal.SIGTERM)
        elif start_time(pid) is None and (orphans := members(pid)):
            # The leader died, processes of its session live on (the kernel reuses no PID
            # while its session exists, so they are ours).
            leaders[name] = pid
            for orphan in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGTERM)
        else:
            del state.data["services"][name]  # gone, or its PID is another process's now
    began = time.monotonic()
    while leaders:
        waited = time.monotonic() - began
        for name, pid in list(leaders.items()):
            if not (left := members(pid)):
                del leaders[name], state.data["services"][name]
            elif waited > _GRACE.get(name, 5.0):
                for member in left:  # a dying Ray node may still spawn: again each round
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
        if waited > max(_GRACE.values()) + 10:
            state.save()
            raise RuntimeError("processes survive SIGKILL: " + "; ".join(
                f"{name}: {sorted(members(pid))}" for name, pid in leaders.items()))
        time.sleep(0.2)
    state.save()

