"""Seed 001 (layer-wise partial unlearning): amnesiac, partial_amnesiac, label_flip,
label_flip_partial, grad_ascent_partial. Tests check the mechanism of each equation."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import struct
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.conftest import make_dataset
from unlearn_core.data.manifest import make_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.methods import (
    amnesiac,
    grad_ascent,
    grad_ascent_partial,
    label_flip,
    label_flip_partial,
    partial_amnesiac,
    requirements,
)
from unlearn_core.methods._partial import (
    LayerSelection,
    initial_selection,
    layer_densities,
    partial_fit,
    shift_selection,
)
from unlearn_core.methods.common import method_recipe
from unlearn_core.methods.task import make_task
from unlearn_core.train import DeviceData, Recipe, accuracy, fit
from unlearn_core.train.layers import parameter_layers
from unlearn_core.train.recorder import (
    RECORDING_FORMAT,
    PruneSpec,
    RecordedUpdates,
    UpdateRecorder,
    prune_update,
    random_keep_masks,
    step_generator,
)
from unlearn_core.train.source import build_model

# Plain minibatch SGD (seed 001 Eq. 3): each recorded update is that batch's own step.
PLAIN_SGD = Recipe(epochs=4, batch_size=16, lr=0.05, momentum=0.0, nesterov=False)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def forget_loss(model, data, labels=None):
    model.eval()
    batch = data.all()
    with torch.no_grad():
        return float(F.cross_entropy(model(batch.x), batch.y if labels is None else labels))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A tiny MLP source trained with the update recorder; forget class 1 of 8."""
    ds = make_dataset(n=320, num_classes=8)
    manifest = make_manifest(ds, "classes=1", seed=0)
    source = build_model("mlp", ds, seed=0)
    folder = tmp_path_factory.mktemp("mlp") / "rec"
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), PLAIN_SGD, seed=0,
        hooks=[UpdateRecorder(folder)])
    recording = RecordedUpdates(folder)
    task = make_task(ds, manifest, source, model_name="mlp", train_recipe=PLAIN_SGD,
                     update_recording=recording)
    return SimpleNamespace(ds=ds, source=source, recording=recording, task=task)


