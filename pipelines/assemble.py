"""assemble stage and ``unlearn tables``: tables and plots from the stored results.

Reads only what earlier stages stored (trial records, per-sample outputs,
reference infos), so every number here is recomputable without retraining.

Rows are methods; columns are metrics as mean ± std over the replicates of the
method's best config. The ``retrain`` row is the references themselves.

Metrics that need many models are computed here from the stored forget-set
outputs (the logit-scaled confidence of each model on each forget sample):

- F-score (NeurIPS 2023 forget quality): the replicates against the references,
  the first N of each (N = the smaller count); for ``retrain``, one half of the
  references against the other half.
- U-LiRA accuracy (Hayes et al. 2024, ``ulira_metrics`` with leave-one-out
  fits): all replicates against all references; for ``retrain``, half against
  half. It needs at least 3 models in each set, else the cell is "–". 50 % =
  the attack cannot tell the method from retraining.

Tables (``tables/``): ``results.{md,csv,tex}``, the main table (a column that
is "–" in every row is dropped, except the core ones), ``mia.{md,csv,tex}``,
every MIA score with its gap to the retrain row (seed 002, Table 1), and
``methods.json`` (best hparams, failures, F-score and U-LiRA metrics per
method). Plots (``plots/``) are drawn by :mod:`pipelines.plots`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.plots import layer_names, mia_keys, write_plots
from unlearn_core.data.manifest import MANIFEST_FILE, read_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_path, atomic_write_text
from unlearn_core.metrics.accuracy import forgetting_metrics
from unlearn_core.metrics.fscore import fscore_metrics, logit_scaled_confidence
from unlearn_core.metrics.ulira import ulira_metrics
from unlearn_core.outputs import logits_matrix, read_outputs

__all__ = ["COLUMNS", "CORE_COLUMNS", "MIA_TITLES", "add_fscores", "add_ulira", "assemble",
           "build_mia_table", "build_table", "method_rows", "to_latex", "to_markdown",
           "write_plots"]

DASH = "–"
REFERENCE_ROW = "retrain"
ULIRA_MIN_MODELS = 3  # leave-one-out fits need >= 3 models per set

# (metric key, column title, scale): accuracies in %, as the papers print them.
# Keys under fscore/ and ulira/ come from the row's many-model metrics, the rest
# from the replicates' own metrics.
COLUMNS = (
    ("forget/acc", "Acc D_f", 100),
    ("retain/acc", "Acc D_r", 100),
    ("test/acc", "Acc D_t", 100),
    # class-wise forgetting: held-out accuracy on the forgotten / retained classes (seed
    # 003's A_Df and A_Dr are test accuracies); from the stored outputs
    ("test/acc_forget_classes", "Acc D_t,f", 100),
    ("test/acc_retain_classes", "Acc D_t,r", 100),
    ("ua", "UA", 100),
    ("mia/efficacy", "MIA-eff.", 100),
    ("disparity/avg", "Avg. disp.", 100),
    ("fscore/forget_quality", "Forget Q.", 1),
    ("fscore/final_score", "F-score", 1),
    ("ulira/accuracy", "U-LiRA acc.", 100),  # 50 = indistinguishable from retraining
    ("similarity/js", "1-JS", 1),
    ("fr", "FR", 100),  # seed 000, Eq. 15: forgetting rate
    ("mrr", "MRR", 100),  # seed 000, Eq. 16: memory retention rate
    ("relearn/epochs", "Relearn (ep.)", 1),  # seed 003; ">cap" when never relearned
    ("degree/value", "Degree", 100),  # SPD-GAN unlearning degree (seed 000), in %
    ("storage/bytes", "Storage (MB)", 1e-6),  # seed 001
    ("storage/affected_share", "Affected (%)", 100),  # seed 001: share of affected batches
    ("time/unlearn_s", "Time (s)", 1),
)
# Always shown, even when "–" in every row; any other all-"–" column is dropped.
CORE_COLUMNS = ("Acc D_f", "Acc D_r", "Acc D_t", "UA", "MIA-eff.", "Avg. disp.", "Forget Q.",
                "F-score")

# Short titles of the MIA table's attacks (mia.py's ATTACKS); others use their name.
MIA_TITLES = {
    "correctness": "Correct.",
    "confidence": "Conf.",
    "entropy": "Entropy",
    "modified_entropy": "M-Entropy",
    "prob": "Prob.",
    "loss_lr": "Loss-LR acc.",
}
# The four attacks seed 002 averages into its last column (mia.py's GAP_MEAN_ATTACKS).
GAP_MEAN_ATTACKS = ("correctness", "confidence", "entropy", "prob")


def method_rows(root: Path) -> dict[str, dict]:
    """Per method: replicate metrics (list of dicts) and the model ids of its replicates."""
    summary_path = root / "summary.json"
    if not summary_path.exists():
        raise UserInputError(
            f"{root} holds no finished run (no summary.json); run `unlearn run` first"
        )
    summary = json.loads(summary_path.read_text())
    rows = {}
    for method, keys in summary["replicates"].items():
        records = [json.loads((root / "trials" / method / f"{k}.json").read_text())
                   for k in keys]
        ok = [r for r in records if r["status"] == "ok"]
        rows[method] = {"metrics": [r["metrics"] for r in ok], "model_ids": [r["trial_key"]
                        for r in ok], "hparams": ok[0]["hparams"] if ok else {},
                        "failed": len(records) - len(ok)}
    refs = [json.loads((root / "models" / f"{k}.json").read_text())
            for k in summary["references"]]
    # Probes (distance, relearn, degree) exist for the first few references only.
    probes = summary.get("reference_probes", {})
    source_info = root / "models" / f"{summary.get('source')}.json"
    source = json.loads(source_info.read_text())["metrics"] if source_info.exists() else {}
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


def forget_confidences(outputs: pa.Table, model_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Forget-set logit-scaled confidence per model id (models without outputs are absent)."""
    wanted = sorted(set(model_ids))
    subset = outputs.filter(pc.is_in(outputs.column("model_id"), value_set=pa.array(wanted,
                                                                                    pa.string())))
    logits, labels, ordered = logits_matrix(subset, "forget")
    if not ordered:
        return {}
    confidences = logit_scaled_confidence(logits, labels)
    return dict(zip(ordered, confidences, strict=True))


