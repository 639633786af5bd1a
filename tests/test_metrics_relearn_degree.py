"""Relearn time (seed 003) and SPD-GAN unlearning degree (seed 000) on tiny models and data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import make_dataset
from unlearn_core.metrics.degree import _perturb, make_generator, unlearning_degree
from unlearn_core.metrics.relearn import relearn_time
from unlearn_core.train import DeviceData, Recipe, accuracy, fit
from unlearn_core.train.source import build_model

FORGET_CLASS = 0
RECIPE = Recipe(epochs=3, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def setup():
    """Separable 8×8 data (4 classes × 50), an MLP that fits it, and the class-0 forget set."""
    ds = make_dataset(n=200, num_classes=4)
    ids = torch.arange(len(ds.labels))
    train = DeviceData.from_dataset(ds, ids)
    forget = DeviceData.from_dataset(ds, ids[ds.labels == FORGET_CLASS])
    retain = DeviceData.from_dataset(ds, ids[ds.labels != FORGET_CLASS])
    source = build_model("mlp", ds, seed=0)
    fit(source, train, RECIPE, seed=0)
    assert accuracy(source, forget) == 1.0  # the premise of every test below
    return source, train, forget, retain


def wiped(source: nn.Module, forget: DeviceData) -> nn.Module:
    """The source with the forget class's head row zeroed and its bias pushed just below
    every other logit: forget accuracy 0, but a few SGD steps can bring it back (a -1e4
    bias would take tens of thousands of steps to undo, so it could never 'relearn')."""
    model = copy.deepcopy(source)
    with torch.no_grad():
        model.head.weight[FORGET_CLASS].zero_()
        z = model(forget.all().x)
        others = torch.cat([z[:, :FORGET_CLASS], z[:, FORGET_CLASS + 1 :]], 1)
        margin = (z[:, FORGET_CLASS] - others.max(1).values).max()
        model.head.bias[FORGET_CLASS] -= margin + 1.0
    assert accuracy(model, forget) == 0.0
    return model


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# ---------------------------------------------------------------- relearn time (seed 003)


def test_model_that_already_knows_forget_set_takes_zero_epochs(setup):
    source, train, forget, _ = setup
    out = relearn_time(source, train, forget, accuracy(source, forget), RECIPE)
    assert out == {
        "relearn/epochs": 0.0,
        "relearn/reached": 1.0,
        "relearn/cap": 100.0,
        "relearn/final_forget_acc": 1.0,
    }


def test_tolerance_lowers_the_bar(setup):
    source, train, forget, _ = setup
    model = wiped(source, forget)
    # acc 0 >= 0.5 - 0.5 at epoch 0; without tolerance the same call must train.
    assert relearn_time(model, train, forget, 0.5, RECIPE, tolerance=0.5)["relearn/epochs"] == 0
    assert relearn_time(model, train, forget, 0.5, RECIPE)["relearn/epochs"] >= 1


def test_wiped_head_relearns_from_training_data(setup):
    source, train, forget, _ = setup
    out = relearn_time(wiped(source, forget), train, forget, 1.0, RECIPE, samples=40)
    assert out["relearn/reached"] == 1.0
    assert 1 <= out["relearn/epochs"] < out["relearn/cap"]
    assert out["relearn/final_forget_acc"] == 1.0


def test_fewer_samples_per_epoch_take_more_epochs(setup):
    # Measured on this setup: 8 samples/epoch need 5-7 epochs, all 200 need 1.
    source, train, forget, _ = setup
    model = wiped(source, forget)
    slow = Recipe(batch_size=32, lr=0.003)
    few = relearn_time(model, train, forget, 1.0, slow, samples=8)
    many = relearn_time(model, train, forget, 1.0, slow, samples=200)
    assert few["relearn/reached"] == many["relearn/reached"] == 1.0
    assert few["relearn/epochs"] > many["relearn/epochs"]


def test_no_forget_samples_in_training_data_never_relearns(setup):
    # Relearning has to come from the forget samples inside D: retain-only data can't do it.
    source, _, forget, retain = setup
    out = relearn_time(wiped(source, forget), retain, forget, 1.0, RECIPE, cap=5)
    assert out["relearn/reached"] == 0.0
    assert out["relearn/epochs"] == out["relearn/cap"] == 5.0


def test_impossible_target_returns_cap(setup):
    source, train, forget, _ = setup
    frozen_lr = Recipe(batch_size=32, lr=1e-9)  # cannot move the weights in one epoch
    out = relearn_time(wiped(source, forget), train, forget, 1.0, frozen_lr, cap=1)
    assert out == {
        "relearn/epochs": 1.0,
        "relearn/reached": 0.0,
        "relearn/cap": 1.0,
        "relearn/final_forget_acc": 0.0,
    }


def test_relearn_leaves_caller_model_and_rng_untouched(setup):
    source, train, forget, _ = setup
    model = wiped(source, forget)
    model.body.requires_grad_(False)  # as a method that froze layers would leave it
    model.eval()
    before = state_copy(model)
    rng = torch.get_rng_state()
    out = relearn_time(model, train, forget, 1.0, RECIPE)
    assert out["relearn/reached"] == 1.0  # it did train (a copy)
    assert_same_state(model, before)
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_relearn_is_deterministic(setup):
    source, train, forget, _ = setup
    # Input dropout: its masks come from the global RNG, which the caller may have moved.
    model = nn.Sequential(nn.Dropout(0.5), wiped(source, forget))
    slow = Recipe(batch_size=4, lr=0.002)
    runs = []
    for global_seed in (1, 2, 1, 2):
        torch.manual_seed(global_seed)
        runs.append(relearn_time(model, train, forget, 1.0, slow, samples=8, cap=2, seed=3))
    assert all(r == runs[0] for r in runs)
    # Stopped half-way, where the accuracy is sensitive to every draw and dropout mask.
    assert 0.0 < runs[0]["relearn/final_forget_acc"] < 1.0


def test_optimizer_follows_recipe_at_constant_lr_and_keeps_its_state(setup, monkeypatch):
    import unlearn_core.metrics.relearn as relearn_module

    source, train, forget, _ = setup
    made: list[torch.optim.Optimizer] = []
    real = relearn_module.make_optimizer

    def spy(params, recipe):
        made.append(real(params, recipe))
        return made[-1]

    monkeypatch.setattr(relearn_module, "make_optimizer", spy)
    recipe = Recipe(batch_size=16, lr=1e-9, momentum=0.8, weight_decay=1e-3, schedule="cosine")
    model = wiped(source, forget)
    model.body.requires_grad_(False)  # frozen by an unlearning method: relearning trains it too
    out = relearn_time(model, train, forget, 1.0, recipe, samples=32, cap=3)
    assert out["relearn/epochs"] == 3.0
    assert len(made) == 1  # one optimizer for all epochs: momentum carries over
    (group,) = made[0].param_groups
    assert isinstance(made[0], torch.optim.SGD)
    # Read after 3 epochs × 2 steps: a cosine schedule would have lowered the LR by now.
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-9, 0.8, 1e-3)
    assert len(group["params"]) == 4  # every parameter of the MLP
    assert all(made[0].state[p]["momentum_buffer"] is not None for p in group["params"])


def test_fresh_draw_without_replacement_each_epoch(setup, monkeypatch):
    source, train, forget, _ = setup
    draws: list[torch.Tensor] = []
    real_subset = DeviceData.subset

    def spy(self, positions):
        draws.append(torch.as_tensor(positions).clone())
        return real_subset(self, positions)

    monkeypatch.setattr(DeviceData, "subset", spy)
    out = relearn_time(wiped(source, forget), train, forget, 1.0, Recipe(lr=1e-9), samples=30,
                       cap=4)
    assert out["relearn/epochs"] == 4 and len(draws) == 4  # one draw per epoch
    for d in draws:
        assert len(d) == 30 and len(d.unique()) == 30  # without replacement
        assert 0 <= int(d.min()) and int(d.max()) < len(train)
    assert len({tuple(d.tolist()) for d in draws}) == 4  # fresh each epoch

    draws.clear()
    relearn_time(wiped(source, forget), train, forget, 1.0, Recipe(lr=1e-9), samples=10_000,
                 cap=2)
    assert [sorted(d.tolist()) for d in draws] == [list(range(len(train)))] * 2  # all rows


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cap": 0}, "cap"),
        ({"samples": 0}, "samples"),
        ({"target_acc": 1.5}, "target_acc"),
        ({"target_acc": -0.1}, "target_acc"),
        ({"target_acc": float("nan")}, "target_acc"),
        ({"tolerance": -0.1}, "tolerance"),
    ],
)
def test_relearn_rejects_bad_inputs(setup, kwargs, match):
    source, train, forget, _ = setup
    args = {"target_acc": 1.0} | kwargs
    target = args.pop("target_acc")
    with pytest.raises(ValueError, match=match):
        relearn_time(source, train, forget, target, RECIPE, **args)


def test_relearn_rejects_empty_forget_set(setup):
    source, train, forget, _ = setup
    with pytest.raises(ValueError, match="forget_data is empty"):
        relearn_time(source, train, forget.subset(torch.arange(0)), 1.0, RECIPE)


# ---------------------------------------------------------------- unlearning degree (seed 000)


class ConstantClass(nn.Module):
    """Predicts ``label`` for every input (a parameter so it can be frozen and checked)."""

    def __init__(self, label: int, num_classes: int = 4) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_classes,), -5.0))
        with torch.no_grad():
            self.logits[label] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def corner_reader(forget: DeviceData) -> nn.Module:
    """Correct on every clean class-0 image, but only because the bottom-right pixel is dark:
    it says class 1 once that pixel passes mid-grey. A perturbation can exploit that while
    the source (which reads the bright top rows) keeps answering class 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    grey = (0.5 - forget.mean.flatten()[0]) / forget.std.flatten()[0]  # 0.5 in model units
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1, 63] = 10.0
        model[1].bias[1] = -10.0 * grey
        model[1].bias[2:] = -100.0
    assert accuracy(model, forget) == 1.0
    return model


