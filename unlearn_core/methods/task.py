"""What an unlearning method may read: the task object passed to ``unlearn``.

A method gets the model to unlearn (a copy of the source) and this task, which
exposes only what the method may use. Zero-glance methods (seed 003) run on a
task built with ``zero_glance=True``, which does not hold what they may not read:
no D_f, no full D_r, no validation set (it holds samples of the forgotten
classes), no model but the source (no ``extras``, no update recording), and no
pipeline hook (an epoch callback typically holds the whole dataset). It holds
D_r_sub, the forgotten class ids (the request names them), the source, the seed,
the device and the recipe; reading anything else raises ``ForgetSetAccessError``.
The task enforces it; the method is not trusted. (Within one Python process a
method bent on it can still reach any object through ``gc`` or frames; the
guarantee is that nothing reachable from the task itself, by attribute, item,
property or closure, is such data: ``tests/test_zero_glance.py`` walks it.)

Per-epoch progress: a method with an epoch loop calls ``task.end_epoch(model,
epoch)`` at the end of each epoch (``epoch`` counts from 1; a two-phase method
counts the phase its ``EPOCHS_HPARAM`` names, see ``unlearn_core.methods``). It
calls ``task.epoch_callback`` if one is set, e.g. to evaluate the intermediate
model for an ASHA sweep. The callback may raise ``StopUnlearning`` to end the
method there; the pipeline records such a trial as stopped.
"""

from __future__ import annotations

import copy
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.recipe import Recipe


class ForgetSetAccessError(PermissionError):
    """A zero-glance method tried to read the forget set."""


class StopUnlearning(Exception):
    """Raised by an epoch callback to end the method after ``epoch`` epochs.

    ``metrics`` (optional) are the callback's evaluation of the model at that
    epoch; ``reason`` says who stopped it (e.g. ``"asha"``).
    """

    def __init__(self, epoch: int, metrics: dict | None = None, reason: str = "") -> None:
        super().__init__(f"stopped after epoch {epoch}" + (f" ({reason})" if reason else ""))
        self.epoch = epoch
        self.metrics = dict(metrics or {})
        self.reason = reason


EpochCallback = Callable[[nn.Module, int], None]

# Each task's epoch callback, kept outside the task: a pipeline hook (e.g. ASHA's
# per-epoch evaluation) holds the whole dataset, and a zero-glance task must not hold
# anything through which its method could reach D_f. Weak keys: the entry goes with
# its task.
_EPOCH_CALLBACKS: weakref.WeakKeyDictionary[UnlearnTask, EpochCallback] = (
    weakref.WeakKeyDictionary())


