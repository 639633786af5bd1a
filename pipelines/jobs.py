"""``unlearn jobs``: list, inspect, follow and stop Ray jobs (``unlearn submit`` starts them).

    unlearn jobs list   --address http://HEAD:8265
    unlearn jobs status raysubmit_XXXX
    unlearn jobs logs   raysubmit_XXXX --follow
    unlearn jobs stop   raysubmit_XXXX

Everything goes through Ray's Job Submission SDK, to the Jobs API that the head's
dashboard serves (``http://HEAD:8265`` by default). The address comes from ``--address``,
else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` (Ray's own order). Accepted forms:

* ``http://HOST:PORT`` or ``https://HOST:PORT``: the dashboard, as is;
* ``HOST:PORT``: the dashboard over http (Ray's own reading), except port 6379;
* ``ray://HOST[:PORT]`` (Ray Client) and ``HOST:6379`` or ``HOST`` (the GCS): the Jobs API
  is not there, so the dashboard's default port on the same host is used,
  ``http://HOST:8265``, and a note says so.

Ray's token authentication: the token is read as Ray reads it, from ``RAY_AUTH_TOKEN``,
else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``, and sent as an
``Authorization: Bearer`` header; it never goes on a command line or into the job. The
home-folder file (which any local ``ray.init()`` creates) goes only to a cluster on this
machine or when ``RAY_AUTH_MODE=token`` says the user means it: never silently elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from unlearn_core.errors import UserInputError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

TOKEN_ENV = "RAY_AUTH_TOKEN"  # Ray's own names: `ray job submit` reads the same
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DASHBOARD_PORT = 8265  # Ray's default dashboard (Jobs API) port
GCS_PORT = 6379  # Ray's default GCS port: never the Jobs API
CONNECT_TIMEOUT_S = 10.0
EXPECTED = "expected the dashboard's address, e.g. http://HEAD:8265"


def resolve_address(address: str | None) -> str:
    """The Jobs API URL for ``address`` (see the module docstring), or UserInputError."""
    given = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not given:
        raise UserInputError(f"no Ray cluster address: pass --address or set RAY_ADDRESS; "
                             f"{EXPECTED}")
    given = given.strip().rstrip("/")
    if given in ("auto", "local"):
        raise UserInputError(f"address {given!r} names no cluster to submit to; {EXPECTED}")
    scheme = given.split("://", 1)[0].lower() if "://" in given else ""
    if scheme not in ("", "http", "https", "ray"):
        raise UserInputError(f"address {given!r}: unknown scheme {scheme!r}; {EXPECTED}")
    parts = urlsplit(given if scheme else f"http://{given}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if not host or (parts.path not in ("", "/")):
        raise UserInputError(f"address {given!r} is not HOST:PORT or a URL; {EXPECTED}")
    if parts.username or parts.password:
        raise UserInputError(f"address {given!r}: no credentials in the address; the Ray "
                             f"token goes in {TOKEN_ENV}")
    netloc = f"[{host}]" if ":" in host else host
    if scheme in ("http", "https"):
        return f"{scheme}://{netloc}" + (f":{port}" if port else "")
    if scheme == "ray" or port in (None, GCS_PORT):
        url = f"http://{netloc}:{DASHBOARD_PORT}"
        print(f"note: {given} is a Ray Client or GCS address; using the Jobs API at {url}",
              file=sys.stderr)
        return url
    return f"http://{netloc}:{port}"


def _is_loopback(url: str | None) -> bool:
    """Whether the Jobs API at ``url`` is on this machine (no ``url``: a local cluster)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname if url else "localhost"
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_token(url: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from) for the Jobs API at ``url``: Ray's order, see the
    module docstring."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, TOKEN_ENV
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        try:
            return Path(path).expanduser().read_text().strip(), f"{TOKEN_PATH_ENV} ({path})"
        except OSError as err:
            raise UserInputError(f"{TOKEN_PATH_ENV}={path}: cannot read the token "
                                 f"({err.strerror})") from None
    default = Path.home() / ".ray" / "auth_token"
    explicit = os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"
    if (explicit or _is_loopback(url)) and default.is_file():
        return default.read_text().strip() or None, str(default)
    return None, ""


def _preflight(url: str, headers: dict[str, str], source: str) -> None:
    """One request with a timeout before the SDK makes its own (which has none), so an
    unreachable address, a missing or refused token, or something that is not Ray's Jobs
    API each end in one clear line."""
    import requests

    try:
        response = requests.get(f"{url}/api/version", headers=headers,
                                timeout=CONNECT_TIMEOUT_S)
    except requests.exceptions.RequestException as err:
        kind = type(err).__name__
        raise UserInputError(f"cannot reach the Ray Jobs API at {url} ({kind}); {EXPECTED}, "
                             "from a machine that can reach it") from None
    if response.status_code == 401:
        raise UserInputError(f"the Ray cluster at {url} requires a token: set {TOKEN_ENV} "
                             f"(or {TOKEN_PATH_ENV}) to the cluster's token")
    if response.status_code == 403:
        raise UserInputError(f"the Ray cluster at {url} refused the token from {source}")
    try:
        ok = response.status_code == 200 and "ray_version" in response.json()
    except ValueError:
        ok = False
    if not ok:
        raise UserInputError(f"{url} is not a Ray Jobs API (GET /api/version answered "
                             f"{response.status_code}); {EXPECTED}")


