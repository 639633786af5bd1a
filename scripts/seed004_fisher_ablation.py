"""Where does Fisher forgetting's class-wise success come from? (docs/seed004-dau.md)

Dense digits MLP trained with seed 004's digits recipe, class 3 forgotten. Fisher
forgetting is run with the forgotten class's head row reset (``classwise``) and
without it, over the noise scale α of the whole search range. Prints test accuracy
on class 3 and on the other classes, and how far the non-head weights moved.

    python scripts/seed004_fisher_ablation.py
"""

from __future__ import annotations

import copy

import torch

from unlearn_core.data import load_dataset
from unlearn_core.data.manifest import make_manifest
from unlearn_core.methods import fisher_forgetting
from unlearn_core.methods.task import make_task
from unlearn_core.train import DeviceData, Recipe, fit
from unlearn_core.train.source import build_model

FORGOTTEN = 3
RECIPE = Recipe(epochs=20, batch_size=128, optimizer="sgd", lr=0.05, schedule="cosine")


def accuracies(model: torch.nn.Module, test) -> tuple[float, float]:
    """Test accuracy (%) on the forgotten class and on the other classes."""
    model.eval()
    with torch.no_grad():
        predicted = model(test.x).argmax(1)
    forgotten = test.y == FORGOTTEN
    return (100 * (predicted[forgotten] == FORGOTTEN).float().mean().item(),
            100 * (predicted[~forgotten] == test.y[~forgotten]).float().mean().item())


def non_head_distance(model: torch.nn.Module, source: torch.nn.Module) -> float:
    pairs = zip(model.named_parameters(), source.named_parameters(), strict=True)
    return float(sum((p.detach() - q.detach()).norm() ** 2 for (name, p), (_, q) in pairs
                     if not name.startswith("head")) ** 0.5)


def main() -> None:
    torch.set_num_threads(1)
    dataset = load_dataset("digits")
    manifest = make_manifest(dataset, f"classes={FORGOTTEN}", seed=0)
    source = build_model("mlp", dataset, seed=0)
    fit(source, DeviceData.from_dataset(dataset, manifest.ids("train")), RECIPE, seed=0)
    test = DeviceData.from_dataset(dataset, manifest.ids("test")).all()
    forgotten, others = accuracies(source, test)
    print(f"source: test acc class {FORGOTTEN} {forgotten:.2f}, other classes {others:.2f}")
    for alpha in (0.0, 1e-8, 1e-7, 1e-6, 1e-5):
        for classwise in (True, False):
            task = make_task(dataset, manifest, source, model_name="mlp",
                             train_recipe=RECIPE, seed=1)
            model = fisher_forgetting.unlearn(
                copy.deepcopy(source), task,
                fisher_forgetting.Hparams(alpha=alpha, classwise=classwise))
            forgotten, others = accuracies(model, test)
            print(f"alpha={alpha:g} classwise={classwise}: class {FORGOTTEN} {forgotten:6.2f}"
                  f"  others {others:6.2f}  |dw| non-head {non_head_distance(model, source):.4f}")


if __name__ == "__main__":
    main()
