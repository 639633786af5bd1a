"""ASHA: per-epoch reports from methods (``task.end_epoch``), the ``search: asha``
config, and a real ASHA sweep that stops trials early (slow: local Ray)."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import recorded_source
from unlearn_core.methods import (
    epochs_hparam,
    get_method,
    make_hparams,
    method_names,
    reports_epochs,
)
from unlearn_core.methods.task import StopUnlearning, make_task
from unlearn_core.train import DeviceData
from unlearn_core.train.loop import predict_logits

REPORTING = [n for n in method_names() if reports_epochs(n)]
SILENT = [n for n in method_names() if not reports_epochs(n)]

# Keep the expensive parts of some methods tiny; the epoch count is set per test.
CHEAP = {
    "adversarial_unlearning": {"pretrain_iterations": 5, "num_noise": 2},
    "unsir": {"noise_steps": 2, "noise_batch_size": 8, "noise_copies": 1},
    "soft_relabel": {"relabel_epochs": 1},
    "random_labels": {"forget_epochs": 1},
    "gradient_surgery": {"ascent_epochs": 1},
    "topk_perturb": {"top_k": 5},
    "eu_k": {"layers": 2},
    "cf_k": {"layers": 2},
    "random_topk_perturb": {"top_k": 5},
    "influence_unlearning": {"num_samples": 20},
    "fisher_forgetting": {"max_samples": 20},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny source trained with the update recorder on (amnesiac methods need it)."""
    return recorded_source(tmp_path_factory.mktemp("recording") / "updates", epochs=3)


def task_for(trained, name: str, callback=None):
    ds, manifest, recipe, source, recording = trained
    zero_glance = bool(getattr(get_method(name), "ZERO_GLANCE", False))
    task = make_task(ds, manifest, source, model_name="mlp", train_recipe=recipe,
                     update_recording=None if zero_glance else recording,  # it holds D_f
                     zero_glance=zero_glance)
    task.epoch_callback = callback
    return task


def hparams(name: str, epochs: int | None = None):
    values = dict(CHEAP.get(name, {}))
    if epochs is not None:
        values[epochs_hparam(name)] = epochs
    return make_hparams(name, values)


def run(trained, name: str, callback=None, epochs: int | None = None):
    task = task_for(trained, name, callback)
    model = get_method(name).unlearn(copy.deepcopy(trained[3]), task, hparams(name, epochs))
    return model, task


# ---------------------------------------------------------------- methods report epochs


def test_every_reporting_method_names_an_int_epochs_field():
    for name in REPORTING:
        fields = {f.name: f for f in dataclasses.fields(get_method(name).Hparams)}
        assert epochs_hparam(name) in fields, name
    assert epochs_hparam("amnesiac") is None and not reports_epochs("amnesiac")
    assert {"original", "amnesiac", "partial_amnesiac", "fisher_forgetting",
            "influence_unlearning"} <= set(SILENT)


@pytest.mark.parametrize("name", REPORTING)
def test_method_calls_end_epoch_once_per_epoch(trained, name):
    calls = []
    model, task = run(trained, name, lambda m, e: calls.append((e, m)), epochs=3)
    assert [e for e, _ in calls] == [1, 2, 3], name
    assert all(isinstance(m, torch.nn.Module) for _, m in calls)
    assert task.callback_seconds >= 0.0


@pytest.mark.parametrize("name", SILENT)
def test_methods_without_epochs_never_report(trained, name):
    def callback(model, epoch):
        raise AssertionError(f"{name} reported epoch {epoch}")

    run(trained, name, callback)


@pytest.mark.parametrize("name", ["finetune", "scrub", "random_labels", "cf_k",
                                  "label_flip_partial", "unsir"])
def test_stop_unlearning_stops_the_method(trained, name):
    calls = []

    def callback(model, epoch):
        calls.append(epoch)
        if epoch == 2:
            raise StopUnlearning(epoch, {"x": 1.0}, reason="test")

    with pytest.raises(StopUnlearning) as info:
        run(trained, name, callback, epochs=5)
    assert calls == [1, 2]
    assert info.value.epoch == 2 and info.value.metrics == {"x": 1.0}


def _noisy_source(ds) -> torch.nn.Module:
    """A source with BatchNorm and dropout: training reads the global RNG and the modes."""
    from unlearn_core.models._common import Classifier

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                               torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Dropout(0.3))
    return Classifier(body, torch.nn.Linear(32, ds.num_classes))


