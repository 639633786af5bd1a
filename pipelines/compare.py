"""Several experiments in one table (``unlearn tables A B ...``, ``unlearn report A B ...``).

Rows are (experiment, method); before the table's own columns come one column per
config field whose value differs between the experiments (``source.sparsity``,
``forget``, ``methods.grad_ascent.trials``...), so seed 004's dense vs 95 %-sparse
or seed 003's one vs two forgotten classes read side by side. The cells are the
experiments' own assembled tables (``tables/<name>.csv``), in the units the
papers use. Experiments on different datasets are refused: their numbers do not
belong in one table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import yaml

from pipelines.store import ResultsStore
from pipelines.tables import DASH
from unlearn_core.errors import UserInputError

# Fields that name or place an experiment rather than shape its results.
IGNORED_FIELDS = ("name", "results_dir", "tracking_uri")


def read_config(store: ResultsStore) -> dict:
    """The run's config as stored ({} when absent)."""
    if not store.exists("config.yaml"):
        return {}
    return yaml.safe_load(store.store.read_text("config.yaml")) or {}


def flatten(value, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> text. A list of dicts with a ``name`` (methods) is keyed by name,
    so two configs listing the same methods in another order do not differ."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: "{}"}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v
                                                 for v in value):
        out = {}
        for item in value:
            rest = {k: v for k, v in item.items() if k != "name"}
            out.update(flatten(rest, f"{prefix}.{item['name']}"))
        return out
    if isinstance(value, list):
        return {prefix: json.dumps(value)}
    return {prefix: "null" if value is None else str(value)}


def differing_fields(configs: Sequence[dict]) -> list[str]:
    """The dotted fields whose value is not the same in every config, in config order."""
    flat = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return [k for k in keys
            if k.split(".", 1)[0] not in IGNORED_FIELDS
            and len({f.get(k, DASH) for f in flat}) > 1]


def check_same_dataset(names: Sequence[str], configs: Sequence[dict]) -> None:
    datasets = {n: (c.get("dataset") or {}).get("name", "?")
                for n, c in zip(names, configs, strict=True)}
    if len(set(datasets.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in datasets.items())
        raise UserInputError(f"cannot combine experiments on different datasets ({listed}); "
                             "pass experiments of one dataset")


def open_experiments(items: Sequence[str | ResultsStore]
                     ) -> tuple[list[ResultsStore], list[dict]]:
    """The experiments' stores and configs; refused when their datasets differ."""
    stores = [i if isinstance(i, ResultsStore) else ResultsStore.open(i) for i in items]
    configs = [read_config(s) for s in stores]
    check_same_dataset(experiment_labels(stores), configs)
    return stores, configs


def experiment_labels(stores: Sequence[ResultsStore]) -> list[str]:
    """Each experiment's name, or every URI when one name is in two results folders."""
    names = [s.experiment for s in stores]
    return names if len(set(names)) == len(names) else [s.uri for s in stores]


def read_csv_table(store: ResultsStore, name: str) -> tuple[list[str], list[list[str]]] | None:
    """An assembled table (``tables/<name>.csv``), or None when it was not written."""
    rel = f"tables/{name}.csv"
    if not store.exists(rel):
        return None
    rows = list(csv.reader(io.StringIO(store.store.read_text(rel))))
    return (rows[0], rows[1:]) if rows else None


def combined_table(stores: Sequence[ResultsStore], configs: Sequence[dict],
                   name: str = "results") -> tuple[list[str], list[list[str]]] | None:
    """Experiment, the differing config fields, then the union of the experiments'
    columns of table ``name`` (a column one experiment lacks is "–" there)."""
    tables = [read_csv_table(s, name) for s in stores]
    if all(t is None for t in tables):
        return None
    fields = differing_fields(configs)
    flat = [flatten(c) for c in configs]
    columns: list[str] = []
    for table in tables:
        if table is not None:
            columns += [c for c in table[0] if c not in columns]
    header = ["Experiment", *fields, *columns]
    body = []
    for label, config, table in zip(experiment_labels(stores), flat, tables, strict=True):
        if table is None:
            continue
        for row in table[1]:
            cells = dict(zip(table[0], row, strict=False))
            body.append([label, *[config.get(f, DASH) for f in fields],
                         *[cells.get(c, DASH) for c in columns]])
    return header, body
