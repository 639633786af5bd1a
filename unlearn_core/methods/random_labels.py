"""``random_labels`` (random relabelling; Graves et al. 2021, "Amnesiac Machine Learning"):
train on D_f with random wrong labels, then fine-tune on D_r. Baseline of seed paper 002
("Random Labels", Tables 1-4).

Graves et al.: relabel the sensitive samples "with randomly selected incorrect labels"
and train on them for a few iterations. Seed 002 names the baseline without details;
its released code (github.com/sachit3022/unlearning, ``trainer.py`` ``RLFTrainer`` run by
``benchmark_cifar.py`` with ``cifar_config.yaml``) gives the schedule used here: 20
passes over D_f with random labels (constant LR, own optimiser state), then fine-tuning
on D_r with a per-epoch cosine schedule; AdamW lr 1e-3, weight decay 5e-3, batches of
512, cross-entropy with label smoothing 0.1 — the same loop as ``soft_relabel``.

Deviation: that code shuffles the labels within each forget batch, so a sample can keep
its own label; here each label is drawn uniformly from the C − 1 wrong classes (Graves'
"incorrect labels"), afresh at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._seed002 import adamw, train_epochs
from unlearn_core.methods.common import EpochEnd
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.device_data import Batch
from unlearn_core.train.loop import prepare_model, seed_everything

REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch of the fine-tune phase:
EPOCHS_HPARAM = "epochs"  # ASHA's time axis. The random-label passes
# come first, unreported: a model mid-way through them has lost D_r too, so comparing
# trials there would stop the ones that forget hardest, not the ones that will end best.


@dataclass(frozen=True)
class Hparams:
    # random-label passes over D_f; 002 code RLFTrainer: range(20)
    forget_epochs: int = hparam(20, ge=1)
    # fine-tune epochs on D_r; 002 cifar_config.yaml 10, its loop runs 10-2=8
    epochs: int = hparam(8, ge=0)
    # AdamW LR of both phases; 002 cifar_config.yaml finetune.optimizer.lr
    lr: float = hparam(1e-3, gt=0)
    # AdamW decoupled weight decay; 002 cifar_config.yaml: 0.005
    weight_decay: float = hparam(5e-3, ge=0)
    # rows per step; 002 cifar_config.yaml BATCH_SIZE
    batch_size: int = hparam(512, ge=1)
    # CE smoothing; 002 benchmark_cifar.py loss_fn: 0.1
    label_smoothing: float = hparam(0.1, ge=0, lt=1)


SEARCH_SPACE: SearchSpace = {
    "forget_epochs": IntUniform(1, 30),
    "epochs": IntUniform(1, 20),
    "lr": LogUniform(1e-4, 1e-2),
    "weight_decay": LogUniform(1e-5, 5e-2),
}


def random_wrong_labels(y: torch.Tensor, num_classes: int,
                        generator: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly from the other C − 1 classes, for each entry of ``y``."""
    if num_classes < 2:
        raise ValueError("random wrong labels need at least two classes")
    offset = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + offset) % num_classes


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    label_generator = torch.Generator().manual_seed(task.seed + 1)
    model = prepare_model(model, task.device)

    def random_label_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        labels = random_wrong_labels(batch.y, task.num_classes, label_generator)
        return F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)

    def cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y, label_smoothing=hp.label_smoothing)

    def cosine(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, hp.epochs)))

    train_epochs(model, task.forget, adamw(model, hp.lr, hp.weight_decay),
                 epochs=hp.forget_epochs, batch_size=hp.batch_size, generator=generator,
                 loss_fn=random_label_loss)
    train_epochs(model, task.retain, adamw(model, hp.lr, hp.weight_decay), epochs=hp.epochs,
                 batch_size=hp.batch_size, generator=generator, loss_fn=cross_entropy,
                 lr_factor=cosine, hooks=[EpochEnd(task)])
    return model
