"""``unlearn status``: progress of a running or finished experiment, from its store alone.

No Ray or MLflow connection: everything is read from the results store (local or
an object store), as any reader may while a run writes it:

- ``plan.json`` (written by ``unlearn run`` before training, ``pipelines.progress``): the
  reference keys, the trials planned per method, replicates, the objective, and
  the provenance of the run (command, git commit, packages, hardware);
- ``stages.json`` (``progress.StageClock``): when each stage of the last run started and ended;
- ``lock.json`` (``pipelines.lock``): a fresh heartbeat means a run is going on;
- ``models/<key>.json``: a committed model; ``trials/<method>/<key>.json``: a
  committed trial, with its status (ok, failed, stopped by ASHA).

Counts come from one listing per folder; trial records are read once each and
cached by modification time, so ``--watch`` re-reads only what changed.
"""

from __future__ import annotations

import json
import math
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipelines.keys import best_record
from pipelines.lock import LOCK_FILE, _pid_alive
from pipelines.progress import build_plan
from pipelines.store import ResultsStore
from unlearn_core.errors import UserInputError
from unlearn_core.storage import Store

READ_THREADS = 16  # concurrent small reads: object-store latency, not bandwidth


# ------------------------------------------------------------------ reading progress

@dataclass
class MethodProgress:
    name: str
    planned: int
    ok: int = 0
    failed: int = 0
    stopped: int = 0  # by ASHA
    replicates: int = 0  # planned for this method (0 once its sweep found no config)
    replicates_done: int = 0
    replicates_failed: int = 0
    best: float | None = None

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.stopped

    @property
    def pending(self) -> int:
        return max(0, self.planned - self.done)

    @property
    def replicates_pending(self) -> int:
        return max(0, self.replicates - self.replicates_done - self.replicates_failed)


@dataclass
class Status:
    experiment: str
    uri: str
    state: str  # running | finished | interrupted | not started
    stage: str | None
    holder: str | None  # host and pid of the running `unlearn run`
    source_done: bool
    references_done: int
    references_total: int
    objective: dict
    methods: list[MethodProgress] = field(default_factory=list)
    started: float | None = None
    elapsed: float | None = None
    eta: float | None = None  # seconds left (None: unknown)
    stages: list[dict] = field(default_factory=list)
    planned: bool = True  # False: totals rebuilt from config.yaml (a run without plan.json)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "methods"}
        out["methods"] = [{**m.__dict__, "done": m.done, "pending": m.pending}
                          for m in self.methods]
        return out


class StatusReader:
    """Reads an experiment's progress; keeps trial records between calls (``--watch``)."""

    def __init__(self, uri: str) -> None:
        self.store = ResultsStore(Store.at(uri, create=False),
                                  str(uri).rstrip("/").rsplit("/", 1)[-1])
        self._records: dict[str, tuple[float, dict]] = {}
        self._fallback_plan: dict | None = None

    def _plan(self) -> tuple[dict, bool]:
        plan = self.store.read_plan()
        if plan is not None:
            return plan, True
        if self._fallback_plan is None:
            self._fallback_plan = _plan_from_config(self.store)
        return self._fallback_plan, False

    def _trials(self) -> tuple[list[dict], dict[str, float]]:
        """Every committed trial record (re-read only when its file changed), with times."""
        times = self.store.file_times("trials", ".json")
        stale = [p for p, t in times.items() if self._records.get(p, (None,))[0] != t]
        with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(stale)))) as pool:
            records = pool.map(self.store.read_json_or_none, stale)
            for path, record in zip(stale, records, strict=True):
                if record is not None:
                    self._records[path] = (times[path], record)
        self._records = {p: v for p, v in self._records.items() if p in times}
        return [r for _, r in self._records.values()], {
            r.get("trial_key", p): t for p, (t, r) in self._records.items()}

    def _ref_seconds(self, plan: dict, models: dict[str, float]) -> float | None:
        """Mean training seconds of a few stored references over the reference workers
        (None when none is stored yet)."""
        done = [k for k in plan.get("references", []) if f"models/{k}.json" in models][:8]
        infos = [self.store.read_json_or_none(f"models/{k}.json") or {} for k in done]
        seconds = [i["train_seconds"] for i in infos if _finite(i.get("train_seconds"))]
        if not seconds:
            return None
        return sum(seconds) / len(seconds) / max(1, int(plan.get("reference_workers", 1)))

    def read(self, now: float | None = None) -> Status:
        now = time.time() if now is None else now
        store = self.store
        if not any(store.exists(f) for f in (LOCK_FILE, "config.yaml", "summary.json",
                                             ResultsStore.PLAN_FILE)):
            raise UserInputError(f"{store.uri} holds no experiment (no config.yaml, lock.json "
                                 "or plan.json); start one with `unlearn run`")
        plan, planned = self._plan()
        lock = self.store.read_json_or_none(LOCK_FILE)
        clock = self.store.read_json_or_none(ResultsStore.STAGES_FILE) or {}
        state, holder = _state(lock, clock, store.exists("summary.json"), now)
        models = store.file_times("models", ".json")
        refs = plan.get("references", [])
        ref_times = [models[f"models/{k}.json"] for k in refs if f"models/{k}.json" in models]
        records, record_times = self._trials()
        mode = plan.get("objective", {}).get("mode", "min")
        seeds = plan.get("replicate_seeds", list(range(plan.get("replicates", 0))))
        methods = [_method_progress(name, info["trials"], seeds, mode,
                                    [r for r in records if r.get("method") == name])
                   for name, info in plan.get("methods", {}).items()]
        stages = clock.get("stages", [])
        started = clock.get("started") or (lock or {}).get("started")
        stage = stages[-1]["name"] if stages and state == "running" else None
        if started is None:
            elapsed = None
        elif state == "finished" and clock.get("finished"):
            elapsed = clock["finished"] - started
        elif state == "running":
            elapsed = now - started
        else:  # interrupted: up to its last sign of life
            last = max([s["end"] or s["start"] for s in stages]
                       + [float((lock or {}).get("renewed", 0))])
            elapsed = max(0.0, last - started)
        status = Status(
            experiment=plan.get("experiment", store.experiment), uri=store.uri, state=state,
            stage=stage, holder=holder,
            source_done=f"models/{plan.get('source')}.json" in models,
            references_done=len(ref_times), references_total=len(refs),
            objective=plan.get("objective", {}), methods=methods, started=started,
            elapsed=elapsed, stages=stages, planned=planned)
        if state == "finished":
            status.eta = 0.0
        elif state == "running":
            refs_left = len(ref_times) < len(refs) or not status.source_done
            status.eta = _eta(status, stages, ref_times, list(record_times.values()),
                              self._ref_seconds(plan, models) if refs_left else None, now)
        return status


