"""``unlearn status`` on a real experiment: finished, mid-run, interrupted, on S3.

The experiment is made once by ``unlearn run`` (tests/experiment_fixture.py). A
mid-run state is the store as a run leaves it in the sweep: the finished store
less what the later stages write, with a fresh lock and an open stage.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.status import StatusReader, render, show
from tests.experiment_fixture import finished_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return finished_experiment(tmp_path_factory)


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (folder / "trials").rglob("*.json")]


def test_finished_experiment_counts_match_the_store(experiment):
    status = StatusReader(str(experiment)).read()
    assert status.state == "finished" and status.stage is None
    assert status.source_done and status.references_done == status.references_total == 3
    summary = json.loads((experiment / "summary.json").read_text())
    by_name = {m.name: m for m in status.methods}
    assert set(by_name) == {"original", "finetune"}  # retrain is the references
    assert (by_name["finetune"].planned, by_name["original"].planned) == (2, 1)
    records = _records(experiment)
    for name, progress in by_name.items():
        sweep = [r for r in records if r["method"] == name and r["stage"] == "sweep"]
        assert progress.ok == len(sweep) == progress.planned and progress.pending == 0
        # the replicates the run recorded in summary.json, and their best objective
        assert progress.replicates_done == progress.replicates == len(
            summary["replicates"][name]) == 2
        assert progress.best == pytest.approx(min(r["objective"] for r in sweep))
    clock = json.loads((experiment / "stages.json").read_text())
    assert [s["name"] for s in status.stages] == ["prepare", "references", "sweep",
                                                  "replicate", "assemble"]
    assert status.elapsed == pytest.approx(clock["finished"] - clock["started"])
    assert status.eta == 0
    text = render(status)
    assert "[finished]" in text and "3/3 retrained" in text and "finetune" in text


def test_cli_status_text_json_and_watch_of_a_finished_run(experiment, capsys):
    assert main(["status", str(experiment)]) == 0
    assert "[finished]" in capsys.readouterr().out
    assert main(["status", str(experiment), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "finished" and data["references_done"] == 3
    assert main(["status", str(experiment), "--watch", "--interval", "0.1"]) == 0  # ends
    assert capsys.readouterr().out.count("experiment  tiny") == 1


def test_cli_status_refuses_a_folder_without_an_experiment(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no experiment" in capsys.readouterr().err


def mid_sweep(experiment: Path, folder: Path, renewed_ago: float = 0.0) -> Path:
    """The store as ``unlearn run`` leaves it half-way through finetune's sweep."""
    copy = folder / "tiny"
    shutil.copytree(experiment, copy)
    for path in copy.rglob("*"):  # the fixture run may have ended seconds ago: age it
        stat = path.stat()
        os.utime(path, (stat.st_atime - 3600, stat.st_mtime - 3600))
    for name in ("summary.json", "report.html"):
        (copy / name).unlink()
    for name in ("tables", "plots"):
        shutil.rmtree(copy / name)
    sweep = sorted(p for p in (copy / "trials" / "finetune").glob("*.json")
                   if json.loads(p.read_text())["stage"] == "sweep")
    sweep[0].unlink()  # one of finetune's two sweep trials is still in flight
    for path in (copy / "trials").rglob("*.json"):
        if json.loads(path.read_text())["stage"] == "replicate":
            path.unlink()
    now = time.time()
    clock = json.loads((copy / "stages.json").read_text())
    clock["started"], clock["finished"] = now - 30, None
    clock["stages"] = [{"name": "prepare", "start": now - 30, "end": now - 29},
                       {"name": "references", "start": now - 29, "end": now - 10},
                       {"name": "sweep", "start": now - 10, "end": None}]
    (copy / "stages.json").write_text(json.dumps(clock))
    (copy / "lock.json").write_text(json.dumps({
        "token": "t", "host": socket.gethostname(), "pid": os.getpid(), "started": now - 31,
        "renewed": now - renewed_ago, "lease_s": 60.0}))
    return copy


