"""``partial_amnesiac``: subtract layer-wise pruned recorded updates (seed 001, §4.1).

Eq. 6: the stored update of layer l is P_l ⊙ Δw_{l,e,b}, P_l a 0/1 pruning
matrix whose share of zeros is the layer's pruning share; Eq. 7:
w' = w − Σ_e Σ_{b ∈ B_t} P ⊙ Δw_{e,b}. Pruning kinds (§4.1): layer-wise random,
layer-wise magnitude (the smallest |Δw| of the layer) and global (the smallest
|Δw| over the whole model, one share), applied to each step's update by
``recorder.prune_update``. A "layer" is one entry of ``parameter_layers`` (weight
and bias together). The per-layer shares follow ``layer_schedule(start, end,
shape)``: §4.1 prunes the first layers most and less with depth, and §5.4.4
found random pruning with such a decreasing schedule best, hence the defaults'
kind and direction; the paper gives no percentages, 0.9 -> 0.5 is our choice.
With every share at 0 this is exactly ``amnesiac`` (Eq. 4).

Record time or unlearn time. The paper prunes at record time (to store less);
the recorder can do that (``UpdateRecorder(prune=PruneSpec(kind, amounts),
seed=mask_seed)``). This method prunes the stored updates at unlearn time, so one
dense recording serves every point of a sweep. The two give the same result for
the same mask seed: magnitude and global masks depend only on the step's update,
and random masks on ``recorder.step_generator(mask_seed, step)`` alone. Given a
recording already pruned at record time, its stored updates are used as they
are, provided its pruning is the one asked for (else an error).

Eq. 6 writes P_l without an (e, b) index; with magnitude or global pruning the
mask necessarily depends on each update, and for random pruning we likewise draw
one mask per step (as ``torch.nn.utils.prune.random_unstructured`` applied to each
stored update would), reading P_l as "a pruning matrix of layer l's size".

Storage (seed 001's storage column: what a user must keep to unlearn later).
A random mask is a function of (mask seed, step) and the layer shares alone, so a
user stores only the kept values of each step's update, in row-major order, plus
the one mask seed; the mask is regenerated when the step is needed
(``random_keep_masks``, ``pack_values`` / ``unpack_values``, defined in the recorder
and shared with it). Unlearning with random
pruning takes that path: each affected step's update is reduced to its stored
values and re-expanded through the regenerated mask, which gives exactly
P ⊙ Δw. A magnitude or global mask depends on the update's values, so it cannot
be regenerated and its positions must be stored: int32 index + float32 value per
kept entry where that is smaller than float32 dense (the recorder's rule).
``storage_bytes(recording, hp)`` counts these payloads (4 bytes per kept value
for random pruning, + 8 for the seed when anything is pruned) plus the batch
index: seed 001's storage saving is 1 − storage_bytes(partial) /
amnesiac.storage_bytes. The recorder's record-time random pruning writes this
values-only format (recording format 2), so such a recording's update files hold
exactly the counted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from unlearn_core.errors import UserInputError
from unlearn_core.methods.amnesiac import (
    check_recording_fits,
    index_bytes,
    recording_of,
    subtract_updates,
)
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import Choice, SearchSpace, Uniform, hparam
from unlearn_core.train.recorder import (
    SCHEDULE_SHAPES,
    PruneSpec,
    RecordedUpdates,
    layer_schedule,
    pack_values,
    prune_update,
    random_keep_masks,
    step_generator,
    unpack_values,
)

REQUIRES = frozenset({"update_recording"})
KINDS = ("random", "magnitude", "global")
SEED_BYTES = 8  # the mask seed, one unsigned 64-bit integer per recording
VALUE_BYTES = 4  # one float32 kept value


@dataclass(frozen=True)
class Hparams:
    # §4.1 kinds; seed 001 §5.4.4: random (decreasing) was best
    prune_kind: str = hparam("random", choices=KINDS)
    # pruned share of layer 1's update (zeros of P_1); §4.1: high (ours)
    prune_start: float = hparam(0.9, ge=0, le=1)
    # pruned share of the last layer's update; §4.1: lower with depth (ours)
    prune_end: float = hparam(0.5, ge=0, le=1)
    # interpolation over depth (layer_schedule); ours
    prune_shape: str = hparam("linear", choices=SCHEDULE_SHAPES)
    # share pruned over the whole model, "global" kind only; ours
    global_amount: float = hparam(0.7, ge=0, le=1)
    # seed of random masks (step_generator); UpdateRecorder's default: 0
    mask_seed: int = hparam(0, ge=0)


SEARCH_SPACE: SearchSpace = {
    "prune_kind": Choice(KINDS),
    "prune_start": Uniform(0.0, 1.0),
    "prune_end": Uniform(0.0, 1.0),
    "prune_shape": Choice(SCHEDULE_SHAPES),
    "global_amount": Uniform(0.0, 1.0),
}


def pruning_amounts(num_layers: int, hp: Hparams) -> list[float]:
    """Pruned share per layer (the global kind: the one share, repeated)."""
    if hp.prune_kind not in KINDS:
        raise UserInputError(f"prune_kind {hp.prune_kind!r} unknown: expected one of {KINDS}")
    if hp.prune_kind == "global":
        return PruneSpec("global", hp.global_amount).validate(num_layers)
    return layer_schedule(num_layers, hp.prune_start, hp.prune_end, hp.prune_shape)


def pruned_update(recording: RecordedUpdates, step: int, hp: Hparams,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """P ⊙ Δw of one recorded step (Eq. 6), from its stored dense update, on ``device``.

    Random pruning goes through the values-only format (stored values + the mask
    regenerated from the seed), as a user holding only that format would unlearn.
    The masks do not depend on the device (random scores are drawn on the CPU).
    """
    layers = recording.meta["layers"]
    amounts = pruning_amounts(len(layers), hp)
    dense = {name: delta.to(device) for name, delta in recording.update(step).items()}
    if hp.prune_kind == "random":
        keep = random_keep_masks(recording.meta["shapes"], layers, amounts, hp.mask_seed, step)
        return unpack_values(pack_values(dense, keep), keep)
    return prune_update(dense, layers, amounts, hp.prune_kind,
                        step_generator(hp.mask_seed, step))


def random_kept_per_step(recording: RecordedUpdates, hp: Hparams) -> int:
    """Entries a random mask keeps in one step: each layer keeps size − round(share·size),
    the count ``prune_update`` prunes, whatever the seed and step."""
    shapes, layers = recording.meta["shapes"], recording.meta["layers"]
    kept = 0
    for names, amount in zip(layers, pruning_amounts(len(layers), hp), strict=True):
        size = sum(math.prod(shapes[name]) for name in names)
        kept += size - (int(round(amount * size)) if amount > 0.0 else 0)
    return kept


def _recorded_pruning_is(recording: RecordedUpdates, hp: Hparams) -> bool:
    """Whether a record-time-pruned recording holds exactly the pruning ``hp`` asks for.

    A recording without record-time pruning returns False; one pruned otherwise raises.
    """
    spec = recording.meta["prune"]
    if spec["kind"] == "none":
        return False
    amount = spec["amount"]
    recorded = PruneSpec(spec["kind"], tuple(amount) if isinstance(amount, list) else amount)
    layers = recording.meta["layers"]
    same = recorded.kind == hp.prune_kind and np.allclose(
        recorded.validate(len(layers)), pruning_amounts(len(layers), hp), rtol=0, atol=1e-12)
    if same and (hp.prune_kind != "random" or recording.meta["seed"] == hp.mask_seed):
        return True
    raise UserInputError(
        f"this recording was pruned at record time ({spec}, seed {recording.meta['seed']}), "
        f"not as asked ({hp}); record without pruning to choose the pruning at unlearn time"
    )


def sum_pruned_updates(recording: RecordedUpdates, steps: np.ndarray, hp: Hparams,
                       device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Σ_{steps} P ⊙ Δw (Eq. 7's subtracted term), in float64."""
    if _recorded_pruning_is(recording, hp):
        return recording.sum_updates(steps)  # already P ⊙ Δw
    total = {name: torch.zeros(shape, dtype=torch.float64, device=device)
             for name, shape in recording.meta["shapes"].items()}
    for step in sorted(int(s) for s in steps):
        for name, delta in pruned_update(recording, step, hp, device).items():
            total[name] += delta.double()
    return total


