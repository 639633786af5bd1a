"""Neutral search spaces (unlearn_core.search) -> ray.tune domains."""

from __future__ import annotations

from typing import Any

from unlearn_core.errors import UserInputError
from unlearn_core.search import (
    Choice,
    Domain,
    IntUniform,
    LogUniform,
    SearchSpace,
    Uniform,
    domain_from_spec,
)


def domain_from_config(key: str, spec: dict[str, Any]) -> Domain:
    """A config override such as ``{"loguniform": [1e-4, 1e-1]}`` -> neutral domain
    (``unlearn_core.search.domain_from_spec``; the config loader has checked it already)."""
    try:
        return domain_from_spec(spec)
    except ValueError as err:
        raise UserInputError(f"space.{key}: {err}") from None


def to_tune(domain: Domain, grid: bool = False, grid_points: int = 3):
    """One neutral domain -> a ray.tune sampler (or grid_search when ``grid``)."""
    from ray import tune  # on first use: a run with every trial stored never needs Ray

    if grid:
        return tune.grid_search(domain.grid(grid_points))
    if isinstance(domain, Uniform):
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, LogUniform):
        return tune.loguniform(domain.low, domain.high)
    if isinstance(domain, IntUniform):
        return tune.randint(domain.low, domain.high + 1)  # ray's upper bound is exclusive
    if isinstance(domain, Choice):
        return tune.choice(list(domain.values))
    raise TypeError(f"not a search domain: {domain!r}")


def merged_space(space: SearchSpace, overrides: dict[str, dict], fixed: dict) -> SearchSpace:
    """The method's space with config overrides applied and fixed hparams removed."""
    merged = dict(space)
    for key, spec in overrides.items():
        merged[key] = domain_from_config(key, spec)
    for key in fixed:
        merged.pop(key, None)
    return merged


def tune_param_space(space: SearchSpace, grid: bool = False) -> dict:
    return {key: to_tune(domain, grid) for key, domain in space.items()}
