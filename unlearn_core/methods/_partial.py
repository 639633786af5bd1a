"""Layer-wise partial updates (seed 001, §4.2-4.3, Eq. 8-10), shared by its partial methods.

Seed 001 (after Godavarti & Hero 2005, partial-update LMS) masks the gradient of
each layer l with a binary selection matrix S_{l,e} of that layer's size (Eq. 9):
only the weights where S_{l,e} = 1 move during epoch e, and S_{l,e+1} is S_{l,e}
circularly shifted. Here:

- a "layer" is one entry of ``parameter_layers(model)`` (its weight and bias
  joined, input to output, the project's definition), and S_{l,e} is a flat
  boolean vector over that joined layer, reshaped onto each parameter;
- the share of ones in S_{l,1} (the layer's density) follows a per-layer
  schedule (start, end, shape) from ``layer_schedule``; the paper gives no
  numbers, only the direction (label flipping: density decreasing with depth;
  gradient ascent: increasing);
- S_{l,1} has exactly round(density · size) ones, either at random positions
  (``"random"``) or evenly spaced (``"interleaved"``: Godavarti & Hero's
  sequential partial update, where each circular shift selects the next subset);
- the circular shift moves S_{l,e} by one position along the layer's flattened
  (row-major) order per epoch: S_{l,e} = roll(S_{l,1}, e − 1) (``torch.roll``,
  the "simple circular shift operation" of §4.2).

The masking is a hook of the one training loop ``fit``: a gradient hook applies
Eq. 9 (S_{l,e} ⊙ ∇) during backward, and after each step the unselected entries
are put back to their pre-step values, so they receive no update in that epoch
even when the optimiser has momentum (a buffer filled in an earlier epoch) or
weight decay. With plain SGD the restore is a no-op and the step is exactly
Eq. 8 / Eq. 10. With every density at 1 the hook changes nothing: the method
equals its naive counterpart run through ``fit`` with the same recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from unlearn_core.errors import UserInputError
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.layers import parameter_layers
from unlearn_core.train.loop import FitResult, fit
from unlearn_core.train.recipe import Recipe
from unlearn_core.train.recorder import SCHEDULE_SHAPES, layer_schedule

SELECTION_INITS = ("random", "interleaved")

__all__ = [
    "SCHEDULE_SHAPES",
    "SELECTION_INITS",
    "LayerSelection",
    "PartialUpdateHook",
    "initial_selection",
    "layer_densities",
    "partial_fit",
    "shift_selection",
]


def layer_densities(num_layers: int, start: float, end: float, shape: str) -> list[float]:
    """Share of each layer's weights that S_{l,e} selects, first layer ``start``, last ``end``."""
    return layer_schedule(num_layers, start, end, shape)


def initial_selection(
    numel: int, density: float, init: str, generator: torch.Generator
) -> torch.Tensor:
    """S_{l,1} of one layer, flat: exactly round(density · numel) ones."""
    if init not in SELECTION_INITS:
        raise UserInputError(f"selection init {init!r} unknown: expected one of {SELECTION_INITS}")
    count = int(round(density * numel))
    if init == "random":
        selected = torch.zeros(numel, dtype=torch.bool)
        selected[torch.randperm(numel, generator=generator)[:count]] = True
        return selected
    # interleaved: entry i is selected when floor((i+1)·count/numel) steps up (evenly spaced)
    index = torch.arange(numel, dtype=torch.int64)
    return ((index + 1) * count) // max(1, numel) > (index * count) // max(1, numel)


def shift_selection(selected: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """S_{l,e+1} from S_{l,e}: a circular shift by ``shift`` positions (§4.2)."""
    return torch.roll(selected, shifts=shift)


class LayerSelection:
    """The selection matrices S_{l,e} of every layer of a model, for the current epoch."""

    def __init__(
        self, model: nn.Module, densities: list[float], init: str, seed: int
    ) -> None:
        self.layers = parameter_layers(model)
        if len(densities) != len(self.layers):
            raise UserInputError(
                f"{len(densities)} densities for a model with {len(self.layers)} layers"
            )
        params = dict(model.named_parameters())
        self.shapes = {name: params[name].shape for names in self.layers for name in names}
        generator = torch.Generator().manual_seed(seed)
        self.flat = [
            initial_selection(sum(params[n].numel() for n in names), d, init, generator)
            for names, d in zip(self.layers, densities, strict=True)
        ]
        self.epoch = 0

    def shift(self) -> None:
        self.flat = [shift_selection(s) for s in self.flat]
        self.epoch += 1

    def masks(self, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Parameter name -> boolean mask of its shape (True: updated this epoch)."""
        out = {}
        for names, selected in zip(self.layers, self.flat, strict=True):
            start = 0
            for name in names:
                size = self.shapes[name].numel()
                out[name] = selected[start : start + size].view(self.shapes[name]).to(device)
                start += size
        return out


class PartialUpdateHook:
    """``fit`` hook: S_{l,e} ⊙ gradient (Eq. 9), no update where S_{l,e} = 0, shift per epoch."""

    def __init__(self, densities: list[float], init: str, seed: int,
                 keep_history: bool = False) -> None:
        self.densities = densities
        self.init = init
        self.seed = seed
        self.keep_history = keep_history
        self.history: list[list[torch.Tensor]] = []  # S_{l,e} per epoch (flat), if kept
        self._handles: list = []
        self._before: dict[str, torch.Tensor] = {}

    def on_train_start(self, model: nn.Module, optimizer) -> None:
        self.selection = LayerSelection(model, self.densities, self.init, self.seed)
        self._params = dict(model.named_parameters())
        self._set_masks()
        for name, param in self._params.items():
            if name in self._masks and param.requires_grad:
                self._handles.append(param.register_hook(self._grad_hook(name)))

    def _set_masks(self) -> None:
        device = next(iter(self._params.values())).device
        self._masks = self.selection.masks(device)
        # parameters with unselected entries: the only ones that need a restore
        self._partial = [n for n, m in self._masks.items() if not bool(m.all())]
        if self.keep_history:
            self.history.append([s.clone() for s in self.selection.flat])

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self._masks[name].to(grad.dtype)

        return hook

    def before_step(self, model: nn.Module, batch) -> None:
        self._before = {n: self._params[n].detach().clone() for n in self._partial}

    @torch.no_grad()
    def after_step(self, model: nn.Module, batch, epoch: int, step: int) -> None:
        for name in self._partial:
            param = self._params[name]
            param.copy_(torch.where(self._masks[name], param, self._before[name]))
        self._before = {}

    def on_epoch_end(self, model: nn.Module, epoch: int, loss: float) -> None:
        self.selection.shift()
        self._set_masks()

    def on_train_end(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.keep_history:
            self.history.pop()  # the shift after the last epoch selects for no epoch


def partial_fit(
    model: nn.Module,
    data: DeviceData,
    recipe: Recipe,
    *,
    seed: int,
    densities: tuple[float, float, str],
    init: str,
    loss_fn=None,
    keep_history: bool = False,
    hooks: Sequence[object] = (),
) -> tuple[FitResult, PartialUpdateHook]:
    """``fit`` with layer-wise partial updates; ``densities`` = (start, end, shape).

    ``hooks`` are further ``fit`` hooks, run after the partial-update hook."""
    start, end, shape = densities
    num_layers = len(parameter_layers(model))
    hook = PartialUpdateHook(layer_densities(num_layers, start, end, shape), init, seed,
                             keep_history=keep_history)
    result = fit(model, data, recipe, seed=seed, hooks=[hook, *hooks], loss_fn=loss_fn)
    return result, hook
