"""assemble stage and ``unlearn tables``: tables and plots from the stored results.

Reads only what earlier stages stored (trial records, per-sample outputs,
reference infos), so every number here is recomputable without retraining.
Everything is read through a ``ResultsStore`` (a local folder or any URI
``pyarrow.fs`` reaches); tables and plots are written into a local staging
folder (matplotlib and MLflow need files) and then uploaded to the store's
``tables/`` and ``plots/``.

What is read, for 512 references and hundreds of replicates: only committed
models (a trial record or model info exists), each by its explicit outputs
file (the outputs folder is never listed: a lost worker may have left the
Parquet of an uncommitted trial there), only the columns model_id, sample_id,
label and logits, and only the forget split's row group of each file. For
class-wise forgetting the test split is streamed too, batch by batch, into
per-model counts of right predictions on the forgotten / retained classes
(never all models' test logits at once).

The ``retrain`` row is the references themselves.

Metrics that need many models are computed here from the stored forget-set
outputs (the logit-scaled confidence of each model on each forget sample), by
:mod:`pipelines.many_model`:

- F-score (NeurIPS 2023 forget quality), every row at the same N per side: each
  method's first N replicates against ``references[:N]``, ``retrain`` as
  ``references[N:2N]`` against ``references[:N]`` (N = the smallest replicate
  count; the score of identical distributions depends on N, so rows at different
  N would not compare). The table states N (column "F-score N" and a caption
  line); with fewer than 2N references the retrain row is "–" and the caption
  says why. Beside it, the
  share of examples whose ε hit the cap (``fscore/eps_capped_frac``).
- U-LiRA accuracy (Hayes et al. 2024, ``ulira_metrics`` with leave-one-out
  fits): all replicates against all references; for ``retrain``, half against
  half. It needs at least 3 models in each set, else the cell is "–". 50 % =
  the attack cannot tell the method from retraining.

Tables (``tables/``, built and formatted by :mod:`pipelines.tables`):
``results.{md,csv,tex}``, the main table (a column that is "–" in every row is
dropped, except the core ones), ``mia.{md,csv,tex}``, every MIA score with its
gap to the retrain row (seed 002, Table 1), and ``methods.json`` (best hparams,
failures, F-score and U-LiRA metrics per method). Plots (``plots/``) are drawn by
:mod:`pipelines.plots`. The many-model metrics of different rows run in the
process pool of :mod:`pipelines.tasks_pool`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines import assembly_cache
from pipelines.compare import read_config
from pipelines.many_model import (
    FSCORE_BOOT,
    ULIRA_MIN_MODELS,
    FscorePlan,
    add_many_model_metrics,
    add_ulira,
    apply_results,
    fscore_notes,
    fscore_plan,
    fscore_tasks,
)
from pipelines.plots import layer_names, write_plots
from pipelines.store import ResultsStore
from pipelines.tables import (
    COLUMNS,
    CORE_COLUMNS,
    DASH,
    GAP_MEAN_ATTACKS,
    MIA_TITLES,
    REFERENCE_ROW,
    build_mia_table,
    build_table,
    drop_empty_columns,
    extra_column,
    mean_metric,
    relearn_cell,
    to_latex,
    to_markdown,
    write_epsilons,
    write_table,
)
from pipelines.tasks_pool import PARALLEL_MIN_COST, Task, available_cpus, run_tasks
from unlearn_core.data.manifest import MANIFEST_FILE
from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_write_text
from unlearn_core.metrics.accuracy import forgetting_metrics
from unlearn_core.metrics.fscore import logit_scaled_confidence
from unlearn_core.outputs import (
    flat_logits,
    logits_matrix,
    model_codes,
    output_dataset,
    output_file_name,
    split_filter,
    split_mask,
    unique_model_ids,
)

__all__ = [
    # defined here
    "ClassAccuracy", "add_class_accuracies", "add_fscores", "assemble",
    "confidences_by_model", "forget_classes", "forget_confidences", "method_rows",
    "output_paths", "read_model_outputs", "read_summary", "tensor_order",
    # re-exported from pipelines.tables, pipelines.tasks_pool, pipelines.many_model and
    # pipelines.plots
    "COLUMNS", "CORE_COLUMNS", "DASH", "FSCORE_BOOT", "GAP_MEAN_ATTACKS", "MIA_TITLES",
    "PARALLEL_MIN_COST", "REFERENCE_ROW", "ULIRA_MIN_MODELS", "FscorePlan", "Task",
    "add_many_model_metrics", "add_ulira", "available_cpus", "build_mia_table", "build_table",
    "drop_empty_columns", "extra_column", "fscore_notes", "fscore_plan", "mean_metric",
    "relearn_cell", "run_tasks", "to_latex", "to_markdown", "write_plots", "write_table",
]

READ_THREADS = 16  # concurrent small reads (JSON records, file infos): object-store latency
CONFIDENCE_CHUNK = 64  # models per logit-scaled-confidence call (bounds float64 temporaries)
BATCH_ROWS = 1 << 16  # rows per streamed batch


def _open(store: ResultsStore | str | Path) -> ResultsStore:
    return store if isinstance(store, ResultsStore) else ResultsStore.open(store)


def _parallel(fn: Callable, items: Sequence) -> list:
    """``[fn(i) for i in items]``, with concurrent calls (small reads wait on latency)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def read_summary(store: ResultsStore) -> dict:
    if not store.exists("summary.json"):
        raise UserInputError(
            f"{store.uri} holds no finished run (no summary.json); run `unlearn run` first"
        )
    return store.read_json("summary.json")


