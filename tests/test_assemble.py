"""assemble on a hand-built results folder: new columns, the MIA table, U-LiRA, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.assemble import assemble, build_table, relearn_cell, tensor_order
from pipelines.plots import layer_names
from unlearn_core.metrics.fscore import logit_scaled_confidence
from unlearn_core.metrics.ulira import ulira_metrics
from unlearn_core.outputs import outputs_table, write_outputs

EXPERIMENT = "fake"
CLASSES = 4
SPLITS = {"forget": np.arange(0, 8), "retain": np.arange(8, 20), "test": np.arange(20, 32)}
# lenet's state dict order (checked against the model zoo below)
LENET = ["body.0.weight", "body.0.bias", "body.3.weight", "body.3.bias", "body.7.weight",
         "body.7.bias", "body.9.weight", "body.9.bias", "head.weight", "head.bias"]


def _logits(seed: int, forget_boost: float) -> dict:
    """Per split (ids, labels, logits); the true class gets +3 (+forget_boost on D_f)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, ids in SPLITS.items():
        labels = ids % CLASSES
        z = rng.normal(0.0, 1.0, (len(ids), CLASSES)).astype(np.float32)
        z[np.arange(len(ids)), labels] += forget_boost if split == "forget" else 3.0
        out[split] = (ids, labels, z)
    return out


def _write_model(root: Path, model_id: str, role: str, method: str, seed: int,
                 boost: float) -> np.ndarray:
    per_split = _logits(seed, boost)
    table = outputs_table(per_split, method=method, hparams_hash="h", seed=seed,
                          model_id=model_id)
    write_outputs(table, root / "outputs", experiment=EXPERIMENT, role=role, writer_id=model_id)
    return logit_scaled_confidence(per_split["forget"][2], per_split["forget"][1])


def _base(acc_f: float) -> dict:
    return {"forget/acc": acc_f, "retain/acc": 0.9, "test/acc": 0.8, "ua": 1 - acc_f,
            "mia/efficacy": 0.5}


def _extras(mia_conf: float, relearn: tuple[float, float], *, layer_scale: float) -> dict:
    epochs, reached = relearn
    out = {"relearn/epochs": epochs, "relearn/reached": reached, "relearn/cap": 5.0,
           "mia/confidence/efficacy": mia_conf, "mia/efficacy": mia_conf,
           "mia/loss_lr/accuracy": 0.5 + mia_conf / 2, "distance/pred_kl": 0.1}
    for attack in ("correctness", "entropy", "modified_entropy", "prob"):
        out[f"mia/{attack}/efficacy"] = 0.3
    for i, name in enumerate(LENET):
        out[f"distance/layer/{name}"] = layer_scale * (i + 1)
    out["distance/total"] = layer_scale * 10
    for k in range(CLASSES):
        out[f"distance/pred_share_{k}"] = 0.25
    return out


def make_results(root: Path, *, n_refs: int, methods: dict[str, list[dict]],
                 extras: bool) -> dict:
    """summary.json, models/*.json, trials/<method>/*.json and outputs, by hand.

    ``methods`` maps a method to its replicates' metrics. Returns the forget-set
    confidences per model id (for hand-computing U-LiRA).
    """
    confidences = {}
    source = "source-x"
    (root / "models").mkdir(parents=True)
    (root / "models" / f"{source}.json").write_text(json.dumps(
        {"key": source, "role": "source", "model": "lenet", "train_seconds": 1.0,
         "metrics": _base(1.0)}))
    refs = []
    for i in range(n_refs):
        key = f"retrain-{i}"
        refs.append(key)
        metrics = _base(0.0)
        if extras:  # references: 3 relearn within 1 epoch, 3 never (cap 5)
            metrics |= _extras(0.1 if i % 2 == 0 else 0.3, (1.0, 1.0) if i < 3 else (5.0, 0.0),
                               layer_scale=1.0)
        (root / "models" / f"{key}.json").write_text(json.dumps(
            {"key": key, "role": "retrain", "model": "lenet", "train_seconds": 2.0,
             "metrics": metrics}))
        confidences[key] = _write_model(root, key, "retrain", "retrain", 100 + i, 0.0)
    replicates = {}
    for m, (method, rep_metrics) in enumerate(methods.items()):
        replicates[method] = []
        for s, metrics in enumerate(rep_metrics):
            key = f"{method}-{s}"
            replicates[method].append(key)
            record = {"trial_key": key, "method": method, "stage": "replicate", "seed": s,
                      "hparams": {"lr": 0.1}, "status": "ok", "error": None,
                      "metrics": metrics, "objective": 0.0, "seconds": 1.0}
            path = root / "trials" / method / f"{key}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
            confidences[key] = _write_model(root, key, "unlearned", method, 10 * m + s,
                                            1.0 + m)
    (root / "summary.json").write_text(json.dumps(
        {"experiment": EXPERIMENT, "methods": [*methods, "retrain"], "replicates": replicates,
         "references": refs, "source": source, "best": {}}))
    return confidences


