"""One run per experiment: a live holder is named and refused; a dead one is taken over."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time

import pytest

from pipelines.lock import LOCK_FILE, RunLock
from unlearn_core.errors import UserInputError
from unlearn_core.storage import Store


def _hold(uri: str, ready, release) -> None:
    with RunLock(Store.at(uri), lease_s=3):
        ready.set()
        release.wait(30)


def _lock_suite(store: Store) -> None:
    """The same checks on any store: refusal naming the holder, release, lease expiry."""
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(store.uri, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(UserInputError) as refused:
            RunLock(store, lease_s=3).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "started" in message and store.uri in message
        time.sleep(2)  # longer than a heartbeat: still held (the lease is renewed)
        with pytest.raises(UserInputError):
            RunLock(store, lease_s=3).acquire()
    finally:
        release.set()
        holder.join(30)
    assert not store.exists(LOCK_FILE), "a clean exit releases the lock"
    with RunLock(store, lease_s=3):  # free again
        assert store.exists(LOCK_FILE)

    # a holder on another host that stopped renewing: refused until its lease runs out
    store.write_json(LOCK_FILE, {"token": "other", "host": "elsewhere", "pid": 1,
                                 "started": time.time(), "renewed": time.time(), "lease_s": 1.5})
    with pytest.raises(UserInputError, match="host elsewhere, pid 1"):
        RunLock(store, lease_s=3).acquire()
    time.sleep(1.6)
    with RunLock(store, lease_s=3) as taken:
        assert store.read_json(LOCK_FILE)["token"] == taken.token


def test_lock_on_local_disk(tmp_path):
    _lock_suite(Store.at(tmp_path / "exp"))


def test_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    store = Store.at(tmp_path / "exp")
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    store.write_json(LOCK_FILE, {"token": "x", "host": socket.gethostname(), "pid": dead.pid,
                                 "started": time.time(), "renewed": time.time(),
                                 "lease_s": 3600})
    with RunLock(store, lease_s=3) as lock:
        assert store.read_json(LOCK_FILE)["pid"] == os.getpid() and not lock.lost


def test_heartbeat_gives_way_to_a_takeover(tmp_path):
    store = Store.at(tmp_path / "exp")
    lock = RunLock(store, lease_s=0.6)
    lock.acquire()
    store.write_json(LOCK_FILE, {"token": "thief", "host": "h", "pid": 1,
                                 "started": 0, "renewed": time.time(), "lease_s": 60})
    time.sleep(0.5)
    assert lock.lost and store.read_json(LOCK_FILE)["token"] == "thief"
    lock.release()  # never deletes a lock it no longer holds
    assert store.read_json(LOCK_FILE)["token"] == "thief"


@pytest.mark.slow
def test_lock_on_s3(s3_env):
    _lock_suite(Store.at(f"s3://{s3_env}/exp"))
