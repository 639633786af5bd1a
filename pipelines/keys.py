"""Stable content keys: every stage's work is named by the hash of what it depends on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def normalise_hparams(values: dict) -> dict:
    """JSON-able hparams with floats rounded so equal configs hash equally."""
    out = {}
    for key, value in sorted(values.items()):
        if isinstance(value, float):
            value = float(f"{value:.10g}")
        elif hasattr(value, "item"):  # numpy scalars from samplers
            value = value.item()
        out[key] = value
    return out


# Seeds of the unlearning runs. Every sweep trial trains with ``SWEEP_SEED``
# (``pipelines.sweep.sweep_method``'s default, which ``unlearn run`` uses), and a
# trial's key hashes (source, method, hparams, seed): a replicate of the best config
# with a sweep seed would BE the selected sweep trial (same key, its stored record
# reused), so the table would score the run that won the selection (selection bias).
# Replicates therefore draw their seeds from ``REPLICATE_SEED_OFFSET`` up, disjoint
# from every sweep seed.
SWEEP_SEED = 0
SWEEP_SEEDS = frozenset({SWEEP_SEED})
REPLICATE_SEED_OFFSET = 1_000_000


def replicate_seeds(count: int, sweep_seeds: frozenset[int] | set[int] = SWEEP_SEEDS
                    ) -> list[int]:
    """The seeds of ``count`` replicates of a method's best config: ``REPLICATE_SEED_OFFSET
    + i``, never a seed any sweep trial used (refused otherwise)."""
    seeds = [REPLICATE_SEED_OFFSET + i for i in range(count)]
    shared = sorted(set(seeds) & set(sweep_seeds))
    if shared:
        raise ValueError(f"replicate seeds {shared} are sweep seeds too: a replicate would "
                         "be the selected sweep trial itself")
    return seeds


def best_record(records: list[dict], mode: str) -> dict | None:
    """The best of ``records`` by ``objective`` (``mode`` "min" or "max"), ties going to
    the first trial key; None when there are none. The one selection rule of the sweep
    (``sweep.best_hparams``) and of ``unlearn status``."""
    if not records:
        return None
    pick = min if mode == "min" else max
    return pick(sorted(records, key=lambda r: r["trial_key"]), key=lambda r: r["objective"])


def replicate_jobs(best: Mapping[str, dict | None], count: int) -> list[dict]:
    """The replicate stage's jobs: each method's best hparams x ``replicate_seeds(count)``,
    in method then seed order; a method without a best config (every trial failed) has
    none."""
    seeds = replicate_seeds(count)
    return [{"method": name, "hparams": hp, "seed": seed}
            for name, hp in best.items() if hp is not None for seed in seeds]
