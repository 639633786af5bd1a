"""Config validation: every bad input names the field's path and what is accepted."""

import re

import pytest
import yaml

from pipelines.config import load_config, parse_config, quickstart_config_path
from pipelines.tune_space import domain_from_config, merged_space, to_tune
from unlearn_core.errors import UserInputError
from unlearn_core.search import Choice, IntUniform, LogUniform, Uniform


def base() -> dict:
    return {"name": "t", "methods": [{"name": "finetune"}]}


def test_quickstart_configs_parse():
    config = load_config(quickstart_config_path())
    assert config.references.count == 8 and config.replicates == 4
    for path in quickstart_config_path().parent.glob("*.yaml"):
        assert load_config(path).name
        assert path.read_text().startswith("# command:")


@pytest.mark.parametrize("patch,path,message", [
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"source": {"modle": "mlp"}}, "source.modle", "unknown key"),
    ({"source": {"model": "transformer9000"}}, "source.model", "accepted"),
    ({"dataset": {"name": "imagenet"}}, "dataset.name", "accepted"),
    ({"references": {"count": 0}}, "references.count", "greater than or equal to 1"),
    ({"references": {"count": "many"}}, "references.count", "integer"),
    ({"forget": "random=2"}, "forget", r"\(0, 1\)"),
    ({"methods": [{"name": "finetune", "trials": 0}]}, "methods.0.trials", "greater"),
    ({"methods": [{"name": "nope"}]}, "methods.0.name", "accepted"),
    ({"methods": [{"name": "finetune", "search": "bayes"}]}, "methods.0.search", "random"),
    ({"methods": [{"name": "finetune", "fixed": {"lrr": 1}}]}, "methods.0.fixed.lrr",
     "unknown hparam of finetune; accepted: .*'lr'"),
    ({"methods": [{"name": "finetune", "space": {"foo": {"uniform": [0, 1]}}}]},
     "methods.0.space.foo", "unknown hparam"),
    ({"methods": [{"name": "finetune", "space": {"lr": {"normal": [0, 1]}}}]},
     "methods.0.space.lr", "loguniform"),
    ({"methods": [{"name": "finetune"}, {"name": "finetune"}]}, "(top level)",
     "more than once"),
    ({"methods": []}, "methods", "at least 1"),
    ({"name": "a/b"}, "name", "pattern"),
    ({"source": {"recipe": {"optimizer": "lion"}}}, "source.recipe.optimizer", "sgd"),
    ({"source": {"sparsity": 1.0}}, "source.sparsity", "less than 1"),
    ({"methods": [{"name": "unsir"}]}, "(top level)", "split.retain_subset_per_class"),
])
def test_bad_configs_name_the_field(patch, path, message):
    data = {**base(), **patch}
    with pytest.raises(UserInputError) as info:
        parse_config(data, "cfg.yaml")
    text = str(info.value)
    assert f"  {path}:" in text, text
    assert re.search(message, text), text


