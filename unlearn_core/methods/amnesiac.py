"""``amnesiac``: subtract the recorded updates of every batch that held a forget sample.

Graves et al. 2020, as stated by seed 001 (§3.2.2, Eq. 4):
w' = w − Σ_e Σ_{b ∈ B_t} Δw_{e,b}, where B_t is the set of training batches that
held at least one targeted sample and Δw_{e,b} the parameter change that batch
made (whatever the optimiser: the recorder stores w_after − w_before per step).
The source must have been trained with ``UpdateRecorder`` as a ``fit`` hook; the
pipeline passes the ``RecordedUpdates`` as ``task.update_recording``
(``REQUIRES``). The sum is taken in float64 and subtracted once. Only parameters
are recorded and restored; normalisation running statistics stay as trained.

Graves et al. optionally fine-tune briefly on D_r afterwards; seed 001 (§5.4.1)
compares without it, so ``finetune_epochs`` defaults to 0.

``storage_bytes(recording, hp)`` gives the storage the method needs (seed 001's
storage cost): every step's dense float32 update (which batches will be
affected is not known at training time) plus the batch index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from unlearn_core.errors import UserInputError
from unlearn_core.methods.common import method_recipe
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.search import IntUniform, LogUniform, SearchSpace, hparam
from unlearn_core.train.loop import fit
from unlearn_core.train.recorder import RecordedUpdates

REQUIRES = frozenset({"update_recording"})


@dataclass(frozen=True)
class Hparams:
    # epochs on D_r after Eq. 4; Graves et al. optional, seed 001: 0
    finetune_epochs: int = hparam(0, ge=0)
    # SGD lr of that fine-tune; seed 001 §5 training lr: 0.001
    finetune_lr: float = hparam(1e-3, gt=0)
    # fine-tune batch size; seed 001 §5: 128
    batch_size: int = hparam(128, ge=1)


SEARCH_SPACE: SearchSpace = {
    "finetune_epochs": IntUniform(0, 3),
    "finetune_lr": LogUniform(1e-4, 1e-1),
}


def recording_of(task: UnlearnTask, method: str) -> RecordedUpdates:
    """The task's update recording, or an error naming the requirement."""
    recording = task.update_recording
    if recording is None:
        raise UserInputError(
            f"{method} REQUIRES 'update_recording': the task has none. Train the source with "
            "UpdateRecorder(folder) as a fit hook and pass "
            "update_recording=RecordedUpdates(folder) to make_task"
        )
    return recording


def check_recording_fits(model: nn.Module, recording: RecordedUpdates) -> None:
    """The recording was made on this architecture: same parameter names and shapes."""
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    recorded = {name: list(shape) for name, shape in recording.meta["shapes"].items()}
    if shapes != recorded:
        missing = sorted(set(shapes) ^ set(recorded))
        raise UserInputError(
            "the update recording does not match the model's parameters"
            + (f" (names differ: {missing[:5]})" if missing else " (shapes differ)")
        )


@torch.no_grad()
def subtract_updates(model: nn.Module, total: dict[str, torch.Tensor]) -> None:
    """w ← w − total, computed in float64 and cast back to each parameter's dtype."""
    for name, param in model.named_parameters():
        if name in total:
            delta = total[name].to(device=param.device, dtype=torch.float64)
            param.copy_((param.double() - delta).to(param.dtype))


def index_bytes(recording: RecordedUpdates) -> int:
    """Bytes of the batch index and metadata (everything but the update chunks)."""
    return sum(f.stat().st_size for f in recording.folder.iterdir()
               if f.is_file() and not f.name.startswith("updates-"))


def storage_bytes(recording: RecordedUpdates, hp: Hparams | None = None) -> int:
    """Storage amnesiac needs: every step's dense float32 update plus the batch index."""
    per_step = sum(4 * _numel(shape) for shape in recording.meta["shapes"].values())
    return per_step * len(recording.steps) + index_bytes(recording)


def _numel(shape: list[int]) -> int:
    out = 1
    for size in shape:
        out *= int(size)
    return out


def unlearn(model: nn.Module, task: UnlearnTask, hp: Hparams) -> nn.Module:
    recording = recording_of(task, "amnesiac")
    if recording.meta["prune"]["kind"] != "none":
        raise UserInputError(
            "amnesiac subtracts whole updates but this recording was pruned at record time "
            f"({recording.meta['prune']}); use partial_amnesiac with the same pruning"
        )
    check_recording_fits(model, recording)
    affected = recording.affected_steps(task.forget_ids)  # B_t over all epochs
    subtract_updates(model, recording.sum_updates(affected))  # Eq. 4
    if hp.finetune_epochs > 0:
        recipe = method_recipe(hp.finetune_epochs, hp.finetune_lr, hp.batch_size)
        fit(model, task.retain, recipe, seed=task.seed)
    return model


def reported_metrics(task: UnlearnTask, hp: Hparams) -> dict[str, float]:
    """Seed 001's storage cost (bytes kept for unlearning) and share of affected batches."""
    recording = recording_of(task, "amnesiac")
    dense = storage_bytes(recording)
    return {"storage/bytes": float(dense), "storage/dense_bytes": float(dense),
            "storage/affected_share": recording.affected_share(task.forget_ids)}
