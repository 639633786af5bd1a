"""Update recorder for amnesiac unlearning (Graves et al. 2020; seed paper 001).

During training it records, for every optimizer step (batch b of epoch e), which
sample ids the batch held and the parameter update Δw_{e,b} it made, optionally
pruned layer by layer before storing (seed 001, Eq. 6: the stored update is
P_l ⊙ Δw_{l,e,b}). Unlearning later subtracts the stored updates of the batches
that held a forget sample (Eq. 4 / Eq. 7).

On disk (a folder): ``updates-NNNNN.safetensors`` chunks, ``index.parquet``
(step, epoch, sample_ids) and ``recorder.json`` (pruning, layers, shapes, mask seed
and the format version). The index is written last and atomically, so a folder
without it is an incomplete recording. Per parameter and step a chunk holds, by
pruning kind (format 2, ``RECORDING_FORMAT``):

- none: the dense float32 update (key ``s{step}.{name}``);
- random: only the kept float32 values in row-major order (``….val``); the mask is a
  function of (mask seed, step) and the layer shares alone, so the reader regenerates
  it (``random_keep_masks``) and a user stores 4 bytes per kept entry plus the seed
  once in ``recorder.json`` (seed 001's storage column);
- magnitude / global: the mask depends on the update's values, so the positions are
  stored: int32 flat indices + float32 values (``….idx`` / ``….val``) where that is
  smaller than dense, else dense.

Format 1 (no ``format`` in ``recorder.json``) stored random pruning like magnitude
pruning (index + value); it is still read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_path, atomic_write_text
from unlearn_core.train.layers import parameter_layers

PRUNE_KINDS = ("none", "random", "magnitude", "global")
SCHEDULE_SHAPES = ("linear", "exponential", "constant")
INDEX_FILE = "index.parquet"
# 2: random pruning stored as values only, its mask regenerated from the seed.
# 1 (recorder.json without "format"): random pruning stored as index + value.
# Format 2 files mean something only with the same mask rule (random_keep_masks,
# prune_update's random branch, step_generator): a change there needs a new format.
RECORDING_FORMAT = 2


def layer_schedule(num_layers: int, start: float, end: float, shape: str = "linear") -> list[float]:
    """Per-layer pruning shares from ``start`` (first layer) to ``end`` (last layer).

    Seed 001 prunes early layers more, with the share decreasing along depth;
    a schedule is searchable as (start, end, shape).
    """
    if shape not in SCHEDULE_SHAPES:
        raise UserInputError(f"schedule shape {shape!r} unknown: expected one of {SCHEDULE_SHAPES}")
    for value, label in ((start, "start"), (end, "end")):
        if not 0.0 <= value <= 1.0:
            raise UserInputError(f"schedule {label} must be in [0, 1], got {value}")
    if num_layers == 1 or shape == "constant":
        return [start] * num_layers
    t = np.linspace(0.0, 1.0, num_layers)
    if shape == "linear":
        values = start + (end - start) * t
    else:  # geometric interpolation of the kept shares, which stays in (0, 1]
        keep_start, keep_end = max(1 - start, 1e-6), max(1 - end, 1e-6)
        values = 1 - keep_start * (keep_end / keep_start) ** t
    return [float(v) for v in values]


@dataclass(frozen=True)
class PruneSpec:
    """How recorded updates are pruned before storing (seed 001, §4.1)."""

    kind: str = "none"  # one of PRUNE_KINDS
    # random / magnitude: pruning share per layer (one value for all layers, or one per
    # layer of parameter_layers(model)); global: the one share over all parameters.
    amount: float | tuple[float, ...] = 0.0

    def validate(self, num_layers: int) -> list[float]:
        if self.kind not in PRUNE_KINDS:
            raise UserInputError(f"prune kind {self.kind!r} unknown: expected one of {PRUNE_KINDS}")
        amounts = (
            [float(self.amount)] * num_layers
            if isinstance(self.amount, int | float)
            else [float(a) for a in self.amount]
        )
        if len(amounts) != num_layers:
            raise UserInputError(
                f"prune amount has {len(amounts)} per-layer values; "
                f"the model has {num_layers} layers"
            )
        if any(not 0.0 <= a <= 1.0 for a in amounts):
            raise UserInputError(f"prune amounts must be in [0, 1], got {amounts}")
        if self.kind == "global" and len(set(amounts)) > 1:
            raise UserInputError("global pruning takes one share, not one per layer")
        return amounts


def prune_update(
    deltas: dict[str, torch.Tensor],
    layers: list[list[str]],
    amounts: list[float],
    kind: str,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Return P ⊙ Δw: zero the pruned entries of each layer's update (seed 001, Eq. 6)."""
    if kind == "none":
        return deltas
    if kind == "global":
        flat = torch.cat([d.abs().flatten() for d in deltas.values()])
        cut = _kth_smallest(flat, amounts[0])
        return {name: torch.where(d.abs() > cut, d, torch.zeros_like(d)) if cut is not None
                else d for name, d in deltas.items()}
    out = dict(deltas)
    for names, amount in zip(layers, amounts, strict=True):
        if amount <= 0.0:
            continue
        joined = torch.cat([deltas[n].flatten() for n in names])
        prune_count = int(round(amount * joined.numel()))
        if prune_count == 0:
            continue
        if kind == "random":
            scores = torch.rand(joined.numel(), generator=generator).to(joined.device)
        else:  # magnitude: prune the smallest |Δw| of this layer
            scores = joined.abs()
        keep = ~_smallest(scores, prune_count)
        start = 0
        for name in names:
            size = deltas[name].numel()
            out[name] = deltas[name] * keep[start : start + size].view_as(deltas[name])
            start += size
    return out


