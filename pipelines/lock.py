"""One ``unlearn run`` per experiment at a time, on a local disk or an object store.

The lock is one object, ``lock.json`` in the experiment's folder, naming its
holder (host, pid, start time) and renewed by a heartbeat thread every third of
its lease. A second run on the same experiment is refused with the holder's
name while the lease is fresh. A lock whose lease has run out (its holder died
or lost its connection) is taken over; so is one held by a process of this host
that no longer exists, at once. Object stores have no compare-and-swap, so the
claim is written, then read back after a pause: of two runs that claimed at the
same moment, the one whose claim was overwritten sees the other's and stops.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from unlearn_core.errors import UserInputError
from unlearn_core.storage import Store

LOCK_FILE = "lock.json"
LEASE_ENV = "UNLEARN_LOCK_LEASE_S"  # tests shorten it
DEFAULT_LEASE_S = 60.0
SETTLE_S = 0.3  # pause between claiming and reading the claim back


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _describe(holder: dict) -> str:
    started = datetime.fromtimestamp(holder.get("started", 0), UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {started}"


class RunLock:
    """``with RunLock(store): ...`` holds the experiment for the block's duration."""

    def __init__(self, store: Store, lease_s: float | None = None) -> None:
        self.store = store
        self.lease_s = lease_seconds() if lease_s is None else lease_s
        self.token = uuid.uuid4().hex
        self.claim = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.time(), "lease_s": self.lease_s}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another run took the lock over from us

    def _read(self) -> dict | None:
        return self.store.read_json_or_none(LOCK_FILE)

    def _write(self) -> None:
        self.store.write_json(LOCK_FILE, {**self.claim, "renewed": time.time()})

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == self.claim["host"] and not _pid_alive(int(holder["pid"])):
            return True  # its process is gone: no need to wait for the lease
        return time.time() - float(holder.get("renewed", 0)) > float(holder.get("lease_s", 0))

    def acquire(self) -> None:
        holder = self._read()
        if holder is not None and holder.get("token") != self.token and not self._stale(holder):
            raise UserInputError(self._refusal(holder))
        self._write()
        time.sleep(SETTLE_S)
        holder = self._read()
        if holder is None or holder.get("token") != self.token:
            raise UserInputError(self._refusal(holder or {}))
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name="unlearn-run-lock")
        self._thread.start()

    def _refusal(self, holder: dict) -> str:
        return (f"{self.store.uri} is in use by another `unlearn run` ({_describe(holder)}); "
                f"wait for it to end, or for its lock to expire ({holder.get('lease_s', '?')} s "
                "after its last heartbeat) if it died")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                holder = self._read()
                if holder is not None and holder.get("token") != self.token:
                    self.lost = True  # taken over after our lease ran out: do not fight
                    return
                self._write()
            except OSError:  # a passing store error: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                self.store.delete(LOCK_FILE)
        except OSError:  # the store is unreachable now: the lease runs out on its own
            return

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
