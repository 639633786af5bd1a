"""Skip re-assembling an experiment whose inputs have not changed since its last assembly.

``unlearn run`` re-assembles the tables and plots at the end of every run. When a
re-run trained nothing, the inputs are the very files the last assembly read, and
doing it again (about 3 s for the quickstart, minutes at 512 references with the
bootstrap) only rewrites the same tables. ``fingerprint`` covers every input:

- each file under the store's folders (models, outputs, trials, update
  recordings, ...) by path, size and modification time: a rewritten or new
  file changes it;
- the store's top-level files (summary, config) by content, since a run
  rewrites them with the same content;
- the code that computes the tables (every ``.py`` file of ``pipelines`` and
  ``unlearn_core``), so an upgraded tool re-assembles;
- what the caller adds (the MLflow tracking URI and parent run: another server
  or run still gets the tables logged).

The assembly's own outputs (``tables/``, ``plots/``, ``report.html``) and the
files every run rewrites with new content (``stages.json``, ``lock.json``,
``plan.json`` with the run's command line) are left out: a re-run keeps the
report of the run that produced its tables.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from pipelines.keys import stable_hash
from pipelines.store import ResultsStore

MARKER = "assembled.json"
_OUTPUTS = ("tables", "plots")
# Rewritten by every run or by the assembly itself, and read by no table: the stage
# clock, the lock, the run's plan (its command line), the HTML report.
_VOLATILE = ("stages.json", "lock.json", "plan.json", "report.html", MARKER)


@functools.cache
def code_fingerprint() -> str:
    """Hash of the source of the ``pipelines`` and ``unlearn_core`` packages."""
    import unlearn_core

    digest = hashlib.sha256()
    for package in (Path(__file__).parent, Path(unlearn_core.__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(str(path.relative_to(package.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(store: ResultsStore, *extra: object) -> str:
    """The hash of everything an assembly of ``store`` reads (see the module doc)."""
    entries: list[tuple] = []
    for path, size, mtime in store.store.file_stats():
        if path.split("/", 1)[0] in _OUTPUTS or path in _VOLATILE:
            continue
        if "/" in path:
            entries.append((path, size, mtime))
        else:  # top-level: small, rewritten by every run with the same content
            entries.append((path, hashlib.sha256(store.store.read_bytes(path)).hexdigest()))
    return stable_hash(entries, code_fingerprint(), *extra, length=32)


def unchanged(store: ResultsStore, print_: str) -> bool:
    """Whether the last assembly read exactly these inputs and its main table is there."""
    marker = store.read_json_or_none(MARKER)
    return marker is not None and marker.get("inputs") == print_ \
        and store.exists("tables/results.md")


def mark(store: ResultsStore, print_: str) -> None:
    """Record the inputs of the assembly just completed (after its MLflow logging)."""
    store.write_json(MARKER, {"inputs": print_})