@pytest.mark.parametrize("name", ["finetune", "scrub", "activation_pruning", "cf_k"])
def test_callback_does_not_change_the_weights(trained, name):
    """An evaluating callback (eval mode, random draws) leaves training unchanged, also
    with dropout (global RNG) and with normalisation layers frozen in eval mode (cf_k
    trains only the head)."""
    ds, manifest, recipe, _, recording = trained
    source = _noisy_source(ds)
    data = DeviceData.from_dataset(ds, manifest.ids("test"))
    hp = make_hparams(name, {"epochs": 2, **({"layers": 2} if name == "cf_k" else {})})

    def evaluate(model, epoch):
        model.eval()
        predict_logits(model, data)
        torch.rand(3), np.random.rand(), random.random()

    out = {}
    for callback in (None, evaluate):
        task = make_task(ds, manifest, source, model_name="mlp", train_recipe=recipe)
        task.epoch_callback = callback
        out[callback] = get_method(name).unlearn(copy.deepcopy(source), task, hp)
    assert task.callback_seconds > 0
    plain, watched = out[None], out[evaluate]
    for (key, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items(),
                                strict=True):
        assert torch.equal(a, b), key
    assert [m.training for m in plain.modules()] == [m.training for m in watched.modules()]


# ---------------------------------------------------------------- trial records (no Ray)


@pytest.fixture
def sweep_ctx(tmp_path, trained):
    from pipelines.evaluate import ReferenceSummary
    from pipelines.store import ResultsStore
    from pipelines.trial import SweepContext
    ds, manifest, recipe, source, _ = trained
    store = ResultsStore.create(tmp_path, "t")
    store.save_model("src", source, {})
    references = ReferenceSummary(
        metrics={"ua": 1.0, "mia/efficacy": 0.9, "retain/acc": 1.0, "test/acc": 0.95,
                 **{f"mia/{a}/efficacy": 0.8 for a in
                    ("correctness", "confidence", "entropy", "prob")}},
        forget_logits=np.zeros((0, 0, 4), dtype=np.float32), retrain_seconds=1.0)
    return SweepContext(dataset=ds, manifest=manifest, store=store, source_key="src",
                        source_model="mlp", source_recipe=recipe.to_dict(),
                        references=references, objective_metric="disparity/avg",
                        objective_mode="min", mia_max_per_class=50)


