"""One-shot magnitude pruning (OMP) with masks kept through fine-tuning.

Seed paper 004 evaluates every method on 95 % sparse models made with OMP
(Ma et al. 2021): prune the smallest-magnitude weights once, then fine-tune
with the mask fixed. Only weight matrices and kernels (dim > 1) of
convolutional and linear layers are pruned; biases and norm parameters stay.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from unlearn_core.errors import UserInputError

Masks = dict[str, torch.Tensor]  # parameter name -> bool mask (True = kept)
SCOPES = ("global", "layer")


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {
        f"{module_name}.weight" if module_name else "weight": module.weight
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and module.weight.dim() > 1
    }


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> Masks:
    """Masks keeping the largest-|w| weights so that ``sparsity`` of them are zero.

    ``global`` ranks all prunable weights together (OMP as in seed 004);
    ``layer`` prunes each layer to the same sparsity.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserInputError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise UserInputError(f"pruning scope {scope!r} unknown: expected one of {SCOPES}")
    params = prunable_parameters(model)
    if scope == "layer":
        return {name: _keep_largest(p.detach().abs(), sparsity) for name, p in params.items()}
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    keep_mask = _keep_largest(flat, sparsity)
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep_mask[start : start + p.numel()].view_as(p)
        start += p.numel()
    return masks


def _keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Exactly round(sparsity * n) entries False (ties broken by position)."""
    n = magnitudes.numel()
    prune = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=magnitudes.device)
    if prune:
        order = torch.argsort(magnitudes.flatten(), stable=True)
        mask[order[:prune]] = False
    return mask.view_as(magnitudes)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        if mask.device != param.device or mask.dtype != param.dtype:
            mask = mask.to(param.device, param.dtype)
        param.mul_(mask)


def prune_model(model: nn.Module, sparsity: float, scope: str = "global") -> Masks:
    """Prune in place; return the masks to keep through fine-tuning."""
    masks = magnitude_masks(model, sparsity, scope)
    apply_masks(model, masks)
    return masks


def masks_from_zeros(model: nn.Module) -> Masks:
    """Recover the masks of a pruned model (e.g. a loaded 95 % sparse checkpoint)."""
    return {name: p.detach() != 0 for name, p in prunable_parameters(model).items()}


def sparsity_of(model: nn.Module) -> float:
    """Share of zero entries over the prunable weights."""
    params = prunable_parameters(model).values()
    total = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    return zeros / max(1, total)


class MaskHook:
    """Trainer hook: re-apply masks after every optimizer step, so pruned weights stay zero.

    Zeroing the weight after the step (rather than only the gradient) also
    cancels what momentum and weight decay would otherwise move.
    """

    def __init__(self, masks: Masks) -> None:
        self.masks = masks

    def on_train_start(self, model: nn.Module, optimizer) -> None:
        # Convert once to the parameters' device and dtype: no per-step copies.
        params = dict(model.named_parameters())
        self.masks = {
            name: mask.to(params[name].device, params[name].dtype)
            for name, mask in self.masks.items()
        }
        apply_masks(model, self.masks)

    def after_step(self, model: nn.Module, batch, epoch: int, step: int) -> None:
        apply_masks(model, self.masks)


class SparsityGuard:
    """Keep a sparse model sparse through any unlearning method (seed 004's protocol).

    Seed 004 (after Jia et al. 2023) unlearns a 95 % OMP-sparse model and reports
    the sparse model: pruned weights must stay zero whatever the method does.
    ``start(model)`` registers a gradient hook on every pruned tensor that zeroes
    the gradient at pruned entries, which keeps them at exactly zero under
    SGD/momentum/weight decay/Adam (their update is a function of a zero gradient
    and a zero weight), in any training loop. ``finish(model)`` removes the hooks
    and re-applies the masks, for methods that write weights directly (Top-K
    perturbation, Fisher noise, amnesiac subtraction, re-initialised layers).
    """

    def __init__(self, masks: Masks) -> None:
        self.masks = masks
        self._handles: list = []

    def start(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            keep = mask.to(params[name].device, params[name].dtype)
            self._handles.append(params[name].register_hook(lambda grad, k=keep: grad * k))

    def finish(self, model: nn.Module) -> nn.Module:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        apply_masks(model, self.masks)
        return model
