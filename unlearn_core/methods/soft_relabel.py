"""``soft_relabel``: forget samples learn soft labels from the retain samples near them
(seed paper 002, Sec. 3.1, Fig. 2), then the model is fine-tuned on D_r.

Sec. 3.1: "the label of the forget samples is obtained from the masked attention of
the retained samples in a batch". Each step concatenates a D_r batch and a D_f batch;
with h = features of the frozen source model, the target of forget sample i is

    t_i = Σ_{j ∈ retain(batch)} softmax_j(−‖h_i − h_j‖₂) · onehot(y_j)

(the mask gives forget columns, and i itself, zero weight), while retain samples keep
their one-hot labels; the loss is the cross-entropy against these targets over the
whole concatenated batch. The paper leaves the rest open; taken from its released
code (github.com/sachit3022/unlearning, ``trainer.py`` ``NNTrainer`` as used by
``benchmark_cifar.py`` with ``cifar_config.yaml``):

- schedule: 20 soft-label passes over D_f (each forget batch paired with the next
  retain batch), then plain fine-tuning on D_r; both with AdamW (lr 1e-3, weight
  decay 5e-3), the first at a constant LR with its own optimiser state, the second
  with a per-epoch cosine schedule; cross-entropy with label smoothing 0.1 and batches
  of 512.
- distance space: the released code hooks the source's ``fc`` output (its logits);
  the SPEC says "the source model's penultimate features", which is the default here
  (``forward_features``); ``feature_space="logits"`` reproduces the code.

Deviations: the source runs in eval mode (the released copy stayed in train mode, so
its BatchNorm used batch statistics); the cosine schedule spans the epochs actually
run (the released one has T_max=10 while its loop runs 10−2=8 epochs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._seed002 import adamw, logits_of, train_epochs
from unlearn_core.methods.common import EpochEnd
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.loop import prepare_model, seed_everything

FEATURE_SPACES = ("penultimate", "logits")


REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch of the fine-tune phase:
EPOCHS_HPARAM = "epochs"  # ASHA's time axis. The soft-label passes over
# D_f come first, unreported (as random_labels).


@dataclass(frozen=True)
class Hparams:
    # soft-label passes over D_f; 002 code NNTrainer.train: range(20)
    relabel_epochs: int = hparam(20, ge=1)
    # fine-tune epochs on D_r; 002 cifar_config.yaml 10, its loop runs 10-2=8
    epochs: int = hparam(8, ge=0)
    # AdamW LR of both phases; 002 cifar_config.yaml finetune.optimizer.lr
    lr: float = hparam(1e-3, gt=0)
    # AdamW decoupled weight decay; 002 cifar_config.yaml: 0.005
    weight_decay: float = hparam(5e-3, ge=0)
    # rows of D_r and of D_f per step (2x concatenated); 002 cifar config
    batch_size: int = hparam(512, ge=1)
    # CE smoothing; 002 benchmark_cifar.py loss_fn: 0.1
    label_smoothing: float = hparam(0.1, ge=0, lt=1)
    # distance space; SPEC: penultimate, 002 code: "logits"
    feature_space: str = hparam("penultimate", choices=FEATURE_SPACES)


SEARCH_SPACE: SearchSpace = {
    "relabel_epochs": IntUniform(1, 30),
    "epochs": IntUniform(1, 20),
    "lr": LogUniform(1e-4, 1e-2),
    "weight_decay": LogUniform(1e-5, 5e-2),
    "feature_space": Choice(FEATURE_SPACES),
}


def soft_targets(
    features: torch.Tensor, labels: torch.Tensor, is_retain: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Targets [N, C]: one-hot for retain rows, masked attention over retain rows for the rest.

    Row i (forget) = softmax over the batch's retain samples j of −‖h_i − h_j‖₂, times
    their one-hot labels: a distribution that no forget sample (not even i) contributes to.
    """
    onehot = F.one_hot(labels, num_classes).float()
    retain = is_retain.nonzero().squeeze(1)
    forget = (~is_retain).nonzero().squeeze(1)
    if len(retain) == 0:
        raise ValueError("soft_targets needs at least one retain sample in the batch")
    targets = onehot.clone()
    if len(forget):
        h = features.float().flatten(1)
        attention = torch.softmax(-torch.cdist(h[forget], h[retain]), dim=1)  # [Nf, Nr]
        targets[forget] = attention @ onehot[retain]
    return targets


def cycle(data: DeviceData, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled batches of ``data`` forever (a new order each pass)."""
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator)


@torch.no_grad()
def source_features(source: nn.Module, x: torch.Tensor, feature_space: str) -> torch.Tensor:
    if feature_space == "penultimate":
        return source.forward_features(x).float()
    if feature_space == "logits":
        return source(x).float()
    raise ValueError(f"feature_space {feature_space!r}: expected one of {FEATURE_SPACES}")


def relabel_pass(
    model: nn.Module, source: nn.Module, forget: DeviceData, retain: Iterator[Batch],
    optimizer: torch.optim.Optimizer, hp: Hparams, num_classes: int, generator: torch.Generator,
) -> None:
    """One pass over D_f: each forget batch + the next retain batch, CE against soft targets."""
    model.train()
    for fb in forget.batches(hp.batch_size, shuffle=True, generator=generator):
        rb = next(retain)
        x = torch.cat([rb.x, fb.x])
        y = torch.cat([rb.y, fb.y])
        is_retain = torch.cat([torch.ones_like(rb.y, dtype=torch.bool),
                               torch.zeros_like(fb.y, dtype=torch.bool)])
        targets = soft_targets(source_features(source, x, hp.feature_space), y, is_retain,
                               num_classes)
        loss = F.cross_entropy(logits_of(model, x), targets, label_smoothing=hp.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    model = prepare_model(model, task.device)
    source = task.source_copy()
    retain_stream = cycle(task.retain, hp.batch_size, generator)
    relabel_optimizer = adamw(model, hp.lr, hp.weight_decay)  # constant LR, own state
    for _ in range(hp.relabel_epochs):
        relabel_pass(model, source, task.forget, retain_stream, relabel_optimizer, hp,
                     task.num_classes, generator)

    def cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y, label_smoothing=hp.label_smoothing)

    def cosine(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, hp.epochs)))

    train_epochs(model, task.retain, adamw(model, hp.lr, hp.weight_decay), epochs=hp.epochs,
                 batch_size=hp.batch_size, generator=generator, loss_fn=cross_entropy,
                 lr_factor=cosine, hooks=[EpochEnd(task)])
    return model
