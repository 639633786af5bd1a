"""Neutral search-space types (no Ray): methods declare what a sweep may vary.

Random and grid sweeps are drawn here, on the driver, from a seeded generator:
the same config and seed always give the same trials, which is what makes a
resumed sweep repeat only the trials that were in flight.

``pipelines/tune_space.py`` converts these to ``ray.tune`` objects; tests check
that every key of a method's ``SEARCH_SPACE`` is a field of its ``Hparams`` and
that every default lies inside its range.

Also here: ``hparam``, which declares an Hparams field's valid range next to its
default, ``Range`` / ``field_ranges`` to check values and domains against it, and
``domain_from_spec``, which reads a config's ``{loguniform: [low, high]}`` and
names what is malformed. The config loader uses both, so bad input is refused at
load, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high

    def grid(self, n: int = 3) -> list[float]:
        return [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high

    def grid(self, n: int = 3) -> list[float]:
        lo, hi = math.log(self.low), math.log(self.high)
        return [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class IntUniform:
    low: int
    high: int  # inclusive

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and \
            self.low <= value <= self.high

    def grid(self, n: int = 3) -> list[int]:
        return sorted({round(self.low + (self.high - self.low) * i / (n - 1)) for i in range(n)})

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Choice:
    values: tuple

    def contains(self, value: Any) -> bool:
        return value in self.values

    def grid(self, n: int = 0) -> list:
        return list(self.values)

    def sample(self, rng: np.random.Generator):
        value = self.values[int(rng.integers(len(self.values)))]
        return value.item() if hasattr(value, "item") else value


Domain = Uniform | LogUniform | IntUniform | Choice
SearchSpace = dict[str, Domain]


def sample_configs(space: SearchSpace, count: int, seed: int) -> list[dict]:
    """``count`` random configs, drawn in key order from a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    return [{key: space[key].sample(rng) for key in sorted(space)} for _ in range(count)]


def grid_configs(space: SearchSpace, points: int = 3) -> list[dict]:
    """Every combination of each domain's grid (``points`` per continuous domain)."""
    import itertools

    keys = sorted(space)
    grids = [space[key].grid(points) for key in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grids)]


# ---------------------------------------------------------------- valid ranges of hparams
#
# Every Hparams field declares its valid values next to its default:
#
#     lr: float = hparam(0.01, gt=0)  # SGD learning rate; Unlearn-Sparse FT range [0.01, 0.1]
#
# The bounds and choices live in the field's metadata; the type (integer, number, bool,
# string, tuple of those, or None allowed) is read from the field's annotation, so it is
# declared once. ``make_hparams`` and the config loader refuse values and search domains
# outside a field's range.

RANGE_KEY = "range"  # dataclasses.field metadata key holding a field's Range

_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}
_NOUNS = {"int": ("an integer", "integers"), "float": ("a number", "numbers"),
          "bool": ("true or false", "booleans"), "str": ("a string", "strings")}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


