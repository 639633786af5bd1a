"""Stacked replicates (pipelines/replicate_packs.py): a retrain-style method's replicates
trained in one stacked pack store what one trial per replicate stores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.keys import replicate_seeds
from pipelines.replicate_packs import pack_jobs, run_trial_pack, stacks_replicates
from pipelines.sweep import run_trial
from tests.conftest import make_sweep_context


def _jobs(count: int) -> list[dict]:
    return [{"method": "retrain", "hparams": {}, "seed": seed, "stage": "replicate",
             "sweep_key": "s"} for seed in replicate_seeds(count)]


def _logits(ctx, key: str) -> np.ndarray:
    from unlearn_core.outputs import read_output_files

    store = ctx.store
    table = read_output_files(store.store.fs, [store.store.path(store.outputs_rel(
        "unlearned", key))]).sort_by([("split", "ascending"), ("sample_id", "ascending")])
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False))


def test_pack_stores_what_one_trial_per_replicate_stores(tmp_path):
    alone_ctx = make_sweep_context(tmp_path / "alone", max_retries=1)
    packed_ctx = make_sweep_context(tmp_path / "packed", max_retries=1)
    jobs = _jobs(3)
    alone = [run_trial(alone_ctx, j["method"], j["hparams"], j["seed"], j["stage"],
                       j["sweep_key"]) for j in jobs]
    packed = run_trial_pack(packed_ctx, jobs)
    assert [r["trial_key"] for r in packed] == [r["trial_key"] for r in alone]
    for a, p in zip(alone, packed, strict=True):
        assert p["status"] == a["status"] == "ok", p.get("error")
        assert p["stacked_models"] == 3 and "stacked_models" not in a
        assert (p["seed"], p["stage"], p["hparams"], p["sweep_key"]) == \
            (a["seed"], a["stage"], a["hparams"], a["sweep_key"])
        stored = packed_ctx.store.read_trial("retrain", p["trial_key"])  # committed
        assert (stored["status"], stored["stacked_models"]) == ("ok", 3)
        # the same model: outputs equal to float rounding, the same accuracy-type metrics
        np.testing.assert_allclose(_logits(packed_ctx, p["trial_key"]),
                                   _logits(alone_ctx, a["trial_key"]), rtol=1e-4, atol=1e-5)
        for name in ("forget/acc", "retain/acc", "test/acc"):
            assert p["metrics"][name] == pytest.approx(a["metrics"][name], abs=1e-9), name
    # distinct seeds, distinct models: nothing shared by mistake
    assert not np.allclose(_logits(packed_ctx, packed[0]["trial_key"]),
                           _logits(packed_ctx, packed[1]["trial_key"]), atol=1e-3)


def test_pack_trains_only_the_replicates_not_stored(tmp_path):
    ctx = make_sweep_context(tmp_path, max_retries=1)
    jobs = _jobs(3)
    first = run_trial(ctx, "retrain", {}, jobs[0]["seed"], "replicate", "s")
    records = run_trial_pack(ctx, jobs)
    assert records[0]["cached"] and records[0]["trial_key"] == first["trial_key"]
    assert [r.get("stacked_models") for r in records[1:]] == [2, 2]
    again = run_trial_pack(ctx, jobs)
    assert all(r["cached"] for r in again)


def test_only_retrain_style_methods_on_stackable_models_pack(tmp_path):
    ctx = make_sweep_context(tmp_path, max_retries=1)
    assert stacks_replicates(ctx, "retrain", "cpu")
    assert not stacks_replicates(ctx, "finetune", "cpu")  # no unlearn_stacked
    # convolutions: stacking is slower on the CPU, pays on a GPU
    conv = dataclasses.replace(ctx, source_model="convnet")
    assert not stacks_replicates(conv, "retrain", "cpu")
    assert stacks_replicates(conv, "retrain", "cuda")
    # a pruned source keeps per-model masks
    assert not stacks_replicates(dataclasses.replace(ctx, source_sparsity=0.5), "retrain", "cpu")


def test_pack_jobs_split_at_the_largest_pack():
    from unlearn_core.train.stacked import MAX_PACK

    jobs = _jobs(MAX_PACK + 3)
    packs = pack_jobs(jobs)
    assert [len(p["pack"]) for p in packs] == [MAX_PACK, 3]
    assert all(p["stage"] == "replicate" and p["method"] == "retrain" for p in packs)
    with pytest.raises(ValueError, match="one method and one hparams"):
        run_trial_pack(None, [jobs[0], {**jobs[1], "hparams": {"epochs": 2}}])
