"""Train K models of one architecture at once: ``torch.func`` stacking over a model axis.

``fit_stacked(models, data, recipe, seeds)`` gives each model what
``fit(model, data, recipe, seed=seed)`` gives it alone: its own data order and
augmentation (a CPU generator per model, seeded as ``fit`` seeds its own), the
same optimizer, LR schedule, weight decay, momentum, loss, epochs and batch size.
The parameters and buffers of the K models are stacked into tensors with a
leading model axis (``stack_module_state``); one ``vmap``'d ``functional_call``
forwards all K batches, the sum of the K losses is back-propagated (each model's
gradient depends only on its own loss), and one ``torch.optim`` optimizer steps
the stacked tensors (stacks of fully connected layers skip ``vmap``: their layer
products are written out as batched ``baddbmm``, ``_stacked_linear``). SGD
(momentum, Nesterov, weight decay) and Adam are element-wise with one learning
rate for every element, so a stacked step is, per
model, the same arithmetic as that model's own step; only the batched kernels of
the forward and backward pass round differently (max relative weight difference
about 1e-6 after a few epochs, ``tests/test_stacked.py``).

BatchNorm: the running statistics are stacked buffers too, passed into the
``vmap``'d call, so each model's batch norm updates its own slice in place (train
mode normalises with each model's own batch statistics, as alone).

What is refused (``StackingUnsupported``, with the reason; callers train such
models one at a time):

- dropout (any ``nn.Dropout*`` module with p > 0): alone, a model draws its masks from the
  global RNG seeded with its seed; K models in one ``vmap`` would draw from one
  stream (``randomness="different"``) and no model would match its one-at-a-time
  self. Exactness is what lets a stacked reference stand in for a plain one, so
  we refuse rather than train different models. Any other random op inside the
  forward is caught by ``vmap``'s default ``randomness="error"``.
- hooks (update recorder, pruning masks) and partial parameter sets: those are
  per-model loops over ``nn.Module`` objects.
- models whose parameters are not all trainable, or of differing structure.

K: ``pack_capacity`` estimates one model's training footprint (parameters,
gradients, optimizer state, activations of a batch) and divides a memory budget
by it: free device memory on CUDA, a share of available RAM on the CPU; it is 1
where stacking does not pay (``stacking_pays``: convolutions on the CPU).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from unlearn_core.errors import UserInputError
from unlearn_core.train._stacked_linear import linear_plan, linear_stack_loss
from unlearn_core.train.device_data import DeviceData, random_crop_flip
from unlearn_core.train.loop import (
    FitResult,
    autocast,
    configure_determinism,
    make_optimizer,
    make_scheduler,
    prepare_model,
    seed_everything,
)
from unlearn_core.train.recipe import Recipe

# Above this many models per pack, stacking gains nothing measurable (the design notes'
# 13.5x at 64 small CNNs on one GPU), while a lost pack costs more work.
MAX_PACK = 64
# On the CPU, packs of 8 digits MLPs trained faster per model than packs of 32 (1.76x vs
# 1.41x one at a time, 1 thread, written-out baddbmm; BENCHMARKS.md 2026-12-02): the
# stacked tensors of 8 models stay in cache.
CPU_MAX_PACK = 8
# Share of free device memory (CUDA) or available RAM (CPU) one pack may plan to use:
# the rest is headroom for the allocator, evaluation and, on the CPU, other workers.
CUDA_MEMORY_SHARE = 0.6
CPU_MEMORY_SHARE = 0.25
CPU_MEMORY_FALLBACK = 2 * 2**30  # bytes, when /proc/meminfo cannot be read


class StackingUnsupported(UserInputError):
    """These models cannot be trained stacked and identical to one-at-a-time training."""


def stacking_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be stacked (None: it can)."""
    for name, module in model.named_modules():
        # p == 0 is the identity and draws nothing (torchvision's ViT has such modules).
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return (f"module {name!r} is {type(module).__name__}: per-model dropout masks "
                    "under vmap cannot match one-at-a-time training, which draws them from "
                    "each model's own seeded global RNG")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        return f"parameters {frozen[:3]} are frozen; stacking trains every parameter"
    return None


def _check_models(models: Sequence[nn.Module]) -> None:
    if not models:
        raise StackingUnsupported("no models to stack")
    problem = stacking_problem(models[0])
    if problem is not None:
        raise StackingUnsupported(f"cannot stack {type(models[0]).__name__}: {problem}")
    shapes = [(n, t.shape, t.dtype) for n, t in models[0].state_dict().items()]
    for model in models[1:]:
        if type(model) is not type(models[0]) or \
                [(n, t.shape, t.dtype) for n, t in model.state_dict().items()] != shapes:
            raise StackingUnsupported("stacked models must share one architecture")


def _per_model_loss(base: nn.Module, label_smoothing: float):
    """loss(params, buffers, x, y) of one model: ``fit``'s default cross-entropy."""

    def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(x.device):
            logits = functional_call(base, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)

    return loss