@dataclass(frozen=True)
class Range:
    """The valid values of one Hparams field.

    ``gt``/``ge``/``lt``/``le`` bound numbers (each element of a tuple field);
    ``choices`` lists the accepted values. ``kind`` ("int", "float", "bool", "str"),
    ``sequence`` (a tuple of ``kind``) and ``optional`` (None accepted) come from the
    field's annotation (``field_ranges``), not from ``hparam``.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    kind: str = "float"
    sequence: bool = False
    optional: bool = False

    def _scalar_ok(self, value: Any) -> bool:
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "str":
            ok = isinstance(value, str)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            ok = False
        elif self.kind == "int":
            ok = isinstance(value, numbers.Integral)
        else:
            ok = math.isfinite(value)
        if not ok:
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.kind in ("bool", "str"):
            return True
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a valid value of the field."""
        if value is None:
            return self.optional
        if self.sequence:
            return isinstance(value, list | tuple) and all(self._scalar_ok(v) for v in value)
        return self._scalar_ok(value)

    def bounds_text(self) -> str:
        """The bounds as text: "> 0", ">= 1", "in [0, 1)"; "" when unbounded."""
        lower = ("[", self.ge) if self.ge is not None else \
            ("(", self.gt) if self.gt is not None else None
        upper = ("]", self.le) if self.le is not None else \
            (")", self.lt) if self.lt is not None else None
        if lower and upper:
            return f"in {lower[0]}{_fmt(lower[1])}, {_fmt(upper[1])}{upper[0]}"
        if lower:
            return f"{'>=' if lower[0] == '[' else '>'} {_fmt(lower[1])}"
        if upper:
            return f"{'<=' if upper[0] == ']' else '<'} {_fmt(upper[1])}"
        return ""

    def describe(self) -> str:
        """What the field accepts, e.g. "an integer >= 1", "a number in (0, 1]"."""
        single, plural = _NOUNS[self.kind]
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
            if self.sequence:
                text = f"a list of values, each {text}"
        else:
            bounds = "" if self.kind in ("bool", "str") else self.bounds_text()
            text = f"a list of {plural}" if self.sequence else single
            text = f"{text} {bounds}" if bounds else text
        return f"{text}, or None" if self.optional else text

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is valid, else what was expected and what came."""
        if self.contains(value):
            return None
        text = f"expected {self.describe()}, got {value!r}"
        if isinstance(value, str) and self.kind in ("int", "float"):
            text += " (a string: YAML reads 1e-4 as text; write 1.0e-4)" if _is_number(value) \
                else " (a string)"
        return text

    def domain_problem(self, domain: Domain) -> str | None:
        """None if every value ``domain`` can draw is valid, else why not."""
        name = DOMAIN_NAMES[type(domain)]
        if isinstance(domain, Choice):
            if not domain.values:
                return "choice needs at least one value"
            bad = [v for v in domain.values if not self.contains(v)]
            if bad:
                return f"choice values {bad} outside the field's range: expected {self.describe()}"
            return None
        if self.sequence or self.choices is not None or self.kind in ("bool", "str"):
            return f"{name} draws numbers, but the field takes {self.describe()}: use choice"
        if self.kind == "int" and not isinstance(domain, IntUniform):
            return f"{name} draws non-integers, but the field takes {self.describe()}: " \
                "use randint or choice"
        bad = [v for v in (domain.low, domain.high) if not self.contains(v)]
        if bad:
            return f"{name} [{_fmt(domain.low)}, {_fmt(domain.high)}] reaches outside the " \
                f"field's range: expected {self.describe()}"
        return None


def hparam(default: Any, *, gt: float | None = None, ge: float | None = None,
       lt: float | None = None, le: float | None = None, choices: Any = None) -> Any:
    """A dataclass field with ``default`` and its valid range (see ``Range``)."""
    declared = Range(gt=gt, ge=ge, lt=lt, le=le,
                     choices=None if choices is None else tuple(choices))
    return dataclasses.field(default=default, metadata={RANGE_KEY: declared})


def _type_of(hint: Any) -> dict:
    """``kind``, ``sequence`` and ``optional`` of a field annotation."""
    optional = sequence = False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"hparam annotation {hint} is a union of several types")
        optional, hint = len(rest) < len(args), rest[0]
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"hparam annotation {hint}: only tuple[T, ...] is supported")
        sequence, hint = True, args[0]
    if hint not in _KINDS:
        raise TypeError(f"hparam annotation {hint}: expected int, float, bool or str")
    return {"kind": _KINDS[hint], "sequence": sequence, "optional": optional}


@functools.cache
def field_ranges(hparams_cls: type) -> dict[str, Range | None]:
    """Each field of an Hparams dataclass -> its Range (None where none is declared)."""
    hints = typing.get_type_hints(hparams_cls)
    return {
        f.name: None if RANGE_KEY not in f.metadata
        else dataclasses.replace(f.metadata[RANGE_KEY], **_type_of(hints[f.name]))
        for f in dataclasses.fields(hparams_cls)
    }


# ---------------------------------------------------------------- domains from config

DOMAIN_KINDS: dict[str, type] = {
    "uniform": Uniform, "loguniform": LogUniform, "randint": IntUniform, "choice": Choice,
}
DOMAIN_NAMES: dict[type, str] = {cls: name for name, cls in DOMAIN_KINDS.items()}
DOMAIN_FORMS = "{uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high]} " \
    "or {choice: [value, ...]}"


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _bound(kind: str, value: Any) -> float | int:
    """One bound of a range domain as a number (YAML's 1e-4, read as text, is accepted)."""
    if isinstance(value, str) and _is_number(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{kind} bounds must be numbers, got {value!r}")
    if kind == "randint":
        if not float(value).is_integer():
            raise ValueError(f"randint bounds must be integers, got {value!r}")
        return int(value)
    return float(value)


def domain_from_spec(spec: Any) -> Domain:
    """A config's domain such as ``{"loguniform": [1e-4, 1e-1]}`` -> a neutral domain.

    Raises ValueError naming what is wrong: the form, the number of values, bounds
    that are not numbers (integers for randint), low >= high (low > high for
    randint, whose bounds are inclusive), low <= 0 for loguniform, an empty choice.
    """
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAIN_KINDS:
        raise ValueError(f"expected one of {DOMAIN_FORMS}, got {spec!r}")
    (kind, args), = spec.items()
    if kind == "choice":
        if not isinstance(args, list | tuple) or not args:
            raise ValueError(f"choice takes a non-empty list of values, got {args!r}")
        return Choice(tuple(args))
    if not isinstance(args, list | tuple) or len(args) != 2:
        count = f"{len(args)} value(s)" if isinstance(args, list | tuple) else "no list"
        raise ValueError(f"{kind} takes 2 values [low, high], got {count}: {args!r}")
    low, high = (_bound(kind, v) for v in args)
    if kind == "randint":
        if low > high:
            raise ValueError(f"randint needs low <= high (both inclusive), got [{low}, {high}]")
        return IntUniform(low, high)
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got [{_fmt(low)}, {_fmt(high)}]")
    if kind == "loguniform":
        if low <= 0:
            raise ValueError(f"loguniform needs low > 0 (log of a non-positive number), "
                             f"got [{_fmt(low)}, {_fmt(high)}]")
        return LogUniform(low, high)
    return Uniform(low, high)
