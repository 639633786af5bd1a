"""Process and port helpers for services started on this machine (the local cluster of
``pipelines/local_cluster.py`` and the test services of ``tests/services.py``).

Everything is read from /proc (no psutil, no ss) and every process is named by PID, never by
name: other sessions on the machine may run their own Ray, weed and PostgreSQL processes.
Ports are drawn on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------- /proc


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the name (state is [0], ppid [1], session [3], start time
    [19]); None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the name may hold spaces and ")"


def _live(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie counts as gone


def is_alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    return _live(stat_fields(pid))


def start_time(pid: int) -> int | None:
    """Clock ticks since boot when ``pid`` started: a recorded (PID, start time) pair names
    one process, never a later one that got the PID again."""
    fields = stat_fields(pid)
    return int(fields[19]) if _live(fields) else None


def is_ours(pid: int, started: int) -> bool:
    return start_time(pid) == started


def _table() -> dict[int, list[str]]:
    """Live processes: PID -> stat fields."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _live(fields := stat_fields(int(entry))):
            out[int(entry)] = fields
    return out


def _descend(table: dict[int, list[str]], roots: list[int]) -> list[int]:
    """Descendants of ``roots`` in ``table``, parents before their children."""
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[1]), []).append(pid)
    out: list[int] = []
    todo = [child for root in roots for child in children.get(root, [])]
    while todo:
        child = todo.pop(0)
        if child not in out:
            out.append(child)
            todo.extend(children.get(child, []))
    return out


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid``, parents before their children."""
    return _descend(_table(), [pid])


def members(leader: int) -> set[int]:
    """Live processes of ``leader``'s session and all their descendants (Ray's workers move
    to process groups of their own; orphans keep the session)."""
    table = _table()
    session = [p for p, f in table.items() if int(f[3]) == leader]
    return set(session) | set(_descend(table, [leader, *session]))


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


def listening(pids: set[int]) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every TCP socket listening and UDP socket bound by
    ``pids``, from /proc/net."""
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
                    found.add((proto, proc_net_ip(addr), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def proc_net_ip(hex_addr: str) -> str:
    """An address as /proc/net writes it, in text form."""
    raw = bytes.fromhex(hex_addr)
    # /proc/net stores each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


# ---------------------------------------------------------------------------- ports


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (the OS picks them; all are held open
    together so none is returned twice), none in ``taken``, which grows by them."""
    held: list[socket.socket] = []
    ports: list[int] = []
    taken = set() if taken is None else taken
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


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_range(size: int, taken: set[int], low: int = 20000, high: int = 32000,
               ) -> tuple[int, int]:
    """``size`` consecutive ports, all free now and none in ``taken`` (which grows by them):
    (first, last). Drawn below the ephemeral range (32768+, where ``free_ports`` draws) and
    above Ray's default worker ports (10002-19999, used by a local ``ray.init()``)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(low, high - size)
        block = set(range(first, first + size))
        if not block & taken and all(port_free(p) for p in block):
            taken.update(block)
            return first, first + size - 1
    raise RuntimeError(f"no {size} consecutive free ports in {low}-{high}")


# ---------------------------------------------------------------------------- waiting, files


def wait_for(check: Callable[[], object], timeout: float, what: str, *,
             alive: Callable[[], bool] | None = None, interval: float = 0.3) -> object:
    """Poll ``check`` until it returns something true and return that; TimeoutError naming
    ``what``, or RuntimeError as soon as ``alive`` says the process waited on has exited."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------- stopping


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
             f"the processes of PID {process.pid} to exit", interval=0.2)


def fate_shared(args: list[str]) -> list[str]:
    """``args`` run so that the kernel kills the process (SIGKILL) when the process that
    started it dies: a service outlives no test session, even one killed without its
    teardown. Uses util-linux ``setpriv``, when present."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *args] if setpriv else args