def connect(address: str | None) -> JobSubmissionClient:
    """A JobSubmissionClient on the cluster at ``address`` that sends the Ray token."""
    url = resolve_address(address)
    token, source = auth_token(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    _preflight(url, headers, source)
    from ray.job_submission import JobSubmissionClient

    with job_errors(url):
        return JobSubmissionClient(url, headers=headers)


@contextlib.contextmanager
def job_errors(url: str, job_id: str | None = None) -> Iterator[None]:
    """Turns the SDK's errors into UserInputError: one line, exit status 2."""
    import aiohttp  # the SDK's log stream (tail_job_logs)
    import requests  # the SDK's other calls
    from ray.exceptions import AuthenticationError

    where = url + (f", job {job_id}" if job_id else "")
    try:
        yield
    except AuthenticationError as err:
        raise UserInputError(f"{where}: {str(err).splitlines()[0]}") from None
    except (ConnectionError, requests.exceptions.RequestException, aiohttp.ClientError) as err:
        raise UserInputError(f"{where}: lost the connection ({type(err).__name__})") from None
    except (RuntimeError, ValueError) as err:
        if isinstance(err, UserInputError):
            raise
        # e.g. "Request failed with status code 404: Job raysubmit_x does not exist."
        text = " ".join(str(err).split())
        raise UserInputError(f"{where}: {text[:300]}") from None


def follow(client: JobSubmissionClient, job_id: str) -> int:
    """Stream the job's logs until it ends; 0 when it SUCCEEDED, 1 otherwise."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    with job_errors(client.get_address(), job_id):
        try:
            asyncio.run(tail())
        except KeyboardInterrupt:
            print(f"\nstopped following; the job goes on (unlearn jobs stop {job_id})",
                  file=sys.stderr)
            return 130
        status = client.get_job_status(job_id)
        if not status.is_terminal():  # the log stream ends a moment before the status
            status = _wait_terminal(client, job_id, timeout=30.0)
    print(f"job {job_id} {status.value}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _wait_terminal(client: JobSubmissionClient, job_id: str, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return status


# ---------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    client = connect(args.address)
    with job_errors(client.get_address()):
        jobs = client.list_jobs()
    jobs.sort(key=lambda job: job.start_time or 0)
    print(f"{'submission id':<32} {'status':<10} entrypoint")
    for job in jobs:
        print(f"{job.submission_id or job.job_id or '-':<32} {job.status.value:<10} "
              f"{job.entrypoint}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = connect(args.address)
    with job_errors(client.get_address(), args.job_id):
        info = client.get_job_info(args.job_id)
    print(f"{args.job_id} {info.status.value}")
    if info.message:
        print(f"message: {' '.join(info.message.split())}")
    print(f"entrypoint: {info.entrypoint}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    if args.follow:
        return follow(client, args.job_id)
    with job_errors(client.get_address(), args.job_id):
        print(client.get_job_logs(args.job_id), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client = connect(args.address)
    with job_errors(client.get_address(), args.job_id):
        running = client.stop_job(args.job_id)
        status = _wait_terminal(client, args.job_id, timeout=args.wait) if running else (
            client.get_job_status(args.job_id))
    print(f"{args.job_id} {status.value}" + ("" if running else " (was not running)"))
    return 0 if status.is_terminal() else 1


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="the cluster's dashboard (Jobs API), e.g. http://HEAD:8265 (default: "
                        "RAY_API_SERVER_ADDRESS, then RAY_ADDRESS); the token comes from "
                        f"{TOKEN_ENV} or {TOKEN_PATH_ENV}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``unlearn jobs list | status | logs | stop``."""
    p = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs on a cluster",
                       description="List, inspect, follow and stop the Ray jobs of a "
                                   "cluster (those `unlearn submit` started, and any other), "
                                   "through its Jobs API.",
                       epilog="Example: unlearn jobs logs raysubmit_XXXX --follow "
                              "--address http://127.0.0.1:8265")
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    q = jobs.add_parser("list", help="every job the cluster knows, oldest first")
    add_address(q)
    q.set_defaults(func=cmd_list)
    q = jobs.add_parser("status", help="a job's status and message")
    q.add_argument("job_id", help="the submission id that `unlearn submit` printed")
    add_address(q)
    q.set_defaults(func=cmd_status)
    q = jobs.add_parser("logs", help="a job's logs so far, or --follow them to its end")
    q.add_argument("job_id", help="the submission id that `unlearn submit` printed")
    q.add_argument("--follow", action="store_true",
                   help="stream the logs until the job ends; exit 0 when it SUCCEEDED")
    add_address(q)
    q.set_defaults(func=cmd_logs)
    q = jobs.add_parser("stop", help="stop a running job and wait until it has stopped")
    q.add_argument("job_id", help="the submission id that `unlearn submit` printed")
    q.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the job to end (default 60)")
    add_address(q)
    q.set_defaults(func=cmd_stop)
