"""``activation_pruning`` (Forget Pruning): zero the activations a forget batch drives
hardest, keep those masks for good, and fine-tune on D_r (seed paper 002, Sec. 3.3, Fig. 3).

Sec. 3.3: forward a forget batch, take each activation map's batch average A, and set
to zero every element above the q-th percentile of A; q is high for early activation
functions (0.99) and lower for deep ones (0.90); the masks are "not further recomputed
for retain images", and fine-tuning on D_r then lets retain data "forge new
connections". No gradient is ever taken on D_f.

Where the masks sit: a forward hook on every activation-function module (ReLU, ReLU6,
GELU, SiLU, ... listed in ``ACTIVATION_TYPES``; gates such as Sigmoid are left alone)
multiplies that module's output by its 0/1 mask, i.e. after each activation, as the
paper's "wrapper on the activation functions". A module called several times per
forward (torchvision's BasicBlock/Bottleneck reuse one ``relu``) gets one mask per call
site; a forward pre-hook on the model and on the common ancestors of the activation
modules resets the call counters at each forward, including ``forward_features`` (which
in the zoo goes through ``Classifier.body``; a forward that reaches the activations
without any such module call raises instead of masking the wrong sites). The
hooks stay on the returned module: they mask in train and eval mode, during and after
fine-tuning, and survive ``copy.deepcopy``; the masks are not in ``state_dict`` (see
``activation_masks`` / ``install_fixed_masks`` to store and restore them). Activations
applied functionally (``F.relu``) are not masked.

Choices taken from the released code (github.com/sachit3022/unlearning,
``unl_algorithms/pruning/{model,trainer,pipeline}.py``):

- the percentile is taken over the channel axis at each position of the batch-mean map
  (``torch.quantile(m, q, dim=1)`` on [1, C, H, W]; for [B, F] and [B, T, D] maps the
  last axis); ``mask_scope="map"`` takes it over the whole map instead (the text's other
  reading). Elements strictly above the threshold are pruned.
- masks accumulate: every forget batch of a prune epoch ANDs a new mask into the old.
- q per activation module falls linearly with depth from ``q_early`` to ``q_deep`` (the
  code's ResNet-18 table: 0.99 stem, 0.975/0.95/0.925/0.90 for stages 1-4).
- schedule: 5 epochs; epochs 0 and 2 are prune epochs in which forget batches (masks
  computed in eval mode, no gradient) and retain fine-tuning steps alternate in the
  code's order (forget step when step % ceil(N/F) ≠ 0 while forget batches remain, or
  once the epoch's D_r batches are used up: N = R + F steps, each batch once);
  the others are plain fine-tuning epochs on D_r. AdamW lr 1e-4, weight decay 1e-4,
  batches of 256, cross-entropy.

Deviation: the code's cosine schedule is stepped once per epoch against a per-step
horizon, so its LR stays at ~1e-4; a constant LR is used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.methods._seed002 import adamw, logits_of
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, IntUniform, LogUniform, SearchSpace, Uniform, hparam
from unlearn_core.train.device_data import Batch
from unlearn_core.train.loop import prepare_model, seed_everything

ACTIVATION_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Softplus,
)
MASK_SCOPES = ("channel", "map")
REPORTS_EPOCHS = True  # calls task.end_epoch after every epoch
EPOCHS_HPARAM = "epochs"  # Hparams field: number of epochs reported, prune epochs
# included (ASHA's time axis)


@dataclass(frozen=True)
class Hparams:
    # total epochs; 002 code pruning/algorithm.py max_epochs=5
    epochs: int = hparam(5, ge=1)
    # even epochs that compute masks (0, 2); 002 code pipeline.py: 2
    prune_epochs: int = hparam(2, ge=0)
    # AdamW LR of the D_r steps; 002 code pipeline.py init_lr
    lr: float = hparam(1e-4, gt=0)
    # AdamW decoupled weight decay; 002 code pipeline.py
    weight_decay: float = hparam(1e-4, ge=0)
    # rows per D_r and D_f batch; 002 code pipeline.py: 256
    batch_size: int = hparam(256, ge=1)
    # percentile of the first activation; seed 002 §3.3: 0.99
    q_early: float = hparam(0.99, ge=0, le=1)
    # percentile of the last activation; seed 002 §3.3: 0.90
    q_deep: float = hparam(0.90, ge=0, le=1)
    # percentile axis: 002 code quantile(dim=1); "map": whole map
    mask_scope: str = hparam("channel", choices=MASK_SCOPES)


SEARCH_SPACE: SearchSpace = {
    "epochs": IntUniform(1, 10),
    "prune_epochs": IntUniform(1, 3),
    "lr": LogUniform(1e-5, 1e-3),
    "q_early": Uniform(0.95, 0.999),
    "q_deep": Uniform(0.8, 0.99),
    "mask_scope": Choice(MASK_SCOPES),
}


class _Calls:
    """State shared by one model's hooks: call counts per module, and whether to prune."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.pruning = False


class _ResetCalls:
    """Forward pre-hook: a new forward starts, call counts restart at zero."""

    def __init__(self, calls: _Calls) -> None:
        self.calls = calls

    def __call__(self, module: nn.Module, args) -> None:
        self.calls.count.clear()


