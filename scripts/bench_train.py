"""Benchmark: our training loop vs a plain PyTorch DataLoader loop, in one run.

Same model, same synthetic uint8 data, same batch size and number of optimizer
steps. Three loops:

- ``ours``: ``unlearn_core.train.fit`` (data resident on the device as uint8,
  batched and augmented there; bf16 autocast + channels_last on CUDA);
- ``dataloader``: the textbook loop: a ``Dataset`` doing per-sample random
  crop + flip + normalisation on the host, a ``DataLoader`` with worker
  processes and pinned memory, a host-to-device copy per step;
- ``plain_gpu_data``: a minimal hand-written loop with the data already on the
  device (bf16 + channels_last on CUDA, flip only), the ceiling a loop of this
  kind reaches.

Prints images/s for each and the ratios. Examples:

    python scripts/bench_train.py                        # CPU: LeNet, 28x28
    python scripts/bench_train.py --device cuda --model resnet18 --image-size 32 \
        --channels 3 --batch-size 512 --steps 300
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from unlearn_core.data.synthetic import random_images
from unlearn_core.data.types import ImageDataset
from unlearn_core.models import create_model
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.device_data import channel_stats
from unlearn_core.train.loop import autocast


class HostAugmented(Dataset):
    """Per-sample crop + flip + normalise on the host, as a torchvision pipeline would."""

    def __init__(self, dataset: ImageDataset, pad: int) -> None:
        self.images, self.labels = dataset.images, dataset.labels
        self.mean, self.std = channel_stats(dataset.images)
        self.pad = pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        _, h, w = img.shape
        padded = F.pad(img, (self.pad,) * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        img = padded[:, dy : dy + h, dx : dx + w]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        x = (img.float() / 255 - self.mean[:, None, None]) / self.std[:, None, None]
        return x, self.labels[i]


def timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_ours(args, dataset, device) -> float:
    data = DeviceData.from_dataset(dataset, torch.arange(dataset.num_samples), device)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=0.05,
                    schedule="constant", augment=True, compile=args.compile,
                    deterministic=args.deterministic)
    warm = Recipe(epochs=1, batch_size=args.batch_size, lr=0.05, schedule="constant",
                  augment=True, compile=args.compile, deterministic=args.deterministic)
    torch.manual_seed(0)
    model = create_model(args.model, args.classes, args.channels, args.image_size)
    fit(model, data.subset(torch.arange(args.batch_size * args.warmup)), warm, seed=0)
    return timed(device, lambda: fit(model, data, recipe, seed=0))


def train_steps(model, batches, device, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    done = 0
    while done < steps:
        for x, y in batches():
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


def fresh_model(args, device):
    torch.manual_seed(0)
    model = create_model(args.model, args.classes, args.channels, args.image_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def run_dataloader(args, dataset, device) -> float:
    loader = DataLoader(
        HostAugmented(dataset, pad=max(1, args.image_size // 8)),
        batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    model = fresh_model(args, device)
    train_steps(model, lambda: loader, device, args.warmup)
    return timed(device, lambda: train_steps(model, lambda: loader, device, args.steps))


def run_plain_gpu_data(args, dataset, device) -> float:
    images = dataset.images.to(device)
    labels = dataset.labels.to(device)
    mean, std = (t.to(device).view(1, -1, 1, 1) for t in channel_stats(dataset.images))

    def batches():
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(labels) - args.batch_size + 1, args.batch_size):
            index = order[start : start + args.batch_size]
            x = (images[index].float() / 255 - mean) / std
            flip = torch.rand(len(index), device=device) < 0.5
            yield torch.where(flip[:, None, None, None], x.flip(3), x), labels[index]

    model = fresh_model(args, device)
    train_steps(model, batches, device, args.warmup)
    return timed(device, lambda: train_steps(model, batches, device, args.steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="timed optimizer steps per loop")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile in our loop")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="cuDNN deterministic kernels in our loop (the trainer's default)")
    parser.add_argument("--loops", default="ours,dataloader,plain_gpu_data")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps_per_epoch = min(args.steps, 50)
    args.epochs = args.steps // steps_per_epoch
    args.steps = args.epochs * steps_per_epoch  # ours runs whole epochs
    dataset = random_images(steps_per_epoch * args.batch_size, args.channels, args.image_size,
                            args.classes, natural=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device={device} ({name}, {os.cpu_count()} CPUs, torch {torch.__version__}) "
          f"model={args.model} input={args.channels}x{args.image_size}x{args.image_size} "
          f"batch={args.batch_size} steps={args.steps} workers={args.workers} "
          f"compile={args.compile} deterministic={args.deterministic}")
    runners = {"ours": run_ours, "dataloader": run_dataloader,
               "plain_gpu_data": run_plain_gpu_data}
    rates = {}
    for loop in args.loops.split(","):
        seconds = runners[loop](args, dataset, device)
        rates[loop] = args.steps * args.batch_size / seconds
        print(f"{loop:>15}: {seconds:8.2f} s  {rates[loop]:10.0f} img/s", flush=True)
    if "ours" in rates:
        for other in ("dataloader", "plain_gpu_data"):
            if other in rates:
                print(f"ours / {other}: {rates['ours'] / rates[other]:.2f}x")


if __name__ == "__main__":
    main()
