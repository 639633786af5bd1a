"""The store layer on a local disk: URIs, commit rule, folders (S3: tests/test_services.py)."""

from __future__ import annotations

import pickle

import pytest
import torch

from pipelines.store import ResultsStore
from unlearn_core.errors import UserInputError
from unlearn_core.storage import Store, normalise_uri


def test_uris_normalise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_uri("results") == str(tmp_path / "results")
    assert normalise_uri(f"file://{tmp_path}/r") == str(tmp_path / "r")
    assert normalise_uri("s3://bucket/a/b/") == "s3://bucket/a/b"
    with pytest.raises(UserInputError, match="ftp"):
        normalise_uri("ftp://host/x")


def test_s3_uri_never_becomes_a_local_folder(tmp_path, monkeypatch):
    """The bug this layer fixes: `--results s3://b/x` made a folder named `s3:`."""
    monkeypatch.chdir(tmp_path)
    store = Store("s3://bucket/x")
    assert not store.is_local and store.local_root is None
    assert store.child("exp").uri == "s3://bucket/x/exp"
    assert not (tmp_path / "s3:").exists()


def test_write_read_list_and_commit_rule(tmp_path):
    store = Store.at(tmp_path / "r")
    store.write_json("a/b.json", {"x": 1})
    store.write_bytes("a/c.bin", b"123")
    (tmp_path / "r" / "a" / ".tmp-d.json.xyz").write_text("half")  # an interrupted write
    assert store.read_json("a/b.json") == {"x": 1} and store.exists("a/c.bin")
    assert store.list("a") == ["a/b.json", "a/c.bin"]
    assert store.list("a", suffix=".json") == ["a/b.json"]
    assert store.list("missing") == []
    assert store.size("a") == len(store.read_bytes("a/b.json")) + 3
    with pytest.raises(FileNotFoundError, match="nope"):
        store.read_bytes("nope.json")
    assert not [p for p in (tmp_path / "r" / "a").iterdir() if p.name.startswith(".tmp-b")]


def test_put_dir_writes_the_marker_last_and_fetch_dir(tmp_path):
    local = tmp_path / "rec"
    (local / "sub").mkdir(parents=True)
    for name in ("index.parquet", "a.bin", "sub/b.bin"):
        (local / name).write_bytes(name.encode())
    store = Store.at(tmp_path / "r")
    order = []
    original = store.write_bytes
    object.__setattr__(store, "write_bytes",
                       lambda rel, data: (order.append(rel), original(rel, data)))
    store.put_dir(local, "u/k", last="index.parquet")
    assert order[-1] == "u/k/index.parquet" and len(order) == 3
    copy = Store(store.uri).get_dir("u/k", tmp_path / "copy")
    assert (copy / "sub" / "b.bin").read_bytes() == b"sub/b.bin"


def test_store_pickles_as_its_uri(tmp_path):
    store = Store.at(tmp_path / "r")
    _ = store.fs  # resolved here; the pickle carries no file system (nor credentials)
    again = pickle.loads(pickle.dumps(store))
    assert again.uri == store.uri and again._fs == []
    again.write_text("t.txt", "ok")
    assert store.read_text("t.txt") == "ok"


def test_results_store_models_and_trials(tmp_path):
    results = ResultsStore.create(tmp_path, "exp")
    model = torch.nn.Linear(3, 2)
    results.save_model("m", model, {"seed": 1})
    assert not results.model_done("m"), "the checkpoint alone does not commit a model"
    results.write_model_info("m", {"key": "m"})
    other = torch.nn.Linear(3, 2)
    assert results.load_model("m", other) == {"seed": 1}
    assert torch.equal(other.weight, model.weight)
    assert results.read_trial("finetune", "k") is None
    results.write_trial({"method": "finetune", "trial_key": "k", "status": "ok"})
    assert results.read_trial("finetune", "k")["status"] == "ok"
    assert [t["trial_key"] for t in results.trials()] == ["k"]
    with pytest.raises(UserInputError, match="no experiment"):
        ResultsStore.open(tmp_path / "nothing")


@pytest.mark.slow
def test_results_store_on_s3_update_recording_and_outputs(s3_env, tmp_path):
    """A worker on another node gets the source's update recording from the bucket (a node
    cache), and a model's files round-trip through S3."""
    from tests.conftest import recorded_source
    from unlearn_core.outputs import outputs_table, read_output_files, split_logits
    from unlearn_core.train.recorder import RecordedUpdates

    ds, manifest, _, source, recording = recorded_source(tmp_path / "rec", epochs=1)
    results = ResultsStore.create(f"s3://{s3_env}/r", "exp")
    assert not results.updates_done("src")
    results.put_updates("src", tmp_path / "rec")
    assert results.updates_done("src") and results.updates_bytes("src") > 0
    local = results.local_updates("src")
    assert local != tmp_path / "rec" and str(local).startswith("/")
    copy = RecordedUpdates(local)
    assert len(copy.batch_ids) == len(recording.batch_ids)

    table = outputs_table(split_logits(source, ds, manifest), method="source",
                          hparams_hash="", seed=0, model_id="src")
    results.write_outputs(table, "source", "src")
    path = results.store.path(results.outputs_rel("source", "src"))
    forget = read_output_files(results.store.fs, [path], splits=("forget",),
                               columns=("model_id", "split", "sample_id"))
    assert set(forget.column("split").to_pylist()) == {"forget"}
    assert forget.num_rows == len(manifest.ids("forget"))
