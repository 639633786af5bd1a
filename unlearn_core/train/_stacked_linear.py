"""Grouped kernels for stacks of fully connected layers: ``baddbmm`` instead of ``vmap``.

For a model that is only ``Flatten`` -> (``Linear`` | ``ReLU`` | ``Identity``)* -> a
``Linear`` head (the zoo's ``mlp``), the K stacked models' forward pass is a few
batched matrix products written out: ``baddbmm(bias, x, weightᵀ)`` per layer on
``[K, B, features]`` tensors. ``vmap(functional_call(...))`` computes the same
thing, but through batching rules that split each ``F.linear`` into a batched
product plus a separate bias add and leave strided intermediates whose
element-wise kernels (ReLU and its backward) run 2.5× slower on the CPU than on
contiguous ones; written out (ReLU in place on its own product), 8 stacked digits
MLPs train 1.76× faster than one at a time, against 1.37× through ``vmap``
(``scripts/bench_references.py``, BENCHMARKS.md 2026-12-02). Each model's
arithmetic is still its own layer products, only batched, so the weights agree
with one-at-a-time training to float rounding (``tests/test_stacked.py``).

Any other model (convolutions, BatchNorm, custom ``forward``) goes through
``vmap``: ``linear_plan`` returns None for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.models import Classifier
from unlearn_core.train.loop import autocast

# One step of the plan: ("flatten" | "relu" | "linear", parameter prefix for linear).
Step = tuple[str, str]


def linear_plan(model: nn.Module) -> list[Step] | None:
    """The forward pass of ``model`` as steps, or None if it is not a plain stack of
    fully connected layers whose ``forward`` is known (exact types only: a subclass
    may override ``forward``)."""
    if type(model) is Classifier and type(model.body) is nn.Sequential \
            and type(model.head) is nn.Linear:
        named = [(f"body.{name}", m) for name, m in model.body.named_children()]
        named.append(("head", model.head))
    elif type(model) is nn.Sequential:
        named = list(model.named_children())
    else:
        return None
    steps: list[Step] = []
    flat = False
    for prefix, module in named:
        kind = type(module)
        if kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            steps.append(("flatten", prefix))
            flat = True
        elif kind is nn.Linear and flat:  # a Linear on [B, C, H, W] would act on W only
            steps.append(("linear", prefix))
        elif kind is nn.ReLU:
            steps.append(("relu", prefix))
        elif kind is nn.Identity:
            continue
        else:
            return None
    return steps if any(kind == "linear" for kind, _ in steps) else None


def linear_stack_loss(plan: list[Step], label_smoothing: float) -> Callable:
    """``loss(params, buffers, x, y) -> [K]``: each model's mean cross-entropy on its own
    batch (``x`` [K, B, ...], ``y`` [K, B]), the signature of the ``vmap``'d loss."""

    def loss(params: dict, _buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k, b = y.shape
        with autocast(x.device):  # as fit: bf16 on CUDA, nothing on the CPU
            x = _forward(plan, params, x)
        # reduction "none" then the mean over each model's rows: F.cross_entropy's
        # "mean" for that model alone (no class weights), label smoothing included.
        per_row = F.cross_entropy(x.flatten(0, 1).float(), y.flatten(),
                                  reduction="none", label_smoothing=label_smoothing)
        return per_row.view(k, b).mean(1)

    return loss


def _forward(plan: list[Step], params: dict, x: torch.Tensor) -> torch.Tensor:
    # x is a layer product made here, whose backward does not need it: a ReLU may
    # overwrite it (one less [K, B, width] tensor per layer, measurably faster on the
    # CPU). Not the caller's batch, nor a ReLU's output (its own backward reads it).
    owned = False
    for kind, prefix in plan:
        if kind == "flatten":
            x = x.flatten(2)
        elif kind == "relu":
            x = torch.relu_(x) if owned else torch.relu(x)
            owned = False
        else:
            weight = params[f"{prefix}.weight"].transpose(1, 2)  # [K, in, out]
            bias = params.get(f"{prefix}.bias")
            x = torch.bmm(x, weight) if bias is None else \
                torch.baddbmm(bias.unsqueeze(1), x, weight)
            owned = True
    return x