def _smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest scores, ties taken in index order.

    The same entries as the first ``count`` of a stable argsort, in linear time
    (a k-th value and one pass), which matters at one call per layer per step.
    """
    cut = torch.kthvalue(scores, count).values
    chosen = scores < cut
    ties = torch.nonzero(scores == cut).flatten()[: count - int(chosen.sum())]
    chosen[ties] = True
    return chosen


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random-pruning generator of one recorded step: a function of (seed, step) only.

    Each step draws its masks from its own generator, so pruning at record time
    (``UpdateRecorder(prune=...)``) and pruning the stored dense update of the same
    step later (seed 001's ``partial_amnesiac`` at unlearn time) draw the same masks
    for the same mask seed, and unlearning needs to visit only the affected steps.
    """
    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def random_keep_masks(shapes: dict[str, list[int]], layers: list[list[str]],
                      amounts: list[float], seed: int, step: int) -> dict[str, torch.Tensor]:
    """Kept entries (True) of one step's random pruning, regenerated from (seed, step).

    ``prune_update`` draws random scores from ``step_generator(seed, step)`` alone, never
    from the update, so pruning an all-ones update returns the very mask it applies to
    any update of that step (a kept entry stays 1, a pruned one becomes 0). The recorder,
    its reader and ``partial_amnesiac`` all take masks from here, so they cannot drift.
    """
    ones = {name: torch.ones(shape) for name, shape in shapes.items()}
    pruned = prune_update(ones, layers, amounts, "random", step_generator(seed, step))
    return {name: value != 0 for name, value in pruned.items()}


