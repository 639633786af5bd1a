"""Seed 004: DAU (adversarial_unlearning) and IU (influence_unlearning) mechanisms."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import make_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.methods import adversarial_unlearning as dau
from unlearn_core.methods import influence_unlearning as iu
from unlearn_core.methods._attacker import MIATransformer, defender_view
from unlearn_core.methods.task import UnlearnTask, make_task
from unlearn_core.models import create_model
from unlearn_core.train import DeviceData, Recipe, accuracy, fit
from unlearn_core.train.device_data import dataset_stats
from unlearn_core.train.source import build_model
from unlearn_core.train.sparsity import prune_model


def _views(ds, labels, parts):
    mean, std = dataset_stats(ds)
    return [DeviceData(ds.images[ids], labels[ids], ids, mean, std, augment=False)
            for ids in parts]


@pytest.fixture(scope="module")
def classwise():
    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0, options=SplitOptions())
    source = build_model("mlp", ds, seed=0)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")),
        Recipe(epochs=4, batch_size=32, lr=0.05), seed=0)
    return ds, manifest, source


def _task(classwise, forget="classes=1"):
    ds, manifest, source = classwise
    if forget != "classes=1":
        manifest = make_manifest(ds, forget, seed=0, options=SplitOptions())
    return make_task(ds, manifest, source, model_name="mlp")


# --- DAU pieces ------------------------------------------------------------------------------


def test_barlow_twins_zero_for_identical_decorrelated_features_positive_otherwise():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # centred, C = I
    assert dau.barlow_twins_loss(z, z, 5e-3).item() == pytest.approx(0.0, abs=1e-6)
    # centring and per-column scale do not matter (C is a correlation)
    assert dau.barlow_twins_loss(3 * z + 5, z * torch.tensor([2.0, 7.0]), 5e-3).item() == \
        pytest.approx(0.0, abs=1e-6)
    # D_v's second feature copies its first: C = [[1, 1], [0, 0]] by hand,
    # so V_ss = (1 - 1)^2 + (1 - 0)^2 + λ (1^2 + 0^2) = 1 + λ.
    z_v = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert dau.barlow_twins_loss(z, z_v, 5e-3).item() == pytest.approx(1.005, abs=1e-5)
    assert dau.barlow_twins_loss(z, z_v, 0.1).item() == pytest.approx(1.1, abs=1e-5)


class _Constant(nn.Module):
    """A defender whose output ignores its input."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(5))
        self.head = nn.Linear(5, 3)

    def forward_features(self, x):
        return self.bias.expand(len(x), -1)

    def forward(self, x):
        return self.head(self.forward_features(x))


class _Linear(_Constant):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 5)

    def forward_features(self, x):
        return self.body(x.flatten(1))


def test_sensitivity_zero_for_constant_model_and_positive_otherwise():
    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for noise_std in (1e-3, 1.0):
        _, (probs, sens, onehot) = defender_view(_Constant(), x, y, 3, 10, noise_std)
        assert torch.equal(sens, torch.zeros(6, 3))
        assert torch.allclose(probs.sum(1), torch.ones(6)) and torch.equal(onehot.argmax(1), y)
    model = _Linear()
    _, (probs, sens, _) = defender_view(model, x, y, 3, 10, 1.0)
    assert (sens > 0).all() and sens.shape == (6, 3)
    assert torch.allclose(probs, F.softmax(model(x), 1))


def test_sensitivity_is_the_mean_absolute_output_change_over_noise():
    """Δ(x) = (1/n) Σ |D(x + σ u_i) − D(x)| / σ, element-wise, recomputed by hand."""
    torch.manual_seed(0)
    model, x, y = _Linear(), torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    gen = torch.Generator().manual_seed(5)
    _, (probs, sens, _) = defender_view(model, x, y, 3, 4, 0.5, generator=gen)
    noise = torch.randn((4, *x.shape), generator=torch.Generator().manual_seed(5))
    expected = torch.stack([(F.softmax(model(x + 0.5 * u), 1) - probs).abs() for u in noise])
    assert torch.allclose(sens, expected.mean(0) / 0.5, atol=1e-6)


def test_attacker_reads_one_token_per_class():
    attacker = MIATransformer(num_classes=5).eval()
    probs, sens, onehot = torch.rand(7, 5), torch.rand(7, 5), torch.eye(5)[torch.arange(7) % 5]
    assert attacker(probs, sens, onehot).shape == (7, 2)
    assert attacker.fc.in_features == 64 * 5 and attacker.embed.in_features == 3


