"""The GPU benchmarks must run on a machine with PyTorch but neither Ray nor MLflow
(issue 13): run them here, tiny, with both imports made to fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# Runs the script as __main__ after making `import ray` / `import mlflow` (and their
# submodules) raise, as they would where they are not installed.
BLOCKER = """
import runpy, sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Missing())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("script,args,row", [
    ("scripts/bench_references.py", ["--count", "2", "--epochs", "1", "--packs", "2",
                                     "--repeats", "1", "--threads", "1", "--no-pipeline"],
     "| stacked K=2 |"),
    ("scripts/bench_train.py", ["--steps", "2", "--warmup", "1", "--device", "cpu",
                                "--workers", "1"], "ours / dataloader:"),
], ids=["bench_references", "bench_train"])
def test_gpu_benchmarks_need_neither_ray_nor_mlflow(script: str, args: list[str], row: str):
    done = subprocess.run([sys.executable, "-c", BLOCKER, str(ROOT / script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "blocked by the test" not in done.stderr
    assert row in done.stdout  # the comparison was printed


def test_the_blocker_blocks(tmp_path):
    # the check above can fail: a script importing Ray under the blocker dies
    probe = tmp_path / "probe.py"
    probe.write_text("import ray.tune\n")
    done = subprocess.run([sys.executable, "-c", BLOCKER, str(probe)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_gpu_benchmark_script_runs_its_commands(tmp_path):
    # scripts/gpu_benchmarks.sh is what a GPU session runs as is: its commands, tiny and
    # on the CPU, with no dataset files (random MNIST-shaped images)
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1",
           "MNIST_ROOT": str(tmp_path / "absent")}
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu_benchmarks.sh"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "synthetic (10000 images" in (tmp_path / "bench_references_cpu.txt").read_text()
    assert "| stacked K=2 |" in (tmp_path / "bench_references_cpu.txt").read_text()
    assert "ours / plain_gpu_data:" in (tmp_path / "bench_train_cpu.txt").read_text()
    assert (tmp_path / "device.txt").read_text().startswith("torch ")
