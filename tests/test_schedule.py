"""One scheduling pass (pipelines/schedule.py): every method's sweep and replicates in one
Tune run; a method's replicates start as soon as its own sweep is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import MethodConfig
from pipelines.keys import REPLICATE_SEED_OFFSET
from pipelines.sweep import best_hparams, plan_method
from pipelines.trial import SweepContext
from tests.conftest import make_sweep_context


@pytest.fixture
def ctx(tmp_path) -> SweepContext:
    return make_sweep_context(tmp_path, max_retries=1)


METHODS = [
    MethodConfig(name="original"),  # one trial: its sweep ends first
    MethodConfig(name="finetune", trials=6, fixed={"epochs": 1}),
    MethodConfig(name="grad_ascent", search="optuna", trials=3, fixed={"epochs": 1}),
]
REPLICATES = 2


def test_one_tune_run_and_replicates_start_before_other_sweeps_end(ctx):
    from pipelines.references import ray_storage_path
    from pipelines.run import _init_ray
    from pipelines.schedule import run_schedule

    events: list[tuple[str, str]] = []  # (stage, method) in the order trials ended
    started: list[int] = []
    plans = [plan_method(ctx, m) for m in METHODS]
    try:
        result = run_schedule(
            ctx, plans, REPLICATES,
            ensure_ray=lambda: (started.append(1), _init_ray(None, 2)),
            on_record=lambda stage, method, key: events.append((stage, method)))
    finally:
        import ray

        ray.shutdown()
    assert started == [1] and result.tune_runs == 1
    # Tune keeps one experiment folder per Tuner.fit: a single one for the whole pass
    runs = [p for p in Path(ray_storage_path(ctx.store)).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs

    assert {m: len(r) for m, r in result.sweeps.items()} == {
        "original": 1, "finetune": 6, "grad_ascent": 3}
    for method, records in result.sweeps.items():
        assert all(r["status"] == "ok" and r["stage"] == "sweep" for r in records), method
        assert result.best[method] == best_hparams(records, ctx.objective_mode)
    replicates = result.replicates
    assert [(r["method"], r["seed"] - REPLICATE_SEED_OFFSET) for r in replicates] == [
        (m.name, i) for m in METHODS for i in range(REPLICATES)]
    for record in replicates:
        assert record["status"] == "ok" and record["stage"] == "replicate"
        assert record["hparams"] == result.best[record["method"]]
    # every trial ended once, and original's replicates ran while finetune still swept
    assert sorted(events) == sorted(
        [("sweep", m) for m, r in result.sweeps.items() for _ in r]
        + [("replicate", r["method"]) for r in replicates])
    first_original_replicate = events.index(("replicate", "original"))
    last_finetune_sweep = max(i for i, e in enumerate(events) if e == ("sweep", "finetune"))
    assert first_original_replicate < last_finetune_sweep, events
    # no method's replicate before its own sweep's last trial
    for method in result.sweeps:
        last_sweep = max(i for i, e in enumerate(events) if e == ("sweep", method))
        assert all(i > last_sweep for i, e in enumerate(events) if e == ("replicate", method))

    # a second pass finds everything stored: no Ray, the same records
    again = run_schedule(ctx, [plan_method(ctx, m) for m in METHODS], REPLICATES,
                         ensure_ray=lambda: pytest.fail("a stored pass started Ray"))
    assert again.tune_runs == 0 and again.best == result.best
    assert [r["trial_key"] for r in again.replicates] == [r["trial_key"] for r in replicates]
    assert {m: sorted(r["trial_key"] for r in recs) for m, recs in again.sweeps.items()} == {
        m: sorted(r["trial_key"] for r in recs) for m, recs in result.sweeps.items()}


def _trial(trial_id: str, method: str, stage: str = "sweep", asha: bool = True):
    from types import SimpleNamespace

    job = {"method": method, "stage": stage, **({"asha": True} if asha else {})}
    return SimpleNamespace(trial_id=trial_id, config={"__job": job}, status="PENDING")


def test_asha_decides_per_method_and_never_for_other_trials():
    """Each ASHA method's trials are compared with its own only; a replicate (or a trial
    of a method without ``search: asha``) always runs to the end."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from pipelines.schedule import schedule_scheduler

    asha = {m: ASHAScheduler(time_attr="training_iteration", metric="objective", mode="min",
                             max_t=4, grace_period=1, reduction_factor=2)
            for m in ("finetune", "grad_ascent")}
    good, bad = _trial("a", "finetune"), _trial("b", "finetune")
    other = _trial("c", "grad_ascent")  # as bad, but the first of its own method
    replicate = _trial("d", "finetune", "replicate", asha=False)
    plain = _trial("e", "original", asha=False)
    trials = [good, bad, other, replicate, plain]
    controller = SimpleNamespace(get_trials=lambda: trials)
    scheduler = schedule_scheduler(asha)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)

    def report(trial, value: float) -> str:
        return scheduler.on_trial_result(
            controller, trial, {"training_iteration": 1, "objective": value})

    assert report(good, 0.1) == TrialScheduler.CONTINUE
    assert report(bad, 0.9) == TrialScheduler.STOP  # worse than finetune's first at rung 1
    assert report(other, 0.9) == TrialScheduler.CONTINUE
    assert report(replicate, 0.9) == TrialScheduler.CONTINUE
    assert report(plain, 0.9) == TrialScheduler.CONTINUE
    assert set(asha["finetune"]._trial_info) == {"a", "b"}
    assert set(asha["grad_ascent"]._trial_info) == {"c"}
    # pending replicates go first: they are the last work of a finished sweep
    assert scheduler.choose_trial_to_run(controller) is replicate
    replicate.status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is good