def storage_bytes(recording: RecordedUpdates, hp: Hparams,
                  device: torch.device | str = "cpu") -> int:
    """Bytes a user must store for the pruned updates of every step, plus the batch index.

    Random pruning: 4 bytes per kept value and the 8-byte mask seed (the masks are
    regenerated). Magnitude and global pruning: one pass over the recording (each step
    pruned as the method prunes it), in the recorder's format, or the recording's own
    size if it was pruned so at record time. The update payload is exact; file
    headers (about 100 bytes per stored tensor) are not counted.
    """
    recorded = _recorded_pruning_is(recording, hp)  # refuses a recording pruned otherwise
    if hp.prune_kind == "random":
        kept = random_kept_per_step(recording, hp)
        dense = sum(math.prod(shape) for shape in recording.meta["shapes"].values())
        seed = SEED_BYTES if kept < dense else 0  # nothing pruned: no mask to regenerate
        return VALUE_BYTES * kept * len(recording.steps) + seed + index_bytes(recording)
    if recorded:
        return recording.bytes_on_disk
    payload = 0
    for step in recording.steps:
        for delta in pruned_update(recording, int(step), hp, device).values():
            kept = int(torch.count_nonzero(delta))
            # the recorder's rule: sparse (int32 index + float32 value) where smaller
            payload += 8 * kept if 2 * kept < delta.numel() else 4 * delta.numel()
    return payload + index_bytes(recording)


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recording = recording_of(task, "partial_amnesiac")
    check_recording_fits(model, recording)
    affected = recording.affected_steps(task.forget_ids)  # B_t over all epochs
    device = next(model.parameters()).device  # prune where the model lives (GPU: faster)
    subtract_updates(model, sum_pruned_updates(recording, affected, hp, device))  # Eq. 7
    return model


def reported_metrics(task: UnlearnTask, hp: Hparams) -> dict[str, float]:
    """Seed 001's storage: bytes of the pruned updates, vs amnesiac's dense updates."""
    from unlearn_core.methods import amnesiac

    recording = recording_of(task, "partial_amnesiac")
    kept = storage_bytes(recording, hp)
    dense = amnesiac.storage_bytes(recording)
    return {"storage/bytes": float(kept), "storage/dense_bytes": float(dense),
            "storage/saving": 1.0 - kept / dense if dense else 0.0,
            "storage/affected_share": recording.affected_share(task.forget_ids)}