def keep_mask(activation: torch.Tensor, q: float, scope: str) -> torch.Tensor:
    """1 where the batch-mean activation is at most its q-quantile, 0 above (shape [1, ...])."""
    mean = activation.detach().float().mean(0, keepdim=True)
    if scope == "channel":
        dim = 1 if mean.dim() >= 4 else -1  # channels of NCHW; features of [B, F], [B, T, D]
        threshold = torch.quantile(mean, q, dim=dim, keepdim=True)
    elif scope == "map":
        threshold = torch.quantile(mean.flatten(), q)
    else:
        raise ValueError(f"mask_scope {scope!r}: expected one of {MASK_SCOPES}")
    return (mean <= threshold).float()


class ActivationMask:
    """Forward hook on one activation module: output × mask, one mask per call site."""

    def __init__(self, calls: _Calls, name: str, q: float, scope: str) -> None:
        self.calls = calls
        self.name = name
        self.q = q
        self.scope = scope
        self.masks: list[torch.Tensor | None] = []

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor):
        site = self.calls.count.get(self.name, 0)
        self.calls.count[self.name] = site + 1
        pruned = any(mask is not None for mask in self.masks)
        if site >= len(self.masks) and pruned and not self.calls.pruning:
            raise RuntimeError(
                f"activation {self.name!r} called at an unknown site {site}: call counting lost "
                "track (reach the activations through a submodule call at every forward)"
            )
        while len(self.masks) <= site:
            self.masks.append(None)
        if self.calls.pruning:
            new = keep_mask(output, self.q, self.scope)
            old = self.masks[site]
            self.masks[site] = new if old is None else old.to(new.device) * new
        mask = self.masks[site]
        if mask is None:
            return None
        return output * mask.to(device=output.device, dtype=output.dtype)


def install_activation_masks(
    model: nn.Module, q_early: float, q_deep: float, scope: str
) -> list[ActivationMask]:
    """Hook every activation module (q linear in depth); masks start empty (identity)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    if not found:
        raise NotImplementedError(
            "activation_pruning needs activation modules (nn.ReLU, nn.GELU, ...) to hook; "
            f"{type(model).__name__} has none"
        )
    calls = _Calls()
    hooks = []
    for depth, (name, module) in enumerate(found):
        q = q_early + (q_deep - q_early) * depth / max(1, len(found) - 1)
        hook = ActivationMask(calls, name, q, scope)
        module.register_forward_hook(hook)
        hooks.append(hook)
    parts = [n.split(".") for n, _ in found]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    for depth in range(len(common) + 1):
        ancestor = model.get_submodule(".".join(common[:depth]))
        if not isinstance(ancestor, ACTIVATION_TYPES):
            ancestor.register_forward_pre_hook(_ResetCalls(calls))
    return hooks


def activation_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks a model carries, keyed ``"<module name>#<call site>"`` (for storage)."""
    out = {}
    for name, module in model.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, ActivationMask):
                for site, mask in enumerate(hook.masks):
                    if mask is not None:
                        out[f"{name}#{site}"] = mask
    return out


def install_fixed_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-attach masks saved with ``activation_masks`` to a freshly built model."""
    hooks = install_activation_masks(model, 1.0, 1.0, "map")
    for hook in hooks:
        sites = sorted(int(k.rsplit("#", 1)[1]) for k in masks if k.rsplit("#", 1)[0] == hook.name)
        hook.masks = [masks.get(f"{hook.name}#{s}") for s in range(max(sites, default=-1) + 1)]


def _hook_state(model: nn.Module) -> _Calls:
    for module in model.modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, ActivationMask):
                return hook.calls
    raise ValueError("the model has no activation masks installed")


@torch.no_grad()
def prune_step(model: nn.Module, forget: Batch) -> None:
    """Forward one forget batch in eval mode and AND its masks into the stored ones."""
    calls = _hook_state(model)
    was_training = model.training
    model.eval()
    calls.pruning = True
    try:
        logits_of(model, forget.x)
    finally:
        calls.pruning = False
        model.train(was_training)


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
    loss = F.cross_entropy(logits_of(model, batch.x), batch.y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    model = prepare_model(model, task.device)
    install_activation_masks(model, hp.q_early, hp.q_deep, hp.mask_scope)
    optimizer = adamw(model, hp.lr, hp.weight_decay)
    pruned = 0
    for epoch in range(hp.epochs):
        model.train()
        retain = task.retain.batches(hp.batch_size, shuffle=True, generator=generator)
        if epoch % 2 == 0 and pruned < hp.prune_epochs:
            pruned += 1
            forget = list(task.forget.batches(hp.batch_size, shuffle=True, generator=generator))
            n_retain = math.ceil(len(task.retain) / hp.batch_size)
            every = math.ceil((n_retain + len(forget)) / max(1, len(forget)))
            i = j = 0  # retain / forget steps taken: exactly n_retain and len(forget)
            for step in range(n_retain + len(forget)):
                if (step % every and j < len(forget)) or i == n_retain:
                    prune_step(model, forget[j])
                    j += 1
                else:
                    train_step(model, next(retain), optimizer)
                    i += 1
        else:
            for batch in retain:
                train_step(model, batch, optimizer)
        task.end_epoch(model, epoch + 1)
    return model