def test_running_experiment_shows_pending_work_and_time_left(experiment, tmp_path):
    store = mid_sweep(experiment, tmp_path)
    status = StatusReader(str(store)).read()
    assert status.state == "running" and status.stage == "sweep"
    assert f"pid {os.getpid()}" in status.holder
    by_name = {m.name: m for m in status.methods}
    finetune, original = by_name["finetune"], by_name["original"]
    assert (finetune.ok, finetune.pending, finetune.replicates_done) == (1, 1, 0)
    assert (original.ok, original.pending, original.replicates_done) == (1, 0, 0)
    assert original.replicates_pending == 2 and finetune.replicates_pending == 2
    assert 29 <= status.elapsed <= 60
    # 1 sweep trial + 4 replicates left. The copied records are older than this sweep
    # stage (no throughput measured yet): the median gap between their commits
    times = sorted(p.stat().st_mtime for p in (store / "trials").rglob("*.json"))
    gap = statistics.median(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    assert status.eta == pytest.approx(5 * gap, rel=1e-3)
    assert "left ~" in render(status) and "sweep" in render(status)


def test_time_left_from_the_throughput_measured_in_this_stage(experiment, tmp_path):
    store = mid_sweep(experiment, tmp_path)
    # both sweep records were committed during this run's sweep stage (started 10 s ago)
    for path in (store / "trials").rglob("*.json"):
        os.utime(path, (time.time() - 5, time.time() - 5))
    status = StatusReader(str(store)).read()
    # 10 s for 2 trials: 5 s each, for 1 sweep trial and 4 replicates left
    assert status.eta == pytest.approx(5 * 5, abs=1.0)


def test_time_left_in_the_references_stage(experiment, tmp_path):
    store = mid_sweep(experiment, tmp_path)
    shutil.rmtree(store / "trials")
    plan = json.loads((store / "plan.json").read_text())
    infos = [json.loads((store / "models" / f"{k}.json").read_text())
             for k in plan["references"]]
    (store / "models" / f"{plan['references'][-1]}.json").unlink()
    clock = json.loads((store / "stages.json").read_text())
    clock["stages"] = clock["stages"][:2]
    clock["stages"][1]["end"] = None
    (store / "stages.json").write_text(json.dumps(clock))
    status = StatusReader(str(store)).read()
    assert status.stage == "references" and status.references_done == 2
    # nothing committed in this stage yet: a stored reference's training time over the
    # reference workers, for 1 reference, 3 sweep trials and 4 replicates
    per_model = sum(i["train_seconds"] for i in infos[:2]) / 2 / plan["reference_workers"]
    assert status.eta == pytest.approx(8 * per_model)


def test_stale_lock_means_interrupted(experiment, tmp_path):
    store = mid_sweep(experiment, tmp_path, renewed_ago=3600)
    status = StatusReader(str(store)).read()
    assert status.state == "interrupted" and status.eta is None
    assert status.elapsed == pytest.approx(20, abs=2)  # up to the last stage's start


def test_watch_redraws_until_the_run_ends(experiment, tmp_path):
    store = mid_sweep(experiment, tmp_path)
    out = io.StringIO()
    watcher = threading.Thread(target=show, args=(str(store),),
                               kwargs={"watch": True, "interval": 0.2, "out": out})
    watcher.start()
    time.sleep(1.0)
    assert watcher.is_alive(), "a running experiment keeps the watch going"
    # the run ends: its last record, its clock closed, its lock released
    shutil.copy(experiment / "summary.json", store / "summary.json")
    clock = json.loads((store / "stages.json").read_text())
    clock["finished"] = time.time()
    (store / "stages.json").write_text(json.dumps(clock))
    (store / "lock.json").unlink()
    watcher.join(timeout=20)
    assert not watcher.is_alive()
    snapshots = out.getvalue().split("experiment  tiny")
    assert len(snapshots) >= 3  # several redraws, then the last one
    assert "[running, stage sweep" in snapshots[1] and "[finished]" in snapshots[-1]


def test_status_of_an_experiment_on_s3(experiment, s3_env):
    from unlearn_core.storage import Store

    uri = f"s3://{s3_env}/results/tiny"
    Store.at(f"s3://{s3_env}/results").put_dir(experiment, "tiny")
    local, remote = StatusReader(str(experiment)).read(), StatusReader(uri).read()
    assert remote.state == "finished" and remote.uri == uri
    assert remote.methods == local.methods
    assert (remote.references_done, remote.source_done) == (3, True)
