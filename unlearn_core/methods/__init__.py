"""Unlearning methods: one module per method, keyed by module name.

Each module defines
- ``Hparams``: a frozen dataclass; every default carries its unit and source
  (paper and equation) in a comment;
- ``SEARCH_SPACE``: a dict of neutral domains (``unlearn_core.search``) over
  ``Hparams`` fields, which sweeps may vary;
- ``unlearn(model, task, hp) -> model``: ``model`` is a copy of the source to
  change (in place or not); ``task`` (``UnlearnTask``) exposes only what the
  method may read;
and optionally ``REQUIRES`` (a frozenset of what the pipeline must provide, e.g.
``{"update_recording"}``), ``needs_retrain_model(hp) -> bool`` (the trial reads
``task.extras["retrain_model"]``) and ``ZERO_GLANCE = True`` for methods that may not
read the forget set (the task then refuses every such read).

Methods with an epoch loop set ``REPORTS_EPOCHS = True`` and call
``task.end_epoch(model, epoch)`` after every epoch (from 1), and name in
``EPOCHS_HPARAM`` the Hparams field holding that number of epochs (ASHA's
``max_t``; a value of None there means the source recipe's epochs). A method
with several phases reports one of them, the one its ``EPOCHS_HPARAM`` names
(e.g. unsir's repair epochs, after the impair step), and says why there.

Every Hparams field declares its valid range next to its default
(``unlearn_core.search.hparam``); ``make_hparams`` refuses values outside it.

Adding a method is one file plus one name in ``METHOD_MODULES``.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from unlearn_core.errors import UserInputError
from unlearn_core.search import field_ranges

METHOD_MODULES = (
    "original",
    "retrain",
    "finetune",
    "grad_ascent",
    "soft_relabel",
    "gradient_surgery",
    "activation_pruning",
    "random_labels",
    "scrub",
    "boundary_unlearning",
    "amnesiac",
    "partial_amnesiac",
    "label_flip",
    "label_flip_partial",
    "grad_ascent_partial",
    "unsir",
    "neg_grad",
    "fisher_forgetting",
    "topk_perturb",
    "randomk_perturb",
    "random_topk_perturb",
    "eu_k",
    "cf_k",
    "adversarial_unlearning",
    "influence_unlearning",
)

METHODS: dict[str, ModuleType] = {
    name: import_module(f"unlearn_core.methods.{name}") for name in METHOD_MODULES
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise UserInputError(f"unknown method {name!r}: expected one of {method_names()}")
    return METHODS[name]


def requirements(name: str) -> frozenset[str]:
    return frozenset(getattr(get_method(name), "REQUIRES", frozenset()))


def needs_retrain_model(name: str, hp) -> bool:
    """Whether method ``name`` run with ``hp`` (its Hparams) reads
    ``task.extras["retrain_model"]``.

    A method whose need depends on its hparams (seed 000's ``js_reference="retrain"``)
    defines a module-level ``needs_retrain_model(hp) -> bool``; a method without one
    never reads it. The sweep builds the retrained model only when this is True.
    """
    declared = getattr(get_method(name), "needs_retrain_model", None)
    # hp None: the values did not parse, the trial fails before anything is read
    return bool(declared(hp)) if declared is not None and hp is not None else False


def is_zero_glance(name: str) -> bool:
    return bool(getattr(get_method(name), "ZERO_GLANCE", False))


def reports_epochs(name: str) -> bool:
    """Whether the method calls ``task.end_epoch`` after each epoch (ASHA can stop it)."""
    return bool(getattr(get_method(name), "REPORTS_EPOCHS", False))


def epochs_hparam(name: str) -> str | None:
    """The Hparams field giving the number of epochs the method reports, if it reports."""
    return getattr(get_method(name), "EPOCHS_HPARAM", None) if reports_epochs(name) else None


def hparam_range(name: str, field: str):
    """The declared ``Range`` of one Hparams field of method ``name`` (``search.hparam``)."""
    ranges = field_ranges(get_method(name).Hparams)
    if field not in ranges:
        raise UserInputError(
            f"method {name}: unknown hparam {field!r}; accepted: {sorted(ranges)}"
        )
    return ranges[field]


def hparam_problem(name: str, field: str, value) -> str | None:
    """None if ``value`` lies in the field's declared range, else what was expected."""
    declared = hparam_range(name, field)
    return None if declared is None else declared.problem(value)


def check_hparam(name: str, field: str, value) -> None:
    """Refuse (UserInputError) a value outside the field's range, naming method, field,
    value and range."""
    problem = hparam_problem(name, field, value)
    if problem:
        raise UserInputError(f"method {name}: hparam {field} out of range: {problem}")


def validate_hparams(name: str, values: dict | None) -> None:
    """Refuse unknown fields and values outside their ranges (all named in one error)."""
    fields = set(field_ranges(get_method(name).Hparams))
    unknown = sorted(set(values or {}) - fields)
    if unknown:
        raise UserInputError(
            f"method {name}: unknown hparam(s) {unknown}; accepted: {sorted(fields)}"
        )
    problems = [f"{field}: {problem}" for field, value in (values or {}).items()
                if (problem := hparam_problem(name, field, value))]
    if problems:
        raise UserInputError(f"method {name}: hparam(s) out of range: " + "; ".join(problems))


def make_hparams(name: str, values: dict | None = None):
    """Build a method's Hparams from a dict, naming any unknown field and any value
    outside its field's declared range."""
    validate_hparams(name, values)
    return get_method(name).Hparams(**(values or {}))
