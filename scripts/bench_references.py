"""Benchmark: N references one at a time vs stacked (``torch.func``) vs through the pipeline.

Training only (no evaluation), in one process, interleaved and repeated:

- ``alone``: ``fit`` per model, one after the other (what a one-model pool task does);
- ``stacked K=k``: ``fit_stacked`` on packs of k models (``auto``: ``pack_capacity``);

and each model's weights are compared (max relative difference per tensor, stacked
vs alone). Then, when Ray is importable (CPU only), the references stage itself:
source + N references trained, evaluated and stored by ``run_references`` on a local
Ray with ``--workers`` CPUs, ``references.pack: 1`` (one model per task) vs the
default (auto packs). Ray is started once per mode and not timed.

Only torch (and torchvision, for the model zoo) are needed for the training part:
the pipeline is imported only for its own comparison, and skipped with a note
when Ray is missing (a GPU machine with torch alone).

    # CPU: 32 digits MLPs, then MNIST LeNets on the official test set (IDX files)
    python scripts/bench_references.py --dataset digits --model mlp --count 32
    python scripts/bench_references.py --dataset mnist --mnist-root DIR --model lenet \\
        --count 8 --epochs 2 --no-pipeline
    # CUDA: 64 small CNNs (--dataset synthetic where no MNIST files are at hand)
    python scripts/bench_references.py --device cuda --dataset mnist --mnist-root DIR \\
        --model convnet --count 64 --epochs 2 --packs auto --no-pipeline
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import torch
import torch.nn as nn

from unlearn_core.data.datasets import load_dataset
from unlearn_core.data.synthetic import random_images
from unlearn_core.data.types import ImageDataset
from unlearn_core.models import create_model
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import fit
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.stacked import fit_stacked, pack_capacity

FORGET_CLASS = 3  # the retain set of the quickstart's "classes=3" forget spec


def build(name: str, dataset: ImageDataset, seed: int) -> nn.Module:
    # As unlearn_core.train.source.build_model, which imports the split manifest and
    # with it pyarrow: this script's training part needs torch only.
    torch.manual_seed(seed)
    return create_model(name, dataset.num_classes, dataset.in_channels, dataset.image_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_alone(name: str, dataset: ImageDataset, data: DeviceData, recipe: Recipe,
                seeds: list[int]) -> tuple[tuple[float, float], list[nn.Module]]:
    sync(data.device)
    start, cpu = time.perf_counter(), time.process_time()
    models = []
    for seed in seeds:
        model = build(name, dataset, seed)
        fit(model, data, recipe, seed=seed)
        models.append(model)
    sync(data.device)
    return (time.perf_counter() - start, time.process_time() - cpu), models


def train_stacked(name: str, dataset: ImageDataset, data: DeviceData, recipe: Recipe,
                  seeds: list[int], pack: int) -> tuple[tuple[float, float], list[nn.Module]]:
    sync(data.device)
    start, cpu = time.perf_counter(), time.process_time()
    models = []
    for first in range(0, len(seeds), pack):
        chunk = seeds[first:first + pack]
        built = [build(name, dataset, s) for s in chunk]
        fit_stacked(built, data, recipe, seeds=chunk)
        models += built
    sync(data.device)
    return (time.perf_counter() - start, time.process_time() - cpu), models


def worst_relative(a: list[nn.Module], b: list[nn.Module]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        sy = y.state_dict()
        for key, t in x.state_dict().items():
            if t.dtype.is_floating_point:
                diff = (t.float() - sy[key].float()).abs().max() / t.float().abs().max()
                worst = max(worst, float(diff.clamp_min(0)))
    return worst


def bench_training(args, dataset: ImageDataset, device: torch.device) -> list[tuple]:
    keep = (dataset.labels != FORGET_CLASS).nonzero().flatten()
    data = DeviceData.from_dataset(dataset, keep, device)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    seeds = list(range(1000, 1000 + args.count))
    packs = []
    for item in args.packs.split(","):
        if item == "auto":
            probe = build(args.model, dataset, 0)
            packs.append(pack_capacity(probe, recipe, tuple(data.images.shape[1:]), device))
        else:
            packs.append(int(item))
    packs = list(dict.fromkeys(min(p, args.count) for p in packs))
    times: dict[str, list[tuple[float, float]]] = {"alone": []}  # (wall s, CPU s)
    times.update({f"stacked K={p}": [] for p in packs})
    worst: dict[str, float] = {}
    # Warm-up, untimed: torch.func's first call imports and traces (about 2 s once per
    # process), which a pool worker pays once, not per pack.
    warm = dataclasses.replace(recipe, epochs=1)
    train_alone(args.model, dataset, data, warm, seeds[:2])
    train_stacked(args.model, dataset, data, warm, seeds[:2], 2)
    for rep in range(args.repeats):  # interleaved: the machine's load hits every mode alike
        seconds, alone = train_alone(args.model, dataset, data, recipe, seeds)
        times["alone"].append(seconds)
        for pack in packs:
            seconds, stacked = train_stacked(args.model, dataset, data, recipe, seeds, pack)
            times[f"stacked K={pack}"].append(seconds)
            worst[f"stacked K={pack}"] = worst_relative(alone, stacked)
        print(f"  repeat {rep + 1}: " + ", ".join(
            f"{k} {v[-1][0]:.1f}s (CPU {v[-1][1]:.1f}s)" for k, v in times.items()), flush=True)
    # The floor for the weight column: the first model alone again, its initial weights
    # nudged by 1e-7 (relative), which is what float32 rounding does to it.
    nudged = build(args.model, dataset, seeds[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in nudged.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=generator).to(p.device))
    fit(nudged, data, recipe, seed=seeds[0])
    print(f"  float32 sensitivity: the first model alone with its initial weights nudged by "
          f"1e-7 ends {worst_relative(alone[:1], [nudged]):.1e} (max rel. weight diff) from "
          f"itself", flush=True)
    return summarise(times, args.count, "alone", worst)


def summarise(times: dict[str, list[tuple[float, float]]], count: int, base_mode: str,
              worst: dict[str, float]) -> list[tuple]:
    """Rows (mode, median wall, best wall, models/s, speed-up, median CPU, CPU speed-up, diff)."""
    base = statistics.median(t[0] for t in times[base_mode])
    base_cpu = statistics.median(t[1] for t in times[base_mode])
    rows = []
    for mode, values in times.items():
        wall = statistics.median(t[0] for t in values)
        cpu = statistics.median(t[1] for t in values)
        rows.append((mode, wall, min(t[0] for t in values), count / wall, base / wall, cpu,
                     base_cpu / cpu, worst.get(mode, float("nan"))))
    return rows


def bench_pipeline(args, device: torch.device) -> list[tuple] | None:
    """The references stage on Ray: pack 1 vs auto. None (with a note) without Ray."""
    try:
        import ray
    except ImportError:
        print("  ray is not installed: pipeline comparison skipped")
        return None
    if device.type != "cpu" or args.dataset != "digits":
        print("  pipeline comparison runs on CPU with digits only: skipped")
        return None
    from pipelines.config import parse_config
    from pipelines.references import make_units, run_references
    from pipelines.store import ResultsStore
    from unlearn_core.data.manifest import make_manifest

    dataset = load_dataset("digits")
    manifest = make_manifest(dataset, f"classes={FORGET_CLASS}", 0)
    recipe = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    times: dict[str, list[tuple[float, float]]] = {"ray pack=1": [], "ray pack=auto": []}
    for rep in range(args.repeats):
        for mode, pack in (("ray pack=1", 1), ("ray pack=auto", 0)):
            config = parse_config({
                "name": "bench", "source": {"model": args.model, "recipe": recipe},
                "references": {"count": args.count, "pack": pack},
                "methods": [{"name": "original"}]})
            units = make_units(config, manifest.hash, record_updates=False)
            ray.shutdown()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            with tempfile.TemporaryDirectory() as folder:
                store = ResultsStore.create(folder, "bench")
                start = time.perf_counter()
                run_references(config, units, dataset, manifest, store)
                # the driver's CPU time says nothing about the workers': not reported
                times[mode].append((time.perf_counter() - start, float("nan")))
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f}s" for k, v in
                                                   times.items()), flush=True)
    ray.shutdown()
    return summarise(times, args.count + 1, "ray pack=1", {})


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print("| mode | wall s (median) | best s | models/s | speed-up | CPU s | CPU speed-up "
          "| max rel. weight diff |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, median, best, rate, speed, cpu, cpu_speed, diff in rows:
        shown = "-" if diff != diff else f"{diff:.1e}"  # nan: nothing compared
        cpus = "- | -" if cpu != cpu else f"{cpu:.1f} | {cpu_speed:.2f}x"
        print(f"| {mode} | {median:.1f} | {best:.1f} | {rate:.2f} | {speed:.2f}x | {cpus} | "
              f"{shown} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("digits", "mnist", "synthetic"), default="digits",
                        help="synthetic: 10 000 random 1x28x28 images, MNIST's shape (for a "
                        "GPU machine without dataset files; speed only)")
    parser.add_argument("--mnist-root", help="folder with t10k-images-idx3-ubyte(.gz) and "
                        "t10k-labels-idx1-ubyte(.gz) (the official test set is enough)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--count", type=int, default=32, help="references N")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--packs", default="8,auto", help="pack sizes to time (auto: "
                        "pack_capacity for this model and device)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs for the pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.dataset == "mnist":
        if not args.mnist_root:
            parser.error("--dataset mnist needs --mnist-root")
        dataset = load_dataset("mnist", root=args.mnist_root)
    elif args.dataset == "synthetic":
        dataset = random_images(10_000, 1, 28, 10, natural=False)
    else:
        dataset = load_dataset("digits")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"{args.dataset} ({len(dataset.labels)} images, training on the classes other "
          f"than {FORGET_CLASS}), {args.model}, N={args.count}, {args.epochs} epochs, batch "
          f"{args.batch_size}; {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"{device} ({gpu}), torch {torch.__version__}", flush=True)
    rows = bench_training(args, dataset, device)
    print_table(f"Training {args.count} x {args.model} on {device}", rows)
    if not args.no_pipeline:
        print("\nreferences stage (train + evaluate + store, source + N):", flush=True)
        pipeline_rows = bench_pipeline(args, device)
        if pipeline_rows:
            print_table(f"Pipeline, {args.workers} Ray CPUs", pipeline_rows)


if __name__ == "__main__":
    main()