def method_rows(store: ResultsStore | str | Path, summary: dict | None = None
                ) -> dict[str, dict]:
    """Per method: replicate metrics (list of dicts) and the model ids of its replicates.

    A replicate without a trial record (not committed) counts as failed."""
    store = _open(store)
    summary = read_summary(store) if summary is None else summary
    _ = store.store.fs  # resolve the file system once, before the reading threads
    wanted = [(method, k) for method, keys in summary["replicates"].items() for k in keys]
    records = dict(zip(wanted, _parallel(lambda mk: store.read_trial(*mk), wanted),
                       strict=True))
    rows = {}
    for method, keys in summary["replicates"].items():
        found = [records[(method, k)] for k in keys]
        ok = [r for r in found if r is not None and r["status"] == "ok"]
        rows[method] = {"metrics": [r["metrics"] for r in ok], "model_ids": [r["trial_key"]
                        for r in ok], "hparams": ok[0]["hparams"] if ok else {},
                        "failed": len(keys) - len(ok)}
    refs = _parallel(store.read_model_info, summary["references"])
    # Probes (distance, relearn, degree) exist for the first few references only.
    probes = summary.get("reference_probes", {})
    source_key = summary.get("source")
    source = store.read_model_info(source_key)["metrics"] \
        if source_key and store.exists(store.model_info_rel(source_key)) else {}
    rows[REFERENCE_ROW] = {"metrics": [r["metrics"] | {"time/unlearn_s": r["train_seconds"]}
                                       | probes.get(k, {}) | _forgetting(source, r["metrics"])
                                       for k, r in zip(summary["references"], refs, strict=True)],
                           "model_ids": summary["references"], "hparams": {}, "failed": 0}
    return {m: rows[m] for m in summary["methods"] if m in rows}


def _forgetting(source: dict, metrics: dict) -> dict[str, float]:
    """FR and MRR of a reference against the source (trials compute theirs themselves)."""
    keys = ("forget/acc", "retain/acc")
    if not all(k in source and k in metrics for k in keys):
        return {}
    return forgetting_metrics(source["forget/acc"], metrics["forget/acc"],
                              source["retain/acc"], metrics["retain/acc"])


# --------------------------------------------------------------------------
# many-model metrics from the stored outputs