def test_missing_name_and_files(tmp_path):
    with pytest.raises(UserInputError, match="name: required field missing"):
        parse_config({"methods": [{"name": "finetune"}]})
    with pytest.raises(UserInputError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(UserInputError, match="mapping"):
        load_config(listy)


def test_smoke_shrinks():
    config = parse_config({**base(), "references": {"count": 64},
                           "methods": [{"name": "finetune", "trials": 30}], "replicates": 8})
    smoke = config.smoked()
    assert smoke.references.count == 2 and smoke.methods[0].trials == 1
    assert smoke.replicates == 2 and smoke.source.recipe.epochs == 2
    assert smoke.name.endswith("-smoke") and smoke.config_hash() != config.config_hash()


def test_search_space_conversion():
    assert domain_from_config("lr", {"loguniform": [1e-4, 1e-1]}) == LogUniform(1e-4, 1e-1)
    assert domain_from_config("e", {"randint": [1, 5]}) == IntUniform(1, 5)
    assert domain_from_config("k", {"choice": ["a", "b"]}) == Choice(("a", "b"))
    space = merged_space({"lr": Uniform(0, 1), "epochs": IntUniform(1, 3)},
                         {"lr": {"uniform": [0.1, 0.2]}}, {"epochs": 2})
    assert space == {"lr": Uniform(0.1, 0.2)}
    sampler = to_tune(IntUniform(1, 3))
    values = {sampler.sample() for _ in range(200)}
    assert values == {1, 2, 3}  # ray's randint upper bound is exclusive; ours is inclusive
    assert to_tune(LogUniform(1e-3, 1e-1), grid=True) == {"grid_search": LogUniform(
        1e-3, 1e-1).grid(3)}
    with pytest.raises(UserInputError):
        domain_from_config("lr", {"uniform": ["x"]})


# ---------------------------------------------------------------- hparams refused at load

def method(**entry) -> dict:
    return {**base(), "methods": [{"name": "finetune", **entry}]}


@pytest.mark.parametrize("entry,path,message", [
    # a negative learning rate would be gradient ascent: refused, with the range
    ({"fixed": {"lr": -1}}, "methods.0.fixed.lr", r"finetune\.lr: expected a number > 0, got -1"),
    ({"fixed": {"epochs": 0}}, "methods.0.fixed.epochs", r"an integer >= 1, got 0"),
    ({"fixed": {"epochs": 2.5}}, "methods.0.fixed.epochs", r"an integer >= 1, got 2\.5"),
    ({"fixed": {"epochs": True}}, "methods.0.fixed.epochs", r"an integer >= 1, got True"),
    ({"fixed": {"lr": "fast"}}, "methods.0.fixed.lr", r"a number > 0, got 'fast'"),
    ({"fixed": {"lr": float("nan")}}, "methods.0.fixed.lr", r"a number > 0, got nan"),
    ({"space": {"lr": {"loguniform": [0.1]}}}, "methods.0.space.lr",
     r"loguniform takes 2 values \[low, high\], got 1"),
    ({"space": {"lr": {"uniform": [0.1, 0.2, 0.3]}}}, "methods.0.space.lr", r"takes 2 values"),
    ({"space": {"lr": {"loguniform": 0.1}}}, "methods.0.space.lr", r"takes 2 values"),
    ({"space": {"lr": {"loguniform": [0, 1]}}}, "methods.0.space.lr", r"low > 0 \(log of"),
    ({"space": {"lr": {"loguniform": [-1, 1]}}}, "methods.0.space.lr", r"low > 0"),
    ({"space": {"lr": {"uniform": [1, 0.1]}}}, "methods.0.space.lr", r"low < high, got \[1, 0.1\]"),
    ({"space": {"lr": {"uniform": [0.1, 0.1]}}}, "methods.0.space.lr", r"low < high"),
    ({"space": {"lr": {"uniform": ["a", 1]}}}, "methods.0.space.lr", r"must be numbers"),
    ({"space": {"epochs": {"randint": [5, 1]}}}, "methods.0.space.epochs", r"low <= high"),
    ({"space": {"epochs": {"randint": [1, 2.5]}}}, "methods.0.space.epochs", r"integers"),
    ({"space": {"epochs": {"choice": []}}}, "methods.0.space.epochs", r"non-empty list"),
    ({"space": {"lr": {"uniform": [0.1, 0.2], "choice": [1]}}}, "methods.0.space.lr",
     r"expected one of"),
    # well-formed domains that reach outside the field's range
    ({"space": {"lr": {"uniform": [-0.1, 0.1]}}}, "methods.0.space.lr",
     r"uniform \[-0.1, 0.1\] reaches outside .*a number > 0"),
    ({"space": {"lr": {"uniform": [0, 0.1]}}}, "methods.0.space.lr", r"reaches outside"),
    ({"space": {"epochs": {"randint": [0, 5]}}}, "methods.0.space.epochs",
     r"reaches outside .*an integer >= 1"),
    ({"space": {"epochs": {"uniform": [1, 5]}}}, "methods.0.space.epochs",
     r"draws non-integers.*randint or choice"),
    ({"space": {"epochs": {"choice": [5, -1, 0]}}}, "methods.0.space.epochs",
     r"choice values \[-1, 0\] outside"),
])
def test_bad_hparams_refused_at_load(entry, path, message):
    with pytest.raises(UserInputError) as info:
        parse_config(method(**entry), "cfg.yaml")
    text = str(info.value)
    assert f"  {path}: " in text, text
    assert re.search(message, text), text


@pytest.mark.parametrize("name,entry,path,message", [
    ("label_flip", {"fixed": {"momentum": 1.0}}, "fixed.momentum", r"in \[0, 1\)"),
    ("soft_relabel", {"space": {"feature_space": {"choice": ["logits", "pixels"]}}},
     "space.feature_space", r"\['pixels'\] outside .*one of \['penultimate', 'logits'\]"),
    ("soft_relabel", {"space": {"feature_space": {"uniform": [0, 1]}}}, "space.feature_space",
     r"use choice"),
    ("fisher_forgetting", {"fixed": {"classwise": "yes"}}, "fixed.classwise", r"true or false"),
    ("partial_amnesiac", {"space": {"prune_start": {"uniform": [0.5, 1.5]}}},
     "space.prune_start", r"in \[0, 1\]"),
    ("retrain", {"fixed": {"epochs": 0}}, "fixed.epochs", r"an integer >= 1, or None"),
    ("scrub", {"fixed": {"lr_decay_epochs": [3, 0]}}, "fixed.lr_decay_epochs",
     r"a list of integers >= 1"),
])
def test_other_methods_ranges_refused_at_load(name, entry, path, message):
    with pytest.raises(UserInputError) as info:
        parse_config({**base(), "methods": [{"name": name, **entry}]}, "cfg.yaml")
    text = str(info.value)
    assert f"  methods.0.{path}: " in text, text
    assert re.search(message, text), text


def test_all_bad_hparams_reported_together():
    with pytest.raises(UserInputError) as info:
        parse_config(method(fixed={"lr": -1, "epochs": 0},
                            space={"weight_decay": {"loguniform": [0, 1]}}), "cfg.yaml")
    text = str(info.value)
    for path in ("methods.0.fixed.lr", "methods.0.fixed.epochs", "methods.0.space.weight_decay"):
        assert f"  {path}: " in text, text


def test_good_hparams_accepted():
    config = parse_config(method(
        fixed={"epochs": 3, "weight_decay": 0.0, "lr": "1e-3"},  # YAML 1.1 reads 1e-3 as text
        space={"lr": {"loguniform": ["1e-4", 0.1]}, "batch_size": {"choice": [32, 64]}},
    ))
    entry = config.methods[0]
    assert entry.fixed == {"epochs": 3, "weight_decay": 0.0, "lr": 1e-3}
    assert merged_space({}, entry.space, {}) == {"lr": LogUniform(1e-4, 0.1),
                                                 "batch_size": Choice((32, 64))}
    retrain = parse_config({**base(), "methods": [{"name": "retrain", "fixed": {"epochs": None}}]})
    assert retrain.methods[0].fixed == {"epochs": None}


BAD_CONFIGS = {
    "fixed": ("fixed: {lr: -1}", "methods.0.fixed.lr"),
    "space": ("space: {lr: {loguniform: [0.1]}}", "methods.0.space.lr"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_unlearn_run_refuses_bad_hparams_before_training(tmp_path, case):
    """`unlearn run` on the issue's two configs: exit 2 within 20 s, one error line naming
    the field, and nothing trained (the config is refused at load, before Ray starts)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    line, path = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(f"name: bad\nmethods:\n  - name: finetune\n    {line}\n")
    results = tmp_path / "results"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(config), "--results", str(results)],
        capture_output=True, text=True, timeout=20, cwd=tmp_path, env=env,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert seconds < 20
    assert proc.stderr.count("unlearn run: error:") == 1, proc.stderr
    assert f"  {path}: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not results.exists()
