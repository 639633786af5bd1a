"""A trial's failures by kind: the method's own is a result (recorded once, never retried);
infrastructure's (I/O) is raised for Tune to retry, and leaves no record; a job whose
retries ran out is reported as lost by the driver, never crashing it."""

from __future__ import annotations

import pytest

from pipelines.store import ResultsStore
from pipelines.sweep import job_records
from pipelines.trial import SweepContext, run_trial, trial_key
from tests.conftest import make_sweep_context


@pytest.fixture
def ctx(tmp_path) -> SweepContext:
    return make_sweep_context(tmp_path, max_retries=2)


def test_method_failure_is_recorded_once(ctx):
    record = run_trial(ctx, "finetune", {"epochs": 1, "lr": -1.0}, 0, "sweep")
    assert record["status"] == "failed" and "lr" in record["error"]
    assert ctx.store.read_trial("finetune", record["trial_key"]) == record
    again = run_trial(ctx, "finetune", {"epochs": 1, "lr": -1.0}, 0, "sweep")
    assert again["cached"], "a method's failure is a result: not run again"


def test_io_failure_raises_and_records_nothing(ctx, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("connection reset by the object store")

    monkeypatch.setattr(ResultsStore, "load_model", unreachable)
    with pytest.raises(OSError, match="connection reset"):
        run_trial(ctx, "finetune", {"epochs": 1, "lr": 0.01}, 0, "sweep")
    key = trial_key("src", "finetune", {"epochs": 1, "lr": 0.01}, 0)
    assert ctx.store.read_trial("finetune", key) is None, "nothing recorded: Tune retries"


def test_driver_reports_a_job_without_record_as_lost(ctx):
    done = {"method": "finetune", "hparams": {"epochs": 1, "lr": 0.01}, "seed": 0,
            "stage": "sweep"}
    run_trial(ctx, "finetune", done["hparams"], 0, "sweep")
    lost = {**done, "seed": 1}  # a job whose every try was lost: no record
    records = job_records(ctx, [done, lost])
    assert [r["status"] for r in records] == ["ok", "lost"]
    assert "2 retries" in records[1]["error"]
    assert ctx.store.read_trial("finetune", records[1]["trial_key"]) is None
