"""assemble on a hand-built results store: new columns, the MIA table, U-LiRA, plots,
what it reads (committed models only, never a listing of the outputs folder) and where it
writes (the store, through a local staging folder)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.assemble import assemble, build_table, relearn_cell, tensor_order
from pipelines.plots import layer_names
from pipelines.store import ResultsStore
from unlearn_core.metrics.fscore import logit_scaled_confidence
from unlearn_core.metrics.ulira import ulira_metrics
from unlearn_core.outputs import outputs_table
from unlearn_core.storage import Store

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


def _write_model(store: ResultsStore, model_id: str, role: str, method: str, seed: int,
                 boost: float) -> np.ndarray:
    per_split = _logits(seed, boost)
    table = outputs_table(per_split, method=method, hparams_hash="h", seed=seed,
                          model_id=model_id)
    store.write_outputs(table, role, model_id)
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


def make_results(root: Path | ResultsStore, *, n_refs: int, methods: dict[str, list[dict]],
                 extras: bool) -> dict:
    """summary.json, models/*.json, trials/<method>/*.json and outputs, through the store.

    ``root``: the experiment folder (a local store) or a store. ``methods`` maps a method
    to its replicates' metrics. Returns the forget-set confidences per model id (for
    hand-computing U-LiRA).
    """
    store = root if isinstance(root, ResultsStore) else \
        ResultsStore(Store.at(root), EXPERIMENT)
    confidences = {}
    source = "source-x"
    store.write_model_info(source, {"key": source, "role": "source", "model": "lenet",
                                    "train_seconds": 1.0, "metrics": _base(1.0)})
    refs = []
    for i in range(n_refs):
        key = f"retrain-{i}"
        refs.append(key)
        metrics = _base(0.0)
        if extras:  # references: 3 relearn within 1 epoch, 3 never (cap 5)
            metrics |= _extras(0.1 if i % 2 == 0 else 0.3, (1.0, 1.0) if i < 3 else (5.0, 0.0),
                               layer_scale=1.0)
        confidences[key] = _write_model(store, key, "retrain", "retrain", 100 + i, 0.0)
        store.write_model_info(key, {"key": key, "role": "retrain", "model": "lenet",
                                     "train_seconds": 2.0, "metrics": metrics})
    replicates = {}
    for m, (method, rep_metrics) in enumerate(methods.items()):
        replicates[method] = []
        for s, metrics in enumerate(rep_metrics):
            key = f"{method}-{s}"
            replicates[method].append(key)
            confidences[key] = _write_model(store, key, "unlearned", method, 10 * m + s,
                                            1.0 + m)
            store.write_trial({"trial_key": key, "method": method, "stage": "replicate",
                               "seed": s, "hparams": {"lr": 0.1}, "status": "ok",
                               "error": None, "metrics": metrics, "objective": 0.0,
                               "seconds": 1.0})
    store.write_json("summary.json", {
        "experiment": EXPERIMENT, "methods": [*methods, "retrain"], "replicates": replicates,
        "references": refs, "source": source, "best": {}})
    return confidences


@pytest.fixture(scope="module", autouse=True)
def _staging_under_tmp(tmp_path_factory):
    """assemble leaves its local staging folder to the caller: keep the tests' in pytest's
    temporary folders, not in /tmp."""
    import tempfile

    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("staging"))
    yield
    tempfile.tempdir = before


def _table(markdown: str) -> dict[str, dict[str, str]]:
    """{method: {column: cell}} of a Markdown table (the notes under it skipped)."""
    lines = [line.strip().strip("|").split("|") for line in markdown.strip().splitlines()
             if line.startswith("|")]
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
    # gap = |mean over replicates - mean over references| (seed 002, Table 1)
    assert rows["good"]["Conf. gap"] == "10.00"  # |0.3 - 0.2|
    assert rows["bad"]["Conf. gap"] == "45.00"  # |0.65 - 0.2|
    assert rows["bad"]["Loss-LR acc."] == "82.50 ± 2.50"
    assert rows["bad"]["Loss-LR gap"] == "22.50"  # |0.825 - 0.6|; retrain 0.5 + 0.2 / 2
    assert rows["good"]["Entropy gap"] == "0.00"
    # mean over correctness, confidence, entropy, prob: (0 + 0.45 + 0 + 0) / 4
    assert rows["bad"]["Mean gap"] == "11.25"
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
        assert path.parent != root / "plots"  # drawn into the local staging folder...
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # ...and uploaded to the store
        assert (root / "plots" / path.name).read_bytes() == path.read_bytes()
    assert out["plots_uri"] == str(root / "plots")


def test_tables_staged_locally_and_uploaded(full):
    root, out, _ = full
    assert out["tables_uri"] == str(root / "tables" / "results.md")
    assert (root / "tables" / "results.md").read_text() == out["markdown"]
    staged = sorted(p.name for p in out["tables"].iterdir())
    assert staged == sorted(p.name for p in (root / "tables").iterdir())
    assert staged == ["epsilons.parquet", "methods.json", "mia.csv", "mia.md", "mia.tex",
                      "results.csv", "results.md", "results.tex"]
    for name in staged:
        assert (out["tables"] / name).read_bytes() == (root / "tables" / name).read_bytes()


def test_layers_in_model_order(full):
    root, out, _ = full
    summary = json.loads((root / "summary.json").read_text())
    order = tensor_order(ResultsStore.open(root), summary)
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
    computed from stored outputs (seed 003's A_Df and A_Dr), against hand counts; the same
    numbers from a table and from the streamed scan of the stored files."""
    import pyarrow as pa

    from pipelines.assemble import add_class_accuracies, forget_classes, read_model_outputs
    from tests.conftest import make_dataset
    from unlearn_core.data.manifest import make_manifest

    ds = make_dataset(n=80, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0)
    store = ResultsStore(Store.at(tmp_path / EXPERIMENT), EXPERIMENT)
    store.write_manifest(manifest)
    assert forget_classes(store) == [1]
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
        store.write_outputs(tables[-1], "unlearned", f"m{k}")
        rows["m"]["model_ids"].append(f"m{k}")
        rows["m"]["metrics"].append({})
    add_class_accuracies(store, pa.concat_tables(tables), rows)
    n_forget = int((labels == 1).sum())
    first, second = rows["m"]["metrics"]
    assert first == {"test/acc_forget_classes": 1.0, "test/acc_retain_classes": 1.0}
    assert second["test/acc_forget_classes"] == pytest.approx((n_forget - 2) / n_forget)
    assert second["test/acc_retain_classes"] == 1.0
    header, _ = build_table(rows)
    assert "Acc D_t,f" in header and "Acc D_t,r" in header
    # the streamed scan of the files gives the same numbers (and no forget rows here)
    forget, per_model = read_model_outputs(store, EXPERIMENT, rows, [1])
    assert forget.num_rows == 0
    assert per_model == {"m0": first, "m1": second}


def test_class_accuracies_refuse_models_with_other_samples(tmp_path):
    from pipelines.assemble import ClassAccuracy
    from unlearn_core.errors import UserInputError

    accuracy = ClassAccuracy([0])
    for model_id, ids in (("a", [0, 1, 2]), ("b", [0, 1, 3])):
        logits = np.eye(2, dtype=np.float32)[[0, 1, 0]]
        accuracy.add(outputs_table({"test": (np.array(ids), np.array([0, 1, 1]), logits)},
                                   method="m", hparams_hash="", seed=0, model_id=model_id))
    with pytest.raises(UserInputError, match="model b holds other test samples"):
        accuracy.result()


# --------------------------------------------------------------------------
# what assembly reads: committed models only, by name; where it works: any store


def _stray_outputs(store: ResultsStore, model_id: str) -> None:
    """Outputs of a lost worker's trial: 3 forget samples (not the 8 the others hold), so
    stacking them with the committed models' would be refused."""
    ids = np.arange(3)
    table = outputs_table({"forget": (ids, ids % CLASSES, np.zeros((3, CLASSES), np.float32))},
                          method="plain", hparams_hash="h", seed=0, model_id=model_id)
    store.write_outputs(table, "unlearned", model_id)


def test_uncommitted_outputs_are_never_read(tmp_path):
    root = tmp_path / EXPERIMENT
    make_results(root, n_refs=4, methods={"plain": [_base(0.2), _base(0.3), _base(0.25)]},
                 extras=False)
    clean = assemble(root)
    store = ResultsStore.open(root)
    # a replicate the summary lists whose trial record was never written (not committed)
    _stray_outputs(store, "plain-3")
    summary = store.read_json("summary.json")
    summary["replicates"]["plain"].append("plain-3")
    store.write_json("summary.json", summary)
    # a trial no summary lists, and files that are not Parquet at all, named as outputs
    _stray_outputs(store, "plain-7")
    folder = root / "outputs" / f"experiment={EXPERIMENT}"
    (folder / "role=unlearned" / "plain-9.parquet").write_bytes(b"not parquet")
    (folder / "role=retrain" / "retrain-9.parquet").write_bytes(b"not parquet")
    again = assemble(str(root))
    assert again["rows"]["plain"]["model_ids"] == ["plain-0", "plain-1", "plain-2"]
    assert again["rows"]["plain"]["failed"] == 1 and clean["rows"]["plain"]["failed"] == 0
    assert again["markdown"] == clean["markdown"]
    for method in ("plain", "retrain"):
        assert again["rows"][method].get("fscore") == clean["rows"][method].get("fscore")
        assert again["rows"][method].get("ulira") == clean["rows"][method].get("ulira")


class _Recorder:
    """Which folders a file system was asked to list."""

    def __init__(self) -> None:
        self.listed: list[str] = []


def _memory_store(bucket: str, recorder: _Recorder) -> ResultsStore:
    """A store that is not on this machine's disk: an in-memory file system behind an
    s3:// URI (as pyarrow.fs sees an object store), recording every listing."""
    import fsspec  # a dependency of ray[tune], declared in the dev extras too
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    memory = fsspec.filesystem("memory")

    class Spy(type(memory)):
        def find(self, path, *args, **kwargs):
            recorder.listed.append(str(path))
            return super().find(path, *args, **kwargs)

        def ls(self, path, *args, **kwargs):
            recorder.listed.append(str(path))
            return super().ls(path, *args, **kwargs)

    base = f"/{bucket}/{EXPERIMENT}"
    store = Store(f"s3://{bucket}/{EXPERIMENT}", [PyFileSystem(FSSpecHandler(Spy())), base])
    return ResultsStore(store, EXPERIMENT)


def test_assemble_on_a_store_off_this_disk(tmp_path):
    recorder = _Recorder()
    remote = _memory_store("assemble-test", recorder)
    assert remote.store.local_root is None
    methods = {"plain": [_base(0.2), _base(0.3), _base(0.25)]}
    make_results(remote, n_refs=4, methods=methods, extras=False)
    _stray_outputs(remote, "plain-7")
    remote.store.write_bytes(remote.outputs_rel("unlearned", "plain-9"), b"not parquet")
    recorder.listed.clear()
    out = assemble(remote)
    assert not [p for p in recorder.listed if "outputs" in p], recorder.listed
    # the same numbers as on a local disk
    local = tmp_path / EXPERIMENT
    make_results(local, n_refs=4, methods=methods, extras=False)
    assert out["markdown"] == assemble(local)["markdown"]
    assert out["tables_uri"] == f"s3://assemble-test/{EXPERIMENT}/tables/results.md"
    assert remote.store.read_text("tables/results.md") == out["markdown"]
    assert json.loads(remote.store.read_text("tables/methods.json"))["plain"]["n"] == 3
    for path in out["plots"]:
        assert remote.store.read_bytes(f"plots/{path.name}") == path.read_bytes()


def test_metrics_in_worker_processes_are_the_same(tmp_path):
    """The rows' F-score and U-LiRA computed in 2 spawned processes: identical numbers."""
    root = tmp_path / EXPERIMENT
    methods = {"a": [_base(0.2)] * 3, "b": [_base(0.3)] * 4}
    make_results(root, n_refs=6, methods=methods, extras=False)
    inline, pooled = assemble(root, workers=1), assemble(root, workers=2)
    assert pooled["markdown"] == inline["markdown"]
    for method in ("a", "b", "retrain"):
        assert pooled["rows"][method]["fscore"] == inline["rows"][method]["fscore"]
        assert pooled["rows"][method]["ulira"] == inline["rows"][method]["ulira"]


def test_forget_confidences_of_the_wanted_models(tmp_path):
    import pyarrow as pa

    from pipelines.assemble import forget_confidences

    tables, expected = [], {}
    for k, model_id in enumerate(("c", "a", "b")):
        per_split = _logits(k, 1.0)
        tables.append(outputs_table(per_split, method="m", hparams_hash="h", seed=k,
                                    model_id=model_id))
        expected[model_id] = logit_scaled_confidence(per_split["forget"][2],
                                                     per_split["forget"][1])
    table = pa.concat_tables(tables)
    got = forget_confidences(table, ["b", "a", "missing"])
    assert sorted(got) == ["a", "b"]
    for model_id, values in got.items():
        np.testing.assert_array_equal(values, expected[model_id])
    assert sorted(forget_confidences(table, ["a", "b", "c"])) == ["a", "b", "c"]
    assert forget_confidences(table, []) == {}


# --------------------------------------------------------------------------
# comparisons the tables make: F-score rows at one N, MIA gaps of means


def _confs(ids: list[str]) -> dict[str, np.ndarray]:
    return {i: np.full(4, float(k)) for k, i in enumerate(ids)}


def _rows(refs: int, **methods: int) -> dict[str, dict]:
    rows = {m: {"model_ids": [f"{m}-{s}" for s in range(n)], "metrics": [{}] * n}
            for m, n in methods.items()}
    rows["retrain"] = {"model_ids": [f"ref-{i}" for i in range(refs)], "metrics": [{}] * refs}
    return rows


def test_fscore_plan_scores_every_row_at_the_same_n():
    from pipelines.assemble import fscore_notes, fscore_plan

    rows = _rows(12, a=5, b=7)
    plan = fscore_plan(rows, _confs([i for r in rows.values() for i in r["model_ids"]]))
    refs = rows["retrain"]["model_ids"]
    assert plan.n == 5 and plan.skipped == {}
    # one comparator set for every row; retrain's own side: N other references
    assert plan.sets["retrain"] == (refs[5:10], refs[:5])
    assert plan.sets["a"] == (rows["a"]["model_ids"], refs[:5])
    assert plan.sets["b"] == (rows["b"]["model_ids"][:5], refs[:5])
    assert {len(u) for u, _ in plan.sets.values()} == {len(r) for _, r in plan.sets.values()} \
        == {5}
    assert "N = 5 models per side in every row" in fscore_notes(plan)[0]
    # models without outputs do not count; a row with one model is left out, and does
    # not pull N down
    rows = _rows(12, a=5, b=4, c=1)
    confs = _confs([i for r in rows.values() for i in r["model_ids"] if i != "a-0"])
    plan = fscore_plan(rows, confs)
    assert plan.n == 4 and plan.sets["a"][0] == ["a-1", "a-2", "a-3", "a-4"]
    assert set(plan.sets) == {"a", "b", "retrain"} and "c" in plan.skipped


def test_fscore_plan_too_few_references_for_retrain_says_so():
    from pipelines.assemble import fscore_notes, fscore_plan

    rows = _rows(8, a=5)
    plan = fscore_plan(rows, _confs([i for r in rows.values() for i in r["model_ids"]]))
    assert plan.n == 5 and "retrain" not in plan.sets
    assert plan.sets["a"] == (rows["a"]["model_ids"], rows["retrain"]["model_ids"][:5])
    notes = fscore_notes(plan)
    assert "Forget Q. / F-score of retrain: not scored, needs 2N = 10 references" in notes[1]
    assert "has 8" in notes[1]
    # fewer references than replicates: the methods drop to the reference count
    rows = _rows(3, a=5)
    plan = fscore_plan(rows, _confs([i for r in rows.values() for i in r["model_ids"]]))
    assert plan.n == 3 and len(plan.sets["a"][0]) == 3 and "retrain" in plan.skipped


def test_assembled_retrain_and_method_rows_use_the_same_n(tmp_path):
    from unlearn_core.metrics.fscore import fscore_metrics

    root = tmp_path / EXPERIMENT
    confidences = make_results(root, n_refs=10, methods={"a": [_base(0.2)] * 5,
                                                         "b": [_base(0.3)] * 6},
                               extras=False)
    out = assemble(root, workers=1, bootstrap=4)
    rows = out["rows"]
    refs = [f"retrain-{i}" for i in range(10)]
    for method in ("a", "b", "retrain"):
        assert rows[method]["fscore"]["fscore/n_models"] == 5.0
    assert rows["retrain"]["fscore_sets"] == {"unlearned": refs[5:], "retrained": refs[:5]}
    assert rows["b"]["fscore_sets"]["unlearned"] == [f"b-{s}" for s in range(5)]
    # the numbers are those of the sets named, at bootstrap 4 (the accuracies: the
    # models scored; all retain 0.9, test 0.8 here)
    accs = {"retain_acc_u": 0.9, "retain_acc_r": 0.9, "test_acc_u": 0.8, "test_acc_r": 0.8}
    for method, ids in (("retrain", refs[5:]), ("b", [f"b-{s}" for s in range(5)])):
        expected = fscore_metrics(np.stack([confidences[i] for i in ids]),
                                  np.stack([confidences[i] for i in refs[:5]]), accs,
                                  n_boot=4)
        assert rows[method]["fscore"] == expected
    table = _table(out["markdown"])
    assert table["a"]["F-score N"] == table["b"]["F-score N"] == table["retrain"]["F-score N"] \
        == "5"
    assert table["a"]["Capped ε (%)"] == \
        f"{rows['a']['fscore']['fscore/eps_capped_frac'] * 100:.2f}"
    assert "N = 5 models per side in every row" in out["markdown"]
    assert "N = 5" in (root / "tables" / "results.tex").read_text()
    # 8 references for N = 5: the retrain row is "–" and the caption says why
    few = tmp_path / "few" / EXPERIMENT
    make_results(few, n_refs=8, methods={"a": [_base(0.2)] * 5}, extras=False)
    out = assemble(few, workers=1, bootstrap=0)
    assert _table(out["markdown"])["retrain"]["Forget Q."] == "–"
    assert _table(out["markdown"])["retrain"]["F-score N"] == "–"
    assert out["rows"]["a"]["fscore"]["fscore/n_models"] == 5.0
    assert "retrain: not scored, needs 2N = 10 references (N against N others), has 8" \
        in out["markdown"]


def test_mia_gap_is_the_gap_of_the_means():
    from pipelines.tables import build_mia_table

    four = ("correctness", "confidence", "entropy", "prob")
    rows = {
        "m": {"metrics": [{f"mia/{a}/efficacy": v for a in four} for v in (0.1, 0.3)]},
        "far": {"metrics": [{f"mia/{a}/efficacy": v for a in four} for v in (0.5, 0.7)]},
        "retrain": {"metrics": [{f"mia/{a}/efficacy": 0.2 for a in four}] * 3},
    }
    header, body = build_mia_table(rows)
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    # replicates 0.1 and 0.3 around the references' 0.2: gap 0 (a mean of per-replicate
    # gaps would say 10)
    assert cells["m"]["Conf. gap"] == "0.00" and cells["m"]["Mean gap"] == "0.00"
    assert cells["far"]["Conf. gap"] == "40.00" and cells["far"]["Mean gap"] == "40.00"
    assert cells["m"]["Conf."] == "20.00 ± 10.00"
    assert cells["retrain"]["Conf. gap"] == "–" and cells["retrain"]["Mean gap"] == "–"


def test_any_assembly_drops_the_run_s_kept_tables_marker(tmp_path):
    # `unlearn tables` (say with another bootstrap) rewrites tables/ that `unlearn run`
    # did not log: the run's next re-run must assemble again, not keep them
    from pipelines import assembly_cache
    from pipelines.store import ResultsStore

    root = tmp_path / EXPERIMENT
    make_results(root, n_refs=4, methods={"good": [_base(0.1)] * 2}, extras=False)
    store = ResultsStore.open(str(root))
    store.write_json(assembly_cache.MARKER, {"inputs": "x"})
    assemble(root, bootstrap=0)
    assert not store.exists(assembly_cache.MARKER)
