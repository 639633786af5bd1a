"""Table cells and formatting of the assemble stage (``tables/`` of the results store).

Rows are methods; columns are metrics as mean ± std over the replicates of the
method's best config. The ``retrain`` row is the references themselves.

``build_table`` makes the main table (a column that is "–" in every row is
dropped, except the core ones), ``build_mia_table`` every MIA score with its gap
to the retrain row (seed 002, Table 1); ``write_table`` writes a table as
Markdown, LaTeX and CSV.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.plots import mia_keys
from unlearn_core.io import atomic_path, atomic_write_text

__all__ = ["COLUMNS", "CORE_COLUMNS", "DASH", "GAP_MEAN_ATTACKS", "MIA_TITLES", "REFERENCE_ROW",
           "build_mia_table", "build_table", "drop_empty_columns", "extra_column", "mean_metric",
           "relearn_cell", "to_latex", "to_markdown", "write_table"]

DASH = "–"
REFERENCE_ROW = "retrain"

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


def mean_metric(metrics: list[dict], key: str) -> float:
    values = [m[key] for m in metrics if m.get(key) is not None and np.isfinite(m[key])]
    return float(np.mean(values)) if values else float("nan")


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
    ref_means = {key: mean_metric(reference, key) for key, _ in keys}
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
