"""Benchmark ``unlearn tables`` (the assemble stage) on a synthetic CIFAR-10-sized store.

Writes, through the ``ResultsStore`` API, an experiment of ``--models-refs``
references and ``--models-unlearned`` unlearned replicates (``--methods``
methods, as many replicates each), each model with per-sample outputs for
50 000 train samples (5 000 forget + 45 000 retain) and 10 000 test samples,
10 classes, float32 logits; trial records, model infos, a split manifest
(class-wise forgetting of class 0, so the assembly also streams the test split
for the per-class accuracies; ``--random-forget`` writes none) and
summary.json. Then runs ``unlearn tables <experiment>`` in a subprocess and
prints one line per run: models, rows, wall seconds, peak RSS, against the
targets (<= 120 s, <= 3 GB on 2 CPUs).

    python scripts/bench_assemble.py                          # 512 + 160 models
    python scripts/bench_assemble.py --models-refs 16 --models-unlearned 10 --runs 1
    python scripts/bench_assemble.py --out /data/bench        # keep the store there

An existing store in ``--out`` (one whose summary.json matches the requested
sizes) is reused: only the timing runs again.

Synthetic logits: standard normal noise plus a bump at the true label. On
retain and test rows the bump is ~3 (per-model offset); on forget rows it is a
per-sample difficulty (shared by all models) plus a per-model offset plus a
per-method shift (0 for the references), so the methods' forget quality
differs and every F-score / U-LiRA cell has real work.

Peak RSS: ``ru_maxrss`` of the finished subprocess (its largest process) and,
sampled every 0.2 s from /proc, the sum over the subprocess and its children.
CPU: user + system seconds of the subprocess and its workers; with the load
average before the run, it tells a busy machine from a slow assembly.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.store import ResultsStore  # noqa: E402
from unlearn_core.data.manifest import SplitManifest  # noqa: E402
from unlearn_core.outputs import outputs_table  # noqa: E402

EXPERIMENT = "bench-assemble"
TARGET_S = 120.0
TARGET_MB = 3 * 1024.0
METHOD_SHIFTS = (0.0, 0.25, 0.5, 1.0, 2.0)  # forget-bump shift per method, cycled


def layout(n_train: int, n_forget: int, n_test: int, n_classes: int):
    """Sample ids, labels and splits: train ids first (forget = the first class's
    ``n_forget`` samples), then the test ids."""
    train_ids = np.arange(n_train, dtype=np.int64)
    train_labels = train_ids % n_classes
    forget_mask = train_labels == 0
    if forget_mask.sum() != n_forget:  # not a whole class: the first n_forget of class 0...
        order = np.flatnonzero(forget_mask)[:n_forget]
        forget_mask = np.zeros(n_train, dtype=bool)
        forget_mask[order] = True
    test_ids = np.arange(n_train, n_train + n_test, dtype=np.int64)
    return {
        "forget": (train_ids[forget_mask], train_labels[forget_mask]),
        "retain": (train_ids[~forget_mask], train_labels[~forget_mask]),
        "test": (test_ids, test_ids % n_classes),
    }


def manifest_for(splits: dict, n_classes: int, class_wise: bool) -> SplitManifest:
    forget_ids, _ = splits["forget"]
    ids = np.concatenate([splits["forget"][0], splits["retain"][0], splits["test"][0]])
    labels = np.concatenate([splits["forget"][1], splits["retain"][1], splits["test"][1]])
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    split = np.where(np.isin(ids, splits["test"][0]), "test", "train")
    return SplitManifest(
        dataset="synthetic-cifar10", sample_id=ids, split=split.astype(str),
        in_forget=np.isin(ids, forget_ids), in_retain_subset=np.zeros(len(ids), dtype=bool),
        label=labels, group=np.full(len(ids), -1, dtype=np.int64),
        meta={"forget": "classes=0" if class_wise else "random", "seed": 0,
              "forget_kind": "classes" if class_wise else "random",
              "num_classes": n_classes},
        data_fingerprint="synthetic")


def model_logits(splits: dict, difficulty: np.ndarray, n_classes: int, seed: int,
                 forget_shift: float) -> dict:
    """{split: (ids, labels, float32 logits)} of one synthetic model."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 0.3)
    out = {}
    for split, (ids, labels) in splits.items():
        z = rng.standard_normal((len(ids), n_classes), dtype=np.float32)
        if split == "forget":
            bump = difficulty + offset + forget_shift + rng.normal(0.0, 0.5, len(ids))
        else:
            bump = 3.0 + offset + rng.normal(0.0, 1.0, len(ids))
        z[np.arange(len(ids)), labels] += bump.astype(np.float32)
        out[split] = (ids, labels, z)
    return out


def accuracies(per_split: dict) -> dict[str, float]:
    acc = {s: float((z.argmax(1) == y).mean()) for s, (_, y, z) in per_split.items()}
    return {"forget/acc": acc["forget"], "retain/acc": acc["retain"], "test/acc": acc["test"],
            "ua": 1.0 - acc["forget"], "mia/efficacy": 0.5}


