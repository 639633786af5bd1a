"""Random uint8 images with random labels: data for speed benchmarks, where only the
shapes matter (a GPU machine for benchmarks may hold no dataset files)."""

from __future__ import annotations

import torch

from unlearn_core.data.types import ImageDataset


def random_images(n: int, channels: int, size: int, classes: int, *, natural: bool,
                  seed: int = 0) -> ImageDataset:
    """``n`` images of ``channels`` x ``size`` x ``size``, uniform in [0, 255], labels
    uniform over ``classes``; ``natural`` turns on crop + flip augmentation in training."""
    generator = torch.Generator().manual_seed(seed)
    return ImageDataset(
        name="synthetic",
        images=torch.randint(0, 256, (n, channels, size, size), generator=generator,
                             dtype=torch.uint8),
        labels=torch.randint(0, classes, (n,), generator=generator),
        num_classes=classes,
        natural_images=natural,
    )
