"""The real test services (tests/services.py): SeaweedFS S3 behind ``Store``, and a
multi-node Ray cluster whose worker nodes share no disk with the driver."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.services import descendants, is_alive, wait_for
from unlearn_core.errors import UserInputError
from unlearn_core.storage import Store


def _listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        for fd in with_fds.iterdir() if with_fds.exists() else []:
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                hex_ip, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_ip)
                # /proc writes each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.add(f"{socket.inet_ntop(family, raw)}:{int(hex_port, 16)}")
    return out


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------- S3


def test_s3_server_listens_on_loopback_only(s3_server):
    """Every port weed listens on was given to it, on 127.0.0.1 (two servers never collide)."""
    addresses = _listening_addresses([s3_server.pid])
    assert f"127.0.0.1:{_port(s3_server.endpoint)}" in addresses
    assert all(_is_loopback(a) for a in addresses), addresses
    assert {_port(a) for a in addresses} == set(s3_server.ports.values()), addresses


def test_store_on_s3_round_trip(s3_env, s3_server, tmp_path):
    bucket = s3_env
    admin = s3_server.filesystem()
    assert admin.get_file_info(bucket).type == pafs.FileType.NotFound
    store = Store.at(f"s3://{bucket}/x")
    assert admin.get_file_info(bucket).type == pafs.FileType.Directory  # created

    store.write_bytes("a/b.bin", b"12345")
    store.write_json("a/c.json", {"k": 1})
    assert store.read_bytes("a/b.bin") == b"12345" and store.read_json("a/c.json") == {"k": 1}
    assert store.exists("a/b.bin") and not store.exists("a/nope") and not store.exists("a")
    assert store.list("a") == ["a/b.bin", "a/c.json"] and store.list("missing") == []
    assert store.list("a", suffix=".json") == ["a/c.json"]
    assert store.size("a/b.bin") == 5
    assert store.size("a") == 5 + len(store.read_bytes("a/c.json"))
    with pytest.raises(FileNotFoundError, match="nope"):
        store.read_bytes("a/nope")
    # another process (a fresh Store from the URI) sees the same objects
    assert Store.at(store.uri).read_bytes("a/b.bin") == b"12345"

    local = tmp_path / "rec"
    (local / "sub").mkdir(parents=True)
    for name in ("done.json", "a.bin", "sub/b.bin"):
        (local / name).write_bytes(name.encode())
    order: list[str] = []
    write = store.write_bytes
    object.__setattr__(store, "write_bytes", lambda rel, data: (order.append(rel),
                                                                write(rel, data)))
    store.put_dir(local, "u/k", last="done.json")
    assert sorted(order) == ["u/k/a.bin", "u/k/done.json", "u/k/sub/b.bin"]
    assert order[-1] == "u/k/done.json"
    assert store.list("u/k", recursive=True) == ["u/k/a.bin", "u/k/done.json", "u/k/sub/b.bin"]
    copy = Store.at(store.uri).get_dir("u/k", tmp_path / "copy")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "a.bin", "done.json", "sub/b.bin"]
    assert (copy / "sub" / "b.bin").read_bytes() == b"sub/b.bin"


def test_store_on_s3_list_skips_dot_names(s3_env):
    store = Store.at(f"s3://{s3_env}/runs")
    for rel in ("r/keep.json", "r/.tmp-half.json", "r/sub/.hidden", "r/sub/ok.bin"):
        store.write_bytes(rel, b"x")
    assert store.list("r") == ["r/keep.json"]
    assert store.list("r", recursive=True) == ["r/keep.json", "r/sub/ok.bin"]
    assert store.exists("r/.tmp-half.json")  # there, just never listed


def test_store_on_s3_wrong_secret_names_the_bucket(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bucket = f"{s3_env}-new"
    with pytest.raises(UserInputError, match=bucket) as err:
        Store.at(f"s3://{bucket}/x")
    assert "\n" not in str(err.value)


# Regressions: get_dir("") once cut the first character off every path (a file in a
# subfolder landed at /<name>); list(recursive=True) once listed files in dot-folders.


def test_store_get_dir_of_the_whole_store(s3_env, tmp_path):
    store = Store.at(f"s3://{s3_env}/x")
    store.write_bytes("f1.bin", b"1")
    store.write_bytes("d/f2.bin", b"2")
    copy = store.get_dir("", tmp_path / "copy")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) \
        == ["d/f2.bin", "f1.bin"]
    assert not Path("/f2.bin").exists()


def test_store_list_skips_files_in_dot_folders(s3_env):
    store = Store.at(f"s3://{s3_env}/x")
    store.write_bytes(".tmp-upload/part.bin", b"x")
    store.write_bytes("ok.bin", b"x")
    assert store.list("", recursive=True) == ["ok.bin"]


# ---------------------------------------------------------------------------- Ray
# Task bodies are nested functions, which Ray sends by value: a module-level function of a
# test module would be imported by name on the worker, where tests/ is not on sys.path.


def _ray_pids(cluster) -> list[int]:
    return [pid for node in cluster.nodes for pid in [node.pid, *descendants(node.pid)]]


def _node_id_task():
    import ray

    def node_id() -> str:
        return ray.get_runtime_context().get_node_id()

    return ray.remote(num_cpus=1)(node_id)


@pytest.mark.slow
def test_ray_cluster_nodes(ray_driver):
    import ray

    nodes = ray_driver.alive_nodes()
    assert len(nodes) == 3
    head = [n for n in nodes if n["NodeID"] == ray_driver.head.node_id()]
    assert len(head) == 1 and head[0]["Resources"].get("CPU", 0) == 0
    assert {n["NodeID"] for n in nodes} - {head[0]["NodeID"]} == set(
        ray_driver.worker_node_ids())
    assert ray.cluster_resources()["CPU"] == 2
    # nothing of the cluster listens outside 127.0.0.1
    addresses = _listening_addresses(_ray_pids(ray_driver))
    assert any(a.endswith(f"127.0.0.1:{_port(ray_driver.address)}") for a in addresses)
    assert all(_is_loopback(a) for a in addresses), addresses
    assert {_port(a) for a in addresses} <= ray_driver.reserved_ports, addresses


@pytest.mark.slow
def test_ray_tasks_run_on_worker_nodes(ray_driver):
    import ray

    where = _node_id_task()
    ran_on = ray.get([where.remote() for _ in range(4)], timeout=60)
    assert len(ran_on) == 4 and set(ran_on) <= set(ray_driver.worker_node_ids())


@pytest.mark.slow
def test_ray_worker_nodes_share_no_disk_but_reach_s3(ray_driver, s3_server, s3_env, tmp_path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def write_under(path: str) -> tuple[bool, str]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("from a worker node")
        return Path(path).exists(), os.environ.get("AWS_ENDPOINT_URL", "")

    def store_round_trip(uri: str) -> bytes:
        store = Store.at(uri)
        store.write_bytes("from-worker.bin", b"worker")
        return store.read_bytes("from-driver.bin")

    worker = ray_driver.worker_node_ids()[0]
    on_worker = {"num_cpus": 1, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        node_id=worker, soft=False)}

    target = tmp_path / "isolated" / "note.txt"
    seen_there, endpoint = ray.get(
        ray.remote(write_under).options(**on_worker).remote(str(target)), timeout=60)
    assert seen_there and not target.exists()  # written on the worker's own tmpfs only
    assert endpoint == s3_server.endpoint  # the node carries its own S3 credentials

    store = Store.at(f"s3://{s3_env}/shared")
    store.write_bytes("from-driver.bin", b"driver")
    task = ray.remote(store_round_trip).options(**on_worker)
    assert ray.get(task.remote(store.uri), timeout=60) == b"driver"
    assert store.read_bytes("from-worker.bin") == b"worker"


@pytest.mark.slow
def test_ray_worker_death_is_seen_and_work_goes_on(ray_driver):
    """Runs last in this module: it kills worker 0 (and adds a worker back)."""
    import ray

    survivor = ray_driver.worker_node_ids()[1]
    raylet = ray_driver.workers[0].raylet_pid()
    dead = ray_driver.kill_worker(0)
    assert raylet is not None and not is_alive(raylet)
    wait_for(lambda: dead not in {n["NodeID"] for n in ray_driver.alive_nodes()}, 10,
             "the killed node to be reported dead")
    assert any(n["NodeID"] == dead and not n["Alive"] for n in ray.nodes())
    assert len(ray_driver.alive_nodes()) == 2
    assert ray.get(_node_id_task().remote(), timeout=60) == survivor

    added = ray_driver.add_worker()
    wait_for(lambda: added.node_id() in {n["NodeID"] for n in ray_driver.alive_nodes()}, 30,
             "the added worker node to join")
    assert len(ray_driver.alive_nodes()) == 3
