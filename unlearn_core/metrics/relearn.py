"""Relearn time (RT): how fast an unlearned model regains its forget-set accuracy.

Source: seed 003 (UNSIR), §V-A: "We measure the RT as the number of epochs it
takes for the unlearned model to reach the source model's accuracy, with the
model being trained on 500 random samples from the training set in each
epoch"; Table I caption: "RT is the number of epochs taken by model to regain
full accuracy on forget set when trained on 500 random samples from D_c". A
higher RT means the information was erased more thoroughly; the paper reports
"> 100" when the accuracy is not regained, so the default cap is 100 epochs.

Choices where the paper is silent (each one stated so results can be compared):

- Data: every epoch draws ``samples`` (500) examples without replacement from
  the *full* training set D_c = D_r ∪ D_f. Forget samples are included: that is
  what lets the model relearn them. The draw is fresh each epoch ("500 random
  samples ... in each epoch"), from one CPU generator seeded by ``seed``, so the
  same seed gives the same draws on every device. If D_c has fewer than
  ``samples`` rows, every epoch uses all of them (in a fresh random order).
- Training: one pass per epoch over the drawn samples in mini-batches of
  ``recipe.batch_size``, plain cross-entropy, the recipe's optimizer, LR,
  momentum/Nesterov and weight decay. The LR is *constant*: a schedule would
  need a total length, and RT is open-ended (stop when reached). The optimizer
  (and its momentum buffers) is created once and kept across epochs, as in any
  continued training. Augmentation follows ``recipe.augment`` (None: crop+flip
  for natural images only), as the source was trained. Every parameter is
  trained, even ones the unlearning method froze: relearning probes the whole
  network. BatchNorm layers are in train mode during the passes.
- Reach: after epoch e the model is evaluated on D_f (eval mode, no
  augmentation); RT is the first e with ``acc >= target_acc - tolerance``.
  ``target_acc`` is the source model's forget accuracy (the caller passes it,
  so the source never has to be in memory here). Epoch 0 is the model as given:
  if it already reaches the target, RT = 0 (Table I reports 0 for one model).
- Not reached after ``cap`` epochs: ``relearn/epochs`` = cap and
  ``relearn/reached`` = 0, i.e. "> cap" in the paper's notation.

The caller's model is never touched: all training happens on a deep copy, and
the global RNG state is restored afterwards (dropout draws come from ``seed``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unlearn_core.errors import UserInputError
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import (
    accuracy,
    autocast,
    configure_determinism,
    make_optimizer,
    prepare_model,
)
from unlearn_core.train.recipe import Recipe

# Seed 003, §V-A: "500 random samples from the training set in each epoch".
DEFAULT_SAMPLES = 500
# Seed 003, Table I reports "> 100" for models that never relearn.
DEFAULT_CAP = 100


def _validate(
    train_data: DeviceData,
    forget_data: DeviceData,
    target_acc: float,
    recipe: Recipe,
    samples: int,
    cap: int,
    tolerance: float,
) -> None:
    if isinstance(cap, bool) or int(cap) != cap or cap < 1:
        raise UserInputError(f"relearn_time: cap must be an integer >= 1 (epochs), got {cap!r}")
    if isinstance(samples, bool) or int(samples) != samples or samples < 1:
        raise UserInputError(
            f"relearn_time: samples must be an integer >= 1 (per epoch), got {samples!r}"
        )
    if not 0.0 <= target_acc <= 1.0:  # also rejects nan
        raise UserInputError(
            f"relearn_time: target_acc must be an accuracy in [0, 1], got {target_acc!r}"
        )
    if not tolerance >= 0.0:
        raise UserInputError(f"relearn_time: tolerance must be >= 0, got {tolerance!r}")
    if len(train_data) == 0:
        raise UserInputError("relearn_time: train_data is empty; there is nothing to relearn from")
    if len(forget_data) == 0:
        raise UserInputError("relearn_time: forget_data is empty; forget accuracy is undefined")
    if train_data.device != forget_data.device:
        raise UserInputError(
            f"relearn_time: train_data is on {train_data.device} but forget_data is on "
            f"{forget_data.device}; put both on the same device"
        )
    recipe.validate()


def relearn_time(
    model: nn.Module,
    train_data: DeviceData,
    forget_data: DeviceData,
    target_acc: float,
    recipe: Recipe,
    *,
    samples: int = DEFAULT_SAMPLES,
    cap: int = DEFAULT_CAP,
    tolerance: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Epochs of training on ``samples`` random examples of D until forget accuracy is regained.

    ``train_data`` is the full training set D_c (forget samples included),
    ``forget_data`` is D_f, and ``target_acc`` the source model's accuracy on
    D_f (a fraction). See the module docstring for every choice.

    Keys: ``relearn/epochs`` (first epoch e with forget accuracy >=
    ``target_acc - tolerance``; 0 if the model already does; ``cap`` if never),
    ``relearn/reached`` (1.0 or 0.0), ``relearn/cap`` and
    ``relearn/final_forget_acc`` (forget accuracy when stopping).
    """
    _validate(train_data, forget_data, target_acc, recipe, samples, cap, tolerance)
    cap = int(cap)
    # Accuracies are multiples of 1/n; float32 means (``accuracy``) can fall a hair below
    # the float64 target for the same count (255/258), so compare within half a step.
    threshold = target_acc - tolerance - 0.5 / len(forget_data)
    eval_batch = recipe.eval_batch_size
    device = train_data.device
    configure_determinism(device, recipe.deterministic)

    # The copy carries the caller's train/eval mode and requires_grad flags; reset both.
    model = prepare_model(copy.deepcopy(model), device)
    model.requires_grad_(True)

    acc = accuracy(model, forget_data, eval_batch)
    if acc >= threshold:
        return _result(0, True, cap, acc)

    n = len(train_data)
    per_epoch = min(int(samples), n)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model.parameters(), recipe)  # constant LR: no scheduler
    channels_last = device.type == "cuda"
    fork_devices = [device] if device.type == "cuda" else []
    # Dropout uses the global RNG: seed it for reproducibility without leaking that
    # seed into the caller's RNG stream.
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for epoch in range(1, cap + 1):
            # Fresh draw each epoch, without replacement; its order is also the batch order.
            positions = torch.randperm(n, generator=generator)[:per_epoch]
            subset = train_data.subset(positions)
            model.train()
            for batch in subset.batches(
                recipe.batch_size, shuffle=False, generator=generator, augment=recipe.augment
            ):
                x = batch.x.contiguous(memory_format=torch.channels_last) if channels_last \
                    else batch.x
                with autocast(device):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), batch.y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            acc = accuracy(model, forget_data, eval_batch)  # switches to eval mode itself
            if acc >= threshold:
                return _result(epoch, True, cap, acc)
    return _result(cap, False, cap, acc)


def _result(epochs: int, reached: bool, cap: int, acc: float) -> dict[str, float]:
    return {
        "relearn/epochs": float(epochs),
        "relearn/reached": 1.0 if reached else 0.0,
        "relearn/cap": float(cap),
        "relearn/final_forget_acc": float(acc),
    }
