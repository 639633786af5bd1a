"""``unlearn report``: one self-contained HTML file per experiment (or per set of them).

Everything comes from the results store (local or an object store): the config and
the command that ran it (``plan.json``), the main and MIA tables (``tables/*.csv``,
cells in the papers' units), every plot (``plots/*.png``), a histogram of the
per-example ε of each method's F-score (``tables/epsilons.parquet``), and the
provenance: git commit, manifest and config hashes, package versions, hardware
and the wall time of each stage (``stages.json``). Images are embedded, so the
file opens anywhere without a network; the tables sort by a clicked column.

``unlearn run`` writes ``report.html`` into the experiment's folder at the end
and logs it to MLflow. Given several experiments (of one dataset), the report
opens with their rows in one table, a column per config field that differs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipelines import report_html as h
from pipelines.compare import combined_table, open_experiments, read_csv_table
from pipelines.status import StatusReader, duration, render
from pipelines.store import ResultsStore
from pipelines.tables import EPSILONS_FILE

REPORT_FILE = "report.html"
EPS_BINS = np.linspace(0, 50, 51)  # per-example ε lies in [0, 50] (fscore.py)


def read_epsilons(store: ResultsStore) -> dict[str, np.ndarray]:
    """{method: per-example ε} as assembled (empty when not stored)."""
    rel = f"tables/{EPSILONS_FILE}"
    if not store.exists(rel):
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(store.store.read_bytes(rel)))
    methods = np.asarray(table.column("method").to_pylist(), dtype=object)
    values = table.column("epsilon").to_numpy()
    order = list(dict.fromkeys(methods.tolist()))  # in row order
    return {m: values[methods == m] for m in order}


def epsilon_histogram(method: str, eps: np.ndarray) -> bytes:
    """A small PNG: the histogram of one method's per-example ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = eps[np.isfinite(eps)]
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    try:
        ax.hist(finite, bins=EPS_BINS, color="#4c72b0")
        median = f", median {np.median(finite):.2f}" if finite.size else ""
        ax.set_title(f"{method}: {finite.size} examples{median}", fontsize=10)
        ax.set_xlabel("per-example ε (forget set)")
        ax.set_ylabel("examples")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "–"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def provenance_items(store: ResultsStore, plan: dict, summary: dict, config_text: str
                     ) -> list[tuple[str, str]]:
    """(label, value) rows: what ran, where, with what, and how long each stage took."""
    import hashlib

    prov = plan.get("provenance", {})
    hardware = prov.get("hardware", {})
    stages = store.read_json_or_none(ResultsStore.STAGES_FILE) or {}
    items = [
        ("results", store.uri),
        ("git commit", prov.get("git_commit", "unknown")),
        ("manifest hash", summary.get("manifest") or plan.get("manifest", "unknown")),
        ("config hash", summary.get("config_hash") or plan.get("config_hash", "unknown")),
        ("config.yaml sha256", hashlib.sha256(config_text.encode()).hexdigest()[:16]
         if config_text else "–"),
        ("packages", ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items()) or "–"),
        ("driver hardware", ", ".join(f"{k}: {v}" for k, v in hardware.items()) or "–"),
        ("started", _when(stages.get("started"))),
        ("finished", _when(stages.get("finished"))),
    ]
    for stage in stages.get("stages", []):
        wall = duration(stage["end"] - stage["start"]) if stage.get("end") else "unfinished"
        items.append((f"wall time: {stage['name']}", wall))
    if stages.get("finished") and stages.get("started"):
        items.append(("wall time: total", duration(stages["finished"] - stages["started"])))
    return items


def experiment_section(store: ResultsStore, config: dict, anchor: str) -> str:
    """Everything about one experiment, as one HTML section."""
    plan = store.read_plan() or {}
    summary = store.read_json_or_none("summary.json") or {}
    config_text = store.store.read_text("config.yaml") if store.exists("config.yaml") else ""
    parts = [f'<section id="{anchor}"><h2>{h.escape(store.experiment)}</h2>']
    try:
        parts.append(h.pre(render(StatusReader(store.uri).read())))
    except Exception as err:  # a report without progress is still a report
        parts.append(f'<p class="note">progress unavailable: {h.escape(str(err))}</p>')
    parts.append("<h3>Command</h3>" + h.pre(plan.get("command") or
                                            f"unlearn run <config>  # {config.get('name', '')}"))
    parts.append("<h3>Config</h3><details><summary>config.yaml (click to show)</summary>"
                 + h.pre(config_text or json.dumps(config, indent=1)) + "</details>")
    for name, title in (("results", "Results"), ("mia", "Membership inference (MIA)")):
        found = read_csv_table(store, name)
        if found is not None:
            parts.append(f"<h3>{title}</h3>" + h.table(*found, table_id=f"{anchor}-{name}"))
        elif name == "results":
            parts.append('<p class="note">no tables yet: the run has not been assembled '
                         "(`unlearn tables` assembles what is stored)</p>")
    parts.append(f'<p class="note">{h.escape(h.UNITS_NOTE)}</p>')
    plots = store.store.list("plots", suffix=".png")
    if plots:
        parts.append("<h3>Plots</h3>" + "".join(
            h.image(store.store.read_bytes(p), Path(p).stem.replace("_", " "), Path(p).name)
            for p in plots))
    epsilons = read_epsilons(store)
    if epsilons:
        parts.append("<h3>Per-example ε of the F-score, per method</h3>" + "".join(
            h.image(epsilon_histogram(m, e), m, f"epsilon histogram {m}")
            for m, e in epsilons.items()))
    parts.append("<h3>Provenance</h3>"
                 + h.key_values(provenance_items(store, plan, summary, config_text)))
    parts.append("</section>")
    return "\n".join(parts)


def build_report(uris: Sequence[str | ResultsStore]) -> str:
    """The HTML text of a report on one or several experiments (of one dataset)."""
    stores, configs = open_experiments(uris)
    sections = []
    if len(stores) > 1:
        sections.append("<h2>All experiments</h2>")
        for name, title in (("results", "Results"), ("mia", "Membership inference (MIA)")):
            combined = combined_table(stores, configs, name)
            if combined is not None:
                sections.append(f"<h3>{title}</h3>" + h.table(*combined,
                                                               table_id=f"combined-{name}"))
        sections.append('<p class="note">' + h.escape(h.UNITS_NOTE) + "</p><ul>" + "".join(
            f'<li><a href="#exp{i}">{h.escape(s.experiment)}</a></li>'
            for i, s in enumerate(stores)) + "</ul>")
    sections += [experiment_section(s, c, f"exp{i}")
                 for i, (s, c) in enumerate(zip(stores, configs, strict=True))]
    title = "Unlearning report: " + ", ".join(dict.fromkeys(s.experiment for s in stores))
    return h.page(title, sections)


def write_report(store: ResultsStore, local: Path | None = None) -> Path | str:
    """Write one experiment's report into its store (``report.html``) and, when
    ``local`` is given, to that file too (MLflow logs files); return where it is."""
    text = build_report([store])
    store.write_text(REPORT_FILE, text)
    if local is None:
        return store.store.url(REPORT_FILE)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(text, encoding="utf-8")
    return local
