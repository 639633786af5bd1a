"""Mechanism tests for seed 002's methods and baselines: soft_relabel, gradient_surgery,
activation_pruning, random_labels, scrub, boundary_unlearning."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import make_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.methods import get_method, make_hparams
from unlearn_core.methods.activation_pruning import (
    activation_masks,
    install_activation_masks,
    install_fixed_masks,
    keep_mask,
    prune_step,
    train_step,
)
from unlearn_core.methods.boundary_unlearning import neighbour_labels
from unlearn_core.methods.gradient_surgery import flat_gradient, orthogonal_to, surgery_step
from unlearn_core.methods.random_labels import random_wrong_labels
from unlearn_core.methods.scrub import distill_kl, max_step, min_step
from unlearn_core.methods.soft_relabel import soft_targets
from unlearn_core.methods.task import make_task
from unlearn_core.models import create_model
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.source import build_model


@pytest.fixture(scope="module")
def trained():
    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0,
                             options=SplitOptions(retain_subset_per_class=10))
    # A source that fits D (accuracy 1) without saturating (loss ~0.4): gradients stay usable.
    recipe = Recipe(epochs=1, batch_size=32, lr=0.01)
    source = build_model("mlp", ds, seed=0)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), recipe, seed=0)
    source.eval()
    task = make_task(ds, manifest, source, model_name="mlp", train_recipe=recipe)
    return task, source


def _loss(model, data):
    batch = data.all()
    with torch.no_grad():
        return float(F.cross_entropy(model(batch.x), batch.y))


def _acc(model, data):
    batch = data.all()
    with torch.no_grad():
        return float((model(batch.x).argmax(1) == batch.y).float().mean())


def _run(name, trained, **values):
    task, source = trained
    return get_method(name).unlearn(copy.deepcopy(source), task, make_hparams(name, values))


# ---------------------------------------------------------------- gradient surgery (Eq. 3)

def test_projection_removes_retain_component_on_random_vectors():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        g_r = torch.randn(1000, generator=g)
        g_f = torch.randn(1000, generator=g) - 0.7 * g_r  # conflicting: g_f · g_r < 0
        assert torch.dot(g_f, g_r) < 0
        step = orthogonal_to(g_f, g_r)
        assert abs(float(torch.dot(step, g_r))) < 1e-4 * float(g_f.norm() * g_r.norm())
        # what is left is g_f minus a multiple of g_r, and it keeps its forget component
        coef = torch.dot(g_f, g_r) / torch.dot(g_r, g_r)
        assert torch.allclose(step, g_f - coef * g_r, atol=1e-5)
        assert torch.dot(step, g_f) > 0
    # already orthogonal: returned unchanged
    g_r = torch.tensor([1.0, 0.0, 0.0])
    g_f = torch.tensor([0.0, 2.0, -1.0])
    assert torch.equal(orthogonal_to(g_f, g_r), g_f)
    # Eq. 3 has no conflict test: an aligned component is removed too
    assert torch.allclose(orthogonal_to(torch.tensor([3.0, 2.0, 0.0]), g_r),
                          torch.tensor([0.0, 2.0, 0.0]))
    # zero retain gradient: nothing to remove
    assert torch.equal(orthogonal_to(g_f, torch.zeros(3)), g_f)


def test_surgery_step_is_orthogonal_ascent_on_real_gradients(trained):
    task, source = trained
    model = copy.deepcopy(source).train()
    params = list(model.parameters())
    fb = task.forget.all()
    rb = task.retain.all()
    g_f = flat_gradient(model, params, fb)
    g_r = flat_gradient(model, params, rb)
    before = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    loss_f, loss_r = _loss(model, task.forget), _loss(model, task.retain)
    lr = 0.05
    step = surgery_step(model, params, fb, rb, torch.optim.SGD(params, lr=lr))
    delta = torch.cat([p.detach().reshape(-1) for p in params]) - before
    assert torch.allclose(step, orthogonal_to(g_f, g_r))
    assert torch.allclose(delta, lr * step, atol=1e-6)  # θ ← θ + lr·∇L_R⊥: ascent
    assert abs(float(torch.dot(step, g_r))) < 1e-4 * float(step.norm() * g_r.norm())
    assert abs(float(torch.dot(delta, g_r))) < 1e-3 * float(delta.norm() * g_r.norm())
    assert float(torch.dot(delta, g_f)) > 0
    gain_f = _loss(model, task.forget) - loss_f
    change_r = abs(_loss(model, task.retain) - loss_r)
    assert gain_f > 0 and change_r < 0.1 * gain_f


def test_gradient_surgery_ascent_raises_forget_loss_and_descent_keeps_retain(trained):
    task, source = trained
    ascent_only = _run("gradient_surgery", trained, epochs=0)
    assert _loss(ascent_only, task.forget) > _loss(source, task.forget) + 0.1
    full = _run("gradient_surgery", trained)
    assert _acc(full, task.retain) > 0.9
    assert _loss(full, task.forget) > _loss(source, task.forget)


# ---------------------------------------------------------------- activation pruning

def test_keep_mask_zeroes_exactly_the_units_above_the_percentile():
    g = torch.Generator().manual_seed(0)
    act = torch.rand(32, 200, generator=g)
    mask = keep_mask(act, 0.9, "channel")
    mean = act.mean(0)
    assert torch.equal(mask[0] == 0, mean > torch.quantile(mean, 0.9))
    assert int((mask == 0).sum()) == 20
    conv = torch.rand(16, 10, 3, 3, generator=g)  # per position, across the 10 channels
    mask = keep_mask(conv, 0.8, "channel")
    mean = conv.mean(0)
    for i in range(3):
        for j in range(3):
            column = mean[:, i, j]
            assert torch.equal(mask[0, :, i, j] == 0, column > torch.quantile(column, 0.8))
    mask = keep_mask(conv, 0.8, "map")
    assert torch.equal(mask[0] == 0, mean > torch.quantile(mean.flatten(), 0.8))


def test_masks_zero_the_chosen_units_and_keep_zeroing_them(trained):
    task, source = trained
    model = copy.deepcopy(source)
    fb, rb = task.forget.all(), task.retain.all()
    with torch.no_grad():  # the MLP's features are its only ReLU's output
        expected_pruned = model.forward_features(fb.x).mean(0) > torch.quantile(
            model.forward_features(fb.x).mean(0), 0.9)
    install_activation_masks(model, q_early=0.9, q_deep=0.9, scope="channel")
    with torch.no_grad():
        assert torch.equal(model(rb.x), source(rb.x))  # no mask before a prune step
    prune_step(model, fb)
    (mask,) = activation_masks(model).values()
    assert torch.equal(mask[0] == 0, expected_pruned) and expected_pruned.sum() == 50
    weights = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        train_step(model.train(), rb, optimizer)  # fine-tuning on D_r: masks not recomputed
    assert not torch.equal(weights["body.1.weight"], model.state_dict()["body.1.weight"])
    assert torch.equal(next(iter(activation_masks(model).values())), mask)
    for m in (model.train(), model.eval(), copy.deepcopy(model).eval()):
        with torch.no_grad():
            features = m.forward_features(rb.x)
            assert (features[:, expected_pruned] == 0).all()
            assert (features[:, ~expected_pruned] != 0).any()
            assert torch.allclose(m(rb.x), m.head(features))


def test_masks_accumulate_over_forget_batches(trained):
    task, source = trained
    model = copy.deepcopy(source)
    install_activation_masks(model, 0.95, 0.95, "channel")
    batches = list(task.forget.batches(8))
    prune_step(model, batches[0])
    first = next(iter(activation_masks(model).values())).clone()
    prune_step(model, batches[1])
    both = next(iter(activation_masks(model).values()))
    assert torch.equal(both, first * keep_mask(
        torch.relu(model.body[1](batches[1].x.flatten(1))), 0.95, "channel"))
    assert (both == 0).sum() >= (first == 0).sum()


def test_activation_pruning_unlearn_keeps_masks_in_returned_model(trained):
    task, source = trained
    out = _run("activation_pruning", trained, q_early=0.8, q_deep=0.8, epochs=3, lr=1e-3)
    masks = activation_masks(out)
    assert len(masks) == 1
    (mask,) = masks.values()
    assert 0 < int((mask == 0).sum()) < mask.numel()
    out.eval()
    with torch.no_grad():
        assert (out.forward_features(task.val.all().x)[:, mask[0] == 0] == 0).all()
    # the masks can be stored and re-attached to a freshly built model
    fresh = copy.deepcopy(source)
    fresh.load_state_dict(out.state_dict())
    install_fixed_masks(fresh, masks)
    with torch.no_grad():
        x = task.val.all().x
        assert torch.equal(fresh(x), out(x))


class _Reuse(nn.Module):
    """One ReLU module applied at three sites of different widths (like a Bottleneck)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(self.relu(x)))))