SCHEDULE = dict(prune_start=0.9, prune_end=0.1, prune_shape="linear")
MASK_SEED = 7


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A LeNet (5 layers) recorded densely and, in the same run, pruned at record time."""
    ds = make_dataset(n=320, num_classes=8)
    manifest = make_manifest(ds, "classes=1", seed=0)
    source = build_model("lenet", ds, seed=0)
    amounts = tuple(partial_amnesiac.pruning_amounts(
        len(parameter_layers(source)), partial_amnesiac.Hparams(**SCHEDULE)))
    root = tmp_path_factory.mktemp("lenet")
    specs = {"dense": PruneSpec(), "random": PruneSpec("random", amounts),
             "magnitude": PruneSpec("magnitude", amounts), "global": PruneSpec("global", 0.6)}
    recorders = [UpdateRecorder(root / k, spec, seed=MASK_SEED) for k, spec in specs.items()]
    recipe = dataclasses.replace(PLAIN_SGD, epochs=1, batch_size=32)
    fit(source, DeviceData.from_dataset(ds, manifest.ids("train")), recipe, seed=0,
        hooks=recorders)
    recordings = {k: RecordedUpdates(root / k) for k in specs}
    task = make_task(ds, manifest, source, model_name="lenet", train_recipe=recipe,
                     update_recording=recordings["dense"])
    return SimpleNamespace(source=source, recordings=recordings, task=task, amounts=amounts)


# --- amnesiac (Eq. 4) -------------------------------------------------------------------


def test_amnesiac_subtracts_exactly_the_affected_updates(mlp):
    rec, task = mlp.recording, mlp.task
    forget = set(task.forget_ids.tolist())
    expected = {n: p.double() for n, p in params(mlp.source).items()}
    affected = 0
    for step, ids in zip(rec.steps, rec.batch_ids, strict=True):
        if forget & set(ids.tolist()):
            affected += 1
            for name, delta in rec.update(int(step)).items():
                expected[name] -= delta.double()
    assert 0 < affected < len(rec.steps)  # some batches held no forget sample: kept
    out = amnesiac.unlearn(copy.deepcopy(mlp.source), task, amnesiac.Hparams())
    for name, value in params(out).items():
        torch.testing.assert_close(value.double(), expected[name], atol=1e-6, rtol=0)


def test_amnesiac_forgets_the_class(mlp):
    task = mlp.task
    assert accuracy(mlp.source, task.forget) > 0.9
    out = amnesiac.unlearn(copy.deepcopy(mlp.source), task, amnesiac.Hparams())
    assert accuracy(out, task.forget) < 0.2
    assert forget_loss(out, task.forget) > forget_loss(mlp.source, task.forget) + 1.0


def test_amnesiac_requires_the_recording(mlp):
    assert requirements("amnesiac") == requirements("partial_amnesiac") == {"update_recording"}
    task = dataclasses.replace(mlp.task, update_recording=None)
    for module, hp in ((amnesiac, amnesiac.Hparams()),
                       (partial_amnesiac, partial_amnesiac.Hparams())):
        with pytest.raises(UserInputError, match="update_recording"):
            module.unlearn(copy.deepcopy(mlp.source), task, hp)


def test_amnesiac_finetune_defaults_off_and_runs(mlp):
    assert amnesiac.Hparams().finetune_epochs == 0
    out = amnesiac.unlearn(copy.deepcopy(mlp.source), mlp.task,
                           amnesiac.Hparams(finetune_epochs=1, finetune_lr=0.05))
    assert accuracy(out, mlp.task.retain) > 0.5


# --- partial_amnesiac (Eq. 6-7) ------------------------------------------------------------


@pytest.mark.parametrize("kind", partial_amnesiac.KINDS)
def test_partial_amnesiac_with_no_pruning_is_amnesiac(mlp, kind):
    reference = amnesiac.unlearn(copy.deepcopy(mlp.source), mlp.task, amnesiac.Hparams())
    hp = partial_amnesiac.Hparams(prune_kind=kind, prune_start=0.0, prune_end=0.0,
                                  global_amount=0.0)
    out = partial_amnesiac.unlearn(copy.deepcopy(mlp.source), mlp.task, hp)
    for (name, a), b in zip(params(out).items(), params(reference).values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0, msg=name)


@pytest.mark.parametrize("kind", ["random", "magnitude"])
def test_partial_amnesiac_subtracts_only_kept_entries_with_scheduled_shares(lenet, kind):
    rec, task = lenet.recordings["dense"], lenet.task
    hp = partial_amnesiac.Hparams(prune_kind=kind, mask_seed=MASK_SEED, **SCHEDULE)
    assert lenet.amounts == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])  # decreasing with depth
    layers = rec.meta["layers"]
    expected = {n: p.double() for n, p in params(lenet.source).items()}
    affected = rec.affected_steps(task.forget_ids)
    assert len(affected) > 0
    for step in affected:
        dense, pruned = rec.update(int(step)), partial_amnesiac.pruned_update(rec, int(step), hp)
        for names, amount in zip(layers, lenet.amounts, strict=True):
            d = torch.cat([dense[n].flatten() for n in names])
            p = torch.cat([pruned[n].flatten() for n in names])
            kept = p != 0
            assert torch.equal(p[kept], d[kept])  # kept entries: the update's own values
            # the pruned share of the layer is the schedule's (an update's own zeros read as
            # pruned: magnitude pruning takes them first, random pruning may keep them)
            pruned_count, own_zeros = int((~kept).sum()), int((d == 0).sum())
            if kind == "magnitude":
                assert pruned_count == max(round(amount * d.numel()), own_zeros)
                assert d[kept].abs().min() >= d[~kept].abs().max()
            else:
                assert 0 <= pruned_count - round(amount * d.numel()) <= own_zeros
        for name in expected:
            expected[name] -= pruned[name].double()
    out = partial_amnesiac.unlearn(copy.deepcopy(lenet.source), task, hp)
    for name, value in params(out).items():
        torch.testing.assert_close(value.double(), expected[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["random", "magnitude", "global"])
def test_record_time_and_unlearn_time_pruning_agree(lenet, kind):
    hp = partial_amnesiac.Hparams(prune_kind=kind, mask_seed=MASK_SEED, global_amount=0.6,
                                  **SCHEDULE)
    at_unlearn = partial_amnesiac.unlearn(copy.deepcopy(lenet.source), lenet.task, hp)
    task = dataclasses.replace(lenet.task, update_recording=lenet.recordings[kind])
    at_record = partial_amnesiac.unlearn(copy.deepcopy(lenet.source), task, hp)
    for (name, a), b in zip(params(at_unlearn).items(), params(at_record).values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0, msg=name)
    # a recording pruned otherwise than asked is refused, not pruned twice
    other = dataclasses.replace(hp, prune_start=0.5, global_amount=0.2, mask_seed=MASK_SEED + 1)
    with pytest.raises(UserInputError, match="record time"):
        partial_amnesiac.unlearn(copy.deepcopy(lenet.source), task, other)
    with pytest.raises(UserInputError, match="pruned at record time"):
        amnesiac.unlearn(copy.deepcopy(lenet.source), task, amnesiac.Hparams())


def test_storage_bytes_match_the_recorder(lenet):
    dense = lenet.recordings["dense"]
    full = amnesiac.storage_bytes(dense, amnesiac.Hparams())
    headers = 256 * len(dense.steps) * len(dense.meta["shapes"])  # safetensors key entries
    assert full <= dense.bytes_on_disk <= full + headers
    # magnitude masks depend on the update: positions are stored (the recorder's format)
    magnitude = partial_amnesiac.Hparams(prune_kind="magnitude", **SCHEDULE)
    estimate = partial_amnesiac.storage_bytes(dense, magnitude)
    recorded = lenet.recordings["magnitude"]
    assert estimate <= recorded.bytes_on_disk <= estimate + headers
    assert partial_amnesiac.storage_bytes(recorded, magnitude) == recorded.bytes_on_disk
    assert estimate < full  # the storage saving seed 001 reports
    # random masks are regenerated: the recorder writes values only, as counted
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    values_only = partial_amnesiac.storage_bytes(dense, hp)
    pruned = lenet.recordings["random"]  # same payload; its metadata names the pruning
    assert values_only <= pruned.bytes_on_disk <= values_only + headers
    assert partial_amnesiac.storage_bytes(pruned, hp) - amnesiac.index_bytes(pruned) == \
        values_only - amnesiac.index_bytes(dense)
    heavy = dataclasses.replace(hp, prune_start=0.9, prune_end=0.9)  # 4 B per kept 10 %
    assert partial_amnesiac.storage_bytes(dense, heavy) < 0.15 * full
    none = dataclasses.replace(hp, prune_start=0.0, prune_end=0.0)  # no mask, no seed
    assert partial_amnesiac.storage_bytes(dense, none) == full


def _recorder_pruned(rec, step, hp):
    """P ⊙ Δw as the recorder's own ``prune_update`` makes it from the dense update."""
    layers = rec.meta["layers"]
    return prune_update(rec.update(step), layers,
                        partial_amnesiac.pruning_amounts(len(layers), hp), hp.prune_kind,
                        step_generator(hp.mask_seed, step))


