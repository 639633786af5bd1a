"""Ray nodes on 127.0.0.1: the local cluster's head and workers (``pipelines/local_cluster.py``)
and the arguments they share with the test cluster of ``tests/services.py``.

``ray start`` rewrites 127.0.0.1 (in ``--address`` and ``--node-ip-address``) to this
machine's outward IP, so a node would listen there and could not reach a GCS bound to
127.0.0.1. The one switch that turns this off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also
refuses to start worker nodes when ``ray start`` reads it. So nodes start through a shim
around Ray's CLI that keeps loopback addresses as given.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from pipelines.local_state import State, spawn, wait_ready
from pipelines.procs import LOOPBACK, free_ports, free_range, wait_for

_KEEP_LOOPBACK = ("import os, sys, ray._private.services as s; "
                  "s.resolve_ip_for_localhost = lambda host: host; ")
_RUN_CLI = "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
# `ray start`, keeping 127.0.0.1 as given instead of resolving it to the outward IP.
RAY_START_SHIM = _KEEP_LOOPBACK + _RUN_CLI
# The same, and the node's children (raylet, dashboard agents with their Jobs API, job
# drivers, workers), which call `ray.init("127.0.0.1:PORT")` themselves, resolve localhost to
# 127.0.0.1 too: without it a job agent waited forever on the outward IP. The switch is set
# only after Ray read it in this process: read by `ray start` it would refuse worker nodes.
RAY_START_SHIM_LOOPBACK_CHILDREN = (
    _KEEP_LOOPBACK + "os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'; " + _RUN_CLI)
READY_LINE = "will now block forever"  # `ray start --block`, once its node is up
# The ports every node takes (the head also: gcs, dashboard, client).
NODE_PORTS = ("node_manager", "object_manager", "metrics", "agent", "agent_grpc",
              "runtime_env_agent")


def ray_node_args(shim: str, ports: Mapping[str, int], worker_ports: tuple[int, int],
                  temp_dir: Path, object_store_bytes: int) -> list[str]:
    """``ray start --block`` through ``shim`` with every port of ``NODE_PORTS`` given (two
    clusters on one machine would collide on Ray's fixed defaults), the workers' port range,
    the node's temp folder and object store size."""
    return [
        sys.executable, "-c", shim, "start", "--block",
        f"--node-ip-address={LOOPBACK}", f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
        f"--metrics-export-port={ports['metrics']}",
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--temp-dir={temp_dir}", f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
    ]


def ray_env(state: State, s3_env: dict[str, str]) -> dict[str, str]:
    """Nodes get none of this shell's RAY_/AWS_/MLFLOW_ variables, token auth on, and the S3
    credentials a node of a real cluster carries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    return env | s3_env | {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(state.token_file),
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_V2_ENABLED": "1",
    }


def gpu_split(workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per worker node: the visible GPUs dealt round-robin, so that no
    two nodes claim the same GPU (None: no GPUs here, leave Ray's detection alone)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip()]
    elif shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        devices = [str(i) for i, line in enumerate(listing.stdout.splitlines())
                   if line.startswith("GPU ")]
    else:
        return [None] * workers
    return [",".join(devices[i::workers]) for i in range(workers)]


def start_ray(state: State, taken: set[int], env: dict[str, str], workers: int) -> None:
    """A head with no CPUs (dashboard and Jobs API on 127.0.0.1), then ``workers`` worker
    nodes together; returns once the dashboard lists them all alive."""
    temp_root = Path(tempfile.mkdtemp(prefix="ulc-ray-", dir="/tmp"))  # short: Unix socket paths
    state.data["ray_temp"] = str(temp_root)
    cpus = os.environ.get("UNLEARN_LOCAL_CLUSTER_WORKER_CPUS") or str(
        max(1, (os.cpu_count() or 1) // workers))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    store = min(2 << 30, mem // 8)  # per node: Ray's default is 30 % of RAM each
    gcs = None
    for index, gpus in enumerate([None, *gpu_split(workers)]):
        name = "ray-head" if index == 0 else f"ray-worker-{index}"
        names = list(NODE_PORTS) + (["gcs", "dashboard"] if index == 0 else [])
        ports = dict(zip(names, free_ports(len(names), taken), strict=True))
        first, last = free_range(64, taken)
        ports |= {"min_worker": first, "max_worker": last}
        args = ray_node_args(RAY_START_SHIM_LOOPBACK_CHILDREN, ports, (first, last),
                             temp_root / name, store)
        node_env = dict(env)
        if index == 0:
            gcs = f"{LOOPBACK}:{ports['gcs']}"
            args += ["--head", f"--port={ports['gcs']}", "--num-cpus=0", "--num-gpus=0",
                     "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
                     f"--dashboard-port={ports['dashboard']}"]
            # With ray[client] installed the head serves it on 10001 unless told another
            # port (fixed ports collide with other clusters); without it the flag is refused.
            # Ray's own test for ray[client] is whether grpc imports.
            if importlib.util.find_spec("grpc") is not None:
                (ports["client"],) = free_ports(1, taken)
                args.append(f"--ray-client-server-port={ports['client']}")
            # The autoscaler's and the dashboard's Prometheus servers take fixed ports
            # (44217, 44227) unless told otherwise: a second cluster would collide.
            ports["autoscaler_metrics"], ports["dashboard_metrics"] = free_ports(2, taken)
            node_env["AUTOSCALER_METRIC_PORT"] = str(ports["autoscaler_metrics"])
            node_env["DASHBOARD_METRIC_PORT"] = str(ports["dashboard_metrics"])
        else:
            args += [f"--address={gcs}", f"--num-cpus={cpus}"]
            if gpus is not None:
                node_env["CUDA_VISIBLE_DEVICES"] = gpus
        spawn(state, name, args, node_env, ports)
        if index == 0:  # workers need the GCS; they then start together
            _wait_node(state, name, 90)
    for index in range(1, workers + 1):
        _wait_node(state, f"ray-worker-{index}", 90)
    wait_for(lambda: len(ray_nodes(state)) == workers + 1, 120,
             f"{workers + 1} alive Ray nodes in the dashboard")


def _wait_node(state: State, name: str, timeout: float) -> None:
    def ready() -> bool:
        return READY_LINE in (state.root / "logs" / f"{name}.log").read_text(errors="replace")

    wait_ready(state, name, ready, timeout, f"Ray node {name}")


def dashboard_url(state: State) -> str:
    """The head's dashboard and Jobs API (what RAY_ADDRESS names)."""
    return f"http://{LOOPBACK}:{state.data['services']['ray-head']['ports']['dashboard']}"


def ray_nodes(state: State | Path | str | None = None) -> list[dict]:
    """Alive nodes as the dashboard's state API lists them (with the token; [] when it does
    not answer yet)."""
    state = state if isinstance(state, State) else State(state)
    token = state.token_file.read_text().strip()
    request = urllib.request.Request(f"{dashboard_url(state)}/api/v0/nodes?limit=100&detail=1",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
    except (OSError, ValueError):
        return []
    return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]
