"""Split manifests: train/val/test split plus forget mask, deterministic in a seed.

A manifest is a Parquet table with one row per sample (``sample_id``, ``split``,
``in_forget``, ``in_retain_subset``, ``label``, ``group``) and a content hash.
The hash covers the rows and a fingerprint of the data itself, not the spec text
that produced them, so it is a sound cache key for every later stage: same hash,
same samples, same forget set.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unlearn_core.data.forget import ForgetSpec, parse_forget_spec, select_forget
from unlearn_core.data.types import ImageDataset
from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_path

SPLITS = ("train", "val", "test")
# Views a method or metric asks for; forget and retain partition train.
VIEWS = ("train", "val", "test", "forget", "retain", "retain_subset")
MANIFEST_FILE = "manifest.parquet"


@dataclass(frozen=True)
class SplitOptions:
    val_fraction: float = 0.1  # share of the non-test pool held out for validation
    test_fraction: float = 0.2  # used only when the dataset has no official test split
    retain_subset_per_class: int = 0  # seed 003's D_r_sub: n samples per retain class (0: none)
    max_train: int | None = None  # cap on train samples (subsampled), for quick runs

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserInputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserInputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.retain_subset_per_class < 0:
            raise UserInputError("retain_subset_per_class must be >= 0")
        if self.max_train is not None and self.max_train < 2:
            raise UserInputError("max_train must be at least 2")


@dataclass(frozen=True)
class SplitManifest:
    dataset: str
    sample_id: np.ndarray  # int64 [N]
    split: np.ndarray  # str [N], one of SPLITS ("" for samples left out by max_train)
    in_forget: np.ndarray  # bool [N]
    in_retain_subset: np.ndarray  # bool [N]
    label: np.ndarray  # int64 [N]
    group: np.ndarray  # int64 [N], -1 where the dataset has no groups
    meta: dict = field(default_factory=dict)  # how it was made: spec, seed, options
    data_fingerprint: str = ""

    @property
    def hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.dataset.encode())
        digest.update(self.data_fingerprint.encode())
        for column in (self.sample_id, self.in_forget, self.in_retain_subset):
            digest.update(np.ascontiguousarray(column).tobytes())
        digest.update("\0".join(self.split.tolist()).encode())
        return digest.hexdigest()[:16]

    def ids(self, view: str) -> np.ndarray:
        """Sample ids of a split or of forget / retain / retain_subset (all sorted)."""
        if view in SPLITS:
            mask = self.split == view
        elif view == "forget":
            mask = self.in_forget
        elif view == "retain":
            mask = (self.split == "train") & ~self.in_forget
        elif view == "retain_subset":
            mask = self.in_retain_subset
        else:
            raise UserInputError(f"unknown view {view!r}: expected one of {VIEWS}")
        return self.sample_id[mask]

    def sizes(self) -> dict[str, int]:
        return {view: int(len(self.ids(view))) for view in VIEWS}

    def forget_classes(self) -> list[int]:
        """Classes the forget set fully covers in train (class-wise forgetting), else []."""
        if self.meta.get("forget_kind") != "classes":
            return []
        return sorted(int(c) for c in np.unique(self.label[self.in_forget]))

    def to_table(self) -> pa.Table:
        table = pa.table(
            {
                "sample_id": pa.array(self.sample_id, pa.int64()),
                "split": pa.array(self.split, pa.string()),
                "in_forget": pa.array(self.in_forget, pa.bool_()),
                "in_retain_subset": pa.array(self.in_retain_subset, pa.bool_()),
                "label": pa.array(self.label, pa.int64()),
                "group": pa.array(self.group, pa.int64()),
            }
        )
        info = {
            "dataset": self.dataset,
            "hash": self.hash,
            "data_fingerprint": self.data_fingerprint,
            "meta": self.meta,
        }
        return table.replace_schema_metadata({"unlearn.manifest": json.dumps(info)})

    def to_parquet_bytes(self) -> bytes:
        sink = io.BytesIO()
        pq.write_table(self.to_table(), sink)
        return sink.getvalue()

    def write(self, out_dir: str | Path) -> Path:
        """Write ``manifest.parquet`` into ``out_dir``; refuse to overwrite a different one."""
        path = Path(out_dir) / MANIFEST_FILE
        if path.exists():
            existing = read_manifest(path)
            if existing.hash != self.hash:
                raise UserInputError(
                    f"{path} holds a manifest with hash {existing.hash}, not {self.hash}: "
                    "refusing to mix results of two different splits; use another directory"
                )
            return path
        with atomic_path(path) as tmp:
            pq.write_table(self.to_table(), tmp)
        return path


def read_manifest(path: str | Path) -> SplitManifest:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise UserInputError(f"manifest {path} does not exist (make one with `unlearn prepare`)")
    return manifest_from_table(pq.read_table(path), str(path))


def manifest_from_bytes(data: bytes, source: str) -> SplitManifest:
    """A manifest read from bytes (e.g. an object store); ``source`` names it in errors."""
    return manifest_from_table(pq.read_table(pa.BufferReader(data)), source)


def manifest_from_table(table: pa.Table, path: str) -> SplitManifest:
    raw = (table.schema.metadata or {}).get(b"unlearn.manifest")
    if raw is None:
        raise UserInputError(f"{path} is not a split manifest (no unlearn.manifest metadata)")
    info = json.loads(raw)
    columns = table.to_pydict()
    manifest = SplitManifest(
        dataset=info["dataset"],
        sample_id=np.asarray(columns["sample_id"], dtype=np.int64),
        split=np.asarray(columns["split"], dtype=object).astype(str),
        in_forget=np.asarray(columns["in_forget"], dtype=bool),
        in_retain_subset=np.asarray(columns["in_retain_subset"], dtype=bool),
        label=np.asarray(columns["label"], dtype=np.int64),
        group=np.asarray(columns["group"], dtype=np.int64),
        meta=info["meta"],
        data_fingerprint=info["data_fingerprint"],
    )
    if manifest.hash != info["hash"]:
        raise UserInputError(f"{path}: content does not match its stored hash (file altered?)")
    return manifest


def data_fingerprint(dataset: ImageDataset) -> str:
    """Hash of the pixels and labels, so two data roots with different files never share a key."""
    digest = hashlib.sha256()
    digest.update(dataset.images.contiguous().numpy().tobytes())
    digest.update(dataset.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _shuffled_split(ids: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split ids into (rest, held_out) with round(fraction * n) held out."""
    held = int(round(fraction * len(ids)))
    perm = rng.permutation(ids)
    return np.sort(perm[held:]), np.sort(perm[:held])