class _Wrapped(nn.Module):
    """The zoo's shape: forward_features goes through the ``body`` module."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(3, 2)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.forward_features(x))


def test_one_mask_per_call_site_of_a_reused_activation():
    torch.manual_seed(0)
    model = _Wrapped(_Reuse())
    install_activation_masks(model, 0.5, 0.5, "channel")
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    prune_step(model, type("B", (), {"x": x})())
    masks = activation_masks(model)
    assert [masks[f"body.relu#{s}"].shape[1] for s in range(3)] == [6, 5, 3]
    for _ in range(2):  # call counts restart at every forward, through either entry point
        with torch.no_grad():
            assert torch.allclose(model(x), model.head(model.forward_features(x)))
    with torch.no_grad():
        h = torch.relu(x) * masks["body.relu#0"]
        h = torch.relu(model.body.a(h)) * masks["body.relu#1"]
        h = torch.relu(model.body.b(h)) * masks["body.relu#2"]
        assert torch.allclose(model.forward_features(x), h)
    # a forward that bypasses every hooked module call cannot be counted: it fails loudly
    bare = _Reuse()
    install_activation_masks(bare, 0.5, 0.5, "channel")
    prune_step(bare, type("B", (), {"x": x})())
    with torch.no_grad():
        bare(x)
        with pytest.raises(RuntimeError, match="unknown site"):
            bare.relu(bare.b(bare.relu(bare.a(bare.relu(x)))))


@pytest.mark.slow
def test_masks_on_a_zoo_resnet_with_reused_relus():
    model = create_model("resnet50", 4, 1, 8).eval()  # Bottleneck calls one relu 3 times
    install_activation_masks(model, 0.99, 0.9, "channel")
    x = torch.randn(2, 1, 8, 8)
    prune_step(model, type("B", (), {"x": x})())
    masks = activation_masks(model)
    assert len(masks) == 1 + 3 * 16  # stem + 3 sites in each of 16 bottlenecks
    block = model.body.layer1[0]
    shapes = [masks[f"body.layer1.0.relu#{s}"].shape[1] for s in range(3)]
    assert shapes == [block.conv1.out_channels, block.conv2.out_channels,
                      block.conv3.out_channels]
    with torch.no_grad():
        assert torch.allclose(model(x), model.head(model.forward_features(x)), atol=1e-5)


# ---------------------------------------------------------------- soft relabelling

def test_soft_targets_are_distributions_over_retain_samples_only():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(12, 5, generator=g)
    labels = torch.tensor([0, 2, 3, 0, 2, 3, 0, 2, 1, 1, 1, 1])  # class 1 only in D_f
    is_retain = torch.tensor([True] * 8 + [False] * 4)
    targets = soft_targets(features, labels, is_retain, 4)
    assert torch.allclose(targets.sum(1), torch.ones(12)) and (targets >= 0).all()
    assert torch.equal(targets[:8], F.one_hot(labels[:8], 4).float())
    assert (targets[8:, 1] == 0).all()  # no retain sample of class 1: no mass on it
    weights = torch.softmax(-torch.cdist(features[8:], features[:8]), dim=1)
    assert torch.allclose(targets[8:], weights @ F.one_hot(labels[:8], 4).float(), atol=1e-6)
    # other forget samples (and their labels) do not change a forget sample's target
    moved = features.clone()
    moved[9:] += 100.0
    relabelled = labels.clone()
    relabelled[9:] = 0
    again = soft_targets(moved, relabelled, is_retain, 4)
    assert torch.allclose(again[8], targets[8], atol=1e-6)
    # the nearest retain sample dominates
    close = features.clone()
    close[8] = features[1] + 1e-3
    assert soft_targets(close * 50, labels, is_retain, 4)[8].argmax() == labels[1]


def test_soft_relabel_phase_moves_forget_predictions_off_their_class(trained):
    task, source = trained
    out = _run("soft_relabel", trained, epochs=0, relabel_epochs=20)
    assert _acc(source, task.forget) > 0.9
    assert _acc(out, task.forget) < 0.5
    assert _loss(out, task.forget) > _loss(source, task.forget)
    full = _run("soft_relabel", trained, epochs=2, relabel_epochs=5)
    assert _acc(full, task.retain) > 0.9


# ---------------------------------------------------------------- random labels

def test_random_wrong_labels_differ_from_true_and_are_uniform():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (40000,), generator=g)
    labels = random_wrong_labels(y, 5, g)
    assert (labels != y).all() and labels.min() >= 0 and labels.max() < 5
    offsets = torch.bincount((labels - y) % 5, minlength=5)[1:].float() / len(y)
    assert torch.allclose(offsets, torch.full((4,), 0.25), atol=0.01)


def test_random_labels_forget_phase_raises_forget_loss(trained):
    task, source = trained
    out = _run("random_labels", trained, epochs=0, forget_epochs=20)
    assert _loss(out, task.forget) > _loss(source, task.forget) + 0.5
    assert _acc(out, task.forget) < 0.5


# ---------------------------------------------------------------- SCRUB

def test_distill_kl_is_temperature_scaled_kl_teacher_to_student():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    p_t, p_s = F.softmax(t / 2, 1), F.softmax(s / 2, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 4
    assert torch.allclose(distill_kl(s, t, 2.0), expected, atol=1e-6)
    assert float(distill_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_scrub_max_step_raises_kl_and_min_step_lowers_ce(trained):
    task, source = trained
    hp = make_hparams("scrub", {})
    teacher = copy.deepcopy(source).eval()
    student = copy.deepcopy(source).train()
    with torch.no_grad():  # student ≠ teacher, else the KL gradient is zero
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fb, rb = task.forget.all(), task.retain.all()

    def kl_on_forget():
        with torch.no_grad():
            return float(distill_kl(student(fb.x), teacher(fb.x), hp.kd_T))

    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    before = kl_on_forget()
    max_step(student, teacher, fb, optimizer, hp)
    assert kl_on_forget() > before
    ce_before = _loss(student, task.retain)
    min_step(student, teacher, rb, optimizer, hp)
    assert _loss(student, task.retain) < ce_before


def test_scrub_pushes_forget_predictions_away(trained):
    task, source = trained
    out = _run("scrub", trained, lr=0.05, epochs=3)
    assert _loss(out, task.forget) > _loss(source, task.forget)
    assert _acc(out, task.retain) > 0.9


# ---------------------------------------------------------------- boundary unlearning

def test_neighbour_labels_are_wrong_classes_where_the_attack_lands(trained):
    task, source = trained
    batch = task.forget.all()
    mean, std = task.forget.mean, task.forget.std
    labels, x_adv = neighbour_labels(source, batch.x, batch.y, 0.2, mean, std)
    assert (labels != batch.y).all()
    with torch.no_grad():
        landed = source(x_adv).argmax(1)
    crossed = landed != batch.y
    assert 0 < crossed.sum() < len(crossed)  # ε = 0.2: some attacks cross, some do not
    assert torch.equal(labels[crossed], landed[crossed])
    pixels, adv_pixels = batch.x * std + mean, x_adv * std + mean
    assert (adv_pixels - pixels).abs().max() <= 0.2 + 0.5 / 255 + 1e-4  # ε, then rounding
    assert ((adv_pixels * 255).round() - adv_pixels * 255).abs().max() < 1e-3  # 8-bit grid


def test_boundary_unlearning_moves_forget_samples_across_the_boundary(trained):
    task, source = trained
    out = _run("boundary_unlearning", trained, lr=0.01, epochs=5)
    assert _acc(out, task.forget) < _acc(source, task.forget) - 0.3
    assert _loss(out, task.forget) > _loss(source, task.forget)


# ---------------------------------------------------------------- the paper's protocol


def test_seed002_config_runs_every_method_once_at_its_defaults():
    """Seed 002 tunes nothing: one trial per method, its searchable keys pinned to the
    Hparams defaults (so the config cannot drift from the defaults), no sweep left."""
    import dataclasses
    from pathlib import Path

    from pipelines.config import load_config
    from pipelines.sweep import planned_trials
    from pipelines.tune_space import merged_space

    path = Path(__file__).parents[1] / "pipelines/configs/seed002-digits-random10.yaml"
    config = load_config(path)
    tuned = [m for m in config.methods if m.name not in ("original", "retrain")]
    assert {m.name for m in tuned} == {"finetune", "random_labels", "scrub",
                                       "boundary_unlearning", "soft_relabel",
                                       "gradient_surgery", "activation_pruning"}
    for m in tuned:
        module = get_method(m.name)
        assert merged_space(module.SEARCH_SPACE, m.space, m.fixed) == {}, m.name
        assert planned_trials(m) == 1 and m.trials == 1
        defaults = dataclasses.asdict(module.Hparams())
        assert m.fixed == {k: defaults[k] for k in m.fixed}, m.name
        assert make_hparams(m.name, m.fixed) == module.Hparams()


def test_defaults_carry_the_values_seed_002_states():
    """§3.3: q = 0.99 for early activations, 0.90 for deep ones; §3.2: an L1 (elastic-net)
    penalty next to weight decay in the descent, and a large initial LR (larger than the
    fine-tuning LR of the other seed-002 phases, AdamW 1e-3)."""
    ap = make_hparams("activation_pruning")
    assert (ap.q_early, ap.q_deep) == (0.99, 0.90)
    gs = make_hparams("gradient_surgery")
    assert gs.l1 > 0 and gs.weight_decay > 0
    assert gs.lr > make_hparams("soft_relabel").lr == make_hparams("random_labels").lr
