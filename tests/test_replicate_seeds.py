"""Replicates are not the selected sweep trial: their seeds (and so their trial keys)
are disjoint from every sweep trial's, so the table never scores the run that won the
selection."""

from __future__ import annotations

import inspect

import pytest

from pipelines.keys import (
    REPLICATE_SEED_OFFSET,
    SWEEP_SEED,
    SWEEP_SEEDS,
    replicate_jobs,
    replicate_seeds,
)
from pipelines.sweep import sweep_method
from pipelines.trial import trial_key


def test_sweep_seed_is_the_one_sweeps_use():
    # `unlearn run` calls sweep_method without a seed: every sweep trial uses its default
    assert inspect.signature(sweep_method).parameters["seed"].default == SWEEP_SEED
    assert SWEEP_SEEDS == {SWEEP_SEED}


def test_replicate_seeds_are_disjoint_from_sweep_seeds():
    seeds = replicate_seeds(32)
    assert seeds == [REPLICATE_SEED_OFFSET + i for i in range(32)]
    assert not set(seeds) & SWEEP_SEEDS
    assert replicate_seeds(0) == []
    with pytest.raises(ValueError, match="would be the selected sweep trial"):
        replicate_seeds(3, frozenset({REPLICATE_SEED_OFFSET + 2}))


def test_replicate_trial_keys_never_equal_a_sweep_trial_key():
    """The keys of the replicate jobs `unlearn run` builds from the sweeps' best configs
    against the keys of every sweep trial of those configs (same source, method, hparams
    and salt: only the seed can tell them apart)."""
    source, salt = "source-abc", "probes-1"
    best = {"finetune": {"lr": 0.01, "epochs": 2}, "grad_ascent": {"lr": 1e-3},
            "failed": None}
    jobs = replicate_jobs(best, 4)
    assert [(j["method"], j["seed"]) for j in jobs] == \
        [(m, REPLICATE_SEED_OFFSET + s) for m in ("finetune", "grad_ascent") for s in range(4)]
    replicate_keys = {trial_key(source, j["method"], j["hparams"], j["seed"], salt)
                      for j in jobs}
    sweep_keys = {trial_key(source, m, hp, seed, salt) for m, hp in best.items()
                  if hp is not None for seed in SWEEP_SEEDS}
    assert len(replicate_keys) == 8
    assert not replicate_keys & sweep_keys
    # what it guards against: with seeds range(4) the first replicate IS the sweep trial
    old = {trial_key(source, m, hp, s, salt) for m, hp in best.items() if hp is not None
           for s in range(4)}
    assert old & sweep_keys