def fit_stacked(
    models: Sequence[nn.Module],
    data: DeviceData,
    recipe: Recipe,
    *,
    seeds: Sequence[int],
    grouped_kernels: bool = True,
) -> list[FitResult]:
    """Train ``models[k]`` in place as ``fit(models[k], data, recipe, seed=seeds[k])`` would.

    Returns one ``FitResult`` per model: its own epoch losses, the shared step
    count, and ``seconds`` = the pack's wall time divided by K (each model's share).
    Raises ``StackingUnsupported`` for models that cannot be stacked exactly.
    ``grouped_kernels``: stacks of fully connected layers run as written-out batched
    products (``_stacked_linear``, faster); False sends every model through ``vmap``.
    """
    recipe.validate()
    if len(seeds) != len(models):
        raise ValueError(f"{len(models)} models but {len(seeds)} seeds")
    _check_models(models)
    device = data.device
    configure_determinism(device, recipe.deterministic)
    # As fit: the global RNGs seeded (the last model's seed; nothing in a stackable
    # model draws from them) and one CPU generator per model for order and augmentation.
    seed_everything(seeds[-1])
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    models = [prepare_model(m, device) for m in models]
    params, buffers = stack_module_state(list(models))
    # The structure only: functional_call swaps in the stacked tensors, so the base's
    # own weights are never read (the meta device holds no memory).
    base = copy.deepcopy(models[0]).to("meta").train()
    plan = linear_plan(base) if grouped_kernels else None
    batched_loss = linear_stack_loss(plan, recipe.label_smoothing) if plan is not None \
        else vmap(_per_model_loss(base, recipe.label_smoothing))
    if recipe.compile:
        batched_loss = torch.compile(batched_loss)
    # The same torch.optim class and settings as one at a time, not its fused kernel: on
    # the CPU that is faster but rounds differently (not bit-identical, checked).
    optimizer = make_optimizer(params.values(), recipe)
    steps_per_epoch = max(1, math.ceil(len(data) / recipe.batch_size))
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    results = [FitResult() for _ in models]
    steps = 0
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        loss_sum = torch.zeros(len(models), device=device)
        seen = 0
        for x, y in stacked_batches(data, recipe.batch_size, generators, recipe.augment):
            optimizer.zero_grad(set_to_none=True)
            losses = batched_loss(params, buffers, x, y)
            losses.sum().backward()  # model k's parameters get d(loss_k) only
            loss_sum += losses.detach() * y.shape[1]
            seen += y.shape[1]
            optimizer.step()
            scheduler.step()
            steps += 1
        for result, total in zip(results, loss_sum.tolist(), strict=True):
            result.epoch_losses.append(total / max(1, seen))
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                stacked = params[name] if name in params else buffers[name]
                tensor.copy_(stacked[k])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    for result in results:
        result.steps = steps
        result.seconds = seconds / len(models)
    return results


def stacked_batches(data: DeviceData, batch_size: int, generators: Sequence[torch.Generator],
                    augment: bool | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``data.batches(batch_size, shuffle=True, generator=g, augment=augment)``
    for every generator at once: ``x`` [K, B, C, H, W], ``y`` [K, B].

    Each generator makes the same draws in the same order as there (its permutation,
    then each batch's crop offsets and flips), so model k sees exactly the batches it
    would alone; the gather and the normalisation run once for all K models.
    """
    n, k = len(data), len(generators)
    orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(data.device)
    do_augment = data.augment if augment is None else augment
    for start in range(0, n, batch_size):
        index = orders[:, start:start + batch_size]  # [K, B]: every model the same B
        images = data.images[index]
        if do_augment:
            images = torch.stack([random_crop_flip(images[i], g)
                                  for i, g in enumerate(generators)])
        x = data.normalise(images.flatten(0, 1)).unflatten(0, (k, index.shape[1]))
        yield x, data.labels[index]


def model_footprint(model: nn.Module, recipe: Recipe, sample_shape: Sequence[int]) -> int:
    """Bytes one model needs to train in a pack: weights, gradients, optimizer state,
    and twice the activations of one batch (kept for backward, then their gradients).

    Activations are counted as the outputs of every leaf module for one sample,
    found by running the model on the meta device (no compute, no memory).
    """
    states = 2 if recipe.optimizer == "adam" else (1 if recipe.momentum > 0 else 0)
    tensors = sum(p.numel() for p in model.parameters()) * (2 + states)
    tensors += sum(b.numel() for b in model.buffers())
    activations = 0

    def count(_module: nn.Module, _inputs, output) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    meta = copy.deepcopy(model).to("meta").eval()  # eval: no running-stat updates
    handles = [m.register_forward_hook(count) for m in meta.modules()
               if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(1, *sample_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return 4 * (tensors + 2 * activations * recipe.batch_size)


def memory_budget(device: torch.device) -> int:
    """Bytes a pack may plan to use on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_SHARE)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = CPU_MEMORY_FALLBACK / CPU_MEMORY_SHARE
    return int(available * CPU_MEMORY_SHARE)


def stacking_pays(model: nn.Module, device: torch.device) -> bool:
    """Whether stacking is expected to be faster than one model after another.

    On CUDA, yes (many small kernels become few large ones). On the CPU, only for
    convolution-free models: ``vmap`` turns K convolutions into one grouped
    convolution, which the CPU kernels run slower than K plain ones (8 MNIST LeNets,
    1 thread: 0.65x; 32 digits MLPs: 1.2-3x, BENCHMARKS.md 2026-12-02).
    """
    if device.type != "cpu":
        return True
    return not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def pack_capacity(model: nn.Module, recipe: Recipe, sample_shape: Sequence[int],
                  device: torch.device, budget: int | None = None) -> int:
    """How many copies of ``model`` to train at once on ``device``: 1 where stacking
    does not pay, else as many as the memory budget holds, at most ``MAX_PACK``
    (``CPU_MAX_PACK`` on the CPU)."""
    if not stacking_pays(model, device):
        return 1
    budget = memory_budget(device) if budget is None else budget
    cap = CPU_MAX_PACK if device.type == "cpu" else MAX_PACK
    return max(1, min(cap, budget // max(1, model_footprint(model, recipe, sample_shape))))