def test_identical_models_have_zero_degree(setup):
    source, _, forget, _ = setup
    for unlearned in (source, copy.deepcopy(source)):
        out = unlearning_degree(source, unlearned, forget, epochs=2)
        assert out["degree/value"] == 0.0
        assert out["degree/source_acc_p"] == out["degree/unlearned_acc_p"]
        assert out["degree/source_acc_ul"] == out["degree/unlearned_acc_ul"] == 1.0


def test_always_wrong_unlearned_model_gives_source_accuracy(setup):
    source, _, forget, _ = setup
    out = unlearning_degree(source, ConstantClass(label=1), forget, epochs=2)
    assert out["degree/unlearned_acc_p"] == out["degree/unlearned_acc_ul"] == 0.0
    assert out["degree/value"] == out["degree/source_acc_p"]
    # G minimises the source's loss, so the source still recognises the perturbed data.
    assert out["degree/source_acc_p"] >= 0.9


def test_generator_finds_what_the_unlearned_model_lost(setup):
    source, _, forget, _ = setup
    unlearned = corner_reader(forget)
    trained = unlearning_degree(source, unlearned, forget, batch_size=10)
    # Clean D_UL cannot tell the two models apart; the trained perturbation can.
    assert trained["degree/source_acc_ul"] == trained["degree/unlearned_acc_ul"] == 1.0
    assert trained["degree/source_acc_p"] >= 0.9
    assert trained["degree/value"] >= 0.9
    # The gap is G's doing (an untrained G perturbs too little) and it comes from the
    # −η·CE(M_UL) term of Eq. 11 (without it G has no reason to fool M_UL).
    assert unlearning_degree(source, unlearned, forget, epochs=0)["degree/value"] == 0.0
    no_eta = unlearning_degree(source, unlearned, forget, eta=0.0, batch_size=10)
    assert no_eta["degree/value"] == 0.0


