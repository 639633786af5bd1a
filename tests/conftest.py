"""Shared fixtures: tiny synthetic datasets built in memory (no files, no downloads)."""

from __future__ import annotations

import pytest
import torch

from unlearn_core.data.types import ImageDataset

# Tiny test models gain nothing from threads, and on a shared 2-core machine
# OpenMP spinning makes them many times slower.
torch.set_num_threads(1)


def make_dataset(
    n: int = 200, num_classes: int = 4, channels: int = 1, size: int = 8, groups: int = 0,
    official_test: int = 0, seed: int = 0, natural: bool = False,
) -> ImageDataset:
    """Separable synthetic images: each class lights up its own block of pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.uint8)
    for cls in range(num_classes):
        rows = slice((cls * size) // num_classes, ((cls + 1) * size) // num_classes)
        images[labels == cls, :, rows, :] += 150
    test_mask = None
    if official_test:
        test_mask = torch.zeros(n, dtype=torch.bool)
        test_mask[-official_test:] = True
    return ImageDataset(
        name="synthetic",
        images=images,
        labels=labels.long(),
        num_classes=num_classes,
        official_test=test_mask,
        groups=(torch.arange(n) // max(1, n // groups)).long() if groups else None,
        natural_images=natural,
    )


def make_sweep_context(tmp_path, max_retries: int):
    """A SweepContext over a tiny synthetic class-1 task: a stored MLP source ("src") and
    fixed reference metrics, for tests of trials and scheduling without a references stage."""
    import numpy as np

    from pipelines.evaluate import ReferenceSummary
    from pipelines.store import ResultsStore
    from pipelines.trial import SweepContext
    from unlearn_core.data.manifest import make_manifest
    from unlearn_core.train.recipe import Recipe
    from unlearn_core.train.source import build_model

    ds = make_dataset(n=160, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0)
    store = ResultsStore.create(tmp_path, "t")
    store.save_model("src", build_model("mlp", ds, seed=0), {})
    references = ReferenceSummary(
        metrics={"ua": 1.0, "mia/efficacy": 0.9, "retain/acc": 1.0, "test/acc": 0.9},
        forget_logits=np.zeros((0, 0, 4), dtype=np.float32), retrain_seconds=1.0)
    return SweepContext(dataset=ds, manifest=manifest, store=store, source_key="src",
                        source_model="mlp", source_recipe=Recipe(epochs=1).to_dict(),
                        references=references, objective_metric="disparity/avg",
                        objective_mode="min", mia_max_per_class=50, max_retries=max_retries)


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    return make_dataset()


def recorded_source(folder, epochs: int):
    """A tiny MLP source trained with the update recorder on (amnesiac methods need it):
    (dataset, manifest with a retain subset, recipe, source, RecordedUpdates)."""
    from unlearn_core.data.manifest import SplitOptions, make_manifest
    from unlearn_core.train import DeviceData, Recipe, fit
    from unlearn_core.train.recorder import RecordedUpdates, UpdateRecorder
    from unlearn_core.train.source import build_model

    ds = make_dataset(n=240, num_classes=4)
    manifest = make_manifest(ds, "classes=1", seed=0,
                             options=SplitOptions(retain_subset_per_class=10))
    recipe = Recipe(epochs=epochs, batch_size=32, lr=0.05)
    source = build_model("mlp", ds, seed=0)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), recipe, seed=0,
        hooks=[UpdateRecorder(folder)])
    return ds, manifest, recipe, source, RecordedUpdates(folder)


# ---------------------------------------------------------------------------- real services
# A SeaweedFS S3 server and a multi-node Ray cluster on 127.0.0.1 (tests/services.py).

import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from tests.services import RayCluster, S3Server, start_seaweedfs  # noqa: E402


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole session (stopped by PID at the end)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch) -> str:
    """This test's process reaches ``s3_server`` through the standard AWS_* variables;
    returns a fresh bucket name (not created: ``Store.at`` creates it)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3",
                 "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def ray_cluster(s3_server: S3Server, tmp_path_factory) -> Iterator[RayCluster]:
    """A Ray head (no CPUs) and 2 worker nodes (1 CPU each), separate ``ray start``
    processes on 127.0.0.1, for the module. The worker nodes carry ``s3_server``'s
    credentials and share no disk with the driver under pytest's base temp folder (every
    ``tmp_path`` is an empty tmpfs to them). No driver: see ``ray_driver``."""
    cluster = RayCluster.start(num_workers=2, worker_env=s3_server.env(),
                               isolate_path=tmp_path_factory.getbasetemp())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_driver(ray_cluster: RayCluster) -> Iterator[RayCluster]:
    """This process connected to ``ray_cluster`` as its driver (``ray.shutdown()`` after
    the module); yields the cluster."""
    with ray_cluster.connect():
        yield ray_cluster
