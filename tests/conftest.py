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