def test_degree_is_deterministic(setup):
    source, _, forget, _ = setup
    unlearned = corner_reader(forget)
    a = unlearning_degree(source, unlearned, forget, epochs=3, batch_size=10, seed=1)
    b = unlearning_degree(source, unlearned, forget, epochs=3, batch_size=10, seed=1)
    assert a == b


def test_discriminators_are_never_modified():
    torch.manual_seed(0)
    ds = make_dataset(n=40, num_classes=4, channels=3, size=8)
    forget = DeviceData.from_dataset(ds, torch.arange(40))

    def bn_net() -> nn.Module:
        # BatchNorm: its running statistics would move if the model ran in train mode.
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 8 * 8, 4))

    source, unlearned = bn_net(), bn_net()
    source.train()
    unlearned.eval()
    unlearned[0].requires_grad_(False)
    states = [state_copy(source), state_copy(unlearned)]
    unlearning_degree(source, unlearned, forget, epochs=2, batch_size=16)
    for model, before in zip((source, unlearned), states, strict=True):
        assert_same_state(model, before)
        assert all(p.grad is None for p in model.parameters())
    assert source.training and not unlearned.training
    assert all(p.requires_grad for p in source.parameters())
    assert [p.requires_grad for p in unlearned.parameters()] == [False, False] + [True] * 4