@dataclass(eq=False)  # identity equality and hash: tasks key _EPOCH_CALLBACKS
class UnlearnTask:
    source: nn.Module  # the trained source model (frozen copy; do not modify)
    retain_data: DeviceData | None  # D_r; None in a zero-glance task
    forget_data: DeviceData | None  # D_f; None in a zero-glance task
    val_data: DeviceData | None  # D_v; None in a zero-glance task (it holds forget classes)
    num_classes: int
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    retain_subset_data: DeviceData | None = None  # D_r_sub (seed 003), if the manifest has one
    forget_classes: tuple[int, ...] = ()  # the classes a class-wise request names (may be read
    # in zero-glance: the request itself names them)
    zero_glance: bool = False
    model_name: str = ""  # architecture of the source, for methods that re-initialise
    train_recipe: Recipe | None = None  # the source's training recipe (retrain uses it)
    update_recording: object | None = None  # RecordedUpdates of the source run (amnesiac)
    extras: dict = field(default_factory=dict)  # e.g. a retrained model for js_reference
    callback_seconds: float = 0.0  # wall time spent in epoch_callback (not the method's)

    def __post_init__(self) -> None:
        if self.zero_glance:
            _check_zero_glance(self)

    def __setattr__(self, name: str, value) -> None:
        # Once zero-glance, always: the flag is what keeps the epoch callback hidden.
        if name == "zero_glance" and self.__dict__.get("zero_glance") and not value:
            raise ForgetSetAccessError("zero-glance task: zero_glance cannot be turned off")
        super().__setattr__(name, value)

    @property
    def epoch_callback(self) -> EpochCallback | None:
        """Called as ``epoch_callback(model, epoch)`` by ``end_epoch`` (epoch from 1); may
        raise ``StopUnlearning``. Set by the pipeline; a zero-glance method may not read it
        (it holds the pipeline's evaluation data), only trigger it through ``end_epoch``."""
        if self.zero_glance:
            raise ForgetSetAccessError(
                "zero-glance task: the pipeline's epoch callback is not the method's to read "
                "(it holds evaluation data); report epochs with task.end_epoch")
        return _EPOCH_CALLBACKS.get(self)

    @epoch_callback.setter
    def epoch_callback(self, callback: EpochCallback | None) -> None:
        if callback is None:
            _EPOCH_CALLBACKS.pop(self, None)
        else:
            _EPOCH_CALLBACKS[self] = callback

    def _guard(self, what: str) -> None:
        if self.zero_glance:
            raise ForgetSetAccessError(
                f"zero-glance task: the method may not read {what} (seed 003); "
                "use task.retain_subset and task.forget_classes"
            )

    @property
    def forget(self) -> DeviceData:
        self._guard("the forget set")
        return self.forget_data

    @property
    def forget_ids(self) -> np.ndarray:
        self._guard("the forget set's sample ids")
        return self.forget_data.ids.cpu().numpy()

    @property
    def retain(self) -> DeviceData:
        # In zero-glance only D_r_sub is available (seed 003: the full D_r is not).
        self._guard("the full retain set")
        return self.retain_data

    @property
    def retain_subset(self) -> DeviceData:
        if self.retain_subset_data is None:
            raise ValueError(
                "this task has no retain subset: set retain_subset_per_class in the split"
            )
        return self.retain_subset_data

    @property
    def val(self) -> DeviceData:
        # D_v holds samples of the forgotten classes and lies outside D_r_sub
        self._guard("the validation set")
        return self.val_data

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Report the end of epoch ``epoch`` (from 1) of ``model``'s training.

        Calls ``epoch_callback(model, epoch)`` if set, without letting it change
        the run: every module's train/eval mode and the torch, NumPy and Python
        random states are restored afterwards, so a method gives the same
        weights with or without a callback, and the time spent in the callback
        is added to ``callback_seconds`` (so timings can exclude it). An
        exception from the callback (``StopUnlearning``) propagates to the caller
        of ``unlearn``.
        """
        callback = _EPOCH_CALLBACKS.get(self)
        if callback is None:
            return
        cuda = self.device.type == "cuda"
        if cuda:  # the epoch's queued kernels belong to the method's time
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        modes = [(m, m.training) for m in model.modules()]
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                callback(model, epoch)
        finally:
            for module, mode in modes:
                module.training = mode
            np.random.set_state(np_state)
            random.setstate(py_state)
            if cuda:
                torch.cuda.synchronize(self.device)
            self.callback_seconds += time.perf_counter() - start

    def source_copy(self) -> nn.Module:
        """A frozen deep copy of the source (teacher models, JS references)."""
        teacher = copy.deepcopy(self.source).to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher


def _check_zero_glance(task: UnlearnTask) -> None:
    """Refuse a zero-glance task that holds more than D_r_sub and the source."""
    held = [name for name in ("forget_data", "retain_data", "val_data")
            if getattr(task, name) is not None]
    if held:
        raise ForgetSetAccessError(f"zero-glance task: may not hold {held} (seed 003: only "
                                   "D_r_sub, the forgotten class ids and the source)")
    if task.retain_subset_data is None:
        raise ValueError("a zero-glance task reads only D_r_sub and the manifest has none: "
                         "set split.retain_subset_per_class > 0")
    if task.update_recording is not None:
        raise ForgetSetAccessError("zero-glance task: may not hold an update_recording (it "
                                   "records the source's batches, D_f included)")
    if task.extras:  # e.g. "retrain_model": trained on the full D_r, which 003 never sees
        raise ForgetSetAccessError(
            f"zero-glance task: may not hold extras {sorted(task.extras)}; a zero-glance "
            "method gets no model but the source (retrain_model is trained on D_r)")


def make_task(
    dataset,
    manifest,
    source: nn.Module,
    *,
    model_name: str,
    train_recipe: Recipe | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    zero_glance: bool = False,
    update_recording: object | None = None,
    extras: dict | None = None,
) -> UnlearnTask:
    """Build the task for one unlearning run from a dataset and its split manifest.

    ``zero_glance=True`` builds only D_r_sub (copied rows: no view onto the dataset) and
    refuses an ``update_recording`` or any ``extras`` (``ForgetSetAccessError``).
    """
    device = torch.device(device)

    def view(name: str) -> DeviceData:
        # from_dataset copies the rows (advanced indexing), so the result shares no
        # storage with the whole dataset
        return DeviceData.from_dataset(dataset, manifest.ids(name), device)

    subset_ids = manifest.ids("retain_subset")
    full = not zero_glance  # zero-glance: never even build D_f, D_r or D_v
    return UnlearnTask(
        source=source,
        retain_data=view("retain") if full else None,
        forget_data=view("forget") if full else None,
        val_data=view("val") if full else None,
        num_classes=dataset.num_classes,
        seed=seed,
        device=device,
        retain_subset_data=view("retain_subset") if len(subset_ids) else None,
        forget_classes=tuple(manifest.forget_classes()),
        zero_glance=zero_glance,
        model_name=model_name,
        train_recipe=train_recipe,
        update_recording=update_recording,
        extras=dict(extras or {}),
    )
