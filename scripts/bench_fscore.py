"""Benchmark the challenge forget quality: vectorised vs the per-example reference.

Times ``forget_quality`` (vectorised) on N models x n examples of synthetic
logit-scaled confidences, and the per-example reference port of the released
code on a subset of examples (extrapolated to all n), then checks both give
the same eps on that subset. Then compares ``per_example_epsilons`` (batched
across examples) with the previous one-example-at-a-time path
(``_per_example_epsilons_loop``) at N = 32 and N = 256 on 5 000 examples and
at the main size, and checks they agree bit for bit (``--no-compare`` skips).

    python scripts/bench_fscore.py                    # 512 x 10 000, ref on 200
    python scripts/bench_fscore.py --models 32 --examples 2000 --ref-examples 100

Synthetic data: per example a random location and spread (retrained values
~ Normal(mu_i, sigma_i), sigma_i ~ LogNormal(0, 0.5)), and unlearned values
shifted by ``--shift`` sigma_i, so the examples cover several regimes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unlearn_core.metrics.fscore import (  # noqa: E402
    _per_example_epsilon_reference,
    _per_example_epsilons_loop,
    epsilon_scores,
    forget_quality,
    per_example_epsilons,
)


def make_confs(
    n_models: int, n_examples: int, shift: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = rng.normal(2.0, 2.0, n_examples)
    sigma = rng.lognormal(0.0, 0.5, n_examples)
    retrained = rng.normal(mu, sigma, (n_models, n_examples))
    unlearned = rng.normal(mu + shift * sigma, sigma, (n_models, n_examples))
    return unlearned, retrained


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", type=int, default=512, help="N models per set")
    ap.add_argument("--examples", type=int, default=10_000, help="forget examples")
    ap.add_argument(
        "--ref-examples",
        type=int,
        default=200,
        help="examples timed with the reference loop (extrapolated)",
    )
    ap.add_argument("--shift", type=float, default=0.2, help="unlearned mean shift, in sigmas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-compare", action="store_true", help="skip the batched vs per-example comparison"
    )
    args = ap.parse_args(argv)

    u, r = make_confs(args.models, args.examples, args.shift, args.seed)
    per_example_epsilons(u[:, :4], r[:, :4])  # warm-up: builds the eps table for this N

    # Wall and CPU (process) time: on a shared machine the CPU time is the
    # stabler figure. The computation is single-threaded.
    t0, c0 = time.perf_counter(), time.process_time()
    fq = forget_quality(u, r)
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"vectorised forget_quality  N={args.models} n={args.examples}: "
        f"wall {t_fast:.2f} s, cpu {c_fast:.2f} s "
        f"({1e3 * c_fast / args.examples:.3f} cpu ms/example)  F={fq:.4f}"
    )

    n_ref = min(args.ref_examples, args.examples)
    if n_ref > 0:
        t0, c0 = time.perf_counter(), time.process_time()
        ref = np.array([_per_example_epsilon_reference(u[:, i], r[:, i]) for i in range(n_ref)])
        t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
        t_ref_all = t_ref / n_ref * args.examples
        c_ref_all = c_ref / n_ref * args.examples
        fast = per_example_epsilons(u[:, :n_ref], r[:, :n_ref])
        diff = float(np.abs(fast - ref).max())
        print(
            f"reference loop             {n_ref} examples: wall {t_ref:.2f} s, cpu {c_ref:.2f} s "
            f"({1e3 * c_ref / n_ref:.1f} cpu ms/example) -> extrapolated to {args.examples}: "
            f"wall {t_ref_all:.0f} s, cpu {c_ref_all:.0f} s"
        )
        print(
            f"speed-up                   wall {t_ref_all / t_fast:.0f}x, "
            f"cpu {c_ref_all / c_fast:.0f}x"
        )
        print(
            f"max |eps_vectorised - eps_reference| on the subset: {diff:.3g}; "
            f"F on the subset {epsilon_scores(fast, args.models).mean():.4f} vs "
            f"{epsilon_scores(ref, args.models).mean():.4f}"
        )
        if diff > 1e-9:
            print("MISMATCH between vectorised and reference eps")
            return 1
    if not args.no_compare:
        sizes = [(32, 5_000), (256, 5_000), (args.models, args.examples)]
        for n_models, n_examples in dict.fromkeys(sizes):
            if not compare_paths(n_models, n_examples, args.shift, args.seed):
                return 1
    return 0


def compare_paths(n_models: int, n_examples: int, shift: float, seed: int) -> bool:
    """Time the batched path against the per-example loop (best of 2 each, wall and
    CPU); True when they agree bit for bit."""
    u, r = make_confs(n_models, n_examples, shift, seed)
    per_example_epsilons(u[:, :4], r[:, :4])
    times: dict[str, tuple[float, float]] = {}
    out = {}
    for name, fn in (
        ("per-example", _per_example_epsilons_loop),
        ("batched", per_example_epsilons),
    ):
        best = (np.inf, np.inf)
        for _ in range(2):
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn(u, r)
            best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
        times[name] = best
    same = np.array_equal(out["per-example"], out["batched"])
    (w_old, c_old), (w_new, c_new) = times["per-example"], times["batched"]
    print(
        f"per_example_epsilons N={n_models} n={n_examples}: per-example wall {w_old:.2f} s "
        f"cpu {c_old:.2f} s | batched wall {w_new:.2f} s cpu {c_new:.2f} s | "
        f"speed-up wall {w_old / w_new:.2f}x cpu {c_old / c_new:.2f}x | "
        f"identical: {same}"
    )
    return same


if __name__ == "__main__":
    raise SystemExit(main())