def _state(lock: dict | None, clock: dict, summary: bool, now: float
           ) -> tuple[str, str | None]:
    if lock is not None and clock.get("finished") and \
            float(lock.get("started", math.inf)) <= float(clock.get("started", 0)):
        return "finished", None  # this run's work is done; it is only releasing its lock
    if lock is not None:
        holder = f"host {lock.get('host')}, pid {lock.get('pid')}"
        fresh = now - float(lock.get("renewed", 0)) <= float(lock.get("lease_s", 0))
        pid = int(lock.get("pid") or 0)
        if lock.get("host") == socket.gethostname() and pid > 0 and not _pid_alive(pid):
            fresh = False  # its process is gone (killed): no need to wait out the lease
        return ("running", holder) if fresh else ("interrupted", holder)
    if clock.get("finished") or (summary and not clock):
        return "finished", None
    return ("interrupted" if clock else "not started"), None


def _method_progress(name: str, planned: int, replicate_seeds: Sequence[int], mode: str,
                     records: list[dict]) -> MethodProgress:
    sweep = [r for r in records if r.get("stage") == "sweep"]
    progress = MethodProgress(name, planned, replicates=len(replicate_seeds))
    for record in sweep:
        kind = record.get("status")
        if kind in ("ok", "failed", "stopped"):
            setattr(progress, kind, getattr(progress, kind) + 1)
    best = best_record([r for r in sweep if r.get("status") == "ok"
                        and _finite(r.get("objective"))], mode)
    if best is not None:  # the sweep's own choice (keys.best_record)
        progress.best = float(best["objective"])
        if progress.pending == 0:  # replicates: the best config with the plan's seeds
            wanted, seeds = set(replicate_seeds), {}
            for record in records:
                seed = int(record.get("seed", -1))
                if record.get("hparams") == best["hparams"] and seed in wanted:
                    seeds[seed] = record.get("status", "")
            progress.replicates_done = sum(s == "ok" for s in seeds.values())
            progress.replicates_failed = sum(s == "failed" for s in seeds.values())
    elif progress.pending == 0:
        progress.replicates = 0  # no finished config: nothing to replicate
    return progress


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _stage_rate(stages: list[dict], name: str, times: list[float], now: float) -> float | None:
    """Seconds per unit committed during ``name`` in this run (None: not measured)."""
    stage = next((s for s in stages if s["name"] == name), None)
    if stage is None:
        return None
    end = stage["end"] or now
    count = sum(stage["start"] <= t <= end for t in times)
    return (end - stage["start"]) / count if count else None


def _commit_gap(times: list[float]) -> float | None:
    """Median wall time between consecutive commits of stored records: the throughput of
    the run that wrote them, concurrency included (a record's own ``seconds`` is the
    unlearning alone, without evaluation and scheduling, far below the wall time)."""
    ordered = sorted(times)
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a]
    return float(statistics.median(gaps)) if gaps else None


