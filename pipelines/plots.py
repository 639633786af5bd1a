"""Plots of the assembled results, drawn from the rows ``pipelines.assemble`` builds.

Each row is ``{"metrics": [one flat dict per replicate], ...}``; the ``retrain``
row holds the references. Every plot is written only when its data exists:

- ``accuracy.png``: accuracy on D_f, D_r, D_t per method (mean ± std);
- ``epsilon_hist.png``: per-example ε of the F-score per method;
- ``mia.png``: each MIA score (``mia/{attack}/efficacy``, the loss-LR
  accuracy) per method, with the retrain row's value as a dashed line per
  attack (seed 002, Table 1);
- ``distance_layers.png``: weight distance to the source per tensor, in model
  order, one line per method and one for the references (seed 003, Fig. 4);
- ``prediction_distribution.png``: which classes the forget samples are
  predicted as, per method (seed 003, Fig. 2-3).

Figures widen with the number of methods (or tensors, classes) so many still fit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unlearn_core.io import atomic_path

REFERENCE_ROW = "retrain"
MIA_ATTACKS = ("correctness", "confidence", "entropy", "modified_entropy", "prob")
MAX_WIDTH = 32.0  # inches; past this tick labels are thinned instead
DPI = 120


def _values(row: dict, key: str) -> list[float]:
    out = []
    for m in row["metrics"]:
        v = m.get(key)
        if v is not None and np.isfinite(v):
            out.append(float(v))
    return out


def mean_std(row: dict, key: str) -> tuple[float, float]:
    """Mean and std over the row's replicates (nan, nan when no finite value)."""
    values = _values(row, key)
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _width(n_items: int, per_item: float, minimum: float = 6.0) -> float:
    return float(min(MAX_WIDTH, max(minimum, per_item * n_items)))


def _tick_step(n_ticks: int, width: float, per_tick: float) -> int:
    """Show every k-th tick label so labels (``per_tick`` inches each) do not overlap."""
    return max(1, int(np.ceil(n_ticks * per_tick / width)))


def _legend(ax, n: int) -> None:
    ax.legend(ncols=max(1, min(n, 6)), loc="upper center", bbox_to_anchor=(0.5, -0.18),
              frameon=False, fontsize=9)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def plot_accuracy(rows: dict[str, dict], plt) -> object:
    methods = list(rows)
    keys = [("forget/acc", "forget D_f"), ("retain/acc", "retain D_r"), ("test/acc", "test D_t")]
    fig, ax = plt.subplots(figsize=(_width(len(methods), 1.2), 4.5))
    width = 0.8 / len(keys)
    x = np.arange(len(methods))
    for i, (key, label) in enumerate(keys):
        stats = np.array([mean_std(rows[m], key) for m in methods]).reshape(-1, 2) * 100
        ax.bar(x + i * width, stats[:, 0], width, yerr=stats[:, 1], label=label, capsize=2)
    ax.set_xticks(x + width, methods, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)  # headroom for the legend above 100 %
    ax.legend(ncols=3, loc="upper center", frameon=False)
    ax.set_title("Accuracy per split (mean ± std over replicates)")
    fig.tight_layout()
    return fig


