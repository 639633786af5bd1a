"""Seed 000 (Zuo et al.): Top-K / Random-k / Random-TopK perturbation, EU-K, CF-K.

Mechanism tests: which entries the perturbation step touches and what it sets
them to (tested apart from training), which parameters training may change,
the JS term of Eq. 6-8, and the direction of the effect on a tiny class-wise task.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import make_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.methods import _perturb, get_method, make_hparams
from unlearn_core.methods.task import make_task
from unlearn_core.metrics.similarity import js_divergence as js_numpy
from unlearn_core.models import create_model
from unlearn_core.models._common import Classifier
from unlearn_core.train import DeviceData, Recipe, accuracy, fit
from unlearn_core.train.source import build_model


@pytest.fixture(scope="module")
def setup():
    """A trained MLP source and a retrained reference; forget = class 1."""
    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0, options=SplitOptions())
    recipe = Recipe(epochs=4, batch_size=32, lr=0.05)
    source = build_model("mlp", ds, seed=0)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), recipe, seed=0)
    retrain = build_model("mlp", ds, seed=1)
    fit(retrain, DeviceData.from_dataset(ds, manifest.ids("retain")), recipe, seed=1)
    return ds, manifest, recipe, source, retrain


def _task(setup, with_retrain=True, source=None, model_name="mlp"):
    ds, manifest, recipe, src, retrain = setup
    extras = {"retrain_model": retrain} if with_retrain else {}
    return make_task(ds, manifest, src if source is None else source, model_name=model_name,
                     train_recipe=recipe, extras=extras)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _forget_ce(model, task):
    model.eval()
    batch = task.forget_data.all()
    with torch.no_grad():
        return float(F.cross_entropy(model(batch.x), batch.y))


# ---------------------------------------------------------------- JS term (Eq. 6-7)

def test_js_is_zero_for_equal_outputs_and_grows_with_difference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g)
    direction = torch.randn(16, 5, generator=g)
    assert _perturb.js_divergence(logits, logits).abs().max() < 1e-6
    values = [float(_perturb.js_divergence(logits + t * direction, logits).mean())
              for t in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] <= 1.0  # bits: bounded by 1 (the paper's "between 0 and 1")
    # Same value as the project's similarity metric (numpy, base 2), and symmetric.
    other = logits + direction
    p, q = F.softmax(other, 1).numpy(), F.softmax(logits, 1).numpy()
    np.testing.assert_allclose(_perturb.js_divergence(other, logits).numpy(),
                               js_numpy(p, q), atol=1e-5)
    torch.testing.assert_close(_perturb.js_divergence(other, logits),
                               _perturb.js_divergence(logits, other))


# ---------------------------------------------------------------- perturbation step (Eq. 3-5)

def test_sensitivity_is_abs_gradient_of_forget_cross_entropy(setup):
    task = _task(setup)
    model = copy.deepcopy(setup[3]).eval()
    batch = task.forget_data.all()
    grads = torch.autograd.grad(F.cross_entropy(model(batch.x), batch.y), list(model.parameters()))
    scores = _perturb.sensitivity(model, task.forget, batch_size=7)  # chunked == one pass
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(scores[name], g.abs(), atol=1e-7, rtol=1e-4)


def test_topk_perturbs_exactly_the_k_largest_gradient_entries(setup):
    task = _task(setup)
    module = get_method("topk_perturb")
    hp = make_hparams("topk_perturb", {"top_k": 37, "eps": 0.01})
    model = copy.deepcopy(setup[3])
    before = _flat(model)
    scores = _perturb.sensitivity(copy.deepcopy(model), task.forget)
    masks = module.perturb(model, task, hp)
    after = _flat(model)
    changed = torch.nonzero(after != before).flatten()
    expected = torch.topk(_perturb._flat(scores), 37).indices
    assert len(changed) == 37 == _perturb.mask_count(masks)
    assert set(changed.tolist()) == set(expected.tolist())
    # Eq. 5 with w_rand = Rand(w.shape) ~ U[0, 1): new values are ε·w_rand in [0, ε).
    assert (after[changed] >= 0).all() and (after[changed] < hp.eps).all()


def test_randomk_perturbs_round_k_n_entries_spread_over_layers(setup):
    task = _task(setup)
    module = get_method("randomk_perturb")
    model = copy.deepcopy(setup[3])
    n = sum(p.numel() for p in model.parameters())
    hp = make_hparams("randomk_perturb", {"ratio": 0.013})
    before = _flat(model)
    masks = module.perturb(model, task, hp)
    changed = _flat(model) != before
    assert int(changed.sum()) == round(0.013 * n) == _perturb.mask_count(masks)
    assert sum(bool(m.any()) for m in masks.values()) >= 3  # not one tensor only
    other_seed = dataclasses.replace(task, seed=1)
    assert not torch.equal(_perturb._flat(module.perturb(copy.deepcopy(setup[3]), other_seed, hp)),
                           _perturb._flat(masks))


def test_random_topk_mask_holds_the_topk_and_random_k_size(setup):
    task = _task(setup)
    model = copy.deepcopy(setup[3])
    n = sum(p.numel() for p in model.parameters())
    top = _perturb._flat(_perturb.topk_mask(_perturb.sensitivity(copy.deepcopy(model),
                                                                 task.forget), 45))
    hp = make_hparams("random_topk_perturb", {"ratio": 0.01, "top_k": 45})
    before = _flat(model)
    masks = _perturb._flat(get_method("random_topk_perturb").perturb(model, task, hp))
    assert int(masks.sum()) == round(0.01 * n)
    assert bool(masks[top].all())
    assert torch.equal(_flat(model) != before, masks)
    with pytest.raises(UserInputError, match="exceeds"):
        get_method("random_topk_perturb").perturb(
            copy.deepcopy(setup[3]), task, make_hparams("random_topk_perturb",
                                                        {"ratio": 1e-4, "top_k": 45}))


def test_interpolate_rule_moves_entries_by_eps_toward_w_rand(setup):
    task = _task(setup)
    model = copy.deepcopy(setup[3])
    before = _flat(model)
    hp = make_hparams("randomk_perturb", {"ratio": 0.02, "eps": 0.1,
                                          "perturb_rule": "interpolate"})
    mask = _perturb._flat(get_method("randomk_perturb").perturb(model, task, hp))
    noise = (_flat(model)[mask] - 0.9 * before[mask]) / 0.1  # = w_rand ~ U[0, 1)
    assert (noise > -1e-4).all() and (noise < 1 + 1e-4).all()
    assert torch.equal(_flat(model)[~mask], before[~mask])


def test_topk_perturbation_hits_the_forget_set_harder_than_random_entries(setup):
    """The sensitivity ranking finds the entries that carry D_f: zeroing 100 of them
    raises the forget loss by orders of magnitude more than 100 random ones."""
    task = _task(setup)
    n = sum(p.numel() for p in setup[3].parameters())
    top, rand = copy.deepcopy(setup[3]), copy.deepcopy(setup[3])
    get_method("topk_perturb").perturb(top, task, make_hparams("topk_perturb", {"top_k": 100}))
    get_method("randomk_perturb").perturb(rand, task,
                                          make_hparams("randomk_perturb", {"ratio": 100 / n}))
    base = _forget_ce(setup[3], task)
    assert _forget_ce(top, task) - base > 100 * max(_forget_ce(rand, task) - base, 1e-6)


# ---------------------------------------------------------------- training (Eq. 8, Alg. 1)

def test_retrain_reference_required_when_asked(setup):
    task = _task(setup, with_retrain=False)
    hp = make_hparams("topk_perturb", {"epochs": 1, "js_reference": "retrain"})
    with pytest.raises(UserInputError, match="retrain_model"):
        get_method("topk_perturb").unlearn(copy.deepcopy(setup[3]), task, hp)


def test_js_term_pulls_forget_outputs_toward_the_reference(setup):
    """λ·JS (Eq. 8) on D_f: training with it ends closer (in JS) to the chosen reference
    than training without it (λ = 0 ignores the reference, so one run serves both)."""
    task = _task(setup)
    x = task.forget_data.all().x
    retrain, source = setup[4].eval(), setup[3].eval()

    def run(lam, which):
        hp = make_hparams("topk_perturb", {"epochs": 3, "lr": 1e-3, "lam": lam,
                                           "js_reference": which})
        return get_method("topk_perturb").unlearn(copy.deepcopy(setup[3]), task, hp).eval()

    def js(model, reference):
        with torch.no_grad():
            return float(_perturb.js_divergence(model(x), reference(x)).mean())

    plain, to_retrain, to_source = run(0.0, "source"), run(1.0, "retrain"), run(1.0, "source")
    assert js(to_retrain, retrain) < 0.5 * js(plain, retrain)
    assert js(to_source, source) < 0.5 * js(plain, source)
    assert js(to_retrain, source) > js(plain, source)  # pulled away from the source on D_f


def test_topk_with_retrain_reference_forgets_and_keeps_retain(setup):
    task = _task(setup)
    hp = make_hparams("topk_perturb", {"epochs": 5, "lr": 1e-3, "js_reference": "retrain"})
    out = get_method("topk_perturb").unlearn(copy.deepcopy(setup[3]), task, hp)
    assert accuracy(setup[3], task.forget_data) > 0.9
    assert accuracy(out, task.forget_data) < 0.2  # class 1 forgotten, like the retrain model
    assert _forget_ce(out, task) > _forget_ce(setup[3], task) + 1.0
    assert accuracy(out, task.retain_data) > 0.9


def test_train_only_perturbed_updates_only_masked_entries(setup):
    task = _task(setup)
    hp = make_hparams("randomk_perturb", {"epochs": 2, "lr": 1e-2, "ratio": 0.05,
                                          "train_only_perturbed": True})
    module = get_method("randomk_perturb")
    perturbed = copy.deepcopy(setup[3])
    mask = _perturb._flat(module.perturb(perturbed, task, hp))
    out = module.unlearn(copy.deepcopy(setup[3]), task, hp)
    moved = _flat(out) != _flat(perturbed)
    assert bool(moved.any()) and not bool(moved[~mask].any())


# ---------------------------------------------------------------- EU-K / CF-K

def test_last_k_layers_count_parameter_tensors_as_table_1():
    """Seed 000 Table 1: EU-5/EU-10 on ResNet18 touch 2.37M / 4.73M parameters; VGG 6666."""
    for name, k, size in (("resnet18", 5, 2_365_450), ("resnet18", 10, 4_726_794),
                          ("vgg16_bn", 5, 6666)):
        model = create_model(name, 10, 3, 32)
        params = dict(model.named_parameters())
        names = _perturb.last_parameter_tensors(model, k)
        assert len(names) == k and names[-1] == "head.bias"
        assert sum(params[n].numel() for n in names) == size


def test_eu_k_reinitialises_exactly_the_last_k_and_trains_only_them(setup):
    task = _task(setup)
    module = get_method("eu_k")
    hp = make_hparams("eu_k", {"layers": 3, "epochs": 2, "lr": 1e-2})
    source = dict(setup[3].named_parameters())
    model = copy.deepcopy(setup[3])
    names = module.reinitialise(model, task, hp)
    assert names == ["body.1.bias", "head.weight", "head.bias"]
    torch.manual_seed(task.seed)
    fresh = dict(create_model("mlp", 4, 1, 8).named_parameters())
    for name, p in model.named_parameters():
        expected = fresh[name] if name in names else source[name]
        assert torch.equal(p, expected), name
        if name in names:
            assert not torch.equal(p, source[name]), name
    out = dict(module.unlearn(copy.deepcopy(setup[3]), task, hp).named_parameters())
    for name in source:
        assert torch.equal(out[name], source[name]) == (name not in names), name
    for name in names:
        assert not torch.equal(out[name], fresh[name]), name  # trained after re-init


def _bn_classifier() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(6, 4))


def test_cf_k_changes_only_the_last_k_layers_and_frozen_norm_statistics_stay(setup):
    torch.manual_seed(0)
    source = _bn_classifier()
    task = _task(setup, source=source, model_name="")
    hp = make_hparams("cf_k", {"layers": 3, "epochs": 2, "lr": 1e-2})
    before = copy.deepcopy(source.state_dict())
    out = get_method("cf_k").unlearn(copy.deepcopy(source), task, hp)
    after = out.state_dict()
    trained = {"body.4.bias", "head.weight", "head.bias"}
    for key, value in before.items():
        same = torch.equal(after[key], value)
        if key in trained or key.startswith("body.4.running"):
            assert not same, key  # trained, and its BN keeps tracking statistics
        elif key == "body.4.num_batches_tracked":
            continue
        else:
            assert same, key  # frozen weights and frozen BN statistics unchanged
    assert all(p.requires_grad for p in out.parameters())  # flags restored


def test_cf_k_does_not_reinitialise(setup):
    task = _task(setup)
    hp = make_hparams("cf_k", {"layers": 2, "epochs": 1, "lr": 1e-6})
    out = dict(get_method("cf_k").unlearn(copy.deepcopy(setup[3]), task, hp).named_parameters())
    for name, p in setup[3].named_parameters():
        assert (out[name] - p).abs().max() < 1e-4, name  # a tiny step, not a re-init


# ---------------------------------------------------------------- Alg. 1 l.12 by hand

def _four_weights() -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    return layer, {"weight": torch.tensor([[True, False], [False, True]])}


@pytest.mark.parametrize("rule,expected", [
    # w_rand = Rand(2, 2) from seed 0 = [[0.4963, 0.7682], [0.0885, 0.1320]]; eps = 0.25
    ("interpolate", [[0.75 * 1 + 0.25 * 0.4963, 2.0], [3.0, 0.75 * 4 + 0.25 * 0.1320]]),
    ("replace", [[0.25 * 0.4963, 2.0], [3.0, 0.25 * 0.1320]]),
])
def test_perturb_rules_on_a_four_weight_layer(rule, expected):
    """Alg. 1 l.11-12: mask = (Rand < k)·ε, w ← (1 − mask)·w + mask·w_rand, i.e.
    (1 − ε)·w + ε·w_rand on the selected entries; Eq. 5 replaces them by ε·w_rand."""
    layer, masks = _four_weights()
    count = _perturb.perturb_(layer, masks, eps=0.25, rule=rule, seed=0)
    assert count == 2
    torch.testing.assert_close(layer.weight.detach(), torch.tensor(expected),
                               atol=1e-4, rtol=0)


def test_interpolate_limits():
    """ε = 0 leaves the weights unchanged; ε = 1 equals the replace rule at ε = 1."""
    layer, masks = _four_weights()
    _perturb.perturb_(layer, masks, eps=0.0, rule="interpolate", seed=3)
    assert torch.equal(layer.weight.detach(), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    a, _ = _four_weights()
    b, _ = _four_weights()
    _perturb.perturb_(a, masks, eps=1.0, rule="interpolate", seed=3, w_rand="normal")
    _perturb.perturb_(b, masks, eps=1.0, rule="replace", seed=3, w_rand="normal")
    assert torch.equal(a.weight, b.weight)


# ---------------------------------------------------------------- what a sweep must load

@pytest.mark.parametrize("method", ["topk_perturb", "randomk_perturb", "random_topk_perturb"])
def test_needs_retrain_model_only_for_the_retrain_js_term(setup, method):
    """Declared per trial: only js_reference="retrain" with λ > 0 reads the retrained model,
    and such a trial really fails without it while the others run without it."""
    from unlearn_core.methods import needs_retrain_model

    cases = {("source", 0.1): False, ("retrain", 0.1): True, ("retrain", 0.0): False}
    for (which, lam), expected in cases.items():
        hp = make_hparams(method, {"js_reference": which, "lam": lam, "epochs": 1})
        assert needs_retrain_model(method, hp) is expected
        assert get_method(method).needs_retrain_model(hp) is expected
        task = _task(setup, with_retrain=False)
        if expected:
            with pytest.raises(UserInputError, match="retrain_model"):
                get_method(method).unlearn(copy.deepcopy(setup[3]), task, hp)
        else:
            get_method(method).unlearn(copy.deepcopy(setup[3]), task, hp)
    assert needs_retrain_model("finetune", make_hparams("finetune")) is False


def test_variants_config_runs_both_references_and_both_rules():
    """The variants config: a 4-trial grid per method over js_reference × perturb_rule, every
    other searchable hparam pinned to its Hparams default (only the epochs shortened)."""
    from pathlib import Path

    from pipelines.config import load_config
    from pipelines.sweep import planned_trials
    from pipelines.tune_space import merged_space
    from unlearn_core.search import grid_configs

    path = Path(__file__).parents[1] / "pipelines/configs/seed000-digits-random10-variants.yaml"
    config = load_config(path)
    perturb = [m for m in config.methods if m.name.endswith("_perturb")]
    assert len(perturb) == 3
    for m in perturb:
        module = get_method(m.name)
        space = merged_space(module.SEARCH_SPACE, m.space, m.fixed)
        combos = {(c["js_reference"], c["perturb_rule"]) for c in grid_configs(space)}
        assert combos == {(j, r) for j in _perturb.JS_REFERENCES for r in _perturb.PERTURB_RULES}
        assert planned_trials(m) == 4
        defaults = dataclasses.asdict(module.Hparams())
        assert {k: v for k, v in m.fixed.items() if k != "epochs"} == \
            {k: defaults[k] for k in m.fixed if k != "epochs"}
