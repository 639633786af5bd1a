"""Metrics that probe the model itself, not only its stored outputs.

Weight distance to the source, the forget-set prediction distribution (seed
003), relearn time (seed 003) and the SPD-GAN unlearning degree (seed 000)
need the weights, or train on a copy of the model, so they cannot be
recomputed from the Parquet outputs: a trial computes them right after
unlearning (outside the timed part), and the driver computes them for a few
references so the retrain row has them too. No Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.metrics.degree import unlearning_degree
from unlearn_core.metrics.distance import layerwise_distance, prediction_distance_metrics
from unlearn_core.metrics.relearn import relearn_time
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.recipe import Recipe


@dataclass(frozen=True)
class ProbeSettings:
    """What to probe; built from the config's ``metrics`` block (``from_config``)."""

    distance: bool = True
    relearn: bool = True
    relearn_samples: int = 500
    relearn_cap: int = 50
    relearn_tolerance: float = 0.0
    degree: bool = False
    degree_eta: float = 0.03
    degree_epochs: int = 20
    degree_lr: float = 1e-3
    degree_batch_size: int = 32

    @classmethod
    def from_config(cls, metrics) -> ProbeSettings:
        relearn, degree = metrics.relearn, metrics.degree
        return cls(distance=metrics.distance, relearn=relearn.enabled,
                   relearn_samples=relearn.samples, relearn_cap=relearn.cap,
                   relearn_tolerance=relearn.tolerance, degree=degree.enabled,
                   degree_eta=degree.eta, degree_epochs=degree.epochs, degree_lr=degree.lr,
                   degree_batch_size=degree.batch_size)

    @property
    def any(self) -> bool:
        return self.distance or self.relearn or self.degree


def probe_model(
    model: nn.Module,
    source: nn.Module,
    dataset: ImageDataset,
    manifest: SplitManifest,
    settings: ProbeSettings,
    *,
    recipe: Recipe,
    source_forget_acc: float | None,
    forget_logits: np.ndarray | None = None,
    reference_forget_logits: np.ndarray | None = None,
    device="cpu",
    seed: int = 0,
) -> dict[str, float]:
    """The enabled probes of one model (unlearned or retrained) against the source."""
    out: dict[str, float] = {}
    needs_forget = settings.relearn or settings.degree
    forget = DeviceData.from_dataset(dataset, manifest.ids("forget"), device) \
        if needs_forget else None
    if settings.distance:
        out.update(layerwise_distance(model.state_dict(), source.state_dict()))
        if forget_logits is not None and reference_forget_logits is not None \
                and len(forget_logits):
            out.update(prediction_distance_metrics(forget_logits, reference_forget_logits,
                                                   dataset.num_classes))
    if settings.relearn and source_forget_acc is not None and len(forget):
        # D itself (forget samples included): the model relearns from what it was trained on.
        train = DeviceData.from_dataset(dataset, manifest.ids("train"), device)
        out.update(relearn_time(model, train, forget, source_forget_acc, recipe,
                                samples=settings.relearn_samples, cap=settings.relearn_cap,
                                tolerance=settings.relearn_tolerance, seed=seed))
    if settings.degree and len(forget):
        out.update(unlearning_degree(source, model, forget, eta=settings.degree_eta,
                                     epochs=settings.degree_epochs, lr=settings.degree_lr,
                                     batch_size=settings.degree_batch_size, seed=seed))
    return out


def reference_probes(
    store,
    source_key: str,
    reference_keys: list[str],
    model_name: str,
    dataset: ImageDataset,
    manifest: SplitManifest,
    settings: ProbeSettings,
    *,
    recipe: Recipe,
    source_forget_acc: float | None,
    salt: str,
    device="cpu",
    progress=None,
) -> dict[str, dict[str, float]]:
    """Probe the given references (the retrain row), on the driver; cached per reference.

    Each reference is compared with the source (distance, degree) and, for the
    prediction distribution's KL, with the next reference (KL to itself is 0).
    """
    import torch

    from unlearn_core.train.loop import predict_logits
    from unlearn_core.train.source import build_model

    if not settings.any or not reference_keys:
        return {}

    def load(key: str) -> nn.Module:
        model = build_model(model_name, dataset, seed=0)
        store.load_model(key, model)
        return model.to(device).eval()

    forget = DeviceData.from_dataset(dataset, manifest.ids("forget"), device)
    models: dict[str, nn.Module] = {}  # loaded once each, only when a probe is missing
    logits: dict[str, np.ndarray | None] = {}

    def model_of(key: str) -> nn.Module:
        if key not in models:
            models[key] = load(key)
        return models[key]

    def forget_logits_of(key: str) -> np.ndarray | None:
        if key not in logits:
            with torch.no_grad():
                logits[key] = predict_logits(model_of(key), forget).numpy() \
                    if len(forget) else None
        return logits[key]

    out = {}
    for i, key in enumerate(reference_keys):
        path = f"models/{key}.probes-{salt}.json"
        if store.exists(path):
            out[key] = store.read_json(path)
        else:
            other = reference_keys[(i + 1) % len(reference_keys)] \
                if len(reference_keys) > 1 else None
            out[key] = probe_model(model_of(key), model_of(source_key), dataset, manifest,
                                   settings, recipe=recipe, source_forget_acc=source_forget_acc,
                                   forget_logits=forget_logits_of(key),
                                   reference_forget_logits=forget_logits_of(other)
                                   if other is not None else None,
                                   device=device, seed=i)
            store.write_json(path, out[key])
        if progress:
            progress(1)
    return out