def test_random_mask_regenerated_from_the_seed_is_the_one_used(lenet):
    rec = lenet.recordings["dense"]
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    layers, shapes = rec.meta["layers"], rec.meta["shapes"]
    amounts = partial_amnesiac.pruning_amounts(len(layers), hp)
    for step in (int(rec.steps[0]), int(rec.steps[len(rec.steps) // 2]), int(rec.steps[-1])):
        keep = partial_amnesiac.random_keep_masks(shapes, layers, amounts, MASK_SEED, step)
        dense, used = rec.update(step), _recorder_pruned(rec, step, hp)
        recorded = lenet.recordings["random"].update(step)  # pruned by the recorder in training
        for name in shapes:
            assert torch.equal(used[name], dense[name] * keep[name])  # the mask applied
            assert torch.equal(recorded[name], dense[name] * keep[name])
        assert sum(int(m.sum()) for m in keep.values()) == \
            partial_amnesiac.random_kept_per_step(rec, hp)
        # the stored values and the regenerated mask give back P ⊙ Δw exactly
        values = partial_amnesiac.pack_values(dense, keep)
        assert all(v.dim() == 1 and v.dtype == torch.float32 for v in values.values())
        restored = partial_amnesiac.unpack_values(values, keep)
        for name in shapes:
            assert torch.equal(restored[name], used[name])
    other = partial_amnesiac.random_keep_masks(shapes, layers, amounts, MASK_SEED + 1, step)
    assert any(not torch.equal(keep[n], other[n]) for n in shapes)  # the seed matters


def test_values_only_storage_is_the_stored_values_and_the_seed(lenet):
    rec = lenet.recordings["dense"]
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    layers, shapes = rec.meta["layers"], rec.meta["shapes"]
    amounts = partial_amnesiac.pruning_amounts(len(layers), hp)
    payload = 0
    for step in rec.steps:
        keep = partial_amnesiac.random_keep_masks(shapes, layers, amounts, MASK_SEED, int(step))
        values = partial_amnesiac.pack_values(rec.update(int(step)), keep)
        payload += sum(v.numel() * v.element_size() for v in values.values())
    expected = payload + partial_amnesiac.SEED_BYTES + amnesiac.index_bytes(rec)
    assert partial_amnesiac.storage_bytes(rec, hp) == expected


def test_values_only_unlearning_equals_subtracting_the_recorder_pruned_updates(lenet):
    rec, task = lenet.recordings["dense"], lenet.task
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    expected = {n: p.double() for n, p in params(lenet.source).items()}
    for step in rec.affected_steps(task.forget_ids):
        for name, delta in _recorder_pruned(rec, int(step), hp).items():
            expected[name] -= delta.double()
    out = partial_amnesiac.unlearn(copy.deepcopy(lenet.source), task, hp)
    for name, value in params(out).items():
        assert torch.equal(value, expected[name].to(value.dtype)), name


def _safetensors_framing(path) -> int:
    """Bytes of a safetensors file that are not tensor data: the 8-byte length + JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_record_time_random_pruning_writes_values_only(lenet):
    """On disk: the kept float32 values (no positions) + the seed once, in recorder.json."""
    rec, dense = lenet.recordings["random"], lenet.recordings["dense"]
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    meta = json.loads((rec.folder / "recorder.json").read_text())
    assert meta["format"] == RECORDING_FORMAT == 2 and meta["seed"] == MASK_SEED
    chunks = sorted(rec.folder.glob("updates-*.safetensors"))
    data = 0
    for chunk in chunks:
        tensors = load_file(str(chunk))
        assert all(key.endswith(".val") for key in tensors)  # no index tensors
        assert all(t.dtype == torch.float32 and t.dim() == 1 for t in tensors.values())
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        assert chunk.stat().st_size == _safetensors_framing(chunk) + nbytes
        data += nbytes
    # the tensor data is exactly 4 bytes per kept entry of every step (the counted payload)
    kept_values = partial_amnesiac.random_kept_per_step(dense, hp) * len(rec.steps)
    assert data == partial_amnesiac.VALUE_BYTES * kept_values
    # everything else on disk is file framing and the index/metadata (which holds the seed)
    framing = sum(_safetensors_framing(c) for c in chunks)
    assert rec.bytes_on_disk == data + framing + amnesiac.index_bytes(rec)


def test_values_only_recording_reads_back_the_recorder_pruned_update_exactly(lenet):
    """Every step read back (mask regenerated from the seed) is P ⊙ Δw of the same run."""
    rec, dense = lenet.recordings["random"], lenet.recordings["dense"]
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    assert rec.meta["prune"]["kind"] == "random"
    for step in rec.steps:
        expected = _recorder_pruned(dense, int(step), hp)  # prune_update on the dense Δw
        got = rec.update(int(step))
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name].shape == expected[name].shape
            assert torch.equal(got[name], expected[name]), (int(step), name)
        assert any(bool((v == 0).any()) for v in got.values())  # something was pruned


def _as_format_1(rec: RecordedUpdates, dense: RecordedUpdates, hp, folder) -> RecordedUpdates:
    """``rec`` as the recorder wrote it before values-only storage (format 1): each step's
    ``prune_update`` of Δw (here: of the dense recording of the same run) stored as int32
    index + float32 value of its nonzeros where smaller than dense; no "format" key."""
    shutil.copytree(rec.folder, folder)
    for chunk in sorted(folder.glob("updates-*.safetensors")):
        chunk.unlink()
    for c in sorted(set(rec.chunks.tolist())):
        tensors = {}
        for step in rec.steps[rec.chunks == c]:
            for name, delta in _recorder_pruned(dense, int(step), hp).items():
                key, flat = f"s{int(step)}.{name}", delta.flatten()
                nonzero = torch.nonzero(flat).flatten()
                if 2 * nonzero.numel() < flat.numel():
                    tensors[key + ".idx"] = nonzero.to(torch.int32)
                    tensors[key + ".val"] = flat[nonzero].contiguous()
                else:
                    tensors[key] = delta.contiguous()
        save_file(tensors, str(folder / f"updates-{c:05d}.safetensors"))
    meta = json.loads((folder / "recorder.json").read_text())
    del meta["format"]
    (folder / "recorder.json").write_text(json.dumps(meta))
    return RecordedUpdates(folder)


def test_values_only_recording_unlearns_to_the_same_weights_as_format_1(lenet, tmp_path):
    """Unlearning from the values-only recording gives bit for bit the weights that the
    index + value recording gave (still readable), and those of pruning at unlearn time."""
    rec = lenet.recordings["random"]
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    old = _as_format_1(rec, lenet.recordings["dense"], hp, tmp_path / "format1")
    assert old.format == 1 and rec.format == RECORDING_FORMAT
    assert old.bytes_on_disk > rec.bytes_on_disk  # positions no longer stored
    first = load_file(str(old.folder / "updates-00000.safetensors"))
    assert any(key.endswith(".idx") for key in first)  # the old layout's index tensors
    outs = [partial_amnesiac.unlearn(copy.deepcopy(lenet.source),
                                     dataclasses.replace(lenet.task, update_recording=r), hp)
            for r in (rec, old, lenet.recordings["dense"])]
    src = params(lenet.source)
    assert any(not torch.equal(p, src[n]) for n, p in params(outs[0]).items())  # it unlearned
    for other in outs[1:]:
        for (name, a), b in zip(params(outs[0]).items(), params(other).values(), strict=True):
            assert torch.equal(a, b), name


def test_recording_of_an_unknown_format_is_refused(lenet, tmp_path):
    folder = tmp_path / "future"
    shutil.copytree(lenet.recordings["random"].folder, folder)
    meta = json.loads((folder / "recorder.json").read_text())
    meta["format"] = RECORDING_FORMAT + 1
    (folder / "recorder.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=f"format {RECORDING_FORMAT + 1}"):
        RecordedUpdates(folder)


def test_random_mask_rule_is_pinned():
    """Values-only recordings are read through the mask rule: if torch's generator or
    ``prune_update``'s random draw changes, old recordings would be misread, so the rule is
    pinned here (a change needs a new RECORDING_FORMAT)."""
    keep = random_keep_masks({"w": [2, 5], "b": [2], "v": [6]}, [["w", "b"], ["v"]],
                             [0.5, 0.5], 7, 3)
    assert keep["w"].int().flatten().tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 0, 1]
    assert keep["b"].int().tolist() == [0, 1]
    assert keep["v"].int().tolist() == [0, 1, 0, 0, 1, 1]


def test_values_that_do_not_fit_the_regenerated_mask_are_refused(lenet, tmp_path):
    folder = tmp_path / "other_seed"
    shutil.copytree(lenet.recordings["random"].folder, folder)
    meta = json.loads((folder / "recorder.json").read_text())
    meta["seed"] = MASK_SEED + 1  # masks regenerated from the wrong seed
    (folder / "recorder.json").write_text(json.dumps(meta))
    rec = RecordedUpdates(folder)
    with pytest.raises(UserInputError, match="incompatible version"):
        for step in rec.steps:
            rec.update(int(step))


def test_reported_storage_metrics(lenet):
    """The pipeline's storage keys: dense bytes, pruned bytes, saving, affected share."""
    task, dense = lenet.task, lenet.recordings["dense"]
    full = amnesiac.reported_metrics(task, amnesiac.Hparams())
    assert full["storage/bytes"] == full["storage/dense_bytes"] == amnesiac.storage_bytes(dense)
    forget = set(task.forget_ids.tolist())
    affected = sum(bool(forget & set(ids.tolist())) for ids in dense.batch_ids)
    assert full["storage/affected_share"] == affected / len(dense.steps)
    hp = partial_amnesiac.Hparams(prune_kind="random", mask_seed=MASK_SEED, **SCHEDULE)
    part = partial_amnesiac.reported_metrics(task, hp)
    assert part["storage/bytes"] == partial_amnesiac.storage_bytes(dense, hp)
    assert part["storage/dense_bytes"] == full["storage/bytes"]
    assert part["storage/saving"] == 1 - part["storage/bytes"] / full["storage/bytes"] > 0

# --- selection matrices (Eq. 9) ------------------------------------------------------------


def test_selection_matrix_shifts_by_one_position_per_epoch(mlp):
    model = copy.deepcopy(mlp.source)
    densities = (0.8, 0.3, "linear")
    recipe = method_recipe(4, 1e-3, 64)
    _, hook = partial_fit(model, mlp.task.forget, recipe, seed=3, densities=densities,
                          init="random", keep_history=True)
    history = hook.history
    assert len(history) == 4  # one S_{l,e} per epoch
    sizes = [sum(mlp.source.get_parameter(n).numel() for n in names)
             for names in parameter_layers(mlp.source)]
    for layer, (size, d) in enumerate(zip(sizes, layer_densities(2, *densities), strict=True)):
        first = history[0][layer]
        assert int(first.sum()) == round(d * size)
        for e in range(1, 4):
            assert torch.equal(history[e][layer], torch.roll(first, e))
            assert not torch.equal(history[e][layer], history[e - 1][layer])
    # the shift is circular: the last entry wraps to the front
    s = torch.tensor([True, False, False, True, False])
    assert shift_selection(s).tolist() == [False, True, False, False, True]


def test_interleaved_selection_is_evenly_spaced():
    s = initial_selection(12, 0.25, "interleaved", torch.Generator())
    assert s.nonzero().flatten().tolist() == [3, 7, 11]
    # Godavarti & Hero's sequential partial update: 4 shifts cover every entry once
    covered = torch.stack([torch.roll(s, e) for e in range(4)]).sum(0)
    assert torch.equal(covered, torch.ones(12, dtype=covered.dtype))


@pytest.mark.parametrize("module", [label_flip_partial, grad_ascent_partial])
def test_masked_parameters_receive_no_update_in_that_epoch(mlp, module):
    """Run 1, 2, 3 epochs (same seed, same first epochs): epoch e's change lies in S_{l,e}."""
    hp = module.Hparams(lr=0.05, batch_size=8)
    runs = [mlp.source] + [
        module.unlearn(copy.deepcopy(mlp.source), mlp.task, dataclasses.replace(hp, epochs=e))
        for e in (1, 2, 3)
    ]
    densities = layer_densities(2, hp.density_start, hp.density_end, hp.density_shape)
    selection = LayerSelection(mlp.source, densities, hp.selection_init, mlp.task.seed)
    first = list(selection.flat)
    for epoch in range(1, 4):
        selection.flat = [torch.roll(s, epoch - 1) for s in first]  # S_{l,e}, independently
        masks = selection.masks()
        before, after = params(runs[epoch - 1]), params(runs[epoch])
        for name, mask in masks.items():
            changed = after[name] != before[name]
            assert not (changed & ~mask).any(), f"{name}: unselected entry moved, epoch {epoch}"
            assert changed.any(), name


@pytest.mark.parametrize(("partial", "naive"), [(label_flip_partial, label_flip),
                                                 (grad_ascent_partial, grad_ascent)])
def test_partial_with_full_density_is_its_naive_counterpart(mlp, partial, naive):
    hp = partial.Hparams(density_start=1.0, density_end=1.0, epochs=2)
    out = partial.unlearn(copy.deepcopy(mlp.source), mlp.task, hp)
    naive_hp = naive.Hparams(epochs=2, lr=hp.lr, batch_size=hp.batch_size)
    ref = naive.unlearn(copy.deepcopy(mlp.source), mlp.task, naive_hp)
    for (name, a), b in zip(params(out).items(), params(ref).values(), strict=True):
        assert torch.equal(a, b), name
    assert partial.Hparams().density_start != partial.Hparams().density_end


def test_density_direction_follows_the_paper():
    lf, ga = label_flip_partial.Hparams(), grad_ascent_partial.Hparams()
    assert lf.density_start > lf.density_end  # §4.2: more updates in early layers
    assert ga.density_start < ga.density_end  # §4.3: more updates in deep layers
    pa = partial_amnesiac.Hparams()
    assert pa.prune_start > pa.prune_end  # §4.1: prune early layers most


# --- label flipping (§3.2.3, Eq. 8) -----------------------------------------------------------


def test_flipped_labels_are_random_and_never_true():
    labels = torch.arange(400) % 8
    flipped = label_flip.flipped_labels(labels, 8, seed=0)
    assert (flipped != labels).all()
    for cls in range(8):  # random over the other classes, not a fixed shift
        assert len(set(flipped[labels == cls].tolist())) == 7


@pytest.mark.parametrize(("module", "trainer"), [(label_flip, "fit"),
                                                 (label_flip_partial, "partial_fit")])
def test_label_flip_never_trains_on_a_true_label(mlp, monkeypatch, module, trainer):
    true = {i: int(y) for i, y in enumerate(mlp.ds.labels.tolist())}
    seen = []
    real = getattr(module, trainer)

    def spy(model, data, recipe, **kwargs):
        seen.append(data)
        return real(model, data, recipe, **kwargs)

    monkeypatch.setattr(module, trainer, spy)
    module.unlearn(copy.deepcopy(mlp.source), mlp.task, module.Hparams(epochs=1))
    (data,) = seen
    assert sorted(data.ids.tolist()) == sorted(mlp.task.forget_ids.tolist())
    assert all(int(y) != true[int(i)] for i, y in zip(data.ids, data.labels, strict=True))


@pytest.mark.parametrize("module", [label_flip, label_flip_partial])
def test_label_flip_moves_the_forget_losses(mlp, module):
    task = mlp.task
    flipped = label_flip.flipped_forget_set(task).labels
    out = module.unlearn(copy.deepcopy(mlp.source), task, module.Hparams(lr=0.05, epochs=3))
    assert forget_loss(out, task.forget) > forget_loss(mlp.source, task.forget)  # true labels
    assert forget_loss(out, task.forget, flipped) < forget_loss(mlp.source, task.forget, flipped)
    assert accuracy(out, task.forget) < accuracy(mlp.source, task.forget)


def test_grad_ascent_partial_raises_the_forget_loss(mlp):
    task = mlp.task
    out = grad_ascent_partial.unlearn(copy.deepcopy(mlp.source), task,
                                      grad_ascent_partial.Hparams(lr=1e-2, epochs=3))
    assert forget_loss(out, task.forget) > forget_loss(mlp.source, task.forget)


def test_partial_methods_touch_fewer_weights(mlp):
    """Partial updates change fewer entries than the naive method (same recipe)."""
    full = label_flip.unlearn(copy.deepcopy(mlp.source), mlp.task, label_flip.Hparams(epochs=1))
    part = label_flip_partial.unlearn(copy.deepcopy(mlp.source), mlp.task,
                                      label_flip_partial.Hparams(epochs=1))
    src = params(mlp.source)
    moved_full = sum(int((p != src[n]).sum()) for n, p in params(full).items())
    moved_part = sum(int((p != src[n]).sum()) for n, p in params(part).items())
    assert moved_part < 0.95 * moved_full