def test_discriminators_run_frozen_in_eval_mode(setup):
    source, _, forget, _ = setup
    seen: list[tuple[bool, bool]] = []

    class Watched(nn.Module):
        """Records (training, any parameter trainable) at every forward pass."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, any(p.requires_grad for p in self.parameters())))
            return self.inner(x)

    watched = Watched(copy.deepcopy(source)).train()
    unlearning_degree(watched, Watched(ConstantClass(label=1)).train(), forget, epochs=2)
    assert len(seen) == 2 * 2 + 4  # 2 epochs × 1 batch × 2 models, then 4 evaluations
    assert set(seen) == {(False, False)}
    assert watched.training and all(p.requires_grad for p in watched.parameters())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 7, 9)])
def test_generator_keeps_shape_and_tanh_bound(shape):
    torch.manual_seed(0)
    generator = make_generator(*shape, width_mult=4)
    x = 1000.0 * torch.randn(2, *shape)  # huge inputs: only the Tanh keeps the output in range
    out = generator(x)
    assert out.shape == x.shape
    assert out.abs().max() <= 1.0


def test_generator_layers_follow_fig3():
    generator = make_generator(3, 32, 32)
    kinds = [type(m).__name__ for m in generator.modules()
             if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d)]
    assert kinds == ["Conv2d", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d",
                     "ConvTranspose2d", "BatchNorm2d", "ConvTranspose2d", "Conv2d"]


def test_perturbation_is_added_in_pixel_units_and_clipped(setup):
    _, _, forget, _ = setup

    class Shift(nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, self.value)

    images = forget.images[:5]
    pixels = images.float() / 255.0
    for value in (1.0, -1.0, 0.1):
        # Undo the normalisation: the model input must be (clip(x + δ, 0, 1) − mean) / std.
        back = _perturb(Shift(value), images, forget) * forget.std + forget.mean
        torch.testing.assert_close(back, (pixels + value).clamp(0, 1))


def test_empty_forget_set_is_rejected(setup):
    source, _, forget, _ = setup
    with pytest.raises(ValueError, match="forget_data is empty"):
        unlearning_degree(source, source, forget.subset(torch.arange(0)))


@pytest.mark.parametrize("kwargs", [{"channels": 0}, {"height": 3}, {"width_mult": 0}])
def test_make_generator_rejects_bad_sizes(kwargs):
    args = {"channels": 1, "height": 8, "width": 8} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_generator(**args)


def test_relearn_own_accuracy_as_float64_target_is_zero_epochs(setup):
    """A float64 target equal to the model's own count ratio (e.g. 255/258, which float32
    rounds lower) is reached at epoch 0: the source model itself has relearn time 0."""
    source, train, _, _ = setup

    def float32_mean(n: int, k: int) -> float:  # how ``accuracy`` averages
        return float(torch.tensor([1.0] * (n - k) + [0.0] * k).mean())

    n, k = next((n, k) for n in range(20, 201) for k in range(1, 6)
                if float32_mean(n, k) < (n - k) / n)
    assert accuracy(source, train) == 1.0
    labels = train.labels[:n].clone()
    labels[:k] = (labels[:k] + 1) % 4  # exactly n - k of n right
    subset = DeviceData(train.images[:n], labels, train.ids[:n], train.mean, train.std, False)
    target = (n - k) / n  # float64, as the pipeline reads it from the source's metrics
    out = relearn_time(source, train, subset, target, RECIPE, samples=10, cap=3)
    assert out["relearn/epochs"] == 0.0 and out["relearn/reached"] == 1.0
