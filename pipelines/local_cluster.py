"""A whole cluster on this machine, on 127.0.0.1 only: ``python -m pipelines.local_cluster up``.

It starts, each as a detached process group recorded in a state folder:

* Ray: a head with no CPUs (dashboard and Jobs API on 127.0.0.1) and worker nodes, token
  authentication on (the token lives in a 0600 file, handed over by ``RAY_AUTH_TOKEN_PATH``);
* SeaweedFS with its S3 gateway and one generated key pair, and the bucket ``unlearn``;
* PostgreSQL (Debian's packages, installed with apt-get when missing) in a fresh data folder,
  run as a non-root user, scram password auth;
* an MLflow tracking server on that PostgreSQL, artifacts in S3, behind MLflow's basic-auth app.

``up`` prints ``export`` lines (``eval "$(scripts/local_cluster.sh up)"``), ``down`` stops
exactly what ``up`` started (by recorded PID and start time, never by name), ``status`` says
what runs where. From Python: ``env = up(path)`` / ``down(path)``. Secrets never reach a
command line that ``ps`` shows: they go through the environment or 0600 files. Data and
secrets stay in the folder across ``down``/``up`` (``down --purge`` removes them).

The pieces: ``pipelines/procs.py`` (ports, /proc, PIDs), ``pipelines/local_state.py`` (the
state folder, starting and stopping recorded processes), ``pipelines/local_ray.py`` (Ray's
nodes on loopback) and ``pipelines/local_services.py`` (S3, PostgreSQL, MLflow).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from pipelines.local_ray import dashboard_url, ray_env, start_ray
from pipelines.local_services import (
    remove_weed_sockets,
    s3_env,
    start_mlflow,
    start_postgres,
    start_s3,
    wait_mlflow,
)
from pipelines.local_state import DEFAULT_DIR, DIR_ENV, State, alive, log, stop
from pipelines.procs import LOOPBACK, is_loopback, listening, members


def _names(state: State) -> list[str]:
    """Recorded services in start order."""
    recorded = list(state.data["services"])
    workers = sorted((n for n in recorded if n.startswith("ray-worker-")),
                     key=lambda n: int(n.rsplit("-", 1)[1]))
    order = ["ray-head", *workers, "s3", "postgres", "mlflow"]
    return [n for n in order if n in recorded]


def cluster_env(state: State | Path | str | None = None) -> dict[str, str]:
    """The variables that reach the running cluster (what ``up`` prints as exports)."""
    state = state if isinstance(state, State) else State(state)
    sec, ports = state.secrets(), state.data["services"]
    return {
        "RAY_ADDRESS": dashboard_url(state),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state.token_file),
        **s3_env(state, sec),
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{ports['mlflow']['ports']['port']}",
        "MLFLOW_TRACKING_USERNAME": sec["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": sec["mlflow_password"],
    }


def up(state_dir: Path | str | None = None, workers: int = 2) -> dict[str, str]:
    """Start every service (or find them all running) and return ``cluster_env``. On a
    failure, stops what it started and raises."""
    state = State(state_dir)
    with state.locked():
        names = _names(state)
        running = [n for n in names if alive(state, n)]
        if names and len(running) == len(names):
            log(f"already up ({state.root})")
            return cluster_env(state)
        if running:
            raise RuntimeError(f"partly up ({', '.join(running)} running, "
                               f"{', '.join(set(names) - set(running))} not): run `down` first")
        _down_locked(state)  # forget what an earlier run left recorded (none of it runs)
        sec = state.secrets()
        taken: set[int] = set()
        try:
            log("starting SeaweedFS (S3)")
            start_s3(state, taken, sec)
            storage = s3_env(state, sec)
            log("starting PostgreSQL")
            start_postgres(state, taken, sec)
            log("starting MLflow (PostgreSQL backend, S3 artifacts, basic auth)")
            start_mlflow(state, taken, sec, storage)  # its slow start overlaps Ray's
            log(f"starting Ray: a head with no CPUs and {workers} worker nodes")
            start_ray(state, taken, ray_env(state, storage), workers)
            log("waiting for MLflow")
            wait_mlflow(state)
        except BaseException:
            log("start failed: stopping what was started")
            _down_locked(state)
            raise
        log(f"up; state in {state.root}")
        return cluster_env(state)


def down(state_dir: Path | str | None = None, purge: bool = False) -> None:
    """Stop every recorded process and check that none is left; with ``purge``, remove the
    folder (data, secrets) too."""
    state = State(state_dir)
    with state.locked():
        _down_locked(state)
        if purge:
            pgdata = Path(state.data.get("pgdata") or state.root)
            if not pgdata.is_relative_to(state.root):  # /var/lib/unlearn-pg/HASH/pgdata
                shutil.rmtree(pgdata.parent, ignore_errors=True)
            shutil.rmtree(state.root, ignore_errors=True)


def _down_locked(state: State) -> None:
    names = _names(state)
    weed_ports = state.data["services"].get("s3", {}).get("ports", {})
    if names:
        log(f"stopping {', '.join(names)}")
    stop(state, names)
    remove_weed_sockets(weed_ports)
    for key in ("ray_temp", "weed_sockets"):
        if path := state.data.pop(key, None):
            shutil.rmtree(path, ignore_errors=True)
    state.save()


def status(state_dir: Path | str | None = None) -> dict[str, dict]:
    """Per recorded service: up or not, PID, ports, and what its processes listen on."""
    state = State(state_dir)
    out = {}
    for name in _names(state):
        entry = state.data["services"][name]
        running = alive(state, name)
        out[name] = {"up": running, "pid": entry["pid"], "ports": entry["ports"],
                     "listening": sorted(listening(members(entry["pid"]))) if running else []}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help=f"state folder (default ${DIR_ENV} or {DEFAULT_DIR})")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start everything; print export lines")
    start.add_argument("--workers", type=int, default=2, help="Ray worker nodes (default 2)")
    halt = commands.add_parser("down", help="stop everything `up` started")
    halt.add_argument("--purge", action="store_true", help="also delete data and secrets")
    commands.add_parser("status", help="each service: up or down, and its ports")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            for key, value in up(args.dir, workers=args.workers).items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "down":
            down(args.dir, purge=args.purge)
        else:
            report = status(args.dir)
            if not report:
                print("not started")
            for name, info in report.items():
                wide = [f"{a}:{p}" for _, a, p in info["listening"] if not is_loopback(a)]
                ports = " ".join(f"{k}={v}" for k, v in info["ports"].items())
                print(f"{name:14} {'up' if info['up'] else 'DOWN':5} pid {info['pid']:<8} {ports}"
                      + (f"  WARNING: listening on {', '.join(wide)}" if wide else ""))
            return 0 if report and all(i["up"] for i in report.values()) else 3
    except (RuntimeError, TimeoutError) as err:
        log(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
