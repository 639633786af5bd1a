"""Table cells and formatting of the assemble stage (``tables/`` of the results store).

Rows are methods; columns are metrics as mean ± std over the replicates of the
method's best config. The ``retrain`` row is the references themselves. F-score
cells compare N models per side, the same N in every row (``pipelines.many_model``;
column "F-score N", and the caption lines ``write_table`` puts under the table).

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
from unlearn_core.metrics.mia import GAP_MEAN_ATTACKS, mia_gaps_of_means

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
    # share of forget examples whose ε hit the cap (50): scored 0 like any ε past the
    # last bin, so this tells "cut off by the cap" from "far" (peaky or separated sets)
    ("fscore/eps_capped_frac", "Capped ε (%)", 100),
    ("fscore/final_score", "F-score", 1),
    # models per side of the row's F-score: the same in every scored row (many_model.py)
    ("fscore/n_models", "F-score N", 1),
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
                "Capped ε (%)", "F-score", "F-score N")

# Short titles of the MIA table's attacks (mia.py's ATTACKS); others use their name.
MIA_TITLES = {
    "correctness": "Correct.",
    "confidence": "Conf.",
    "entropy": "Entropy",
    "modified_entropy": "M-Entropy",
    "prob": "Prob.",
    "loss_lr": "Loss-LR acc.",
}


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
        if value is None:
            return DASH
        return str(int(value)) if key == "fscore/n_models" else _cell([value], scale)
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


def _gap_key(key: str) -> str:
    """``mia/{attack}/efficacy`` or ``mia/loss_lr/accuracy`` -> ``mia/{attack}/gap``."""
    return key.rsplit("/", 1)[0] + "/gap"


def build_mia_table(rows: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Every MIA score per method and its gap to retrain (seed 002, Table 1), in %.

    Per attack two columns, "<title>" (``mia/{attack}/efficacy``, or the loss-LR
    attack's ``mia/loss_lr/accuracy``; mean ± std over replicates) and "<title> gap":
    |mean over the replicates − mean over the references| (``mia_gaps_of_means``,
    Table 1's estimator; a mean of per-replicate gaps would add each attack's
    sampling noise to the gap). "Mean gap" averages the gaps of correctness,
    confidence, entropy and prob. The retrain row's gaps are "–". Columns without
    any value are dropped.
    """
    keys = mia_keys(rows)
    reference = rows.get(REFERENCE_ROW, {"metrics": []})["metrics"]
    header = ["Method", "n"]
    for key, _ in keys:
        title = MIA_TITLES.get(key.split("/")[1], key.split("/")[1])
        header += [title, f"{title.removesuffix(' acc.')} gap"]
    header.append("Mean gap")
    body = []
    for method, row in rows.items():
        is_reference = method == REFERENCE_ROW
        gaps = {} if is_reference else mia_gaps_of_means(row["metrics"], reference)
        cells = [method, str(len(row["metrics"]))]
        for key, _ in keys:
            cells.append(_cell([m.get(key) for m in row["metrics"]], 100))
            cells.append(_cell([gaps.get(_gap_key(key))], 100))
        cells.append(_cell([gaps.get("mia/gap_mean")], 100))
        body.append(cells)
    return drop_empty_columns(header, body)


def to_markdown(header: list[str], body: list[list[str]], notes: Sequence[str] = ()) -> str:
    """A pipe table; ``notes`` follow it after a blank line, one paragraph each."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    text = "\n".join(lines) + "\n"
    return text + "".join(f"\n{note}\n" for note in notes)


def _latex_escape(text: str) -> str:
    for old, new in (("_", r"\_"), ("%", r"\%"), ("±", r"$\pm$"), ("≥", r"$\geq$"),
                     (">", r"$>$"), ("ε", r"$\varepsilon$")):
        text = text.replace(old, new)
    return text


def to_latex(header: list[str], body: list[list[str]], notes: Sequence[str] = ()) -> str:
    """A booktabs tabular; ``notes`` follow it, one paragraph each."""
    esc = _latex_escape

    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [esc(note) + r"\par" for note in notes]
    return "\n".join(lines) + "\n"


EPSILONS_FILE = "epsilons.parquet"  # per-example ε of the F-score, one row per (method, example)


def write_epsilons(folder: Path, epsilons: dict[str, np.ndarray]) -> None:
    """Keep the per-example ε of each row's F-score (``tables/epsilons.parquet``: method,
    epsilon), so the report's histograms are drawn from numbers, not from a picture."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    methods = [m for m, eps in epsilons.items() for _ in range(len(eps))]
    values = np.concatenate([np.asarray(e, np.float32).ravel() for e in epsilons.values()]) \
        if epsilons else np.zeros(0, np.float32)
    table = pa.table({"method": pa.array(methods, pa.string()).dictionary_encode(),
                      "epsilon": pa.array(values, pa.float32())})
    with atomic_path(folder / EPSILONS_FILE) as tmp:
        pq.write_table(table, tmp)


def write_table(folder: Path, name: str, header: list[str], body: list[list[str]],
                notes: Sequence[str] = ()) -> str:
    """Write ``name``.md, .tex and .csv into ``folder``; return the Markdown. ``notes``
    (caption lines, e.g. the F-score's N) follow the Markdown and LaTeX tables; the CSV
    holds the header and rows only."""
    markdown = to_markdown(header, body, notes)
    atomic_write_text(folder / f"{name}.md", markdown)
    atomic_write_text(folder / f"{name}.tex", to_latex(header, body, notes))
    with atomic_path(folder / f"{name}.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return markdown
