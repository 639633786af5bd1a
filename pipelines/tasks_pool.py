"""A small process pool for the many-model metrics of ``pipelines.assemble``.

Each ``Task`` is a pure function of arrays (the F-score with its per-example ε, or
the U-LiRA, of one row), so it gives the same numbers in any process. ``run_tasks`` runs them
in this process, or, when the work is big enough to pay for starting processes
(``PARALLEL_MIN_COST``), in fresh ``python -c`` worker processes, the biggest first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PARALLEL_MIN_COST", "Task", "available_cpus", "run_tasks"]

# Worker processes for the many-model metrics only above this cost (in per-example
# scorings, ~0.3 ms each: ~10 s of work); below it starting processes costs more.
PARALLEL_MIN_COST = 30_000


@dataclass(frozen=True)
class Task:
    """One many-model metric of one row: ``fn(*args, **kwargs)``, a pure function of
    arrays (so it gives the same numbers in any process). ``cost``: its size in
    per-example F-score scorings (the unit of ``PARALLEL_MIN_COST``), to start the
    biggest first."""

    kind: str  # "fscore" (metrics and per-example ε) or "ulira"
    method: str
    fn: Callable
    args: tuple
    kwargs: dict
    cost: int


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# A worker: reads (sys.path, pickled task) from stdin, writes the pickled result to argv[1].
# Started as ``python -c``, so it never re-runs the caller's main module (a script without
# an ``if __name__ == "__main__"`` guard is safe, unlike multiprocessing's spawn).
_WORKER = (
    "import pickle, sys\n"
    "paths, blob = pickle.loads(sys.stdin.buffer.read())\n"
    "sys.path[:0] = [p for p in paths if p not in sys.path]\n"
    "fn, args, kwargs = pickle.loads(blob)\n"
    "result = fn(*args, **kwargs)\n"
    "with open(sys.argv[1], 'wb') as handle:\n"
    "    pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)\n"
)


def _run_in_process(task: Task) -> object:
    """``task.fn(*task.args, **task.kwargs)`` in a fresh Python process."""
    import pickle
    import subprocess
    import sys

    blob = pickle.dumps((task.fn, task.args, task.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    with tempfile.TemporaryDirectory(prefix="unlearn-task-") as folder:
        out = Path(folder) / "result.pickle"
        done = subprocess.run([sys.executable, "-c", _WORKER, str(out)],
                              input=pickle.dumps((list(sys.path), blob)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{task.kind} of {task.method} failed in a worker process "
                f"(exit {done.returncode}):\n{done.stderr.decode(errors='replace')[-4000:]}")
        return pickle.loads(out.read_bytes())


def run_tasks(tasks: Sequence[Task], workers: int | None = None) -> list:
    """Each task's result, in order. The metrics of different rows are independent, so
    they may run in ``workers`` processes at once (fresh ``python -c`` processes, the
    biggest tasks first); ``None`` = one per available CPU, but only when the work is big
    enough to pay for starting them (``PARALLEL_MIN_COST``). Every number is the same as
    in one process: each task is a deterministic function of its arrays (the bootstrap
    draws from its own fixed seed)."""
    total = sum(t.cost for t in tasks)
    if workers is None:
        workers = available_cpus() if total >= PARALLEL_MIN_COST else 1
    workers = min(workers, len(tasks))
    if workers <= 1:
        return [t.fn(*t.args, **t.kwargs) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)  # biggest first
    results: list = [None] * len(tasks)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(_run_in_process, tasks[i]) for i in order}
        for i, future in futures.items():
            results[i] = future.result()
    return results
