"""One small finished experiment for the status and report tests, made by ``unlearn run``.

It lives in pytest's base temp folder, so the second test module that asks for it
resumes the first one's run: every model and trial is stored, nothing is trained
again (the pipeline's own caching), only the tables and the report are rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "forget": "classes=3",
    "split": {"max_train": 400},
    "source": {"model": "mlp", "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
    "references": {"count": 3, "workers": 2},
    "methods": [
        {"name": "original"},
        {"name": "retrain"},
        {"name": "finetune", "trials": 2, "fixed": {"epochs": 1}},
    ],
    "replicates": 2,
    "mia_max_per_class": 100,
    # the probes and the bootstrap cost time and are not what these tests read
    "metrics": {"fscore_bootstrap": 0, "relearn": {"enabled": False}, "distance": False},
}


def run_tiny(base: Path, results: str = "results", **changes) -> Path:
    """Run (or resume) the tiny experiment with ``changes`` under ``base/results``;
    return the experiment's folder."""
    from pipelines.config import load_config
    from pipelines.run import run_experiment

    base.mkdir(parents=True, exist_ok=True)
    path = base / f"config-{results}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    run_experiment(load_config(path), tracking_uri=f"sqlite:///{base / 'mlflow.db'}",
                   results_dir=str(base / results), num_cpus=2)
    return base / results / CONFIG["name"]


def finished_experiment(tmp_path_factory) -> Path:
    return run_tiny(tmp_path_factory.getbasetemp() / "tiny-experiment")