def confidences_by_model(logits: np.ndarray, labels: np.ndarray,
                         model_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Logit-scaled confidence per model, a chunk of models at a time (the same numbers as
    one call on all models: the statistic is computed per model and example)."""
    out = {}
    for start in range(0, len(model_ids), CONFIDENCE_CHUNK):
        part = logit_scaled_confidence(logits[start:start + CONFIDENCE_CHUNK], labels)
        out.update(zip(model_ids[start:start + CONFIDENCE_CHUNK], part, strict=True))
    return out


def forget_confidences(outputs: pa.Table, model_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Forget-set logit-scaled confidence per model id (models without outputs are absent)."""
    wanted = sorted(set(model_ids))
    if not set(unique_model_ids(outputs.column("model_id"))) <= set(wanted):
        outputs = outputs.filter(pa.array(model_codes(outputs.column("model_id"), wanted) >= 0))
    logits, labels, ordered = logits_matrix(outputs, "forget")
    if not ordered:
        return {}
    return confidences_by_model(logits, labels, ordered)


# ---- reading the outputs of committed models


def output_paths(store: ResultsStore, experiment: str,
                 rows: dict[str, dict]) -> dict[str, str]:
    """{model id: outputs file (path inside ``store.store.fs``)} for the rows' models whose
    file exists. Only committed models are in ``rows`` (their record or info exists);
    their files are named, never found by listing the outputs folder."""
    wanted: dict[str, str] = {}
    for method, row in rows.items():
        role = "retrain" if method == REFERENCE_ROW else "unlearned"
        for model_id in row["model_ids"]:
            wanted.setdefault(model_id, store.store.path(
                f"outputs/{output_file_name(experiment, role, model_id)}"))
    fs = store.store.fs
    ids = list(wanted)
    kinds = _parallel(lambda i: fs.get_file_info(wanted[i]).type, ids)
    return {i: wanted[i] for i, kind in zip(ids, kinds, strict=True)
            if kind == pafs.FileType.File}


class ClassAccuracy:
    """Per-model counts of right test predictions on the forgotten and retained classes,
    fed batch by batch (model_id, sample_id, label, logits), so no more than one batch
    of test logits is held at a time. Gives the numbers of ``right[i, in_forget].mean()``
    over the stacked test split (a mean of booleans is count / n exactly)."""

    # per model: right on forgotten, forgotten, right on retained, retained, rows,
    # Σ sample id, Σ sample id² (the last three: do the models hold the same samples?)
    FIELDS = 7

    def __init__(self, classes: Sequence[int]) -> None:
        self.classes = np.asarray(sorted(classes), dtype=np.int64)
        self.counts: dict[str, list[int]] = {}

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        column = batch.column("model_id")
        models = unique_model_ids(column)
        codes = model_codes(column, models)
        labels = batch.column("label").to_numpy().astype(np.int64, copy=False)
        ids = batch.column("sample_id").to_numpy().astype(np.int64, copy=False)
        right = flat_logits(batch.column("logits")).argmax(-1) == labels
        in_forget = np.isin(labels, self.classes)
        for k, model_id in enumerate(models):
            mine = codes == k if len(models) > 1 else slice(None)
            r, f, i = right[mine], in_forget[mine], ids[mine]
            add = [int((r & f).sum()), int(f.sum()), int((r & ~f).sum()), int((~f).sum()),
                   len(i), int(i.sum()), int((i * i).sum())]
            total = self.counts.setdefault(model_id, [0] * self.FIELDS)
            self.counts[model_id] = [a + b for a, b in zip(total, add, strict=True)]

    def result(self) -> dict[str, dict[str, float]]:
        """{model id: test/acc_forget_classes, test/acc_retain_classes}; none when the
        test split lacks forgotten or retained classes. Refused, as ``logits_matrix``
        does, when models hold different test samples."""
        ordered = sorted(self.counts)
        for model_id in ordered:
            if self.counts[model_id][4:] != self.counts[ordered[0]][4:]:
                raise UserInputError(
                    f"model {model_id} holds other test samples than the others")
        out = {}
        for model_id in ordered:
            right_f, n_f, right_r, n_r = self.counts[model_id][:4]
            if n_f and n_r:
                out[model_id] = {"test/acc_forget_classes": right_f / n_f,
                                 "test/acc_retain_classes": right_r / n_r}
        return out


def forget_classes(store: ResultsStore) -> list[int]:
    """The forgotten classes of a class-wise forgetting run (empty otherwise)."""
    if not store.exists(MANIFEST_FILE):
        return []
    return list(store.read_manifest().forget_classes())


def read_model_outputs(store: ResultsStore, experiment: str, rows: dict[str, dict],
                       classes: Sequence[int] = ()) -> tuple[pa.Table, dict]:
    """One scan over the committed models' outputs files: the forget split's
    (model_id, sample_id, label, logits) as a table, and, when ``classes`` is given,
    the per-model class accuracies of the test split (``ClassAccuracy``), streamed."""
    paths = output_paths(store, experiment, rows)
    columns = ["model_id", "sample_id", "label", "logits"]
    if not paths:
        return pa.table({c: pa.array([], pa.string()) for c in columns[:1]}), {}
    splits = ["forget", "test"] if classes else ["forget"]
    dataset = output_dataset(store.store.fs, [paths[i] for i in sorted(paths)],
                             dictionary_columns=["model_id", "split"])
    accuracy = ClassAccuracy(classes) if classes else None
    forget = []
    # a file holds its own model's rows; the model filter only guards against strays
    wanted = split_filter(splits) & pc.field("model_id").isin(sorted(paths))
    for batch in dataset.to_batches(columns=columns + (["split"] if accuracy else []),
                                    filter=wanted, batch_size=BATCH_ROWS):
        if accuracy is not None:
            is_forget = split_mask(batch.column("split"), "forget")
            accuracy.add(batch.filter(pc.invert(is_forget)))
            batch = batch.filter(is_forget).select(columns)
        if batch.num_rows:
            forget.append(batch)
    table = pa.Table.from_batches(forget) if forget else \
        pa.table({c: pa.array([], pa.string()) for c in columns[:1]})
    return table, accuracy.result() if accuracy else {}


def add_class_accuracies(store: ResultsStore, outputs: pa.Table | Iterable[pa.RecordBatch],
                         rows: dict[str, dict]) -> None:
    """Class-wise forgetting: each model's test accuracy on the forgotten classes and on
    the retained ones, added to its metrics (``test/acc_forget_classes``,
    ``test/acc_retain_classes``). Nothing for other forget kinds. ``outputs``: rows
    (a table or batches, any splits) with model_id, split, sample_id, label, logits."""
    classes = forget_classes(store)
    if not classes:
        return
    accuracy = ClassAccuracy(classes)
    wanted = sorted({i for row in rows.values() for i in row["model_ids"]})
    batches = outputs.to_batches() if isinstance(outputs, pa.Table) else outputs
    for batch in batches:
        mine = model_codes(batch.column("model_id"), wanted) >= 0
        test = split_mask(batch.column("split"), "test").to_numpy(zero_copy_only=False)
        accuracy.add(batch.filter(pa.array(mine & test)))
    _add_per_model(rows, accuracy.result())


def _add_per_model(rows: dict[str, dict], per_model: dict[str, dict]) -> None:
    for row in rows.values():
        for model_id, metrics in zip(row["model_ids"], row["metrics"], strict=True):
            metrics.update(per_model.get(model_id, {}))


def _read_confidences(store: ResultsStore, experiment: str,
                      rows: dict[str, dict]) -> dict[str, np.ndarray]:
    forget, _ = read_model_outputs(store, experiment, rows)
    return _confidences(forget)


def _confidences(forget: pa.Table) -> dict[str, np.ndarray]:
    """Forget-set confidence per model, from rows that are already the wanted models'."""
    if forget.num_rows == 0:
        return {}
    logits, labels, ordered = logits_matrix(forget, "forget")
    del forget
    return confidences_by_model(logits, labels, ordered)


def add_fscores(store: ResultsStore, rows: dict[str, dict],
                confidences: dict[str, np.ndarray] | None = None,
                experiment: str | None = None, workers: int | None = 1,
                n_boot: int = FSCORE_BOOT) -> dict[str, np.ndarray]:
    """Add forget quality and final score to each row (``fscore_plan``: every row at one
    N); return per-example ε per method. Without ``confidences`` they are read from
    the store (``experiment``: the one in summary.json, by default the store's).
    ``workers``: see ``run_tasks``."""
    if confidences is None:
        confidences = _read_confidences(store, experiment or store.experiment, rows)
    plan, tasks = fscore_tasks(rows, confidences, n_boot)
    return apply_results(rows, tasks, run_tasks(tasks, workers), plan)


def tensor_order(store: ResultsStore, summary: dict) -> list[str] | None:
    """State-dict tensor names of the source model, in model order (None if unknown).

    Trial records store metrics with sorted keys, so the order of the
    ``distance/layer/*`` keys is rebuilt from the architecture: the source's
    model is built on the meta device (no memory, no weights); names do not
    depend on the class count or the input size used here.
    """
    source = summary.get("source")
    if not source or not store.exists(store.model_info_rel(source)):
        return None
    name = store.read_model_info(source).get("model")
    if not name:
        return None
    try:
        import torch

        from unlearn_core.models import create_model

        with torch.device("meta"):
            model = create_model(name, 10, 3, 32)
        return list(model.state_dict())
    except Exception:  # an unknown or changed architecture only costs the order
        return None


def assemble(store: ResultsStore | str | Path, workers: int | None = None,
             bootstrap: int | None = None) -> dict:
    """Compute the tables and plots, write them to the store; return them.

    ``store``: a ``ResultsStore`` or an experiment's folder (local path or URI).
    Tables and plots are written into a local staging folder, then uploaded to
    the store's ``tables/`` and ``plots/``. Returns ``markdown`` (main table),
    ``mia_markdown`` (MIA table, "" when no row holds MIA scores), ``tables``
    (the local staging folder of the tables, left for the caller, e.g. to log
    as MLflow artifacts), ``plots`` (local paths of the written plots),
    ``tables_uri`` (the store's ``tables/results.md``), ``plots_uri`` (the
    store's ``plots/`` folder) and ``rows`` (per method: metrics, model ids,
    hparams, fscore, ulira). ``workers``: processes for the F-score and U-LiRA of
    the rows (None: one per CPU when the work is big enough; see ``run_tasks``).
    ``bootstrap``: replicates of the forget quality's interval (None: the config's
    ``metrics.fscore_bootstrap``).
    """
    store = _open(store)
    # whatever this writes (another bootstrap, say) is not what ``unlearn run`` logged:
    # its next re-run must assemble again rather than keep these tables
    store.store.delete(assembly_cache.MARKER)
    config = read_config(store)
    if bootstrap is None:
        bootstrap = int((config.get("metrics") or {}).get("fscore_bootstrap", FSCORE_BOOT))
    summary = read_summary(store)  # a UserInputError without summary.json
    rows = method_rows(store, summary)
    forget, per_model = read_model_outputs(store, summary["experiment"], rows,
                                           forget_classes(store))
    _add_per_model(rows, per_model)
    confidences = _confidences(forget)
    del forget
    plan, epsilons = add_many_model_metrics(rows, confidences, workers, bootstrap)
    staging = Path(tempfile.mkdtemp(prefix="unlearn-assemble-"))
    tables = staging / "tables"
    header, body = build_table(rows, extra=list(config.get("table_columns", [])))
    markdown = write_table(tables, "results", header, body, fscore_notes(plan))
    mia_header, mia_body = build_mia_table(rows)
    mia_markdown = ""
    if len(mia_header) > 2:
        mia_markdown = write_table(tables, "mia", mia_header, mia_body)
    per_method = {m: {"hparams": r["hparams"], "failed": r["failed"],
                      "fscore": r.get("fscore", {}), "ulira": r.get("ulira", {}),
                      "n": len(r["metrics"])}
                  for m, r in rows.items()}
    atomic_write_text(tables / "methods.json", json.dumps(per_method, indent=1, default=float))
    write_epsilons(tables, epsilons)  # the report draws per-method ε histograms from them
    # building the architecture imports the model zoo: only when there is a layer plot
    order = tensor_order(store, summary) if layer_names(rows) else None
    plots = write_plots(staging / "plots", rows, epsilons, order)
    store.store.put_dir(tables, "tables", last="results.md")
    if plots:
        store.store.put_dir(staging / "plots", "plots")
    return {"markdown": markdown, "mia_markdown": mia_markdown, "tables": tables,
            "plots": plots, "rows": rows, "tables_uri": store.store.url("tables/results.md"),
            "plots_uri": store.store.url("plots")}
