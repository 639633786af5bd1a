"""Data that lives on the training device as uint8 and is batched there.

The whole split is copied to the device once; each batch is an index into it,
converted to float, normalised and (for natural images) randomly cropped and
flipped on the device. No per-step host copies, no DataLoader workers: on a GPU
this is what lets small models train at tens of thousands of images per second.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unlearn_core.data.types import ImageDataset


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # float [B, C, H, W], normalised
    y: torch.Tensor  # int64 [B]
    ids: torch.Tensor  # int64 [B], sample ids in the dataset


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, computed exactly in int64.

    Computed over the whole dataset (not a split) so that every model trained on
    any split of it sees the same input normalisation.
    """
    count = images.shape[0] * images.shape[2] * images.shape[3]
    total = images.sum(dim=(0, 2, 3), dtype=torch.int64).double()
    squares = (images.long() ** 2).sum(dim=(0, 2, 3)).double()
    mean = total / count
    var = squares / count - mean**2
    std = var.clamp_min(1e-12).sqrt()
    return (mean / 255.0).float(), (std / 255.0).float().clamp_min(1e-3)


class DeviceData:
    """A subset of an ImageDataset resident on one device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        ids: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool,
    ) -> None:
        self.images = images
        self.labels = labels
        self.ids = ids
        self.mean = mean.to(images.device).view(1, -1, 1, 1)
        self.std = std.to(images.device).view(1, -1, 1, 1)
        self.augment = augment

    @classmethod
    def from_dataset(
        cls,
        dataset: ImageDataset,
        ids: np.ndarray | torch.Tensor,
        device: torch.device | str = "cpu",
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> DeviceData:
        index = torch.as_tensor(np.asarray(ids), dtype=torch.int64)
        mean, std = stats if stats is not None else dataset_stats(dataset)
        device = torch.device(device)
        return cls(
            images=dataset.images[index].to(device),
            labels=dataset.labels[index].to(device),
            ids=index.to(device),
            mean=mean,
            std=std,
            augment=dataset.natural_images,
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, positions: torch.Tensor | np.ndarray) -> DeviceData:
        """Rows at ``positions`` (indices into this object, not sample ids)."""
        index = torch.as_tensor(np.asarray(positions), dtype=torch.int64, device=self.device)
        return DeviceData(
            self.images[index], self.labels[index], self.ids[index], self.mean, self.std,
            self.augment,
        )

    def with_labels(self, labels: torch.Tensor) -> DeviceData:
        """Same images with other labels (label flipping, random labels)."""
        return DeviceData(
            self.images, labels.to(self.device), self.ids, self.mean, self.std, self.augment
        )

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return (images_uint8.float() / 255.0 - self.mean) / self.std

    def all(self) -> Batch:
        """The whole set as one (unaugmented) batch: for small sets only."""
        return Batch(self.normalise(self.images), self.labels, self.ids)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: bool | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches. ``generator`` (a CPU generator) drives order and augmentation.

        The permutation is drawn on the CPU (one small copy per epoch) so that the
        same seed gives the same batches on every device.
        """
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        do_augment = self.augment if augment is None else augment
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            images = self.images[index]
            if do_augment:
                images = random_crop_flip(images, generator)
            yield Batch(self.normalise(images), self.labels[index], self.ids[index])


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator | None, padding: int | None = None
) -> torch.Tensor:
    """Random crop after zero padding plus horizontal flip, per sample, on the device.

    Padding defaults to size/8 (4 px at 32x32, the standard CIFAR recipe).
    Offsets are drawn on the CPU generator for device-independent determinism,
    then applied with one gather.
    """
    b, _, h, w = images.shape
    pad = padding if padding is not None else max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(images.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)[None, :]  # [B, H]
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)[None, :]  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=images.device)[:, None, None]
    # padded[b, :, rows[b, i], cols[b, j]] -> [B, H, W, C]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


# id(images) -> (weak reference to those images, mean, std). The weak reference is
# checked on every hit: once a tensor is freed its id can be reused by another one (of
# another dataset, even with another channel count), and keying on the id alone then
# returned the old dataset's stats.
_STATS_CACHE: dict[int, tuple[weakref.ref, torch.Tensor, torch.Tensor]] = {}


def dataset_stats(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel stats of a dataset, computed once per loaded dataset object."""
    images = dataset.images
    entry = _STATS_CACHE.get(id(images))
    if entry is None or entry[0]() is not images:
        for key in [k for k, (ref, _, _) in _STATS_CACHE.items() if ref() is None]:
            del _STATS_CACHE[key]  # freed datasets
        entry = (weakref.ref(images), *channel_stats(images))
        _STATS_CACHE[id(images)] = entry
    return entry[1], entry[2]
