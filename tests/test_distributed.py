"""Data-parallel ``fit``: W ranks on shards of each global batch == one process on the batch.

The first tests spawn two processes with gloo (no Ray); the last one runs the
references stage data-parallel through Ray Train with two workers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from tests.conftest import make_dataset
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.distributed import shard_bounds

WORLD = 2


def mlp(seed=0, size=8, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, 32), nn.ReLU(),
                         nn.Linear(32, classes))


def conv(seed=0, channels=3, size=8, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * size * size, classes))


def conv_bn(seed=0, channels=1, size=8, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * size * size, classes))


class BatchIds:
    """A hook that keeps the sample ids of every step's batch."""

    def __init__(self):
        self.ids = []

    def after_step(self, model, batch, epoch, step):
        self.ids.append(batch.ids.tolist())


# name -> (model factory, dataset kwargs, rows, recipe). Row counts leave a short
# last batch: 101 rows in batches of 10 end with a single row (rank 1's share empty),
# 75 in batches of 16 end with 11 (shares 6 and 5).
SCENARIOS = {
    "mlp_sgd": (mlp, {"n": 101}, Recipe(epochs=3, batch_size=10, lr=0.05, momentum=0.9,
                                         weight_decay=5e-4, warmup_epochs=0.5)),
    "conv_adam_augment": (conv, {"n": 75, "natural": True, "channels": 3},
                          Recipe(epochs=2, batch_size=16, optimizer="adam", lr=1e-3,
                                 schedule="constant")),
    "bn": (conv_bn, {"n": 64}, Recipe(epochs=2, batch_size=16, lr=0.05)),
}


def run_scenario(name, distributed):
    factory, data_kwargs, recipe = SCENARIOS[name]
    ds = make_dataset(num_classes=4, **data_kwargs)
    data = DeviceData.from_dataset(ds, np.arange(len(ds.labels)))
    model = factory()
    hook = BatchIds()
    result = fit(model, data, recipe, seed=3, hooks=[hook], distributed=distributed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "losses": result.epoch_losses, "ids": hook.ids,
            "steps": result.steps}