def _stack(confidences: dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray | None:
    present = [confidences[i] for i in ids if i in confidences]
    return np.stack(present) if present else None


def _model_sets(method: str, row: dict, ref_ids: list[str],
                same_count: bool) -> tuple[list[str], list[str]]:
    """(unlearned ids, retrained ids): half vs half of the references for ``retrain``;
    else the replicates vs the references (the first N of each when ``same_count``)."""
    if method == REFERENCE_ROW:
        half = len(ref_ids) // 2
        return ref_ids[:half], ref_ids[half:2 * half]
    if same_count:
        n = min(len(row["model_ids"]), len(ref_ids))
        return row["model_ids"][:n], ref_ids[:n]
    return list(row["model_ids"]), list(ref_ids)


def _read_confidences(root: Path, experiment: str, rows: dict[str, dict],
                      outputs: pa.Table | None = None) -> dict:
    if outputs is None:
        outputs = read_outputs(root / "outputs", experiment=experiment)
    ids = [i for row in rows.values() for i in row["model_ids"]]
    return forget_confidences(outputs, ids)


def add_class_accuracies(root: Path, outputs: pa.Table, rows: dict[str, dict]) -> None:
    """Class-wise forgetting: each model's test accuracy on the forgotten classes and on
    the retained ones, added to its metrics (``test/acc_forget_classes``,
    ``test/acc_retain_classes``). Nothing for other forget kinds."""
    if not (root / MANIFEST_FILE).exists():
        return
    classes = read_manifest(root).forget_classes()
    if not classes:
        return
    wanted = sorted({i for row in rows.values() for i in row["model_ids"]})
    subset = outputs.filter(pc.is_in(outputs.column("model_id"),
                                     value_set=pa.array(wanted, pa.string())))
    logits, labels, ordered = logits_matrix(subset, "test")
    if not ordered:
        return
    right = logits.argmax(-1) == labels[None, :]
    in_forget = np.isin(labels, classes)
    per_model = {m: {"test/acc_forget_classes": float(right[i, in_forget].mean()),
                     "test/acc_retain_classes": float(right[i, ~in_forget].mean())}
                 for i, m in enumerate(ordered) if in_forget.any() and (~in_forget).any()}
    for row in rows.values():
        for model_id, metrics in zip(row["model_ids"], row["metrics"], strict=True):
            metrics.update(per_model.get(model_id, {}))


def add_fscores(root: Path, experiment: str, rows: dict[str, dict],
                confidences: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Add forget quality and final score to each row; return per-example ε per method."""
    from unlearn_core.metrics.fscore import per_example_epsilons

    if confidences is None:
        confidences = _read_confidences(root, experiment, rows)
    ref_ids = [i for i in rows[REFERENCE_ROW]["model_ids"] if i in confidences]
    refs = rows[REFERENCE_ROW]["metrics"]
    ref_acc = {"retain_acc_r": _mean(refs, "retain/acc"), "test_acc_r": _mean(refs, "test/acc")}
    epsilons = {}
    for method, row in rows.items():
        present = {**row, "model_ids": [i for i in row["model_ids"] if i in confidences]}
        unlearned_ids, retrained_ids = _model_sets(method, present, ref_ids, same_count=True)
        if len(unlearned_ids) < 2:
            continue  # the ε of one model against one model is not defined
        u = _stack(confidences, unlearned_ids)
        r = _stack(confidences, retrained_ids)
        accuracies = {**ref_acc, "retain_acc_u": _mean(row["metrics"], "retain/acc"),
                      "test_acc_u": _mean(row["metrics"], "test/acc")}
        row["fscore"] = fscore_metrics(u, r, accuracies, n_boot=50)
        epsilons[method] = per_example_epsilons(u, r)
    return epsilons


def add_ulira(rows: dict[str, dict], confidences: dict[str, np.ndarray]) -> None:
    """Add ``row["ulira"]`` (``ulira_metrics``) where both sets hold >= 3 models."""
    ref_ids = [i for i in rows[REFERENCE_ROW]["model_ids"] if i in confidences]
    for method, row in rows.items():
        present = {**row, "model_ids": [i for i in row["model_ids"] if i in confidences]}
        unlearned_ids, retrained_ids = _model_sets(method, present, ref_ids, same_count=False)
        if min(len(unlearned_ids), len(retrained_ids)) < ULIRA_MIN_MODELS:
            continue
        row["ulira"] = ulira_metrics(_stack(confidences, unlearned_ids),
                                     _stack(confidences, retrained_ids))


def _mean(metrics: list[dict], key: str) -> float:
    values = [m[key] for m in metrics if m.get(key) is not None and np.isfinite(m[key])]
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------
# cells and tables


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def _cell(values: list[float], scale: float) -> str:
    values = [v * scale for v in _finite(values)]
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def relearn_cell(metrics: list[dict]) -> str:
    """Relearn time in epochs (seed 003): mean ± std; ">cap" when no replicate relearned
    within the cap, a leading "≥" when some did not (their epochs count as the cap)."""
    done = [m for m in metrics if _finite([m.get("relearn/epochs")])]
    if not done:
        return DASH
    reached = [float(m.get("relearn/reached", 1.0)) >= 0.5 for m in done]
    epochs = [float(m["relearn/epochs"]) for m in done]
    if not any(reached):
        caps = _finite(m.get("relearn/cap") for m in done)
        return f">{max(caps or epochs):g}"
    text = _cell(epochs, 1)
    return text if all(reached) else f"≥ {text}"


def _row_cell(row: dict, key: str, scale: float) -> str:
    family = key.split("/", 1)[0]
    if family in ("fscore", "ulira"):
        value = row.get(family, {}).get(key)
        return _cell([value], scale) if value is not None else DASH
    if key == "relearn/epochs":
        return relearn_cell(row["metrics"])
    return _cell([m.get(key) for m in row["metrics"]], scale)


def drop_empty_columns(header: list[str], body: list[list[str]],
                       keep: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Drop columns that are "–" in every row, except the first two and those in ``keep``."""
    columns = [j for j, title in enumerate(header)
               if j < 2 or title in keep or any(r[j] != DASH for r in body)]
    return [header[j] for j in columns], [[r[j] for j in columns] for r in body]


def extra_column(key: str) -> tuple[str, str, float]:
    """A column the config asks for by metric key (``table_columns``); accuracies in %."""
    scale = 100 if "/acc" in key or key in ("ua", "fr", "mrr") else 1
    return key, key, scale


def build_table(rows: dict[str, dict], *, drop_empty: bool = True,
                extra: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """The main table: Method, n, COLUMNS, then ``extra`` metric keys (all-"–" non-core
    columns dropped)."""
    columns = list(COLUMNS) + [extra_column(k) for k in extra]
    header = ["Method", "n"] + [title for _, title, _ in columns]
    body = [[method, str(len(row["metrics"]))]
            + [_row_cell(row, key, scale) for key, _, scale in columns]
            for method, row in rows.items()]
    if drop_empty:
        return drop_empty_columns(header, body, CORE_COLUMNS)
    return header, body


def _gap_cell(row: dict, key: str, reference: float, is_reference: bool) -> str:
    if is_reference or not np.isfinite(reference):
        return DASH
    return _cell([abs(v - reference) for v in _finite(m.get(key) for m in row["metrics"])], 100)


def build_mia_table(rows: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Every MIA score per method and its gap to retrain (seed 002, Table 1), in %.

    Per attack two columns, "<title>" (``mia/{attack}/efficacy``, or the loss-LR
    attack's ``mia/loss_lr/accuracy``) and "<title> gap": per replicate
    |value − mean over the references|, then mean ± std over replicates (the
    ``mia/{attack}/gap`` of ``mia_gaps``); "Mean gap" averages the gaps of
    correctness, confidence, entropy and prob per replicate. The retrain row's
    gaps are "–". Columns without any value are dropped.
    """
    keys = mia_keys(rows)
    reference = rows.get(REFERENCE_ROW, {"metrics": []})["metrics"]
    ref_means = {key: _mean(reference, key) for key, _ in keys}
    header = ["Method", "n"]
    for key, _ in keys:
        title = MIA_TITLES.get(key.split("/")[1], key.split("/")[1])
        header += [title, f"{title.removesuffix(' acc.')} gap"]
    four = [f"mia/{a}/efficacy" for a in GAP_MEAN_ATTACKS]
    header.append("Mean gap")
    body = []
    for method, row in rows.items():
        is_reference = method == REFERENCE_ROW
        cells = [method, str(len(row["metrics"]))]
        for key, _ in keys:
            cells.append(_cell([m.get(key) for m in row["metrics"]], 100))
            cells.append(_gap_cell(row, key, ref_means[key], is_reference))
        mean_gaps = []
        if not is_reference and all(np.isfinite(ref_means.get(k, np.nan)) for k in four):
            for m in row["metrics"]:
                gaps = [abs(m[k] - ref_means[k]) for k in four if _finite([m.get(k)])]
                if len(gaps) == len(four):
                    mean_gaps.append(float(np.mean(gaps)))
        cells.append(_cell(mean_gaps, 100))
        body.append(cells)
    return drop_empty_columns(header, body)


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_latex(header: list[str], body: list[list[str]]) -> str:
    def esc(text: str) -> str:
        for old, new in (("_", r"\_"), ("%", r"\%"), ("±", r"$\pm$"), ("≥", r"$\geq$"),
                         (">", r"$>$")):
            text = text.replace(old, new)
        return text

    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(folder: Path, name: str, header: list[str], body: list[list[str]]) -> str:
    """Write ``name``.md, .tex and .csv into ``folder``; return the Markdown."""
    markdown = to_markdown(header, body)
    atomic_write_text(folder / f"{name}.md", markdown)
    atomic_write_text(folder / f"{name}.tex", to_latex(header, body))
    with atomic_path(folder / f"{name}.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return markdown


def tensor_order(root: Path, summary: dict) -> list[str] | None:
    """State-dict tensor names of the source model, in model order (None if unknown).

    Trial records store metrics with sorted keys, so the order of the
    ``distance/layer/*`` keys is rebuilt from the architecture: the source's
    model is built on the meta device (no memory, no weights); names do not
    depend on the class count or the input size used here.
    """
    info_path = root / "models" / f"{summary.get('source', '')}.json"
    if not summary.get("source") or not info_path.exists():
        return None
    name = json.loads(info_path.read_text()).get("model")
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


def _config_columns(root: Path) -> list[str]:
    """Extra columns the run's config names (``table_columns``), if any."""
    path = root / "config.yaml"
    if not path.exists():
        return []
    import yaml

    return list((yaml.safe_load(path.read_text()) or {}).get("table_columns", []))


def assemble(root: str | Path) -> dict:
    """Compute and write the tables and plots; return paths and the Markdown table.

    Returns ``markdown`` (main table), ``mia_markdown`` (MIA table, "" when no
    row holds MIA scores), ``tables`` (folder), ``plots`` (written paths) and
    ``rows`` (per method: metrics, model ids, hparams, fscore, ulira).
    """
    root = Path(root)
    rows = method_rows(root)  # raises a UserInputError without summary.json
    summary = json.loads((root / "summary.json").read_text())
    outputs = read_outputs(root / "outputs", experiment=summary["experiment"])
    add_class_accuracies(root, outputs, rows)
    confidences = _read_confidences(root, summary["experiment"], rows, outputs)
    epsilons = add_fscores(root, summary["experiment"], rows, confidences)
    add_ulira(rows, confidences)
    tables = root / "tables"
    header, body = build_table(rows, extra=_config_columns(root))
    markdown = write_table(tables, "results", header, body)
    mia_header, mia_body = build_mia_table(rows)
    mia_markdown = ""
    if len(mia_header) > 2:
        mia_markdown = write_table(tables, "mia", mia_header, mia_body)
    per_method = {m: {"hparams": r["hparams"], "failed": r["failed"],
                      "fscore": r.get("fscore", {}), "ulira": r.get("ulira", {}),
                      "n": len(r["metrics"])}
                  for m, r in rows.items()}
    atomic_write_text(tables / "methods.json", json.dumps(per_method, indent=1, default=float))
    # building the architecture imports the model zoo: only when there is a layer plot
    order = tensor_order(root, summary) if layer_names(rows) else None
    plots = write_plots(root / "plots", rows, epsilons, order)
    return {"markdown": markdown, "mia_markdown": mia_markdown, "tables": tables,
            "plots": plots, "rows": rows}
