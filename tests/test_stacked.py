"""Stacked training (unlearn_core/train/stacked.py, pipelines/reference_packs.py).

Each model of a stacked pack must end where ``fit`` alone with its seed ends:
same initialisation, data order, augmentation, optimizer and LR schedule, and
BatchNorm statistics of its own. Float32 tests use BatchNorm-free models: the
BatchNorm nets (allcnn, resnet9) on 8×8 images are chaotic in float32, one at a
time too (a 1e-7 relative nudge to the initial weights moves some of their
weights by 1e-2 within 4 steps: a ReLU input within rounding of 0 flips, and
BatchNorm's nearly cancelling bias gradient changes by a large fraction), so
the grouped-convolution rounding of ``vmap`` is only a coin flip away from
1e-2 there. They are tested in float64, where rounding is 1e-16 and a flip
never happens; float64 still runs every path (per-model generators, optimizer,
BatchNorm running stats).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.conftest import make_dataset
from unlearn_core.data.manifest import make_manifest
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.source import build_model
from unlearn_core.train.stacked import (
    CPU_MAX_PACK,
    MAX_PACK,
    StackingUnsupported,
    fit_stacked,
    model_footprint,
    pack_capacity,
)

SEEDS = (11, 12, 13)


def worst_relative(a: nn.Module, b: nn.Module) -> float:
    """Max over tensors of max|a - b| / max|a|; integer buffers must match exactly."""
    worst = 0.0
    sb = b.state_dict()
    for name, x in a.state_dict().items():
        y = sb[name]
        if not x.dtype.is_floating_point:
            assert torch.equal(x, y), name
            continue
        worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)))
    return worst


class ToDouble(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def build(name: str, dataset, seed: int, dtype: torch.dtype) -> nn.Module:
    model = build_model(name, dataset, seed)
    if dtype == torch.float64:
        return nn.Sequential(ToDouble(), model.double())
    return model


def compare(name: str, dtype: torch.dtype, recipe: Recipe, natural: bool,
            grouped_kernels: bool = True) -> tuple[float, float]:
    """(worst stacked-vs-alone relative difference, smallest difference between models)."""
    channels = 3 if natural else 1
    dataset = make_dataset(n=40, channels=channels, size=8, natural=natural)
    data = DeviceData.from_dataset(dataset, range(len(dataset.labels)))
    alone = [build(name, dataset, s, dtype) for s in SEEDS]
    alone_fits = [fit(m, data, recipe, seed=s) for m, s in zip(alone, SEEDS, strict=True)]
    stacked = [build(name, dataset, s, dtype) for s in SEEDS]
    stacked_fits = fit_stacked(stacked, data, recipe, seeds=SEEDS,
                               grouped_kernels=grouped_kernels)
    worst = max(worst_relative(a, b) for a, b in zip(alone, stacked, strict=True))
    for a, b in zip(alone_fits, stacked_fits, strict=True):
        assert a.steps == b.steps
        assert b.epoch_losses == pytest.approx(a.epoch_losses, rel=1e-4)
    apart = min(worst_relative(stacked[i], stacked[j]) for i in range(3) for j in range(i))
    return worst, apart


SGD = Recipe(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5)  # Nesterov, wd, cosine
ADAM = Recipe(epochs=2, batch_size=16, optimizer="adam", lr=1e-3, schedule="step",
              milestones=(1,), gamma=0.5)


@pytest.mark.parametrize("name,natural,recipe", [
    ("mlp", False, SGD), ("convnet", True, SGD), ("lenet", False, SGD), ("mlp", False, ADAM),
], ids=["mlp-sgd", "convnet-sgd", "lenet-sgd", "mlp-adam"])
def test_stacked_matches_one_at_a_time_float32(name: str, natural: bool, recipe: Recipe):
    # Adam on conv nets is left to float64: an element whose gradient is rounding noise
    # gets a full-lr step of either sign (convnet: 1.5e-4 here, 8e-5 for a 1e-7 nudge
    # of the initial weights one at a time).
    worst, apart = compare(name, torch.float32, recipe, natural)
    assert worst <= 1e-4, f"{name}: stacked differs from one-at-a-time by {worst:.2e}"
    assert apart > 1e-2  # distinct seeds: distinct models (nothing shared by mistake)


@pytest.mark.parametrize("recipe", [SGD, ADAM], ids=["sgd", "adam"])
def test_mlp_through_vmap_matches_one_at_a_time_too(recipe: Recipe):
    # The mlp normally takes the written-out baddbmm path; the vmap path must agree too.
    worst, apart = compare("mlp", torch.float32, recipe, natural=False, grouped_kernels=False)
    assert worst <= 1e-4, f"mlp via vmap differs from one-at-a-time by {worst:.2e}"
    assert apart > 1e-2


def test_linear_plan_takes_only_plain_fully_connected_stacks():
    from unlearn_core.models import Classifier, create_model
    from unlearn_core.train._stacked_linear import linear_plan

    assert linear_plan(create_model("mlp", 10, 1, 8)) == [
        ("flatten", "body.0"), ("linear", "body.1"), ("relu", "body.2"), ("linear", "head")]
    for name in ("convnet", "lenet", "resnet9"):
        assert linear_plan(create_model(name, 10, 3, 8)) is None, name

    class Scaled(Classifier):  # a subclass may change forward: not planned
        def forward(self, x):
            return 2 * super().forward(x)

    mlp = create_model("mlp", 10, 1, 8)
    assert linear_plan(Scaled(mlp.body, mlp.head)) is None
    # A Linear before any Flatten would act on the image's last axis only.
    assert linear_plan(nn.Sequential(nn.Linear(8, 4), nn.Flatten())) is None
    assert linear_plan(nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(64, 4))) is None


def test_written_out_stack_matches_vmap_on_unusual_stacks():
    # ReLU straight after Flatten (on the caller's batch), two ReLUs in a row, a bias-free
    # layer: the in-place ReLU must never touch what autograd or the caller still needs.
    from unlearn_core.train._stacked_linear import linear_plan

    dataset = make_dataset(n=40, channels=1, size=8)
    data = DeviceData.from_dataset(dataset, range(40))

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(64, 32, bias=False),
                             nn.ReLU(), nn.ReLU(), nn.Identity(), nn.Linear(32, 4))

    assert linear_plan(build(0)) is not None
    grouped = [build(s) for s in SEEDS]
    mapped = [build(s) for s in SEEDS]
    before = data.images.clone()
    fit_stacked(grouped, data, SGD, seeds=SEEDS)
    fit_stacked(mapped, data, SGD, seeds=SEEDS, grouped_kernels=False)
    assert torch.equal(data.images, before)
    assert max(worst_relative(a, b) for a, b in zip(mapped, grouped, strict=True)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name,recipe", [
    ("mlp", SGD), ("convnet", SGD), ("lenet", SGD), ("allcnn", SGD), ("resnet9", SGD),
    ("convnet", ADAM), ("allcnn", ADAM),
], ids=["mlp", "convnet", "lenet", "allcnn", "resnet9", "convnet-adam", "allcnn-adam"])
def test_stacked_matches_one_at_a_time_float64(name: str, recipe: Recipe):
    # natural images: crop+flip augmentation per model, from each model's generator
    worst, apart = compare(name, torch.float64, recipe, natural=True)
    assert worst <= 1e-9, f"{name}: stacked differs from one-at-a-time by {worst:.2e}"
    assert apart > 1e-2


def test_stacked_batches_are_each_models_own_batches():
    from unlearn_core.train.stacked import stacked_batches

    dataset = make_dataset(n=37, channels=3, size=8, natural=True)
    data = DeviceData.from_dataset(dataset, range(37))
    alone = [list(data.batches(8, shuffle=True, generator=torch.Generator().manual_seed(s),
                               augment=None)) for s in SEEDS]
    stacked = list(stacked_batches(data, 8, [torch.Generator().manual_seed(s) for s in SEEDS],
                                   None))
    assert len(stacked) == len(alone[0]) == 5  # the short last batch included
    for step, (x, y) in enumerate(stacked):
        for k in range(len(SEEDS)):
            assert torch.equal(x[k], alone[k][step].x)  # bit-identical crops and flips
            assert torch.equal(y[k], alone[k][step].y)


def test_batchnorm_running_stats_are_per_model():
    dataset = make_dataset(n=24, channels=3, size=8, natural=True)
    data = DeviceData.from_dataset(dataset, range(24))
    recipe = Recipe(epochs=1, batch_size=8, lr=0.01)
    alone = [build("allcnn", dataset, s, torch.float64) for s in SEEDS[:2]]
    for model, seed in zip(alone, SEEDS, strict=False):
        fit(model, data, recipe, seed=seed)
    stacked = [build("allcnn", dataset, s, torch.float64) for s in SEEDS[:2]]
    fit_stacked(stacked, data, recipe, seeds=SEEDS[:2])
    for a, b in zip(alone, stacked, strict=True):
        for (name, x), y in zip(a.named_buffers(), b.buffers(), strict=True):
            assert torch.allclose(x.double(), y.double(), rtol=1e-9, atol=1e-12), name
    first = dict(stacked[0].named_buffers())
    second = dict(stacked[1].named_buffers())
    assert not torch.equal(first["1.body.0.1.running_mean"], second["1.body.0.1.running_mean"])
    assert int(first["1.body.0.1.num_batches_tracked"]) == 3


def test_dropout_model_is_refused_with_the_reason():
    dataset = make_dataset(n=16, channels=3, size=8)
    data = DeviceData.from_dataset(dataset, range(16))
    models = [build_model("alexnet", dataset, s) for s in SEEDS[:2]]
    with pytest.raises(StackingUnsupported, match="Dropout.*one-at-a-time"):
        fit_stacked(models, data, Recipe(epochs=1, batch_size=8), seeds=SEEDS[:2])


def test_mixed_architectures_are_refused():
    dataset = make_dataset(n=16)
    data = DeviceData.from_dataset(dataset, range(16))
    models = [build_model("mlp", dataset, 0), build_model("lenet", dataset, 1)]
    with pytest.raises(StackingUnsupported, match="one architecture"):
        fit_stacked(models, data, Recipe(epochs=1, batch_size=8), seeds=[0, 1])


def test_pack_capacity_follows_the_budget():
    dataset = make_dataset(n=16)
    model = build_model("mlp", dataset, 0)
    recipe = Recipe(batch_size=128)
    one = model_footprint(model, recipe, (1, 8, 8))
    params = sum(p.numel() for p in model.parameters())
    assert one > 4 * params * 3  # weights, gradients and momentum at least
    cpu = torch.device("cpu")
    assert pack_capacity(model, recipe, (1, 8, 8), cpu, budget=int(3.5 * one)) == 3
    assert pack_capacity(model, recipe, (1, 8, 8), cpu, budget=one // 2) == 1
    assert pack_capacity(model, recipe, (1, 8, 8), cpu, budget=1000 * one) == CPU_MAX_PACK
    adam = model_footprint(model, Recipe(batch_size=128, optimizer="adam"), (1, 8, 8))
    assert adam - one == 4 * params  # Adam keeps one more state tensor than SGD momentum
    lenet = build_model("lenet", dataset, 0)
    assert pack_capacity(lenet, recipe, (1, 8, 8), cpu, budget=1000 * one) == 1


# ---------------------------------------------------------------- pipeline packs


def _units(model: str, count: int, recipe: Recipe, **extra):
    from pipelines.references import TrainUnit

    return [TrainUnit(key=f"retrain-{model}-{i}", role="retrain", seed=100 + i, model=model,
                      recipe=recipe.to_dict(), **extra) for i in range(count)]


def test_pack_stores_what_one_at_a_time_stores(tmp_path):
    from pipelines.reference_packs import train_pack
    from pipelines.references import train_unit
    from pipelines.store import ResultsStore
    from unlearn_core.outputs import read_output_files

    dataset = make_dataset(n=120)
    manifest = make_manifest(dataset, "classes=1", seed=0)
    units = _units("mlp", 3, Recipe(epochs=2, batch_size=16, lr=0.05))
    cpu = torch.device("cpu")
    plain = ResultsStore.create(tmp_path / "plain", "x")
    packed = ResultsStore.create(tmp_path / "packed", "x")
    plain_infos = [train_unit(u, dataset, manifest, plain, cpu, mia_max_per_class=10)
                   for u in units]
    packed_infos = train_pack(units, dataset, manifest, packed, cpu, mia_max_per_class=10)
    for unit, a, b in zip(units, plain_infos, packed_infos, strict=True):
        assert packed.model_done(unit.key)
        assert b.pop("stacked_models") == 3
        assert set(a) == set(b)
        for key in set(a) - {"metrics", "train_seconds"}:
            assert a[key] == b[key], key
        assert b["metrics"] == pytest.approx(a["metrics"], rel=1e-3, abs=1e-3)
        models = [build_model("mlp", dataset, 0) for _ in range(2)]
        plain.load_model(unit.key, models[0])
        packed.load_model(unit.key, models[1])
        assert worst_relative(*models) <= 1e-4
        tables = [read_output_files(s.store.fs, [s.store.path(s.outputs_rel("retrain", unit.key))])
                  for s in (plain, packed)]
        assert tables[0].num_rows == tables[1].num_rows > 0
        for column in ("model_id", "seed", "method", "split", "sample_id", "label"):
            assert tables[0][column].equals(tables[1][column]), column
        logits = [torch.tensor(t["logits"].to_pylist()) for t in tables]
        assert torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_pack_falls_back_to_one_at_a_time_for_dropout(tmp_path, caplog):
    from pipelines.reference_packs import train_pack
    from pipelines.references import train_unit
    from pipelines.store import ResultsStore

    dataset = make_dataset(n=60, channels=3)
    manifest = make_manifest(dataset, "classes=1", seed=0)
    units = _units("alexnet", 2, Recipe(epochs=1, batch_size=16, lr=0.01))
    cpu = torch.device("cpu")
    plain = ResultsStore.create(tmp_path / "plain", "x")
    packed = ResultsStore.create(tmp_path / "packed", "x")
    with caplog.at_level("WARNING"):
        infos = train_pack(units, dataset, manifest, packed, cpu, mia_max_per_class=10)
    assert "one at a time" in caplog.text and "Dropout" in caplog.text
    assert all("stacked_models" not in info for info in infos)
    train_unit(units[0], dataset, manifest, plain, cpu, mia_max_per_class=10)
    models = [build_model("alexnet", dataset, 0) for _ in range(2)]
    plain.load_model(units[0].key, models[0])
    packed.load_model(units[0].key, models[1])
    assert worst_relative(*models) == 0.0  # the very same path: bit-identical


def test_make_packs_groups_what_can_stack(caplog):
    from pipelines.reference_packs import auto_pack_size, make_packs
    from pipelines.references import TrainUnit

    dataset = make_dataset(n=16)
    recipe = Recipe(epochs=1)
    source = TrainUnit(key="source-x", role="source", seed=0, model="mlp",
                       recipe=recipe.to_dict(), record_updates=True)
    refs = _units("mlp", 5, recipe)
    pruned = _units("lenet", 2, recipe, sparsity=0.5)
    with caplog.at_level("WARNING"):
        packs = make_packs([source, *refs, *pruned], dataset, size=2)
    assert [len(p) for p in packs] == [1, 1, 1, 2, 2, 1]
    assert packs[0] == [source]
    assert [u.key for p in packs[3:] for u in p] == [u.key for u in refs]
    assert "2 model(s) train one per task" in caplog.text and "pruning" in caplog.text
    assert [len(p) for p in make_packs(refs, dataset, size=1)] == [1] * 5
    assert auto_pack_size([source, *_units("mlp", 32, recipe)], dataset, 2, False) == 16
    assert auto_pack_size(_units("mlp", 33, recipe), dataset, 2, False) == 17
    assert auto_pack_size(_units("mlp", 1000, recipe), dataset, 1, False) == MAX_PACK
    assert auto_pack_size([source], dataset, 4, False) == 1
    # grouped convolutions are slower than plain ones on the CPU: no packs there
    assert auto_pack_size(_units("lenet", 32, recipe), dataset, 2, False) == 1
    assert auto_pack_size(_units("lenet", 32, recipe), dataset, 2, True) == 16


def test_pack_config_field():
    from pipelines.config import parse_config
    from unlearn_core.errors import UserInputError

    base = {"name": "x", "methods": [{"name": "original"}]}
    assert parse_config(base).references.pack == 0
    assert parse_config({**base, "references": {"pack": 8}}).references.pack == 8
    with pytest.raises(UserInputError, match="references.pack"):
        parse_config({**base, "references": {"pack": -1}})
    with pytest.raises(UserInputError, match="data_parallel"):
        parse_config({**base, "references": {"pack": 4, "data_parallel": True}})