def _worker(rank, store_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank,
                            world_size=WORLD)
    try:
        out = {name: run_scenario(name, distributed=True) for name in SCENARIOS}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every scenario trained data-parallel by two spawned gloo processes."""
    folder = tmp_path_factory.mktemp("ddp")
    start = time.perf_counter()
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    print(f"two gloo ranks, {len(SCENARIOS)} scenarios: {time.perf_counter() - start:.1f}s")
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["mlp_sgd", "conv_adam_augment"])
def test_data_parallel_equals_single_process(two_ranks, name):
    single = run_scenario(name, distributed=False)
    for rank, out in enumerate(two_ranks):
        got = out[name]
        assert got["steps"] == single["steps"]
        assert got["ids"] == single["ids"], "hooks see the global batch, in the same order"
        for key, value in single["state"].items():
            torch.testing.assert_close(got["state"][key], value, atol=1e-5, rtol=1e-5,
                                       msg=lambda m, k=key, r=rank: f"rank {r} {k}: {m}")
        assert got["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # and training moved the weights: the comparison is not trivially true
    before = SCENARIOS[name][0]().state_dict()
    assert any(not torch.allclose(before[k], v) for k, v in single["state"].items())


def test_ranks_agree_with_batchnorm(two_ranks):
    """BatchNorm normalises per shard (as DDP does), but every rank ends with one model."""
    a, b = two_ranks[0]["bn"], two_ranks[1]["bn"]
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
    assert a["losses"] == b["losses"]
    single = run_scenario("bn", distributed=False)
    assert a["ids"] == single["ids"]


def test_shard_bounds_cover_every_row_once():
    for n in range(0, 23):
        for size in (1, 2, 3, 5):
            bounds = [shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            lengths = [stop - start for start, stop in bounds]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_distributed_without_process_group_is_refused():
    ds = make_dataset(n=16)
    data = DeviceData.from_dataset(ds, np.arange(16))
    with pytest.raises(RuntimeError, match="process group"):
        fit(mlp(), data, Recipe(epochs=1, batch_size=8), seed=0, distributed=True)


def test_world_of_one_is_bit_identical(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        parallel = run_scenario("mlp_sgd", distributed=True)
    finally:
        dist.destroy_process_group()
    single = run_scenario("mlp_sgd", distributed=False)
    for key, value in single["state"].items():
        assert torch.equal(parallel["state"][key], value), key


@pytest.mark.slow
def test_references_stage_data_parallel_with_ray(tmp_path):
    """Two Ray Train workers train every unit together; each unit is stored once, loadable."""
    import ray

    from pipelines.config import parse_config
    from pipelines.references import is_done, make_units, run_references
    from pipelines.run import _init_ray
    from pipelines.store import ResultsStore
    from unlearn_core.data.datasets import load_dataset
    from unlearn_core.data.manifest import SplitOptions, make_manifest
    from unlearn_core.outputs import read_outputs
    from unlearn_core.train.recorder import RecordedUpdates
    from unlearn_core.train.source import build_model, train_model

    config = parse_config({
        "name": "dp", "dataset": {"name": "digits"}, "forget": "classes=3",
        "split": {"max_train": 300},
        "source": {"model": "mlp", "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
        "references": {"count": 1, "workers": 2, "data_parallel": True},
        "methods": [{"name": "original"}], "mia_max_per_class": 50,
    })
    dataset = load_dataset("digits")
    manifest = make_manifest(dataset, config.forget, config.split.seed,
                             SplitOptions(max_train=config.split.max_train))
    store = ResultsStore.create(tmp_path / "results", config.name)
    # record the source's updates too: the recorder must run on rank 0 only
    units = make_units(config, manifest.hash, record_updates=True)
    _init_ray(None, 2)
    try:
        start = time.perf_counter()
        wall = run_references(config, units, dataset, manifest, store)
        assert all(is_done(store, u) for u in units)
        assert run_references(config, units, dataset, manifest, store) == 0.0  # nothing left
        print(f"references stage, data-parallel over 2 workers: {wall:.1f}s "
              f"({time.perf_counter() - start:.1f}s with the re-run)")
    finally:
        ray.shutdown()

    outputs = read_outputs(store.root / "outputs")
    model_ids = outputs.column("model_id").to_pylist()
    sample_ids = outputs.column("sample_id").to_pylist()
    pairs = list(zip(model_ids, sample_ids, strict=True))
    assert len(pairs) == len(set(pairs)), "a (model, sample) row was stored twice"
    assert sorted(set(model_ids)) == sorted(u.key for u in units)
    files = sorted(p.stem for p in (store.root / "outputs").rglob("*.parquet"))
    assert files == sorted(u.key for u in units), "one output file per unit"
    for unit in units:
        info = store.read_model_info(unit.key)
        assert info["key"] == unit.key and info["data_parallel_workers"] == 2
        assert model_ids.count(unit.key) == len(sample_ids) // len(units)
        model = build_model(unit.model, dataset, 0)
        meta = store.load_model(unit.key, model)
        assert meta["key"] == unit.key

    # the data-parallel source equals the same model trained in one process
    source = units[0]
    from unlearn_core.train.recipe import Recipe

    single = train_model(dataset, manifest, source.model, Recipe.from_dict(source.recipe),
                         role="source", seed=source.seed).model
    parallel = build_model(source.model, dataset, 0)
    store.load_model(source.key, parallel)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(parallel.state_dict()[key], value, atol=1e-5, rtol=1e-5)
    # the update recording (rank 0 only) saw every global batch: each train id once per epoch
    recorded = RecordedUpdates(store.local_updates(source.key))
    seen = np.sort(np.concatenate(recorded.batch_ids))
    assert np.array_equal(seen, np.sort(np.tile(manifest.ids("train"), 2)))
