import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import make_dataset
from unlearn_core.data.manifest import make_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.train import DeviceData, Recipe, accuracy, fit, random_crop_flip
from unlearn_core.train.loop import lr_factor
from unlearn_core.train.recorder import (
    PruneSpec,
    RecordedUpdates,
    UpdateRecorder,
    layer_schedule,
)
from unlearn_core.train.sparsity import MaskHook, prune_model, sparsity_of


def tiny_net(num_classes=4, channels=1, size=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * size * size, 16), nn.ReLU(), nn.Linear(16, num_classes),
    )


@pytest.fixture
def setup():
    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0)
    data = DeviceData.from_dataset(ds, manifest.ids("train"))
    return ds, manifest, data


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(setup):
    _, _, data = setup
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    a, b, c = tiny_net(), tiny_net(), tiny_net()
    fit(a, data, recipe, seed=7)
    fit(b, data, recipe, seed=7)
    fit(c, data, recipe, seed=8)
    for key, value in weights(a).items():
        assert torch.equal(value, weights(b)[key]), key
    assert any(not torch.equal(v, weights(c)[k]) for k, v in weights(a).items())


def test_learns_separable_data(setup):
    ds, manifest, data = setup
    model = tiny_net()
    result = fit(model, data, Recipe(epochs=8, batch_size=32, lr=0.05), seed=0)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    test = DeviceData.from_dataset(ds, manifest.ids("test"))
    assert accuracy(model, test) > 0.9


def test_restricted_parameters_only_those_change(setup):
    _, _, data = setup
    model = tiny_net()
    before = weights(model)
    last = model[-1]
    fit(model, data, Recipe(epochs=1, batch_size=32, weight_decay=0.0), seed=0,
        parameters=last.parameters())
    after = weights(model)
    assert not torch.equal(before["6.weight"], after["6.weight"])
    assert torch.equal(before["0.weight"], after["0.weight"])


def test_random_crop_flip_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8).to(torch.uint8)
    out = random_crop_flip(images, g, padding=1)
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_augment_changes_batches_deterministically():
    ds = make_dataset(n=64, natural=True, channels=3, size=8)
    data = DeviceData.from_dataset(ds, np.arange(64))
    first = next(data.batches(64, generator=torch.Generator().manual_seed(1))).x
    again = next(data.batches(64, generator=torch.Generator().manual_seed(1))).x
    plain = next(data.batches(64, augment=False)).x
    assert torch.equal(first, again)
    assert not torch.equal(first, plain)


def test_lr_schedules():
    cosine = Recipe(epochs=10, schedule="cosine")
    assert lr_factor(cosine, 0, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 100, 10) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(cosine, 50, 10) == pytest.approx(0.5)
    step = Recipe(epochs=10, schedule="step", milestones=(3, 6), gamma=0.1)
    assert lr_factor(step, 29, 10) == pytest.approx(1.0)
    assert lr_factor(step, 30, 10) == pytest.approx(0.1)
    assert lr_factor(step, 65, 10) == pytest.approx(0.01)
    warm = Recipe(epochs=10, schedule="constant", warmup_epochs=1)
    assert lr_factor(warm, 4, 10) == pytest.approx(0.5)


def test_recipe_validation():
    with pytest.raises(UserInputError, match="optimizer"):
        Recipe(optimizer="lion").validate()
    with pytest.raises(UserInputError, match="unknown field"):
        Recipe.from_dict({"epochs": 1, "lrr": 0.1})
    assert Recipe.from_dict(Recipe(milestones=(2,)).to_dict()) == Recipe(milestones=(2,))


def test_recorder_round_trip_sums_to_weight_change(setup, tmp_path):
    _, manifest, data = setup
    model = tiny_net()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    recorder = UpdateRecorder(tmp_path / "rec", chunk_steps=5)
    result = fit(model, data, Recipe(epochs=2, batch_size=32, lr=0.05), seed=0, hooks=[recorder])
    recorded = RecordedUpdates(tmp_path / "rec")
    assert len(recorded.steps) == result.steps
    total = recorded.sum_updates(recorded.steps)
    for name, param in model.named_parameters():
        expected = (param.detach() - initial[name]).double()
        torch.testing.assert_close(total[name], expected, atol=1e-5, rtol=1e-5)
    # every training sample appears once per epoch
    seen = np.concatenate(recorded.batch_ids)
    assert sorted(seen) == sorted(np.tile(manifest.ids("train"), 2))
    forget = manifest.ids("forget")
    affected = recorded.affected_steps(forget)
    assert all(np.isin(recorded.batch_ids[s], forget).any() for s in affected)
    assert 0 < recorded.affected_share(forget) <= 1
    assert recorded.bytes_on_disk > 0


