"""``unlearn report`` and multi-experiment ``unlearn tables`` on real experiments, and the
report opened in a real browser (headless Chromium over the DevTools protocol).

The experiment is made once by ``unlearn run`` (tests/experiment_fixture.py); the
second one of the combined table is the same config with ``table_columns``
added, run into another results folder holding a copy of the first one's store,
so the pipeline reuses every model and trial and only assembles anew.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from html import escape
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.cli import main
from tests.cdp import Browser, chromium_path
from tests.experiment_fixture import finished_experiment, run_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return finished_experiment(tmp_path_factory)


@pytest.fixture(scope="module")
def second(experiment, tmp_path_factory) -> Path:
    """The same experiment with one more table column (``val/acc``), in results-b."""
    base = experiment.parent.parent
    target = base / "results-b" / experiment.name
    if not target.exists():
        shutil.copytree(experiment, target)
    return run_tiny(base, "results-b", table_columns=["val/acc"])


def test_run_writes_a_self_contained_report_and_logs_it(experiment):
    html = (experiment / "report.html").read_text()
    summary = json.loads((experiment / "summary.json").read_text())
    plan = json.loads((experiment / "plan.json").read_text())
    # no external resource: every src/href is inline data or an in-page anchor
    assert not re.findall(r'(?:src|href)="(?!data:|#)', html)
    assert "http://" not in html and "https://" not in html
    plots = sorted(p.name for p in (experiment / "plots").glob("*.png"))
    epsilons = pq.read_table(experiment / "tables" / "epsilons.parquet")
    methods = epsilons.column("method").to_pylist()
    # the retrain row's ε needs 2 references per half; 3 references give none
    assert set(methods) == {"original", "finetune"}
    assert methods.count("original") == methods.count("finetune") > 0  # one per example
    assert plots and html.count("data:image/png;base64,") == len(plots) + 2  # + ε per row
    for text in (summary["manifest"], summary["config_hash"], plan["provenance"]["git_commit"],
                 "wall time: sweep", "torch", 'id="exp0-results"', 'id="exp0-mia"'):
        assert text in html
    assert escape(plan["command"]) in html

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{experiment.parent.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              "attributes.run_name = 'assemble'")
    assert any("report.html" in [a.path for a in client.list_artifacts(r.info.run_id)]
               for r in runs)


def test_tables_and_report_of_two_experiments(experiment, second, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["tables", str(experiment), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## all experiments: results" in printed
    header, *rows = list(csv.reader((out / "combined.csv").open()))
    # one column for the differing field; val/acc only the second experiment has
    assert header[:4] == ["Experiment", "table_columns", "Method", "n"] and "val/acc" in header
    assert len(rows) == 2 * 3  # original, retrain, finetune of each
    assert {r[1] for r in rows} == {"[]", '["val/acc"]'}
    acc = header.index("val/acc")
    assert {r[acc] == "–" for r in rows if r[1] == "[]"} == {True}
    assert {r[acc] == "–" for r in rows if r[1] != "[]"} == {False}
    assert (out / "combined_mia.md").exists()

    report = tmp_path / "two.html"
    assert main(["report", str(experiment), str(second), "--out", str(report)]) == 0
    html = report.read_text()
    assert 'id="combined-results"' in html and 'id="exp1-results"' in html


def test_experiments_on_different_datasets_are_refused(experiment, tmp_path, capsys):
    other = tmp_path / "other" / "tiny-mnist"
    other.mkdir(parents=True)
    config = yaml.safe_load((experiment / "config.yaml").read_text())
    config.update(name="tiny-mnist", dataset={"name": "mnist"})
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    for command in ("tables", "report"):
        assert main([command, str(experiment), str(other), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "different datasets" in err and "digits" in err and "mnist" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"),
                    reason="chromium is not installed (.ci/run installs it)")
def test_report_in_headless_chromium(experiment, second, tmp_path):
    report = tmp_path / "report.html"
    assert main(["report", str(experiment), str(second), "--out", str(report)]) == 0
    rows_js = ("Array.from(document.querySelectorAll('#combined-results tbody tr'))"
               ".map(r => Array.from(r.cells).map(c => c.textContent))")
    with Browser() as browser:
        browser.open(report.as_uri())
        images = browser.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == report.read_text().count("<img ") >= 2 * 5
        assert all(done and width > 0 for done, width in images)
        header = browser.evaluate("Array.from(document.querySelectorAll("
                                  "'#combined-results thead th')).map(h => h.textContent)")
        before = browser.evaluate(rows_js)
        column = header.index("Acc D_f")
        values = [_number(r[column]) for r in before]
        assert len(set(values)) > 1, "the column must hold different values to sort"
        for order in ("ascending", "descending"):
            browser.click(f"#combined-results thead th:nth-child({column + 1})")
            after = browser.evaluate(rows_js)
            assert sorted(map(tuple, after)) == sorted(map(tuple, before))  # same rows
            numbers = [_number(r[column]) for r in after]
            assert numbers == sorted(numbers, reverse=order == "descending")
            assert browser.evaluate(f"document.querySelectorAll('#combined-results thead th')"
                                    f"[{column}].getAttribute('aria-sort')") == order
        assert after != before, "sorting reordered the rows"
        shot = browser.screenshot(tmp_path / "report.png")
        assert browser.errors == [], browser.errors
        assert all(u.startswith(("file:", "data:")) for u in browser.requests), \
            browser.requests
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _number(cell: str) -> float:
    return float(re.match(r"[-+]?\d*\.?\d+", cell.lstrip("≥> ")).group())