def write_store(out: Path, args: argparse.Namespace) -> ResultsStore:
    from tqdm import tqdm

    store = ResultsStore.create(out, EXPERIMENT)
    splits = layout(args.train, args.forget, args.test, args.classes)
    difficulty = np.random.default_rng(12345).normal(0.0, 1.0, len(splits["forget"][0]))
    store.write_manifest(manifest_for(splits, args.classes, not args.random_forget))
    source = "source-0"
    per_split = model_logits(splits, difficulty, args.classes, 0, 4.0)
    store.write_outputs(outputs_table(per_split, method="source", hparams_hash="",
                                      seed=0, model_id=source), "source", source)
    store.write_model_info(source, {"key": source, "role": "source", "model": "resnet18",
                                    "train_seconds": 60.0, "metrics": accuracies(per_split)})
    methods = [f"method{j}" for j in range(args.methods)]
    per_method = [args.models_unlearned // args.methods
                  + (1 if j < args.models_unlearned % args.methods else 0)
                  for j in range(args.methods)]
    references = [f"retrain-{i:04d}" for i in range(args.models_refs)]
    replicates = {m: [f"{m}-rep{s:03d}" for s in range(n)]
                  for m, n in zip(methods, per_method, strict=True)}
    jobs = [("retrain", key, i, 0.0) for i, key in enumerate(references)]
    jobs += [(m, key, 100_000 * (j + 1) + s, METHOD_SHIFTS[j % len(METHOD_SHIFTS)])
             for j, m in enumerate(methods) for s, key in enumerate(replicates[m])]
    for method, key, seed, shift in tqdm(jobs, desc="writing models", unit="model"):
        per_split = model_logits(splits, difficulty, args.classes, seed, shift)
        table = outputs_table(per_split, method=method, hparams_hash="bench", seed=seed,
                              model_id=key)
        metrics = accuracies(per_split)
        if method == "retrain":
            store.write_outputs(table, "retrain", key)
            store.write_model_info(key, {"key": key, "role": "retrain", "model": "resnet18",
                                         "train_seconds": 60.0, "metrics": metrics})
        else:
            store.write_outputs(table, "unlearned", key)
            store.write_trial({"trial_key": key, "method": method, "stage": "replicate",
                               "seed": seed, "hparams": {"lr": 0.01}, "status": "ok",
                               "error": None, "metrics": metrics, "objective": 0.0,
                               "seconds": 1.0})
    store.write_json("summary.json", {
        "experiment": EXPERIMENT, "methods": [*methods, "retrain"], "replicates": replicates,
        "references": references, "source": source, "best": {}, "reference_probes": {},
        "config_hash": "bench"})
    return store


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, from /proc (0 when gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def time_tables(experiment_dir: Path, bootstrap: int | None = None
                ) -> tuple[float, float, float, float, str]:
    """(wall s, CPU s, ru_maxrss MB of the largest process, sampled tree-sum peak MB,
    stdout) of one ``unlearn tables`` subprocess (CPU and RSS include its workers)."""
    command = [sys.executable, "-m", "pipelines.cli", "tables", str(experiment_dir)]
    if bootstrap is not None:
        command += ["--bootstrap", str(bootstrap)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({proc.returncode}):\n{stdout}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    if maxrss <= before:
        print("note: ru_maxrss did not grow past an earlier run's; the value is a bound")
    return wall, cpu, maxrss / 1024, peak[0], stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: a new temporary folder, kept)")
    ap.add_argument("--models-refs", type=int, default=512)
    ap.add_argument("--models-unlearned", type=int, default=160)
    ap.add_argument("--methods", type=int, default=5, help="methods sharing the replicates")
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--forget", type=int, default=5_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--random-forget", action="store_true",
                    help="no class-wise manifest (the test split is then not read)")
    ap.add_argument("--runs", type=int, default=1, help="timed `unlearn tables` runs")
    ap.add_argument("--bootstrap", default="default",
                    help="comma-separated F-score bootstrap counts, one timed run each "
                         "('default': the config's, 50), e.g. default,0")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-assemble-"))
    experiment_dir = out / EXPERIMENT
    n_models = args.models_refs + args.models_unlearned
    rows = n_models * (args.train + args.test)
    reuse = False
    if (experiment_dir / "summary.json").exists():
        summary = ResultsStore.open(experiment_dir).read_json("summary.json")
        reuse = (len(summary["references"]) == args.models_refs
                 and sum(map(len, summary["replicates"].values())) == args.models_unlearned)
    if reuse:
        print(f"reusing the store at {experiment_dir}")
    else:
        start = time.perf_counter()
        write_store(out, args)
        size = sum(p.stat().st_size for p in experiment_dir.rglob("*") if p.is_file())
        print(f"wrote {n_models} models ({rows:,} rows, {size / 2**30:.2f} GiB) to "
              f"{experiment_dir} in {time.perf_counter() - start:.1f} s")
    print(f"cpus {os.cpu_count()}  command: {sys.executable} -m pipelines.cli tables "
          f"{experiment_dir}")
    counts = [None if b == "default" else int(b) for b in args.bootstrap.split(",")]
    for run, bootstrap in ((r, b) for r in range(args.runs) for b in counts):
        load = os.getloadavg()[0]
        wall, cpu, maxrss, tree_peak, stdout = time_tables(experiment_dir, bootstrap)
        if run == 0 and bootstrap == counts[0]:
            print(stdout.rstrip())
        ok = "OK" if wall <= TARGET_S and max(maxrss, tree_peak) <= TARGET_MB else "MISSED"
        boot = "config's (50)" if bootstrap is None else bootstrap
        print(f"run {run + 1}, bootstrap {boot}: models {n_models} (refs {args.models_refs}, "
              f"unlearned "
              f"{args.models_unlearned}), rows {rows:,}, wall {wall:.1f} s (target "
              f"<= {TARGET_S:.0f}; CPU {cpu:.0f} s, load before {load:.1f}), peak RSS "
              f"{maxrss:.0f} MB largest process / "
              f"{tree_peak:.0f} MB process tree (target <= {TARGET_MB:.0f}) -> {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
