"""Every Hparams field declares its valid range next to its default (``search.hparam``);
defaults and SEARCH_SPACE domains lie inside it, and ``make_hparams`` refuses the rest."""

import dataclasses
import math

import pytest

from unlearn_core.errors import UserInputError
from unlearn_core.methods import (
    check_hparam,
    get_method,
    make_hparams,
    method_names,
    validate_hparams,
)
from unlearn_core.search import (
    Choice,
    IntUniform,
    LogUniform,
    Range,
    Uniform,
    domain_from_spec,
    field_ranges,
    hparam,
)


def ranges_of(name: str) -> dict[str, Range | None]:
    return field_ranges(get_method(name).Hparams)


def outside(declared: Range):
    """A value of the right type just outside ``declared`` (None if it has no bound)."""
    if declared.choices is not None:
        return "__not_a_choice__"
    if declared.kind in ("bool", "str"):
        return 7  # wrong type
    step = 1 if declared.kind == "int" else 0.5
    value = None
    if declared.ge is not None:
        value = declared.ge - step
    elif declared.gt is not None:
        value = declared.gt - (1 if declared.kind == "int" else 0)
    elif declared.le is not None:
        value = declared.le + step
    elif declared.lt is not None:
        value = declared.lt
    if value is not None and declared.kind == "int":
        value = int(math.floor(value))
    if value is not None and declared.sequence:
        value = (value,)
    return value


@pytest.mark.parametrize("name", method_names())
def test_every_field_declares_a_range(name):
    missing = [field for field, declared in ranges_of(name).items() if declared is None]
    assert not missing, f"{name}: fields without a range (use search.hparam): {missing}"


@pytest.mark.parametrize("name", method_names())
def test_every_default_inside_its_range(name):
    defaults = get_method(name).Hparams()
    for field, declared in ranges_of(name).items():
        value = getattr(defaults, field)
        assert declared.contains(value), f"{name}.{field}: default {value!r} outside " \
            f"{declared.describe()}"


@pytest.mark.parametrize("name", method_names())
def test_search_space_inside_field_ranges(name):
    ranges = ranges_of(name)
    for key, domain in get_method(name).SEARCH_SPACE.items():
        assert key in ranges, f"{name}: SEARCH_SPACE key {key} is not an Hparams field"
        problem = ranges[key].domain_problem(domain)
        assert problem is None, f"{name}.{key}: {problem}"


@pytest.mark.parametrize("name", method_names())
def test_make_hparams_refuses_out_of_range(name):
    ranges = ranges_of(name)
    make_hparams(name, {})  # the defaults pass
    if not ranges:  # nothing to refuse but unknown names
        with pytest.raises(UserInputError, match="unknown hparam"):
            make_hparams(name, {"lr": 0.1})
        return
    tried = 0
    for field, declared in ranges.items():
        value = outside(declared)
        if value is None:
            continue
        tried += 1
        with pytest.raises(UserInputError) as info:
            make_hparams(name, {field: value})
        text = str(info.value)
        assert name in text and field in text and repr(value) in text, text
        assert declared.describe() in text, text
    assert tried, f"{name}: no bounded field to test"


def test_range_of_a_finetune_lr_named_in_the_error():
    with pytest.raises(UserInputError, match=r"method finetune: .*lr: expected a number > 0, "
                                             r"got -1"):
        make_hparams("finetune", {"lr": -1})
    with pytest.raises(UserInputError, match=r"hparam epochs out of range: expected an integer "
                                             r">= 1, got 0"):
        check_hparam("finetune", "epochs", 0)
    with pytest.raises(UserInputError, match="lrr"):
        validate_hparams("finetune", {"lrr": 1})
    check_hparam("finetune", "lr", 0.5)