def test_alpha_switches_to_zero_after_30_iterations_only_in_classwise_mode():
    hp = dau.Hparams()
    assert [dau.alpha_at(i, hp, True) for i in (0, 29, 30, 500)] == [0.9, 0.9, 0.0, 0.0]
    assert [dau.alpha_at(i, hp, False) for i in (0, 29, 30, 500)] == [0.9] * 4


def test_classwise_run_records_alpha_switch(classwise):
    hp = dau.Hparams(epochs=3, batch_size=32, pretrain_iterations=5, classwise_alpha_iterations=4)
    task = _task(classwise)
    _, history = dau.adversarial_unlearn(copy.deepcopy(classwise[2]), task, hp)
    n = len(history["alpha"])
    assert n == 3 * -(-len(task.retain) // 32)
    assert history["alpha"] == [0.9] * 4 + [0.0] * (n - 4)
    _, history = dau.adversarial_unlearn(copy.deepcopy(classwise[2]), _task(classwise,
                                         "random=0.2"), hp)
    assert set(history["alpha"]) == {0.9}  # random forgetting keeps α


def test_dau_keeps_pruned_weights_zero(classwise):
    model = copy.deepcopy(classwise[2])
    masks = prune_model(model, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = dau.unlearn(model, _task(classwise, "random=0.2"),
                      dau.Hparams(epochs=1, batch_size=32, pretrain_iterations=5))
    params = dict(out.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name][~mask], torch.zeros(int((~mask).sum())))
        assert not torch.equal(params[name][mask], before[name][mask])
    assert set(out.dau_history) >= {"pretrain_acc", "attacker_acc", "alpha", "v_ss"}


def _memorising_task(seed=0):
    """An MLP that memorised random labels: members are easy to tell from non-members."""
    ds = make_dataset(n=200, num_classes=4, seed=seed)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (200,), generator=g)
    perm = torch.randperm(200, generator=g)
    forget, retain, val = _views(ds, labels, (perm[:40], perm[40:160], perm[160:]))
    torch.manual_seed(seed)
    model = create_model("mlp", 4, 1, 8)
    train = _views(ds, labels, (perm[:160],))[0]
    fit(model, train, Recipe(epochs=60, batch_size=32, lr=0.05, schedule="constant"), seed=seed)
    task = UnlearnTask(source=model, retain_data=retain, forget_data=forget, val_data=val,
                       num_classes=4, seed=seed)
    return model, task


@pytest.mark.slow
def test_attacker_accuracy_falls_toward_chance():
    model, task = _memorising_task()
    assert accuracy(model, task.forget) == 1.0 and accuracy(model, task.val) < 0.6
    runs = {}
    for alpha in (0.9, 0.0):
        hp = dau.Hparams(epochs=25, batch_size=32, lr=0.05, alpha=alpha, pretrain_iterations=200)
        runs[alpha] = dau.adversarial_unlearn(copy.deepcopy(model), task, hp)
    out, history = runs[0.9]
    acc = history["attacker_acc"]
    late = sum(acc[-25:]) / 25
    late_without = sum(runs[0.0][1]["attacker_acc"][-25:]) / 25
    assert history["pretrain_acc"] > 0.85  # the source leaks membership
    assert late < history["pretrain_acc"] - 0.2 and abs(late - 0.5) < 0.15
    assert late < late_without - 0.15  # the adversarial term, not fine-tuning, does it
    # the defender forgot D_f (down to about D_v's accuracy) and kept D_r
    assert accuracy(out, task.forget) < 0.6 and accuracy(out, task.retain) > 0.85


# --- IU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_woodfisher_ihvp_matches_explicit_inverse(dtype):
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(7, 15, generator=g, dtype=torch.float64)
    v = torch.randn(15, generator=g, dtype=torch.float64)
    for damping in (1.0, 0.01):
        fisher = damping * torch.eye(15, dtype=torch.float64) + grads.T @ grads / 7
        expected = torch.linalg.solve(fisher, v)
        for fn in (iu.woodfisher_ihvp, iu.woodfisher_ihvp_recursive):
            got = fn(grads.to(dtype), v.to(dtype), damping).double()
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), fn.__name__