@pytest.mark.parametrize("kind", ["random", "magnitude", "global"])
def test_recorder_pruning_stores_less(setup, tmp_path, kind):
    _, _, data = setup
    full_dir, pruned_dir = tmp_path / "full", tmp_path / "pruned"
    fit(tiny_net(), data, Recipe(epochs=1, batch_size=32), seed=0,
        hooks=[UpdateRecorder(full_dir)])
    fit(tiny_net(), data, Recipe(epochs=1, batch_size=32), seed=0,
        hooks=[UpdateRecorder(pruned_dir, PruneSpec(kind, 0.9))])
    full, pruned = RecordedUpdates(full_dir), RecordedUpdates(pruned_dir)
    assert pruned.bytes_on_disk < 0.5 * full.bytes_on_disk
    a, b = full.update(0), pruned.update(0)
    weight = "4.weight"
    kept = (b[weight] != 0).float().mean().item()
    assert kept == pytest.approx(0.1, abs=0.02)
    # kept entries are the recorded update's own values
    mask = b[weight] != 0
    torch.testing.assert_close(b[weight][mask], a[weight][mask])
    if kind == "magnitude":
        assert a[weight][mask].abs().min() >= a[weight][~mask].abs().max()


def test_layer_schedule():
    assert layer_schedule(3, 0.9, 0.1) == pytest.approx([0.9, 0.5, 0.1])
    exp = layer_schedule(4, 0.9, 0.0, "exponential")
    assert exp[0] == pytest.approx(0.9) and exp[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(x >= y for x, y in zip(exp, exp[1:], strict=False))
    with pytest.raises(UserInputError):
        layer_schedule(3, 1.5, 0.1)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_and_keeps_sparsity(setup, scope):
    _, _, data = setup
    model = tiny_net()
    fit(model, data, Recipe(epochs=1, batch_size=32), seed=0)
    masks = prune_model(model, 0.9, scope)
    assert sparsity_of(model) == pytest.approx(0.9, abs=1e-3)
    fit(model, data, Recipe(epochs=2, batch_size=32, lr=0.05), seed=1, hooks=[MaskHook(masks)])
    assert sparsity_of(model) == pytest.approx(0.9, abs=1e-3)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sparsity_guard_keeps_pruned_weights_zero_in_any_loop(optimizer):
    """Seed 004's sparse protocol: gradient hooks keep zeros, finish() re-masks writes."""
    from unlearn_core.train.source import build_model
    from unlearn_core.train.sparsity import SparsityGuard, masks_from_zeros

    ds = make_dataset(n=64, num_classes=4)
    model = build_model("mlp", ds, seed=0)
    prune_model(model, 0.9)
    before = sparsity_of(model)
    guard = SparsityGuard(masks_from_zeros(model))
    guard.start(model)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
           if optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=0.01))
    data = DeviceData.from_dataset(ds, torch.arange(64))
    for _ in range(5):  # a hand-written loop, not fit(): the guard must not rely on hooks
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.images.float()), data.labels).backward()
        opt.step()
    assert sparsity_of(model) == before  # exact zeros kept by the gradient hooks
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a method writing weights directly (Top-K, Fisher noise)
    guard.finish(model)
    assert sparsity_of(model) == before


def test_dataset_stats_never_served_to_another_dataset_reusing_the_id():
    """The stats cache was keyed by id(images): a freed dataset's id, reused by another
    (here with another channel count), returned the wrong mean/std (a 1-channel batch
    then broadcast to 3 channels). A stale entry must be recomputed."""
    from unlearn_core.train import device_data

    rgb = make_dataset(n=40, channels=3)
    mean_rgb, _ = device_data.dataset_stats(rgb)
    assert mean_rgb.shape == (3,)
    gray = make_dataset(n=40, channels=1)
    # force the collision the garbage collector produces by chance: gray's id now maps
    # to an entry made for the RGB images
    device_data._STATS_CACHE[id(gray.images)] = device_data._STATS_CACHE[id(rgb.images)]
    mean, std = device_data.dataset_stats(gray)
    assert mean.shape == (1,) and std.shape == (1,)
    data = DeviceData.from_dataset(gray, torch.arange(8))
    assert next(data.batches(4, shuffle=False)).x.shape[1] == 1