def plot_epsilons(epsilons: dict[str, np.ndarray], plt) -> object:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(0, 50, 51)
    for color, (method, eps) in zip(_colors(len(epsilons)), epsilons.items(), strict=True):
        ax.hist(eps, bins=bins, histtype="step", label=method, linewidth=1.5, color=color)
    ax.set_xlabel("per-example ε (forget set)")
    ax.set_ylabel("examples")
    ax.set_title("ε per forget example (lower is better)")
    ax.legend(fontsize=9, ncols=max(1, len(epsilons) // 16 + 1), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def mia_keys(rows: dict[str, dict]) -> list[tuple[str, str]]:
    """(metric key, label) of every MIA score some row holds, known attacks first."""
    present = set().union(*(m.keys() for r in rows.values() for m in r["metrics"]))
    names = [a for a in MIA_ATTACKS if f"mia/{a}/efficacy" in present]
    names += sorted(k.split("/")[1] for k in present
                    if re.fullmatch(r"mia/[^/]+/efficacy", k)
                    and k.split("/")[1] not in MIA_ATTACKS)
    keys = [(f"mia/{a}/efficacy", a.replace("_", " ")) for a in names]
    if "mia/loss_lr/accuracy" in present:
        keys.append(("mia/loss_lr/accuracy", "loss-LR (accuracy)"))
    return keys


def plot_mia(rows: dict[str, dict], plt) -> object | None:
    keys = [(k, label) for k, label in mia_keys(rows)
            if any(_values(r, k) for r in rows.values())]
    if not keys:
        return None
    reference = rows.get(REFERENCE_ROW)
    methods = [m for m in rows if m != REFERENCE_ROW] or list(rows)
    group = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(_width(len(keys) * len(methods), 0.35, 8), 4.8))
    x = np.arange(len(keys))
    for i, (method, color) in enumerate(zip(methods, _colors(len(methods)), strict=True)):
        stats = np.array([mean_std(rows[method], k) for k, _ in keys]).reshape(-1, 2) * 100
        ax.bar(x - 0.4 + (i + 0.5) * group, stats[:, 0], group, yerr=stats[:, 1],
               color=color, label=method, capsize=2)
    if reference is not None and REFERENCE_ROW not in methods:
        labelled = False
        for j, (key, _) in enumerate(keys):
            value, _ = mean_std(reference, key)
            if np.isfinite(value):
                ax.hlines(value * 100, j - 0.45, j + 0.45, colors="black", linestyles="--",
                          linewidth=1.8, label=None if labelled else "retrain (references)")
                labelled = True
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_xlabel("attack")
    ax.set_ylabel("score on D_f (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Membership inference per attack (efficacy = share of D_f called non-member)")
    _legend(ax, len(methods) + 1)
    fig.tight_layout()
    return fig


def layer_names(rows: dict[str, dict], order: Sequence[str] | None = None) -> list[str]:
    """Tensor names of ``distance/layer/*`` keys: in ``order`` (the model's state dict
    order) where known, the rest after them in natural order."""
    prefix = "distance/layer/"
    names = {k[len(prefix):] for r in rows.values() for m in r["metrics"] for k in m
             if k.startswith(prefix)}
    position = {name: i for i, name in enumerate(order or ())}
    known = sorted((n for n in names if n in position), key=position.__getitem__)
    return known + sorted((n for n in names if n not in position), key=_natural)


def plot_distance_layers(rows: dict[str, dict], plt,
                         order: Sequence[str] | None = None) -> object | None:
    names = layer_names(rows, order)
    if not names:
        return None
    width = _width(len(names), 0.22, 8)
    fig, ax = plt.subplots(figsize=(width, 5))
    x = np.arange(len(names))
    positive = []
    methods = list(rows)
    for method, color in zip(methods, _colors(len(methods)), strict=True):
        means = np.array([mean_std(rows[method], f"distance/layer/{n}")[0] for n in names])
        if not np.isfinite(means).any():
            continue
        reference = method == REFERENCE_ROW
        ax.plot(x, means, marker="o", markersize=3, linewidth=2.2 if reference else 1.4,
                linestyle="--" if reference else "-", color="black" if reference else color,
                label="retrain (references)" if reference else method)
        positive += [v for v in means if np.isfinite(v) and v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")  # retrained models sit far from the source; keep both visible
    step = _tick_step(len(names), width, 0.13)  # 7 pt labels, rotated
    ax.set_xticks(x[::step], names[::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xlabel("parameter tensor (model order)")
    ax.set_ylabel("L2 distance to the source model")
    ax.set_title("Layer-wise weight distance to the source model (mean over replicates)")
    ax.grid(axis="y", alpha=0.3)
    # beside the axes: the rotated tensor names fill the space below
    ax.legend(fontsize=9, ncols=max(1, len(methods) // 16 + 1), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def prediction_classes(rows: dict[str, dict]) -> list[int]:
    found = {int(k.rsplit("_", 1)[1]) for r in rows.values() for m in r["metrics"] for k in m
             if re.fullmatch(r"distance/pred_share_\d+", k)}
    return sorted(found)


def plot_prediction_distribution(rows: dict[str, dict], plt) -> object | None:
    classes = prediction_classes(rows)
    methods = [m for m in rows
               if any(_values(rows[m], f"distance/pred_share_{k}") for k in classes)]
    if not classes or not methods:
        return None
    width = _width(len(classes) * len(methods), 0.3, 8)
    fig, ax = plt.subplots(figsize=(width, 4.8))
    x = np.arange(len(classes))
    group = 0.8 / len(methods)
    for i, (method, color) in enumerate(zip(methods, _colors(len(methods)), strict=True)):
        stats = np.array([mean_std(rows[method], f"distance/pred_share_{k}")
                          for k in classes]).reshape(-1, 2) * 100
        kl, _ = mean_std(rows[method], "distance/pred_kl")
        label = method
        if method == REFERENCE_ROW:
            label = "retrain (references)"
        elif np.isfinite(kl):
            label = f"{method} (KL to retrain {kl:.2f})"
        ax.bar(x - 0.4 + (i + 0.5) * group, stats[:, 0], group, yerr=stats[:, 1],
               color="dimgray" if method == REFERENCE_ROW else color, label=label, capsize=2)
    step = _tick_step(len(classes), width, 0.3)
    ax.set_xticks(x[::step], [str(k) for k in classes][::step])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("share of forget samples (%)")
    ax.set_ylim(0, None)
    ax.set_title("Prediction distribution on the forget set (mean over replicates)")
    _legend(ax, len(methods))
    fig.tight_layout()
    return fig


def write_plots(folder: Path, rows: dict[str, dict], epsilons: dict[str, np.ndarray],
                tensor_order: Sequence[str] | None = None) -> list[Path]:
    """Draw every plot whose data exists into ``folder``; return the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = [
        ("accuracy.png", plot_accuracy(rows, plt)),
        ("epsilon_hist.png", plot_epsilons(epsilons, plt) if epsilons else None),
        ("mia.png", plot_mia(rows, plt)),
        ("distance_layers.png", plot_distance_layers(rows, plt, tensor_order)),
        ("prediction_distribution.png", plot_prediction_distribution(rows, plt)),
    ]
    paths = []
    try:
        for name, fig in figures:
            if fig is not None:
                paths.append(_save(fig, folder / name))
    finally:
        plt.close("all")
    return paths