class _Tiny(nn.Module):
    """A 15-parameter classifier: 4 pooled pixels -> 3 classes."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.pool(x).flatten(1))


def _tiny_task():
    ds = make_dataset(n=60, num_classes=3)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    forget, retain, val = _views(ds, ds.labels, (perm[:10], perm[10:50], perm[50:]))
    return UnlearnTask(source=None, retain_data=retain, forget_data=forget, val_data=val,
                       num_classes=3, seed=0)


def _explicit_step(model, task, damping):
    """F̂ = λI + (1/m) Σ g gᵀ built as a matrix from per-sample gradients taken one by one."""
    params = list(model.parameters())

    def sample_grads(data):
        b = data.all()
        rows = [torch.cat([g.flatten() for g in torch.autograd.grad(
            F.cross_entropy(model(b.x[i:i + 1]), b.y[i:i + 1]), params)]) for i in range(len(b.y))]
        return torch.stack(rows).double()

    g_f, g_r = sample_grads(task.forget), sample_grads(task.retain)
    n_f, n_r = len(g_f), len(g_r)
    v = n_f / (n_f + n_r) * (g_f.mean(0) - g_r.mean(0))
    fisher = damping * torch.eye(g_r.shape[1], dtype=torch.float64) + g_r.T @ g_r / n_r
    return torch.linalg.solve(fisher, v)


@pytest.mark.parametrize("damping", [1.0, 1e-3])
def test_iu_moves_weights_by_alpha_times_inverse_fisher_gradient(damping):
    torch.manual_seed(0)
    model, task = _Tiny(), _tiny_task()
    expected = _explicit_step(model, task, damping)
    # all of D_r; ρ = 1: at λ = 1 the step is shorter than ‖w‖ and applied as it is, at
    # λ = 1e-3 it is longer and cut to ‖w‖ along its direction (bounded_update)
    hp = iu.Hparams(alpha=0.7, damping=damping, num_samples=1000, chunk_size=7,
                    max_step_ratio=1.0)
    step = iu.influence_step(copy.deepcopy(model), task, hp)
    assert torch.allclose(step.double(), expected, atol=1e-4, rtol=1e-4)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    out = iu.unlearn(model, task, hp)
    after = torch.cat([p.detach().flatten() for p in out.parameters()])
    binds = 0.7 * expected.norm() > before.norm()
    assert bool(binds) == (damping < 1.0)
    applied = iu.bounded_update(expected.float(), before, 0.7, 1.0)
    assert torch.allclose(after - before, applied, atol=1e-5, rtol=1e-4)
    if not binds:
        assert torch.allclose(after - before, 0.7 * expected.float(), atol=1e-5, rtol=1e-4)


def test_per_sample_gradients_match_one_by_one():
    torch.manual_seed(0)
    model, task = _Tiny(), _tiny_task()
    grads = iu.per_sample_gradients(model, task.retain, chunk_size=16)
    b = task.retain.all()
    for i in (0, 17, 39):
        one = torch.autograd.grad(F.cross_entropy(model(b.x[i:i + 1]), b.y[i:i + 1]),
                                  list(model.parameters()))
        assert torch.allclose(grads[i], torch.cat([g.flatten() for g in one]), atol=1e-6)


def test_iu_raises_forget_loss_and_keeps_pruned_weights_zero(classwise):
    task = _task(classwise)  # class-wise: ḡ_f and ḡ_r differ (on random D_f they nearly cancel)

    def forget_loss(model):
        b = task.forget.all()
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(b.x), b.y))

    model = copy.deepcopy(classwise[2])
    masks = prune_model(model, 0.5)
    before = forget_loss(model)
    out = iu.unlearn(model, task, iu.Hparams(alpha=1.0, damping=1e-2, num_samples=64))
    assert forget_loss(out) > before
    params = dict(out.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name][~mask], torch.zeros(int((~mask).sum())))


def test_bounded_update_by_hand():
    step, w = torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])  # ‖step‖ = 5, ‖w‖ = 10
    # α‖step‖ = 5 > ρ‖w‖ = 1: shortened to norm 1 along the step
    assert torch.allclose(iu.bounded_update(step, w, 1.0, 0.1), torch.tensor([0.6, 0.8]))
    # α‖step‖ = 0.5 ≤ 1: α·step unchanged
    assert torch.equal(iu.bounded_update(step, w, 0.1, 0.1), 0.1 * step)


def test_iu_step_stays_in_the_trust_region():
    """With λ = 1e-4 the Newton step is many times ‖w‖; the update is cut to ρ‖w‖ along it."""
    torch.manual_seed(0)
    model, task = _Tiny(), _tiny_task()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    full = 1.0 * _explicit_step(model, task, 1e-4).float()
    assert full.norm() > before.norm()  # unbounded, the step is longer than the weights
    hp = iu.Hparams(alpha=1.0, damping=1e-4, num_samples=1000, max_step_ratio=0.05)
    out = iu.unlearn(model, task, hp)
    delta = torch.cat([p.detach().flatten() for p in out.parameters()]) - before
    assert delta.norm() <= 0.05 * before.norm() * (1 + 1e-5)
    assert delta.norm() == pytest.approx(0.05 * before.norm().item(), rel=1e-4)
    assert F.cosine_similarity(delta.double(), full.double(), dim=0) > 1 - 1e-4


def test_iu_alpha_is_bounded_by_the_full_influence_step():
    from unlearn_core.errors import UserInputError
    from unlearn_core.methods import make_hparams

    assert make_hparams("influence_unlearning", {"alpha": 1.0}).alpha == 1.0
    for key, value in (("alpha", 1.5), ("alpha", 0.0), ("max_step_ratio", 2.0)):
        with pytest.raises(UserInputError, match=key):
            make_hparams("influence_unlearning", {key: value})


# --- FF: per-sample vs batch-mean Fisher (Unlearn-Sparse fisher_new) -------------------------


def _two_samples():
    """x1 = (1, 2), x2 = (3, −1) (uint8 − 1 with mean 1/255, std 1/255), labels 0 and 1;
    logits = W x with W = 0, so p = (½, ½) and ∂ log p_y / ∂W_k = (δ_ky − ½) x."""
    from unlearn_core.methods import fisher_forgetting as ff

    images = torch.tensor([[[[2, 3]]], [[[4, 0]]]], dtype=torch.uint8)
    data = DeviceData(images, torch.tensor([0, 1]), torch.tensor([0, 1]),
                      torch.tensor([1 / 255]), torch.tensor([1 / 255]), augment=False)
    assert torch.allclose(data.all().x.flatten(1), torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    nn.init.zeros_(model[1].weight)
    return ff, model, data


@pytest.mark.parametrize("labels,estimator,row", [
    # per sample: mean_i Σ_y ½ (¼ x_i²) = ¼ mean_i x_i² = ¼ (5, 2.5)
    ("expected", "per_sample", [1.25, 0.625]),
    # batch mean: Σ_y ½ (½ mean_i x_i)² = ¼ (2, ½)² = (1, 1/16): the variance is gone
    ("expected", "batch_mean", [1.0, 0.0625]),
    # true labels, per sample: (½ x_i)² averaged = the same ¼ mean_i x_i²
    ("true", "per_sample", [1.25, 0.625]),
    # true labels, batch mean: (½ x_1 − ½ x_2)/2 = (−½, ¾), squared (¼, 9/16)
    ("true", "batch_mean", [0.25, 0.5625]),
])
def test_fisher_estimators_by_hand(labels, estimator, row):
    ff, model, data = _two_samples()
    fisher = ff.fisher_diagonal(model, data, labels, batch_size=2, estimator=estimator)
    assert torch.allclose(fisher["1.weight"], torch.tensor([row, row]), atol=1e-5)


def test_batch_mean_fisher_of_one_sample_batches_is_the_per_sample_fisher():
    ff, model, data = _two_samples()
    nn.init.normal_(model[1].weight, generator=torch.Generator().manual_seed(0))
    one = ff.fisher_diagonal(model, data, "expected", batch_size=1, estimator="batch_mean")
    per = ff.fisher_diagonal(model, data, "expected", batch_size=2, estimator="per_sample")
    assert torch.allclose(one["1.weight"], per["1.weight"], atol=1e-6)
    two = ff.fisher_diagonal(model, data, "expected", batch_size=2, estimator="batch_mean")
    assert (two["1.weight"] < per["1.weight"]).any()  # Jensen: squared mean ≤ mean square


def test_fisher_forgetting_default_is_seed_004s_batch_mean(classwise):
    """The default estimator is Unlearn-Sparse's (batch of 32); with batches of one it is
    the per-sample Fisher, so unlearning then draws exactly the per-sample result."""
    import dataclasses

    from unlearn_core.methods import fisher_forgetting as ff

    hp = ff.Hparams()
    assert (hp.fisher, hp.fisher_batch_size) == ("batch_mean", 32)
    task, source = _task(classwise), classwise[2]
    per = ff.unlearn(copy.deepcopy(source), task, dataclasses.replace(hp, fisher="per_sample"))
    ones = ff.unlearn(copy.deepcopy(source), task, dataclasses.replace(hp, fisher_batch_size=1))
    default = ff.unlearn(copy.deepcopy(source), task, hp)
    for a, b in zip(per.parameters(), ones.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(a, c, atol=1e-5, rtol=1e-4)
               for a, c in zip(per.parameters(), default.parameters(), strict=True))