def pack_values(update: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """What a user stores for a randomly pruned step: the kept values, float32, row-major."""
    return {name: delta[keep[name].to(delta.device)].float() for name, delta in update.items()}


def unpack_values(values: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """P ⊙ Δw back from the stored values and the regenerated mask (zeros elsewhere)."""
    out = {}
    for name, mask in keep.items():
        dense = torch.zeros(mask.shape, dtype=values[name].dtype, device=values[name].device)
        dense[mask.to(dense.device)] = values[name]
        out[name] = dense
    return out


def _kth_smallest(values: torch.Tensor, share: float) -> torch.Tensor | None:
    count = int(round(share * values.numel()))
    if count == 0:
        return None
    return torch.kthvalue(values.float().cpu(), count).values


class UpdateRecorder:
    """Trainer hook that stores per-batch sample ids and (pruned) parameter updates."""

    def __init__(
        self, out_dir: str | Path, prune: PruneSpec | None = None, seed: int = 0,
        chunk_steps: int = 256,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.prune = prune or PruneSpec()
        self.seed = seed
        self.chunk_steps = chunk_steps
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_steps = 0
        self._chunk = 0
        self._index: dict[str, list] = {"step": [], "epoch": [], "chunk": [], "sample_ids": []}
        self._before: dict[str, torch.Tensor] = {}

    def on_train_start(self, model: nn.Module, optimizer) -> None:
        if (self.out_dir / INDEX_FILE).exists():
            raise UserInputError(f"{self.out_dir} already holds a recording; use a new folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.layers = parameter_layers(model)
        self.amounts = self.prune.validate(len(self.layers))
        self.names = [name for names in self.layers for name in names]
        params = dict(model.named_parameters())
        self.shapes = {name: list(params[name].shape) for name in self.names}

    def before_step(self, model: nn.Module, batch) -> None:
        params = dict(model.named_parameters())
        self._before = {name: params[name].detach().clone() for name in self.names}

    @torch.no_grad()
    def after_step(self, model: nn.Module, batch, epoch: int, step: int) -> None:
        params = dict(model.named_parameters())
        deltas = {name: params[name].detach() - self._before[name] for name in self.names}
        if self.prune.kind == "random":
            # the mask is regenerated on reading: store the kept values only
            keep = random_keep_masks(self.shapes, self.layers, self.amounts, self.seed, step)
            for name, values in pack_values(deltas, keep).items():
                self._store(f"s{step}.{name}", values.cpu(), values_only=True)
        else:
            deltas = prune_update(deltas, self.layers, self.amounts, self.prune.kind,
                                  step_generator(self.seed, step))
            for name, delta in deltas.items():
                self._store(f"s{step}.{name}", delta.float().cpu())
        self._index["step"].append(step)
        self._index["epoch"].append(epoch)
        self._index["chunk"].append(self._chunk)
        self._index["sample_ids"].append(batch.ids.cpu().numpy().astype(np.int64))
        self._pending_steps += 1
        if self._pending_steps >= self.chunk_steps:
            self._flush()

    def _store(self, key: str, delta: torch.Tensor, values_only: bool = False) -> None:
        """Queue one parameter's update; ``values_only``: ``delta`` is already the kept values."""
        if values_only:
            self._pending[key + ".val"] = delta.contiguous()
            return
        flat = delta.flatten()
        nonzero = torch.nonzero(flat).flatten()
        # Sparse costs 8 bytes per kept entry (int32 index + float32 value), dense 4 per entry.
        if self.prune.kind != "none" and 2 * nonzero.numel() < flat.numel():
            self._pending[key + ".idx"] = nonzero.to(torch.int32)
            self._pending[key + ".val"] = flat[nonzero].contiguous()
        else:
            self._pending[key] = delta.contiguous()

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.out_dir / f"updates-{self._chunk:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file(self._pending, str(tmp))
        self._pending, self._pending_steps = {}, 0
        self._chunk += 1

    def on_train_end(self, model: nn.Module) -> None:
        self._flush()
        shapes = {name: list(p.shape) for name, p in model.named_parameters() if name in self.names}
        meta = {"format": RECORDING_FORMAT, "prune": asdict(self.prune), "layers": self.layers,
                "shapes": shapes, "seed": self.seed}
        atomic_write_text(self.out_dir / "recorder.json", json.dumps(meta))
        table = pa.table({
            "step": pa.array(self._index["step"], pa.int64()),
            "epoch": pa.array(self._index["epoch"], pa.int64()),
            "chunk": pa.array(self._index["chunk"], pa.int64()),
            "sample_ids": pa.array(self._index["sample_ids"], pa.list_(pa.int64())),
        })
        with atomic_path(self.out_dir / INDEX_FILE) as tmp:
            pq.write_table(table, tmp)


class RecordedUpdates:
    """Read a finished recording."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / INDEX_FILE).exists():
            raise UserInputError(
                f"{self.folder} holds no complete update recording (no {INDEX_FILE}); "
                "train the source with the update recorder on"
            )
        index = pq.read_table(self.folder / INDEX_FILE).to_pydict()
        self.steps = np.asarray(index["step"], dtype=np.int64)
        self.epochs = np.asarray(index["epoch"], dtype=np.int64)
        self.chunks = np.asarray(index["chunk"], dtype=np.int64)
        self.batch_ids = [np.asarray(ids, dtype=np.int64) for ids in index["sample_ids"]]
        self.meta = json.loads((self.folder / "recorder.json").read_text())
        self.format = int(self.meta.get("format", 1))  # recordings before "format" are 1
        if not 1 <= self.format <= RECORDING_FORMAT:
            raise UserInputError(
                f"{self.folder} is an update recording of format {self.format}; this version "
                f"reads formats 1 to {RECORDING_FORMAT}: record it again or update unlearn_core"
            )
        prune = self.meta["prune"]
        amount = prune["amount"]
        # format 2 stores random pruning as values only: each step's mask is regenerated
        self._random_amounts = (
            PruneSpec(prune["kind"], tuple(amount) if isinstance(amount, list) else amount)
            .validate(len(self.meta["layers"]))
            if prune["kind"] == "random" and self.format >= 2 else None
        )
        self._cache: tuple[int, dict[str, torch.Tensor]] | None = None

    @property
    def bytes_on_disk(self) -> int:
        """Bytes kept for unlearning (seed 001's storage cost): updates plus the batch index
        and metadata (which holds the random-pruning mask seed)."""
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())

    def affected_steps(self, forget_ids: np.ndarray) -> np.ndarray:
        """Steps whose batch held at least one forget sample (the set B_t of Eq. 4)."""
        forget = np.asarray(forget_ids, dtype=np.int64)
        return np.array(
            [s for s, ids in zip(self.steps, self.batch_ids, strict=True)
             if np.isin(ids, forget).any()],
            dtype=np.int64,
        )

    def affected_share(self, forget_ids: np.ndarray) -> float:
        return len(self.affected_steps(forget_ids)) / max(1, len(self.steps))

    def _chunk_tensors(self, chunk: int) -> dict[str, torch.Tensor]:
        if self._cache is None or self._cache[0] != chunk:
            self._cache = (chunk, load_file(str(self.folder / f"updates-{chunk:05d}.safetensors")))
        return self._cache[1]

    def update(self, step: int) -> dict[str, torch.Tensor]:
        """The stored (possibly pruned) update of one step, dense."""
        row = int(np.searchsorted(self.steps, step))
        if row >= len(self.steps) or self.steps[row] != step:
            raise KeyError(f"step {step} not recorded")
        tensors = self._chunk_tensors(int(self.chunks[row]))
        if self._random_amounts is not None:
            keep = random_keep_masks(self.meta["shapes"], self.meta["layers"],
                                     self._random_amounts, int(self.meta["seed"]), step)
            values = {name: tensors[f"s{step}.{name}.val"] for name in self.meta["shapes"]}
            for name, mask in keep.items():
                # a count mismatch means the masks are not the ones recorded (another seed,
                # or a changed mask rule): refuse rather than place values wrongly
                if values[name].numel() != int(mask.sum()):
                    raise UserInputError(
                        f"{self.folder} (format {self.format}), step {step}, {name}: "
                        f"{values[name].numel()} stored values but the regenerated mask keeps "
                        f"{int(mask.sum())}; the recording is damaged or was written by an "
                        "incompatible version"
                    )
            return unpack_values(values, keep)
        out = {}
        for name, shape in self.meta["shapes"].items():
            key = f"s{step}.{name}"
            if key in tensors:
                out[name] = tensors[key].view(shape)
            else:
                dense = torch.zeros(math.prod(shape), dtype=torch.float32)
                dense[tensors[key + ".idx"].long()] = tensors[key + ".val"]
                out[name] = dense.view(shape)
        return out

    def sum_updates(self, steps: np.ndarray) -> dict[str, torch.Tensor]:
        """Σ of the stored updates over ``steps`` (Eq. 4's subtracted term), in float64."""
        total = {name: torch.zeros(shape, dtype=torch.float64)
                 for name, shape in self.meta["shapes"].items()}
        for step in sorted(int(s) for s in steps):
            for name, delta in self.update(step).items():
                total[name] += delta.double()
        return total
