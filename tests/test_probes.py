"""Model probes in the pipeline: distance, relearn and degree for trials and references."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pipelines.config import parse_config
from pipelines.probes import ProbeSettings, probe_model, reference_probes
from pipelines.store import ResultsStore
from pipelines.trial import probe_salt, trial_key
from tests.conftest import make_dataset
from unlearn_core.data.manifest import make_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.source import build_model

RECIPE = Recipe(epochs=15, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.9,
                weight_decay=0.0, schedule="constant")


@pytest.fixture(scope="module")
def setup():
    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0)
    source = build_model("mlp", ds, seed=0)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), RECIPE, seed=0)
    retrained = build_model("mlp", ds, seed=1)
    fit(retrained, DeviceData.from_dataset(ds, manifest.ids("retain")), RECIPE, seed=1)
    return ds, manifest, source, retrained


def test_source_probed_against_itself_is_zero_distance_and_zero_relearn(setup):
    ds, manifest, source, _ = setup
    out = probe_model(copy.deepcopy(source), source, ds, manifest, ProbeSettings(degree=True,
                      degree_epochs=2), recipe=RECIPE, source_forget_acc=1.0, seed=0)
    assert out["distance/total"] == 0.0
    assert all(v == 0.0 for k, v in out.items() if k.startswith("distance/layer/"))
    assert out["relearn/epochs"] == 0.0 and out["relearn/reached"] == 1.0
    assert out["degree/value"] == 0.0  # identical discriminators cannot disagree


def test_retrained_model_needs_epochs_to_relearn_and_is_far_from_source(setup):
    ds, manifest, source, retrained = setup
    settings = ProbeSettings(relearn_cap=30, relearn_samples=60)
    out = probe_model(retrained, source, ds, manifest, settings, recipe=RECIPE,
                      source_forget_acc=1.0, seed=0)
    assert out["relearn/epochs"] >= 1.0
    assert out["distance/total"] > 0.0
    assert "degree/value" not in out  # off by default


def test_prediction_distribution_against_reference(setup):
    ds, manifest, source, retrained = setup
    logits = np.zeros((10, 4), dtype=np.float32)
    logits[:, 2] = 1.0  # every forget sample predicted as class 2
    ref = np.zeros((10, 4), dtype=np.float32)
    ref[:, 0] = 1.0
    out = probe_model(retrained, source, ds, manifest, ProbeSettings(relearn=False),
                      recipe=RECIPE, source_forget_acc=None, forget_logits=logits,
                      reference_forget_logits=ref)
    assert out["distance/pred_share_2"] == 1.0
    assert out["distance/pred_kl"] > 5.0  # disjoint predictions: large KL
    assert "relearn/epochs" not in out


def test_reference_probes_are_cached(setup, tmp_path):
    ds, manifest, source, retrained = setup
    store = ResultsStore.create(tmp_path, "exp")
    store.save_model("source-a", source, {})
    store.save_model("retrain-b", retrained, {})
    settings = ProbeSettings(relearn_cap=5)
    kwargs = dict(recipe=RECIPE, source_forget_acc=1.0, salt=probe_salt(settings))
    first = reference_probes(store, "source-a", ["retrain-b"], "mlp", ds, manifest, settings,
                             **kwargs)
    assert first["retrain-b"]["distance/total"] > 0
    cached = list((store.root / "models").glob("retrain-b.probes-*.json"))
    assert len(cached) == 1
    cached[0].write_text('{"relearn/epochs": 42.0}')  # a cached result is read, not recomputed
    again = reference_probes(store, "source-a", ["retrain-b"], "mlp", ds, manifest, settings,
                             **kwargs)
    assert again["retrain-b"] == {"relearn/epochs": 42.0}


def test_probe_settings_change_the_trial_key():
    off = ProbeSettings(distance=False, relearn=False, degree=False)
    assert probe_salt(off) == ""
    a, b = ProbeSettings(relearn_cap=10), ProbeSettings(relearn_cap=20)
    assert probe_salt(a) != probe_salt(b)
    plain = trial_key("s", "finetune", {"lr": 0.1}, 0)
    assert trial_key("s", "finetune", {"lr": 0.1}, 0, probe_salt(off)) == plain
    assert trial_key("s", "finetune", {"lr": 0.1}, 0, probe_salt(a)) != plain


def test_metrics_config_validation():
    base = {"name": "x", "methods": [{"name": "finetune"}]}
    cfg = parse_config(base)
    assert cfg.metrics.relearn.enabled and cfg.metrics.relearn.samples == 500
    assert not cfg.metrics.degree.enabled and cfg.metrics.degree.eta == 0.03
    with pytest.raises(UserInputError, match=r"metrics\.relearn\.cap"):
        parse_config({**base, "metrics": {"relearn": {"cap": 0}}})
    with pytest.raises(UserInputError, match=r"metrics\.degree\.colour: unknown key"):
        parse_config({**base, "metrics": {"degree": {"colour": 1}}})
    settings = ProbeSettings.from_config(parse_config(
        {**base, "metrics": {"degree": {"enabled": True, "epochs": 3}, "distance": False}}
    ).metrics)
    assert settings.degree and settings.degree_epochs == 3 and not settings.distance