def _eta(status: Status, stages: list[dict], ref_times: list[float],
         trial_times: list[float], ref_seconds: float | None, now: float) -> float | None:
    """Seconds left: units left per stage times the seconds per unit this run measured in
    that stage; else, for references, ``ref_seconds`` (a stored reference's training time
    over the reference workers), for trials the pace at which stored records were
    committed, else a reference's time."""
    per_ref = _stage_rate(stages, "references", ref_times, now)
    per_ref = per_ref if per_ref is not None else ref_seconds
    per_trial = _stage_rate(stages, "sweep", trial_times, now)
    per_replicate = _stage_rate(stages, "replicate", trial_times, now)
    fallback = _commit_gap(trial_times)
    fallback = fallback if fallback is not None else per_ref
    per_trial = next((r for r in (per_trial, per_replicate, fallback) if r is not None), None)
    per_replicate = per_replicate if per_replicate is not None else per_trial
    refs_left = status.references_total - status.references_done + (not status.source_done)
    trials_left = sum(m.pending for m in status.methods)
    replicates_left = sum(m.replicates_pending for m in status.methods)
    parts = [(refs_left, per_ref), (trials_left, per_trial), (replicates_left, per_replicate)]
    if any(n and rate is None for n, rate in parts):
        return None
    return float(sum(n * rate for n, rate in parts if n))


def _plan_from_config(store: ResultsStore) -> dict:
    """The plan of a run made before ``plan.json`` existed, rebuilt from its config.yaml
    and manifest (the same totals ``unlearn run`` computes)."""
    import yaml

    from pipelines.config import ExperimentConfig
    from pipelines.references import make_units
    from unlearn_core.methods import requirements

    if not store.exists("config.yaml") or not store.exists("manifest.parquet"):
        return {"experiment": store.experiment}
    config = ExperimentConfig.model_validate(yaml.safe_load(store.store.read_text("config.yaml")))
    methods = [m for m in config.methods if m.name != "retrain"]
    record = any("update_recording" in requirements(m.name) for m in methods)
    manifest = store.read_manifest()
    units = make_units(config, manifest.hash, record)
    plan = build_plan(config, manifest.hash, units, methods)
    plan.pop("provenance")  # this process's, not the run's
    plan.pop("command")
    return plan


# ------------------------------------------------------------------ rendering

def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def render(status: Status) -> str:
    """The status as text lines (fixed-width columns)."""
    when = datetime.fromtimestamp(status.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") \
        if status.started else "unknown"
    state = status.state + (f", stage {status.stage}" if status.stage else "") + \
        (f" ({status.holder})" if status.holder and status.state != "finished" else "")
    left = "0s" if status.eta == 0 else ("~" + duration(status.eta) if status.eta is not None
                                           else "unknown")
    lines = [f"experiment  {status.experiment}   [{state}]",
             f"results     {status.uri}",
             f"started     {when}   elapsed {duration(status.elapsed)}   left {left}",
             f"references  {status.references_done}/{status.references_total} retrained"
             f" + source {'done' if status.source_done else 'pending'}"]
    if not status.planned:
        lines.append("            (totals rebuilt from config.yaml: this run wrote no plan.json)")
    objective = status.objective
    best_title = f"best {objective.get('metric', 'objective')} ({objective.get('mode', '?')})"
    header = ["method", "planned", "done", "failed", "stopped", "pending", "replicates",
              best_title]
    rows = [[m.name, str(m.planned), str(m.ok), str(m.failed), str(m.stopped), str(m.pending),
             f"{m.replicates_done}/{m.replicates}"
             + (f" ({m.replicates_failed} failed)" if m.replicates_failed else ""),
             f"{m.best:.4g}" if m.best is not None else "–"] for m in status.methods]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    if status.stages:
        lines.append("stages      " + "  ".join(
            f"{s['name']} {duration((s['end'] or time.time()) - s['start'])}"
            + ("" if s["end"] else "…") for s in status.stages))
    return "\n".join(lines)


def show(uri: str, watch: bool = False, interval: float = 2.0, as_json: bool = False,
         out=None) -> int:
    """Print the status once, or (``watch``) redraw it in place until the run ends."""
    out = out or sys.stdout
    reader = StatusReader(uri)
    tty = out.isatty()
    while True:
        status = reader.read()
        text = json.dumps(status.to_dict(), indent=1, default=float) if as_json \
            else render(status)
        if watch and tty:
            text = "\x1b[H\x1b[2J" + text  # cursor home, clear screen: redraw in place
        print(text, file=out, flush=True)
        if not watch or status.state != "running":
            return 0
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return 0
        if not tty:
            print("", file=out)