def test_stopped_trial_recorded_once_and_rerun_only_outside_asha(sweep_ctx):
    from pipelines.evaluate import epoch_metrics
    from pipelines.sweep import _job_done
    from pipelines.trial import run_trial
    from unlearn_core.outputs import split_logits

    ctx = sweep_ctx
    seen = []

    def stop_at_2(model, epoch):
        seen.append(epoch)
        if epoch == 2:
            metrics = epoch_metrics(split_logits(model, ctx.dataset, ctx.manifest),
                                    ctx.references, objective=ctx.objective_metric,
                                    mia_max_per_class=50)
            raise StopUnlearning(epoch, metrics, reason="test")

    hp = {"epochs": 4, "lr": 0.01}
    record = run_trial(ctx, "finetune", hp, 0, "sweep", "k", epoch_callback=stop_at_2)
    assert seen == [1, 2]
    assert record["status"] == "stopped" and record["epochs_run"] == 2
    assert record["stopped_by"] == "test" and record["error"] is None
    assert record["objective"] == record["metrics"]["disparity/avg"]
    assert record["seconds"] is not None and record["seconds"] >= 0
    files = list((ctx.store.root / "trials" / "finetune").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == record
    outputs = ctx.store.root / "outputs"
    assert not outputs.exists() or not list(outputs.rglob("*.parquet"))

    job = {"method": "finetune", "hparams": hp, "seed": 0}
    assert _job_done(ctx, {**job, "asha": True}) and not _job_done(ctx, job)
    again = run_trial(ctx, "finetune", hp, 0, "sweep", "k", epoch_callback=stop_at_2)
    assert again["cached"] and again["status"] == "stopped" and seen == [1, 2]

    full = run_trial(ctx, "finetune", hp, 0, "replicate")  # not ASHA: runs to the end
    assert full["status"] == "ok" and "cached" not in full and "epochs_run" not in full
    assert [p.name for p in (ctx.store.root / "trials" / "finetune").glob("*.json")] == \
        [files[0].name]
    assert json.loads(files[0].read_text())["status"] == "ok"
    assert run_trial(ctx, "finetune", hp, 0, "sweep", "k", epoch_callback=stop_at_2)["cached"]


def test_epoch_metrics_match_the_full_evaluation(sweep_ctx, trained):
    from pipelines.evaluate import compared_metrics, epoch_metrics, model_metrics
    from unlearn_core.outputs import split_logits

    ctx = sweep_ctx
    per_split = split_logits(trained[3], ctx.dataset, ctx.manifest)
    full = compared_metrics(model_metrics(per_split, mia_max_per_class=50, seed=3),
                            per_split, ctx.references, None)
    quick = epoch_metrics(per_split, ctx.references, objective="disparity/avg",
                          mia_max_per_class=50, seed=3)
    assert "mia/loss_lr/accuracy" not in quick and "mia/entropy/efficacy" not in quick
    for key in ("disparity/avg", "mia/efficacy", "ua", "retain/acc", "test/acc"):
        assert quick[key] == full[key], key
    other = epoch_metrics(per_split, ctx.references, objective="mia/gap_mean",
                          mia_max_per_class=50, seed=3)
    assert other["mia/gap_mean"] == full["mia/gap_mean"]


# ---------------------------------------------------------------- config


def _config(method: dict) -> dict:
    return {"name": "x", "methods": [method]}


def test_asha_accepted_for_a_reporting_method():
    from pipelines.config import parse_config

    config = parse_config(_config({"name": "finetune", "search": "asha"}))
    method = config.methods[0]
    assert method.search == "asha"
    assert method.asha.grace_period == 1 and method.asha.reduction_factor == 2
    config = parse_config(_config({"name": "unsir", "search": "asha", "asha": {
        "grace_period": 2, "reduction_factor": 3}}) | {"split": {"retain_subset_per_class": 5}})
    assert config.methods[0].asha.reduction_factor == 3


def test_asha_refused_for_a_method_without_epochs():
    from pipelines.config import parse_config
    from unlearn_core.errors import UserInputError

    with pytest.raises(UserInputError, match=r"methods\.0.*amnesiac.*finetune") as info:
        parse_config(_config({"name": "amnesiac", "search": "asha"}))
    assert "influence_unlearning" not in str(info.value)  # only the methods that report


@pytest.mark.parametrize("block, path", [
    ({"grace_period": 0}, "grace_period"),
    ({"reduction_factor": 1}, "reduction_factor"),
    ({"rungs": 3}, "rungs"),
])
def test_asha_block_validated(block, path):
    from pipelines.config import parse_config
    from unlearn_core.errors import UserInputError

    with pytest.raises(UserInputError, match=rf"methods\.0\.asha\.{path}"):
        parse_config(_config({"name": "finetune", "search": "asha", "asha": block}))


# ---------------------------------------------------------------- a real ASHA sweep


@pytest.mark.slow
def test_asha_sweep_stops_trials_early_and_records_each_once(tmp_path):
    """finetune on digits, 4 trials run one at a time (2 CPUs each): ASHA stops at least
    one early; every trial has exactly one record; a re-run changes nothing."""
    import yaml

    from pipelines.config import load_config
    from pipelines.run import run_experiment

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "asha",
        "dataset": {"name": "digits"},
        "forget": "classes=3",
        "split": {"max_train": 400},
        "source": {"model": "mlp", "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}},
        "references": {"count": 2, "workers": 1, "cpus_per_worker": 2},
        "methods": [{
            "name": "finetune", "search": "asha", "trials": 4,
            "fixed": {"epochs": 4},
            "space": {"lr": {"loguniform": [1e-3, 1.0]}},
            "asha": {"grace_period": 1, "reduction_factor": 2},
            # one trial at a time, in Tune's (fixed) grid order, on seeded draws: which
            # trials ASHA stops is deterministic (here the first, best, finishes alone)
            "resources": {"cpu": 2},
        }],
        "replicates": 1,
        "mia_max_per_class": 100,
        "metrics": {"relearn": {"enabled": False}, "distance": False, "references": 0},
    }))
    config = load_config(config_path)
    results = tmp_path / "results"
    out = run_experiment(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                         results_dir=str(results), num_cpus=2)
    root: Path = out["store"].root
    files = sorted((root / "trials" / "finetune").glob("*.json"))
    records = [json.loads(p.read_text()) for p in files]
    sweep = [r for r in records if r["stage"] == "sweep"]
    assert len(sweep) == 4 and len({r["trial_key"] for r in sweep}) == 4
    assert len({r["hparams"]["lr"] for r in sweep}) == 4
    stopped = [r for r in sweep if r["status"] == "stopped"]
    finished = [r for r in sweep if r["status"] == "ok"]
    assert stopped, [(r["hparams"]["lr"], r["status"]) for r in sweep]
    assert finished and len(stopped) + len(finished) == 4
    for r in stopped:
        assert 1 <= r["epochs_run"] < 4 and r["stopped_by"] == "asha"
        assert "disparity/avg" in r["metrics"] and r["objective"] == r["metrics"]["disparity/avg"]
    summary = out["store"].read_json("summary.json")
    assert summary["best"]["finetune"]["lr"] in {r["hparams"]["lr"] for r in finished}

    before = {p.name: p.stat().st_mtime_ns for p in files}
    run_experiment(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                   results_dir=str(results), num_cpus=2)
    after = {p.name: p.stat().st_mtime_ns
             for p in (root / "trials" / "finetune").glob("*.json")}
    assert after == before, "a re-run must neither rerun nor rewrite a stopped trial"
