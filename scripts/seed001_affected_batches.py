"""Seed 001, Fig. 4: retained accuracy after amnesiac vs partial amnesiac unlearning,
against the share of training batches the forget set touched.

Trains one source with the update recorder, then forgets growing random subsets
of one class (so the share of affected batches grows from a few % to 100 %) and
prints, per subset, the share of affected batches and the accuracy on the
retained test classes and on the forgotten class after each method. One recorded
run serves every subset: the recording keeps every step's update and its batch.

    python scripts/seed001_affected_batches.py --root data/mnist-t10k --model mlp
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import numpy as np
import torch

from unlearn_core.data.datasets import load_dataset
from unlearn_core.data.manifest import SplitOptions, make_manifest
from unlearn_core.methods import partial_amnesiac
from unlearn_core.methods.amnesiac import subtract_updates
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import accuracy, fit
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.recorder import RecordedUpdates, UpdateRecorder
from unlearn_core.train.source import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--root", default="data/mnist-t10k")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64,all",
                        help="forget subset sizes (samples of the class); 'all' = the class")
    parser.add_argument("--epochs", type=int, default=8)  # seed 001 §5: 8 epochs
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.dataset, root=args.root)
    manifest = make_manifest(dataset, f"classes={args.forget_class}", 0,
                             SplitOptions(val_fraction=0.0, test_fraction=0.2))
    # seed 001 §5: batch 128, lr 0.001 (Adam), 8 epochs
    recipe = Recipe(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3,
                    weight_decay=0.0, schedule="constant")
    source = build_model(args.model, dataset, seed=0)
    folder = tempfile.mkdtemp(prefix="seed001-")
    fit(source, DeviceData.from_dataset(dataset, manifest.ids("train")), recipe, seed=0,
        hooks=[UpdateRecorder(folder)])
    recording = RecordedUpdates(folder)

    test_ids = manifest.ids("test")
    test_labels = dataset.labels[torch.as_tensor(test_ids)].numpy()
    test_forget = DeviceData.from_dataset(dataset, test_ids[test_labels == args.forget_class])
    test_retain = DeviceData.from_dataset(dataset, test_ids[test_labels != args.forget_class])
    forget_ids = manifest.ids("forget")
    rng = np.random.default_rng(0)
    order = rng.permutation(forget_ids)
    partial_hp = partial_amnesiac.Hparams()  # random pruning, 90 % -> 50 % with depth

    print(f"source: retained-class test acc {accuracy(source, test_retain):.3f}, "
          f"class {args.forget_class} test acc {accuracy(source, test_forget):.3f}")
    print("| forgotten samples | affected batches (%) | amnesiac D_r test | amnesiac D_f test "
          "| partial D_r test | partial D_f test |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        subset = order if size == "all" else order[: int(size)]
        steps = recording.affected_steps(subset)
        share = len(steps) / len(recording.steps)
        full = copy.deepcopy(source)
        subtract_updates(full, recording.sum_updates(steps))  # Eq. 4
        part = copy.deepcopy(source)
        subtract_updates(part, partial_amnesiac.sum_pruned_updates(recording, steps,
                                                                   partial_hp))  # Eq. 7
        print(f"| {len(subset)} | {100 * share:.1f} | {100 * accuracy(full, test_retain):.1f} "
              f"| {100 * accuracy(full, test_forget):.1f} "
              f"| {100 * accuracy(part, test_retain):.1f} "
              f"| {100 * accuracy(part, test_forget):.1f} |", flush=True)


if __name__ == "__main__":
    main()
