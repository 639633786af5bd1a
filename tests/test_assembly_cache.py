"""pipelines/assembly_cache.py: a re-run that changed none of the assembly's inputs keeps
the tables; any changed input, code or MLflow destination re-assembles."""

from __future__ import annotations

import os

from pipelines import assembly_cache
from pipelines.store import ResultsStore


def _store(tmp_path) -> ResultsStore:
    store = ResultsStore.create(tmp_path, "exp")
    store.write_json("summary.json", {"experiment": "exp", "methods": ["a"]})
    store.store.write_text("config.yaml", "name: exp\n")
    store.write_json("trials/a/k1.json", {"trial_key": "k1"})
    store.store.write_bytes("outputs/a.parquet", b"rows")
    store.store.write_text("tables/results.md", "| a |\n")
    return store


def test_same_inputs_same_fingerprint_and_the_run_files_do_not_count(tmp_path):
    store = _store(tmp_path)
    first = assembly_cache.fingerprint(store, "sqlite:///m.db", "parent")
    assert assembly_cache.fingerprint(store, "sqlite:///m.db", "parent") == first
    # what every run rewrites, and the assembly's own outputs, are not inputs
    store.write_json("stages.json", {"started": 1.0})
    store.write_json("lock.json", {"pid": 1})
    store.write_json("plan.json", {"command": "unlearn run other.yaml"})
    store.store.write_text("report.html", "<html></html>")
    store.store.write_text("tables/results.md", "| b |\n")
    store.store.write_bytes("plots/accuracy.png", b"png")
    # top-level files count by content: rewritten alike, nothing changed
    store.write_json("summary.json", {"experiment": "exp", "methods": ["a"]})
    assert assembly_cache.fingerprint(store, "sqlite:///m.db", "parent") == first
    assert not assembly_cache.unchanged(store, first)  # never marked yet
    assembly_cache.mark(store, first)
    assert assembly_cache.unchanged(store, first)


def test_any_changed_input_or_destination_changes_it(tmp_path):
    store = _store(tmp_path)
    base = assembly_cache.fingerprint(store, "uri", "parent")
    assert assembly_cache.fingerprint(store, "other-uri", "parent") != base
    assert assembly_cache.fingerprint(store, "uri", "other-parent") != base

    store.write_json("trials/a/k2.json", {"trial_key": "k2"})  # a new trial
    after_trial = assembly_cache.fingerprint(store, "uri", "parent")
    assert after_trial != base

    path = store.root / "outputs" / "a.parquet"  # same size, rewritten later
    stat = path.stat()
    store.store.write_bytes("outputs/a.parquet", b"ROWS")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after_rewrite = assembly_cache.fingerprint(store, "uri", "parent")
    assert after_rewrite != after_trial

    store.write_json("summary.json", {"experiment": "exp", "methods": ["a", "b"]})
    assert assembly_cache.fingerprint(store, "uri", "parent") != after_rewrite


def test_the_code_counts(tmp_path, monkeypatch):
    store = _store(tmp_path)
    base = assembly_cache.fingerprint(store)
    monkeypatch.setattr(assembly_cache, "code_fingerprint", lambda: "another version")
    assert assembly_cache.fingerprint(store) != base


def test_no_table_means_assemble_again(tmp_path):
    store = _store(tmp_path)
    inputs = assembly_cache.fingerprint(store)
    assembly_cache.mark(store, inputs)
    store.store.delete("tables/results.md")
    assert not assembly_cache.unchanged(store, inputs)
