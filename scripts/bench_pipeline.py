"""Benchmark: the references stage on Ray vs the same trainings in a plain loop, in one run.

For each reference count N, trains the source + N references of the quickstart
recipe (digits, MLP) three ways into fresh folders:

- ``plain``: a Python loop over the same packs the pipeline makes
  (``references.pack`` auto, as for ray w=1), calling the same
  ``train_pack`` / ``train_unit`` (train, evaluate, write checkpoint and
  outputs) in this process with one torch thread and no Ray at all;
- ``ray w=1``: the pipeline's pool of pack tasks on a Ray with one CPU (same
  packs, same compute as plain: the difference is what the pipeline adds);
- ``ray w=W``: the same pool on a Ray with W CPUs (what the pipeline does);
- ``dp w=W`` (with ``--data-parallel``): one Ray Train job whose W workers
  train every model together, each on 1/W of every batch
  (``references.data_parallel``).

Ray is started once per mode with that many CPUs (``ray.init`` is not timed).

Prints wall times, the overhead per reference ((ray w=1 - plain) / (N + 1)) and
that overhead as a share of one reference's training time (``train_seconds`` in
the plain run's info JSONs: a pack's training wall time divided by its models),
the issue-13 target being at most 10 % at 512 references.

    python scripts/bench_pipeline.py --counts 8,32 --workers 2
    python scripts/bench_pipeline.py --counts 512 --workers 2
    python scripts/bench_pipeline.py --counts 1,4 --workers 2 --data-parallel
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import torch  # noqa: E402

from pipelines.config import parse_config  # noqa: E402
from pipelines.reference_packs import auto_pack_size, make_packs  # noqa: E402
from pipelines.references import _pack_task, make_units, run_references  # noqa: E402
from pipelines.store import ResultsStore  # noqa: E402
from unlearn_core.data.datasets import load_dataset  # noqa: E402
from unlearn_core.data.manifest import make_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="8,32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-parallel", action="store_true",
                        help="also time a data-parallel job (every worker on every model)")
    args = parser.parse_args()
    import ray

    dataset = load_dataset("digits")
    manifest = make_manifest(dataset, "classes=3", 0)
    print(f"{os.cpu_count()} CPUs, "
          f"model={args.model}, epochs={args.epochs}, torch threads={torch.get_num_threads()}")
    print(f"{'N':>4} {'plain s':>9} {'ray w=1 s':>10} {'ray w=' + str(args.workers) + ' s':>10} "
          f"{'ray1/plain':>10} {'overhead/ref s':>15} {'train/ref s':>12} "
          f"{'overhead %':>10} {'speed-up w':>10}"
          + (f" {'dp w=' + str(args.workers) + ' s':>10} {'dp/rayW':>8}"
             if args.data_parallel else ""))
    for count in (int(c) for c in args.counts.split(",")):
        base = {"name": "bench", "source": {"model": args.model, "recipe": {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05}},
            "references": {"count": count, "workers": 1}, "methods": [{"name": "original"}]}
        timings, train_seconds = {}, float("nan")
        modes = [("plain", 1), ("ray1", 1), ("rayW", args.workers)]
        if args.data_parallel:
            modes.append(("dp", args.workers))
        for mode, workers in modes:
            config = parse_config({**base, "references": {
                **base["references"], "workers": workers, "data_parallel": mode == "dp"}})
            units = make_units(config, manifest.hash, record_updates=False)
            if mode != "plain":
                ray.shutdown()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            with tempfile.TemporaryDirectory() as folder:
                store = ResultsStore.create(folder, "bench")
                start = time.perf_counter()
                if mode == "plain":
                    plain_loop(units, dataset, manifest, store, 1,
                               config.mia_max_per_class)  # the packs of ray w=1
                else:
                    run_references(config, units, dataset, manifest, store)
                timings[mode] = time.perf_counter() - start
                if mode == "plain":
                    train_seconds = sum(store.read_model_info(u.key)["train_seconds"]
                                        for u in units) / len(units)
        overhead = (timings["ray1"] - timings["plain"]) / (count + 1)
        print(f"{count:>4} {timings['plain']:>9.1f} {timings['ray1']:>10.1f} "
              f"{timings['rayW']:>10.1f} {timings['ray1'] / timings['plain']:>10.2f} "
              f"{overhead:>15.3f} {train_seconds:>12.3f} {100 * overhead / train_seconds:>9.1f}% "
              f"{timings['plain'] / timings['rayW']:>10.2f}"
              + (f" {timings['dp']:>10.1f} {timings['dp'] / timings['rayW']:>8.2f}"
                 if args.data_parallel else ""), flush=True)


def plain_loop(units, dataset, manifest, store, slots: int, mia_max_per_class: int) -> None:
    """The pipeline's packs (auto size for ``slots`` concurrent tasks), one after the
    other in this process: the very task body a Ray worker runs (``_pack_task``, one
    torch thread as one worker with 1 CPU), called without Ray."""
    for pack in make_packs(units, dataset, auto_pack_size(units, dataset, slots, False)):
        _pack_task(pack, (dataset, manifest), store, use_gpu=False, cpus=1,
                   mia_max_per_class=mia_max_per_class, fit_memory=True)


if __name__ == "__main__":
    main()