def _table(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines()]
    header = [c.strip() for c in lines[0]]
    return {r[0].strip(): dict(zip(header, (c.strip() for c in r), strict=True))
            for r in lines[2:]}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / EXPERIMENT
    good = [_base(0.1) | _extras(conf, (2.0, 1.0), layer_scale=0.1)
            | {"degree/value": 0.25, "storage/bytes": 2.5e6} for conf in (0.2, 0.3, 0.4)]
    bad = [_base(0.9) | _extras(conf, (5.0, 0.0), layer_scale=0.01) for conf in (0.6, 0.7)]
    confidences = make_results(root, n_refs=6, methods={"good": good, "bad": bad},
                               extras=True)
    return root, assemble(root), confidences


def test_new_columns_hold_hand_computed_values(full):
    root, out, _ = full
    rows = _table(out["markdown"])
    assert list(rows["good"])[:3] == ["Method", "n", "Acc D_f"]
    assert rows["good"]["Relearn (ep.)"] == "2.00 ± 0.00"
    assert rows["bad"]["Relearn (ep.)"] == ">5"
    assert rows["retrain"]["Relearn (ep.)"] == "≥ 3.00 ± 2.00"  # (1+1+1+5+5+5)/6, std 2
    assert rows["good"]["Degree"] == "25.00 ± 0.00"
    assert rows["good"]["Storage (MB)"] == "2.50 ± 0.00"
    assert rows["bad"]["Degree"] == "–" and rows["retrain"]["Storage (MB)"] == "–"
    # dropped: every row "–"; kept: core columns even when all "–"
    for title in ("1-JS", "Affected (%)"):
        assert title not in rows["good"]
    assert rows["good"]["Avg. disp."] == "–" and rows["retrain"]["Avg. disp."] == "–"
    assert (root / "tables" / "results.csv").read_text().splitlines()[0].startswith(
        "Method,n,Acc D_f")
    latex = (root / "tables" / "results.tex").read_text()
    assert r"$>$5" in latex and r"$\geq$ 3.00 $\pm$ 2.00" in latex


def test_ulira_needs_three_models_per_set(full):
    root, out, confidences = full
    rows = _table(out["markdown"])
    assert rows["bad"]["U-LiRA acc."] == "–"  # 2 replicates
    refs = [f"retrain-{i}" for i in range(6)]
    good = ulira_metrics(np.stack([confidences[f"good-{s}"] for s in range(3)]),
                         np.stack([confidences[r] for r in refs]))
    assert rows["good"]["U-LiRA acc."] == f"{good['ulira/accuracy'] * 100:.2f}"
    half = ulira_metrics(np.stack([confidences[r] for r in refs[:3]]),
                         np.stack([confidences[r] for r in refs[3:]]))
    assert rows["retrain"]["U-LiRA acc."] == f"{half['ulira/accuracy'] * 100:.2f}"
    saved = json.loads((root / "tables" / "methods.json").read_text())
    assert saved["good"]["ulira"]["ulira/accuracy"] == pytest.approx(good["ulira/accuracy"])
    assert saved["bad"]["ulira"] == {}
    assert out["rows"]["good"]["ulira"] == saved["good"]["ulira"]


