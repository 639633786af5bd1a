"""Registry-wide method tests: every registered method runs by name, and its
Hparams / SEARCH_SPACE follow the contract."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import unlearn_core.methods as methods_pkg
from tests.conftest import recorded_source
from unlearn_core.errors import UserInputError
from unlearn_core.methods import get_method, make_hparams, method_names
from unlearn_core.methods.task import ForgetSetAccessError, make_task
from unlearn_core.train import fit
from unlearn_core.train.source import build_model

NOT_METHODS = {"__init__", "task", "common"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny source trained with the update recorder on (amnesiac methods need it)."""
    return recorded_source(tmp_path_factory.mktemp("recording") / "updates", epochs=4)


def task_for(trained, **kwargs):
    ds, manifest, recipe, source, recording = trained
    if kwargs.get("zero_glance"):  # a zero-glance task refuses the recording (it holds D_f)
        recording = None
    return make_task(ds, manifest, source, model_name="mlp", train_recipe=recipe,
                     update_recording=recording, **kwargs)


def fresh_copy(trained):
    import copy
    return copy.deepcopy(trained[3])


def test_every_method_file_is_registered():
    folder = Path(methods_pkg.__file__).parent
    files = {p.stem for p in folder.glob("*.py")} - NOT_METHODS
    files = {f for f in files if not f.startswith("_")}
    assert files == set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_search_space_keys_are_fields_and_defaults_inside(name):
    module = get_method(name)
    fields = {f.name: f for f in dataclasses.fields(module.Hparams)}
    defaults = module.Hparams()
    for key, domain in module.SEARCH_SPACE.items():
        assert key in fields, f"{name}: SEARCH_SPACE key {key} is not an Hparams field"
        assert domain.contains(getattr(defaults, key)), f"{name}: default of {key} outside"


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_by_name(trained, name):
    hp = make_hparams(name, {"epochs": 1} if "epochs" in
                      {f.name for f in dataclasses.fields(get_method(name).Hparams)} else {})
    module = get_method(name)
    task = task_for(trained, zero_glance=bool(getattr(module, "ZERO_GLANCE", False)))
    out = module.unlearn(fresh_copy(trained), task, hp)
    x = task_for(trained).val.all().x  # a zero-glance task holds no D_v
    assert out(x).shape == (len(x), 4)


def test_unknown_hparam_named():
    with pytest.raises(UserInputError, match="lrr"):
        make_hparams("finetune", {"lrr": 0.1})
    with pytest.raises(UserInputError, match="expected one of"):
        get_method("nope")


def test_zero_glance_task_refuses_forget_reads(trained):
    task = task_for(trained, zero_glance=True)
    for read in (lambda: task.forget, lambda: task.forget_ids, lambda: task.retain):
        with pytest.raises(ForgetSetAccessError):
            read()
    assert len(task.retain_subset) == 30 and task.forget_classes == (1,)


def _forget_loss(model, task):
    model.eval()
    batch = task.forget_data.all()
    with torch.no_grad():
        return float(F.cross_entropy(model(batch.x), batch.y))


def test_grad_ascent_raises_forget_loss(trained):
    task = task_for(trained)
    before = _forget_loss(fresh_copy(trained), task)
    out = get_method("grad_ascent").unlearn(fresh_copy(trained), task,
                                           make_hparams("grad_ascent", {"lr": 1e-2}))
    assert _forget_loss(out, task) > before


def test_retrain_never_sees_forget_set(trained):
    """retrain == a fresh model fit on D_r with the same seed and recipe."""
    ds, manifest, recipe, _, _ = trained
    task = task_for(trained)
    out = get_method("retrain").unlearn(fresh_copy(trained), task, make_hparams("retrain"))
    expected = build_model("mlp", ds, seed=0)
    fit(expected, task.retain_data, recipe, seed=0)
    for (k, a), (_, b) in zip(out.state_dict().items(), expected.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    acc = (out(task.forget_data.all().x).argmax(1) == 1).float().mean()
    assert acc < 0.2  # a class never seen is (almost) never predicted


def test_finetune_keeps_retain_accuracy(trained):
    task = task_for(trained)
    out = get_method("finetune").unlearn(fresh_copy(trained), task,
                                        make_hparams("finetune", {"epochs": 3}))
    batch = task.retain_data.all()
    assert (out(batch.x).argmax(1) == batch.y).float().mean() > 0.9
