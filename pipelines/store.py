"""The results of one experiment, at a URI: where each stage's work lives.

    <results>/<name>/
      config.yaml, manifest.parquet, summary.json, lock.json
      models/<key>.safetensors + <key>.json      source and references (JSON last)
      updates/<source key>/                      update recording (index last)
      outputs/experiment=<name>/role=<role>/<writer>.parquet   per-sample outputs
      trials/<method>/<trial key>.json           one per sweep trial or replicate
      tables/, plots/                            assembled results

``<results>`` is a local path or a URI (``s3://``, ``gs://``, ``hdfs://``,
``abfs://``; see ``unlearn_core.storage``). Driver and workers reach it the same
way; no process assumes it shares a disk with another. Every object is named by
the key of what it depends on and committed by one object written last (a
model's info JSON, a trial record, an update index), so "the marker exists"
means "that work is done", and re-running never duplicates it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch.nn as nn

from unlearn_core.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from unlearn_core.data.manifest import MANIFEST_FILE, SplitManifest, manifest_from_bytes
from unlearn_core.errors import UserInputError
from unlearn_core.outputs import output_file_name, outputs_parquet_bytes
from unlearn_core.storage import Store
from unlearn_core.train.recorder import INDEX_FILE


@dataclass(frozen=True)
class ResultsStore:
    store: Store  # <results>/<name>
    experiment: str

    @classmethod
    def create(cls, results: str | Path, experiment: str) -> ResultsStore:
        return cls(Store.at(results).child(experiment), experiment)

    @classmethod
    def open(cls, experiment_uri: str | Path) -> ResultsStore:
        """An existing experiment folder (``unlearn tables``): refused when it holds no run."""
        store = Store.at(experiment_uri, create=False)
        if not store.exists("config.yaml") and not store.exists("summary.json"):
            raise UserInputError(
                f"{store.uri} holds no experiment (no config.yaml); run `unlearn run` first"
            )
        return cls(store, store.uri.rstrip("/").rsplit("/", 1)[-1])

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def root(self) -> Path:
        """The folder on this machine's disk (local stores only: tests and local tools)."""
        if self.store.local_root is None:
            raise ValueError(f"{self.uri} is not on this machine's disk")
        return self.store.local_root

    # ------------------------------------------------------------------ generic

    def exists(self, rel: str) -> bool:
        return self.store.exists(rel)

    def read_json(self, rel: str) -> dict:
        return self.store.read_json(rel)

    def read_json_or_none(self, rel: str) -> dict | None:
        return self.store.read_json_or_none(rel)

    def write_json(self, rel: str, data: dict) -> None:
        self.store.write_json(rel, data)

    def write_text(self, rel: str, text: str) -> None:
        self.store.write_text(rel, text)

    # ------------------------------------------------------------------ manifest

    def write_manifest(self, manifest: SplitManifest) -> None:
        """Write ``manifest.parquet``; refuse a different split in the same experiment."""
        if self.store.exists(MANIFEST_FILE):
            existing = self.read_manifest()
            if existing.hash != manifest.hash:
                raise UserInputError(
                    f"{self.store.url(MANIFEST_FILE)} holds another split (hash "
                    f"{existing.hash}, this one {manifest.hash}); use another results "
                    "location or experiment name"
                )
            return
        self.store.write_bytes(MANIFEST_FILE, manifest.to_parquet_bytes())

    def read_manifest(self) -> SplitManifest:
        return manifest_from_bytes(self.store.read_bytes(MANIFEST_FILE),
                                   self.store.url(MANIFEST_FILE))

    # ------------------------------------------------------------------ models

    @staticmethod
    def model_rel(key: str) -> str:
        return f"models/{key}.safetensors"

    @staticmethod
    def model_info_rel(key: str) -> str:
        return f"models/{key}.json"

    def model_done(self, key: str) -> bool:
        return self.store.exists(self.model_info_rel(key))

    def save_model(self, key: str, model: nn.Module, metadata: dict) -> None:
        """The checkpoint only: the info JSON (``write_model_info``) commits the model."""
        self.store.write_bytes(self.model_rel(key), checkpoint_bytes(model, metadata))

    def load_model(self, key: str, model: nn.Module, device="cpu") -> dict:
        return load_checkpoint_bytes(model, self.store.read_bytes(self.model_rel(key)), device,
                                     source=self.store.url(self.model_rel(key)))

    def write_model_info(self, key: str, info: dict) -> None:
        self.store.write_json(self.model_info_rel(key), info)

    def read_model_info(self, key: str) -> dict:
        return self.store.read_json(self.model_info_rel(key))

    # ------------------------------------------------------------------ update recordings

    @staticmethod
    def updates_rel(key: str) -> str:
        return f"updates/{key}"

    def updates_done(self, key: str) -> bool:
        return self.store.exists(f"{self.updates_rel(key)}/{INDEX_FILE}")

    def put_updates(self, key: str, local_dir: str | Path) -> None:
        """Upload a finished recording; its index goes last and commits it."""
        self.store.delete_dir(self.updates_rel(key))  # a partial upload from a lost worker
        self.store.put_dir(local_dir, self.updates_rel(key), last=INDEX_FILE)

    def local_updates(self, key: str) -> Path:
        """A folder on this machine holding the recording (downloaded once per node)."""
        if not self.updates_done(key):
            raise UserInputError(f"{self.store.url(self.updates_rel(key))} holds no complete "
                                 f"update recording (no {INDEX_FILE})")
        return self.store.fetch_dir(self.updates_rel(key))

    def updates_bytes(self, key: str) -> int:
        return self.store.size(self.updates_rel(key)) if self.updates_done(key) else 0

    # ------------------------------------------------------------------ outputs

    def outputs_rel(self, role: str, writer_id: str) -> str:
        return f"outputs/{output_file_name(self.experiment, role, writer_id)}"

    def write_outputs(self, table: pa.Table, role: str, writer_id: str) -> None:
        """Per-sample outputs of one model; committed by the model's or trial's marker."""
        self.store.write_bytes(self.outputs_rel(role, writer_id), outputs_parquet_bytes(table))

    # ------------------------------------------------------------------ trials

    @staticmethod
    def trial_rel(method: str, key: str) -> str:
        return f"trials/{method}/{key}.json"

    def trial_done(self, method: str, key: str) -> bool:
        return self.store.exists(self.trial_rel(method, key))

    def read_trial(self, method: str, key: str) -> dict | None:
        """A committed trial record, or None when the trial has none (yet)."""
        return self.store.read_json_or_none(self.trial_rel(method, key))

    def write_trial(self, record: dict) -> None:
        self.store.write_json(self.trial_rel(record["method"], record["trial_key"]), record)

    def trials(self, method: str | None = None) -> list[dict]:
        """Every recorded trial (sweep and replicate), one dict per record."""
        files = self.store.list(f"trials/{method}" if method else "trials", suffix=".json",
                                recursive=method is None)
        return [json.loads(self.store.read_bytes(f)) for f in files]

    # ------------------------------------------------------------------ progress

    PLAN_FILE = "plan.json"  # what the run means to do (totals for `unlearn status`)
    STAGES_FILE = "stages.json"  # wall-clock start and end of each stage of the last run

    def write_plan(self, plan: dict) -> None:
        """Written by ``unlearn run`` before any training: totals are not in the store
        otherwise (a grid's size, an Optuna sweep's budget, the reference keys)."""
        self.store.write_json(self.PLAN_FILE, plan)

    def read_plan(self) -> dict | None:
        return self.store.read_json_or_none(self.PLAN_FILE)

    def file_times(self, rel: str, suffix: str = "") -> dict[str, float]:
        """{relative path: modification time (s since the epoch)} of the committed files
        under ``rel``, from one listing: progress is counted from it without reading
        every object (on an object store a read is a request, a listing is one per 1000)."""
        return {path: mtime / 1e9 for path, _, mtime in self.store.file_stats(rel, suffix)
                if mtime is not None}

    def trials_table(self) -> pa.Table:
        """Trials as an Arrow table: one row per trial, hparams and metrics as JSON text."""
        rows = self.trials()
        columns = ("trial_key", "method", "stage", "seed", "status", "error", "objective",
                   "seconds")
        data = {c: [r.get(c) for r in rows] for c in columns}
        data["hparams"] = [json.dumps(r.get("hparams", {}), sort_keys=True) for r in rows]
        data["metrics"] = [json.dumps(r.get("metrics", {}), sort_keys=True) for r in rows]
        return pa.table(data)