def test_mia_table_gaps_to_retrain(full):
    root, out, _ = full
    rows = _table(out["mia_markdown"])
    # retrain confidence efficacies 0.1, 0.3, ... -> mean 0.2
    assert rows["retrain"]["Conf."] == "20.00 ± 10.00"
    assert rows["retrain"]["Conf. gap"] == "–"
    assert rows["good"]["Conf. gap"] == "10.00 ± 8.16"  # |0.2-0.2|, |0.3-0.2|, |0.4-0.2|
    assert rows["bad"]["Conf. gap"] == "45.00 ± 5.00"  # |0.6-0.2|, |0.7-0.2|
    assert rows["bad"]["Loss-LR acc."] == "82.50 ± 2.50"
    assert rows["bad"]["Loss-LR gap"] == "22.50 ± 2.50"  # retrain: 0.5 + 0.2 / 2 = 0.6
    assert rows["good"]["Entropy gap"] == "0.00 ± 0.00"
    # mean over correctness, confidence, entropy, prob: (0 + 0.4 + 0 + 0) / 4, (0 + 0.5 ...) / 4
    assert rows["bad"]["Mean gap"] == "11.25 ± 1.25"
    with (root / "tables" / "mia.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["Method", "n", "Correct.", "Correct. gap"]
    assert "Conf. gap" in header and (root / "tables" / "mia.tex").exists()


def test_every_plot_is_a_png(full):
    root, out, _ = full
    names = {p.name for p in out["plots"]}
    assert names == {"accuracy.png", "epsilon_hist.png", "mia.png", "distance_layers.png",
                     "prediction_distribution.png"}
    for path in out["plots"]:
        assert path.parent == root / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layers_in_model_order(full):
    root, out, _ = full
    summary = json.loads((root / "summary.json").read_text())
    order = tensor_order(root, summary)
    assert order == LENET
    assert layer_names(out["rows"], order) == LENET
    # without the model, names fall back to natural order
    assert layer_names(out["rows"])[:2] == ["body.0.bias", "body.0.weight"]


def test_sparse_run_skips_plots_and_columns(tmp_path):
    root = tmp_path / EXPERIMENT
    make_results(root, n_refs=2, methods={"plain": [_base(0.2), _base(0.3)]}, extras=False)
    out = assemble(root)
    assert {p.name for p in out["plots"]} == {"accuracy.png", "epsilon_hist.png"}
    header = out["markdown"].splitlines()[0]
    for title in ("U-LiRA acc.", "Relearn (ep.)", "Degree", "Storage (MB)"):
        assert title not in header
    for title in ("Acc D_f", "MIA-eff.", "Avg. disp.", "Forget Q.", "F-score", "Time (s)"):
        assert title in header
    assert out["mia_markdown"] == "" and not (root / "tables" / "mia.md").exists()
    rows = _table(out["markdown"])
    assert rows["retrain"]["F-score"] == "–"  # 1 vs 1 reference: undefined
    assert rows["plain"]["Forget Q."] != "–"


def test_relearn_cell_edge_cases():
    assert relearn_cell([]) == "–"
    assert relearn_cell([{"relearn/epochs": 3.0}]) == "3.00"  # no flag: counted as reached
    assert relearn_cell([{"relearn/epochs": 4.0, "relearn/reached": 0.0}]) == ">4"
    header, body = build_table({"m": {"metrics": [{"relearn/epochs": 1.0}]}},
                               drop_empty=False)
    assert len(header) == len(body[0]) and "Affected (%)" in header


def test_class_accuracies_on_held_out_split(tmp_path):
    """Class-wise forgetting: test accuracy on the forgotten / retained classes per model,
    computed from stored outputs (seed 003's A_Df and A_Dr), against hand counts."""
    import pyarrow as pa

    from pipelines.assemble import add_class_accuracies
    from tests.conftest import make_dataset
    from unlearn_core.data.manifest import make_manifest

    ds = make_dataset(n=80, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0)
    manifest.write(tmp_path)
    test_ids = manifest.ids("test")
    labels = ds.labels.numpy()[test_ids]
    tables, rows = [], {"m": {"model_ids": [], "metrics": []}}
    for k, wrong_forget in enumerate((0, 2)):
        logits = np.eye(4, dtype=np.float32)[labels] * 5  # right everywhere...
        flip = np.flatnonzero(labels == 1)[:wrong_forget]
        logits[flip] = np.eye(4, dtype=np.float32)[(labels[flip] + 1) % 4] * 5  # ...but these
        per_split = {"test": (test_ids, labels, logits)}
        tables.append(outputs_table(per_split, method="m", hparams_hash="", seed=k,
                                    model_id=f"m{k}"))
        rows["m"]["model_ids"].append(f"m{k}")
        rows["m"]["metrics"].append({})
    add_class_accuracies(tmp_path, pa.concat_tables(tables), rows)
    n_forget = int((labels == 1).sum())
    first, second = rows["m"]["metrics"]
    assert first == {"test/acc_forget_classes": 1.0, "test/acc_retain_classes": 1.0}
    assert second["test/acc_forget_classes"] == pytest.approx((n_forget - 2) / n_forget)
    assert second["test/acc_retain_classes"] == 1.0
    header, _ = build_table(rows)
    assert "Acc D_t,f" in header and "Acc D_t,r" in header