def make_manifest(
    dataset: ImageDataset,
    forget: ForgetSpec | str,
    seed: int,
    options: SplitOptions | None = None,
    extra_meta: dict | None = None,
) -> SplitManifest:
    """Split the dataset and select the forget set; deterministic in ``seed``."""
    options = options or SplitOptions()
    options.validate()
    spec = parse_forget_spec(forget) if isinstance(forget, str) else forget
    # One generator per purpose, so changing e.g. the forget spec leaves the split unchanged.
    split_rng, forget_rng, subset_rng = (
        np.random.default_rng([seed, purpose]) for purpose in (0, 1, 2)
    )
    n = dataset.num_samples
    ids = np.arange(n, dtype=np.int64)
    labels = dataset.labels.numpy().astype(np.int64)
    groups = dataset.groups.numpy().astype(np.int64) if dataset.groups is not None else None

    official = dataset.official_test.numpy() if dataset.official_test is not None else None
    if official is not None and official.any() and not official.all():
        # Use the dataset's own test split when it has both parts.
        pool, test_ids = ids[~official], ids[official]
    else:
        # No usable official split (digits; or only the test files of MNIST are present).
        pool, test_ids = _shuffled_split(ids, options.test_fraction, split_rng)
    train_ids, val_ids = _shuffled_split(pool, options.val_fraction, split_rng)
    if options.max_train is not None and len(train_ids) > options.max_train:
        train_ids = np.sort(split_rng.choice(train_ids, size=options.max_train, replace=False))

    split = np.full(n, "", dtype=object)
    split[train_ids], split[val_ids], split[test_ids] = "train", "val", "test"
    forget_ids = select_forget(spec, train_ids, labels, groups, dataset.num_classes, forget_rng)
    in_forget = np.zeros(n, dtype=bool)
    in_forget[forget_ids] = True

    in_subset = np.zeros(n, dtype=bool)
    if options.retain_subset_per_class:
        retain_ids = train_ids[~in_forget[train_ids]]
        for cls in np.unique(labels[retain_ids]):
            of_class = retain_ids[labels[retain_ids] == cls]
            take = min(options.retain_subset_per_class, len(of_class))
            in_subset[subset_rng.choice(of_class, size=take, replace=False)] = True

    meta = {
        "forget": str(spec),
        "forget_kind": spec.kind,
        "seed": seed,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction,
        "retain_subset_per_class": options.retain_subset_per_class,
        "max_train": options.max_train,
        "num_classes": dataset.num_classes,
        **(extra_meta or {}),
    }
    return SplitManifest(
        dataset=dataset.name,
        sample_id=ids,
        split=split.astype(str),
        in_forget=in_forget,
        in_retain_subset=in_subset,
        label=labels,
        group=groups if groups is not None else np.full(n, -1, dtype=np.int64),
        meta=meta,
        data_fingerprint=data_fingerprint(dataset),
    )
