"""``unlearn submit``: run an experiment config as a Ray job on a cluster.

    unlearn submit pipelines/configs/quickstart.yaml --smoke --address http://HEAD:8265 \\
        --results s3://BUCKET/unlearn --tracking-uri http://MLFLOW:5000 --follow

The job runs ``python -m pipelines.cli run CONFIG --address auto`` (the same command as
``unlearn run``, with the same flags) on the cluster's head node, through Ray's Job
Submission SDK. The config is validated here first, so a bad one is refused at once.

What the job gets (its runtime environment, built by ``runtime_env``):

* the project's code as it is on this machine: the ``unlearn_core`` and ``pipelines``
  packages as ``py_modules`` (they come first on the job's ``PYTHONPATH``, before whatever
  version the node image holds), without caches, results, MLflow stores or databases;
* a working directory holding only the config file;
* no ``pip`` and no ``conda``: the nodes run the project's image (``Dockerfile``), which
  already holds torch, Ray, MLflow and every dependency; reinstalling them per job would
  cost minutes and could replace the image's CUDA build of torch. A cluster whose nodes
  lack the dependencies needs that image (or ``pip install unlearn`` on each node);
* the submitter's ``AWS_*`` (results store) and ``MLFLOW_TRACKING_*`` (tracking server
  credentials) variables, in ``env_vars``: never on a command line and never in a file.

The address and Ray token are read as ``unlearn jobs`` reads them (``pipelines/jobs.py``):
``--address`` or ``RAY_ADDRESS``, the token from ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines import jobs
from unlearn_core.errors import UserInputError

# Variables of the submitter that the job carries (results store, MLflow server's auth).
FORWARDED_PREFIXES = ("AWS_", "MLFLOW_TRACKING_")
# Never shipped with the code, wherever they sit under the packages.
EXCLUDES = [
    ".git", "**/__pycache__", "*.pyc", ".venv", "venv", "*.egg-info", ".pytest_cache",
    ".ruff_cache", ".hypothesis", ".benchmarks", "**/results", "**/mlruns", "**/mlartifacts",
    "*.db", "*.db-journal", "*.sqlite",
]  # no "data": unlearn_core/data is code
BASE_ENV_VARS = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # `unlearn run` passes the S3 variables it has to ray.init(runtime_env=...), and Ray
    # refuses a driver's runtime_env that repeats an env var of the job's unless told to
    # let the driver's (identical) value win.
    "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
}


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The submitter's variables the job carries (``FORWARDED_PREFIXES``), non-empty only."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in sorted(environ.items()) if k.startswith(FORWARDED_PREFIXES) and v}


def code_dirs() -> list[Path]:
    """The folders of the packages the job imports from this machine."""
    import pipelines
    import unlearn_core

    return [Path(pipelines.__file__).parent, Path(unlearn_core.__file__).parent]


def runtime_env(working_dir: Path, env_vars: dict[str, str]) -> dict[str, Any]:
    """The job's runtime environment (see the module docstring)."""
    return {
        "working_dir": str(working_dir),
        "py_modules": [str(path) for path in code_dirs()],
        "excludes": list(EXCLUDES),
        "env_vars": {**BASE_ENV_VARS, **env_vars},
    }


def run_args(config_name: str, args: argparse.Namespace) -> list[str]:
    """``unlearn run``'s arguments for the job (the config sits in its working dir)."""
    argv = ["python", "-m", "pipelines.cli", "run", config_name, "--address", "auto"]
    if args.smoke:
        argv.append("--smoke")
    if args.results:
        argv += ["--results", args.results]
    if args.tracking_uri:
        argv += ["--tracking-uri", args.tracking_uri]
    return argv


def _check_locations(config, args: argparse.Namespace) -> None:
    """Refuse what cannot work on a cluster; say what will be lost with the job."""
    from unlearn_core.storage import is_local_uri

    results = args.results or config.results_dir
    for name, uri in (("results", results), ("tracking URI", args.tracking_uri)):
        if uri and (urlsplit(uri).password or urlsplit(uri).username):
            raise UserInputError(f"{name} {uri!r} holds credentials, which would show on the "
                                 "job's command line: put them in the environment "
                                 "(AWS_*, MLFLOW_TRACKING_USERNAME/PASSWORD) instead")
    if is_local_uri(results) and not Path(urlsplit(results).path or results).is_absolute():
        raise UserInputError(
            f"results {results!r} is a relative path: on the cluster it would land in the "
            "job's temporary working directory; pass --results s3://BUCKET/PREFIX (or an "
            "absolute path that every node mounts)")
    if not (args.tracking_uri or config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        print("warning: no --tracking-uri nor MLFLOW_TRACKING_URI: MLflow writes to a SQLite "
              "file on the head node (beside local results, else in the job's temporary "
              "working directory)",
              file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.config import load_config

    config = load_config(args.config)  # a bad config is refused before anything is sent
    _check_locations(config, args)
    config_name = Path(args.config).name
    entrypoint = shlex.join(run_args(config_name, args))
    env_vars = forwarded_env()
    staging = Path(tempfile.mkdtemp(prefix="unlearn-submit-"))
    try:
        shutil.copyfile(args.config, staging / config_name)
        env = runtime_env(staging, env_vars)
        if args.dry_run:
            shown = {**env, "env_vars": {k: ("***" if k in env_vars else v)
                                         for k, v in env["env_vars"].items()}}
            print(f"entrypoint: {entrypoint}")
            print(f"runtime_env: {shown}")
            return 0
        client = jobs.connect(args.address)
        with jobs.job_errors(client.get_address()):
            job_id = client.submit_job(
                entrypoint=entrypoint, runtime_env=env,
                metadata={"experiment": config.name, "config": config_name,
                          "smoke": str(bool(args.smoke))})
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # uploaded by submit_job
    print(job_id, flush=True)
    where = f" --address {client.get_address()}"
    if not args.follow:
        print(f"follow: unlearn jobs logs {job_id} --follow{where}", file=sys.stderr)
        return 0
    return jobs.follow(client, job_id)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``unlearn submit``."""
    p = sub.add_parser(
        "submit", help="run an experiment config as a Ray job on a cluster",
        description=(
            "Validate the config here, then submit `unlearn run CONFIG` (same flags) as a Ray "
            "job through the cluster's Jobs API. The job ships this machine's project code "
            "(py_modules) and installs nothing: the nodes run the project's image. AWS_* and "
            "MLFLOW_TRACKING_* variables travel in the job's environment. Prints the "
            "submission id; --follow streams the logs and exits 0 only when the job "
            "SUCCEEDED."),
        epilog="Example: unlearn submit pipelines/configs/quickstart.yaml --smoke "
               "--address http://127.0.0.1:8265 --results s3://bucket/unlearn --follow",
    )
    p.add_argument("config", help="experiment YAML (see pipelines/configs/)")
    p.add_argument("--smoke", action="store_true",
                   help="shrink the config to run in seconds (as `unlearn run --smoke`)")
    p.add_argument("--results", default=None,
                   help="results location as the cluster sees it: s3://, gs://, ... or an "
                        "absolute path every node mounts (default: the config's results_dir)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI as the head node sees it, e.g. http://MLFLOW:5000 "
                        "(credentials: MLFLOW_TRACKING_USERNAME/PASSWORD in the environment)")
    p.add_argument("--follow", action="store_true",
                   help="stream the job's logs until it ends; exit 0 when it SUCCEEDED")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the entrypoint and runtime env (variable values "
                        "hidden), without contacting the cluster")
    jobs.add_address(p)
    p.set_defaults(func=cmd_submit)
