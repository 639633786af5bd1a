"""What ``unlearn run`` writes for ``unlearn status`` and the report, as it goes.

- ``plan.json`` (``build_plan``, written before any training): the totals the store
  cannot tell otherwise (the reference keys, the trials planned per method, the
  replicate seeds, the objective) and the provenance of the run (its command, git
  commit, package versions, the driver's hardware);
- ``stages.json`` (``StageClock``): the wall-clock start and end of each stage.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from importlib import metadata

from pipelines.store import ResultsStore

PACKAGES = ("unlearn", "torch", "ray", "mlflow", "pyarrow", "numpy", "scikit-learn",
            "matplotlib", "optuna")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, as a user would type it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (os.path.basename(argv[0]) == "unlearn"
                 or argv[0].replace(os.sep, "/").endswith("pipelines/cli.py")):
        argv[0] = "unlearn"  # the console script, or `python -m pipelines.cli`
    return shlex.join(argv)


def provenance() -> dict:
    """Where and with what the run ran: git commit, packages, the driver's hardware."""
    from pipelines.tracking import git_commit

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    hardware = {"host": platform.node(), "platform": platform.platform(),
                "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        hardware["memory_gb"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not every OS names these
        pass
    if "torch" in sys.modules:  # the run has imported it; never import it just for this
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            hardware["gpus"] = [torch.cuda.get_device_name(i)
                                for i in range(torch.cuda.device_count())]
    return {"git_commit": git_commit(), "packages": versions, "hardware": hardware}


def build_plan(config, manifest_hash: str, units: Sequence, methods: Sequence,
               smoke: bool = False) -> dict:
    """What this run means to do, for ``ResultsStore.write_plan``: the totals that
    ``unlearn status`` cannot count from the store (``units``: source first, then the
    references; ``methods``: the swept method configs, ``retrain`` excluded)."""
    from pipelines.keys import replicate_seeds
    from pipelines.sweep import planned_trials

    return {
        "experiment": config.name, "config_hash": config.config_hash(),
        "manifest": manifest_hash, "dataset": config.dataset.name, "forget": config.forget,
        "source": units[0].key, "references": [u.key for u in units[1:]],
        "reference_workers": config.references.workers,
        "methods": {m.name: {"trials": planned_trials(m, config.objective.zero_glance),
                              "search": m.search}
                    for m in methods},
        "replicates": config.replicates, "replicate_seeds": replicate_seeds(config.replicates),
        "objective": {"metric": config.objective.metric, "mode": config.objective.mode},
        "smoke": smoke, "command": command_line(), "provenance": provenance(),
    }


class StageClock:
    """Wall-clock start and end of each stage, kept in the store's ``stages.json``
    (rewritten at each boundary: one small object) for status and the report."""

    def __init__(self, store: ResultsStore, first: str) -> None:
        self.store = store
        self.data: dict = {"started": time.time(), "finished": None, "stages": []}
        self.mark(first)

    def mark(self, stage: str) -> None:
        """End the current stage and start ``stage``."""
        now = time.time()
        self._end(now)
        self.data["stages"].append({"name": stage, "start": now, "end": None})
        self._write()

    def finish(self) -> None:
        now = time.time()
        self._end(now)
        self.data["finished"] = now
        self._write()

    def _end(self, now: float) -> None:
        if self.data["stages"] and self.data["stages"][-1]["end"] is None:
            self.data["stages"][-1]["end"] = now

    def _write(self) -> None:
        try:
            self.store.write_json(ResultsStore.STAGES_FILE, self.data)
        except OSError:  # progress bookkeeping never fails a run; the next mark retries
            pass