def test_types_come_from_the_annotation():
    retrain = ranges_of("retrain")["epochs"]
    assert (retrain.kind, retrain.optional) == ("int", True)
    assert retrain.contains(None) and retrain.contains(3) and not retrain.contains(0)
    decay = ranges_of("scrub")["lr_decay_epochs"]
    assert decay.sequence and decay.contains((3, 5)) and decay.contains([1])
    assert not decay.contains((3, 0)) and not decay.contains(3)
    lr = ranges_of("finetune")["lr"]
    assert lr.contains(1) and lr.contains(0.1)  # ints are numbers
    for bad in (True, "0.1", float("inf"), float("nan"), 0, -1e-9, None):
        assert not lr.contains(bad), bad
    epochs = ranges_of("finetune")["epochs"]
    assert not epochs.contains(2.0) and not epochs.contains(True)
    assert ranges_of("fisher_forgetting")["classwise"].contains(False)
    assert not ranges_of("fisher_forgetting")["classwise"].contains(1)


def test_describe_and_problem_texts():
    assert Range(gt=0, le=1).describe() == "a number in (0, 1]"
    assert Range(ge=0, lt=1).describe() == "a number in [0, 1)"
    assert Range(ge=1, kind="int").describe() == "an integer >= 1"
    assert Range(lt=2).describe() == "a number < 2"
    assert Range(choices=("a", "b"), kind="str").describe() == "one of ['a', 'b']"
    assert "1.0e-4" in Range(gt=0).problem("1e-4")  # YAML 1.1 reads 1e-4 as a string


def test_hparam_helper_makes_a_field():
    @dataclasses.dataclass(frozen=True)
    class Example:
        lr: float = hparam(0.1, gt=0)  # a learning rate
        kind: str = hparam("a", choices=("a", "b"))
        untyped: int = 3

    ranges = field_ranges(Example)
    assert Example().lr == 0.1 and ranges["untyped"] is None
    assert ranges["lr"] == Range(gt=0, kind="float")
    assert ranges["kind"].contains("b") and not ranges["kind"].contains("c")


def test_domain_checks():
    lr = Range(gt=0, le=1)
    assert lr.domain_problem(LogUniform(1e-3, 1.0)) is None
    assert "reaches outside" in lr.domain_problem(Uniform(0.0, 0.5))
    assert "reaches outside" in lr.domain_problem(Uniform(0.5, 2.0))
    assert lr.domain_problem(IntUniform(1, 1)) is None  # integers are numbers
    assert "[2]" in lr.domain_problem(Choice((0.5, 2)))
    epochs = Range(ge=1, kind="int")
    assert "randint or choice" in epochs.domain_problem(Uniform(1, 5))
    assert epochs.domain_problem(Choice((1, 2))) is None
    assert "use choice" in Range(kind="str", choices=("a",)).domain_problem(Uniform(0, 1))
    assert "at least one" in epochs.domain_problem(Choice(()))


@pytest.mark.parametrize("spec,domain", [
    ({"uniform": [0, 1]}, Uniform(0.0, 1.0)),
    ({"loguniform": [1e-4, "1e-1"]}, LogUniform(1e-4, 0.1)),
    ({"randint": [1, 1]}, IntUniform(1, 1)),
    ({"randint": [1.0, 3]}, IntUniform(1, 3)),
    ({"choice": ["a", "b"]}, Choice(("a", "b"))),
])
def test_domain_from_spec(spec, domain):
    assert domain_from_spec(spec) == domain


@pytest.mark.parametrize("spec,message", [
    ({"loguniform": [0.1]}, r"loguniform takes 2 values \[low, high\], got 1"),
    ({"uniform": 0.1}, r"takes 2 values"),
    ({"loguniform": [0, 1]}, r"low > 0"),
    ({"uniform": [1, 0.1]}, r"low < high"),
    ({"randint": [3, 1]}, r"low <= high"),
    ({"randint": [1, 2.5]}, r"integers"),
    ({"uniform": [True, 2]}, r"numbers"),
    ({"uniform": [0, float("inf")]}, r"numbers"),
    ({"choice": []}, r"non-empty"),
    ({"normal": [0, 1]}, r"expected one of"),
    ({}, r"expected one of"),
    ([0, 1], r"expected one of"),
])
def test_domain_from_spec_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        domain_from_spec(spec)
