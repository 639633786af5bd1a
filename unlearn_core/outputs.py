"""Per-sample outputs: one row per (model, sample), stored as hive-partitioned Parquet.

Schema (DESIGN.md, "Results schema"): experiment, role (source / retrain /
unlearned), method, hparams_hash, seed, model_id, split (forget / retain / val /
test), sample_id, label, logits (fixed-size list of float32), loss, correct.
Files live at ``<root>/experiment=<e>/role=<r>/<writer>.parquet``, one file per
writer, written under a temporary name and renamed. Every metric that needs
many models (F-score, per-example MIA, U-LiRA) is computed from these tables.

Each file holds one row group per split (``outputs_parquet_bytes``), so a reader
that filters ``split == "forget"`` skips the other row groups by their
statistics and never decodes them (``read_output_files``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.data.manifest import SplitManifest
from unlearn_core.data.types import ImageDataset
from unlearn_core.errors import UserInputError
from unlearn_core.io import atomic_path
from unlearn_core.storage import Store
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import predict_logits

ROLES = ("source", "retrain", "unlearned")
OUTPUT_SPLITS = ("forget", "retain", "val", "test")
PARTITION_KEYS = ("experiment", "role")


def output_schema(num_classes: int) -> pa.Schema:
    """Columns stored in each file (the partition keys live in the path)."""
    return pa.schema([
        ("method", pa.string()),
        ("hparams_hash", pa.string()),
        ("seed", pa.int64()),
        ("model_id", pa.string()),
        ("split", pa.string()),
        ("sample_id", pa.int64()),
        ("label", pa.int64()),
        ("logits", pa.list_(pa.float32(), num_classes)),
        ("loss", pa.float32()),
        ("correct", pa.bool_()),
    ])


def split_logits(
    model: nn.Module,
    dataset: ImageDataset,
    manifest: SplitManifest,
    device: torch.device | str = "cpu",
    splits: tuple[str, ...] = OUTPUT_SPLITS,
    batch_size: int = 1024,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Evaluate on each split: {split: (sample_ids, labels, float32 logits)}."""
    out = {}
    for split in splits:
        ids = manifest.ids(split)
        data = DeviceData.from_dataset(dataset, ids, device)
        logits = predict_logits(model, data, batch_size) if len(ids) else \
            torch.zeros(0, dataset.num_classes)
        out[split] = (ids, dataset.labels[torch.as_tensor(ids)].numpy(), logits.numpy())
    return out


def outputs_table(
    per_split: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    method: str,
    hparams_hash: str,
    seed: int,
    model_id: str,
) -> pa.Table:
    """Rows for one model, from ``split_logits``."""
    num_classes = next(iter(per_split.values()))[2].shape[1]
    parts = []
    for split, (ids, labels, logits) in per_split.items():
        n = len(ids)
        logits_t = torch.as_tensor(logits, dtype=torch.float32)
        labels_t = torch.as_tensor(labels, dtype=torch.int64)
        loss = F.cross_entropy(logits_t, labels_t, reduction="none") if n else torch.zeros(0)
        flat = pa.array(np.ascontiguousarray(logits, dtype=np.float32).ravel(), pa.float32())
        parts.append(pa.table({
            "method": pa.array([method] * n, pa.string()),
            "hparams_hash": pa.array([hparams_hash] * n, pa.string()),
            "seed": pa.array(np.full(n, seed, dtype=np.int64)),
            "model_id": pa.array([model_id] * n, pa.string()),
            "split": pa.array([split] * n, pa.string()),
            "sample_id": pa.array(np.asarray(ids, dtype=np.int64)),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
            "logits": pa.FixedSizeListArray.from_arrays(flat, num_classes),
            "loss": pa.array(loss.numpy().astype(np.float32)),
            "correct": pa.array((logits_t.argmax(1) == labels_t).numpy() if n
                                else np.zeros(0, dtype=bool)),
        }, schema=output_schema(num_classes)))
    return pa.concat_tables(parts)


def model_outputs(
    model: nn.Module,
    dataset: ImageDataset,
    manifest: SplitManifest,
    *,
    method: str,
    seed: int,
    model_id: str,
    hparams_hash: str = "",
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> pa.Table:
    """Evaluate a model on every split and return its per-sample rows."""
    per_split = split_logits(model, dataset, manifest, device, OUTPUT_SPLITS, batch_size)
    return outputs_table(per_split, method=method, hparams_hash=hparams_hash, seed=seed,
                         model_id=model_id)


def _safe_part(value: str, what: str) -> str:
    if not value or any(c in value for c in "/\\=") or value.startswith("."):
        raise UserInputError(
            f"{what} {value!r} cannot be used in a path (no '/', '=' or leading '.')"
        )
    return value


def output_file_name(experiment: str, role: str, writer_id: str) -> str:
    """``experiment=<e>/role=<r>/<writer_id>.parquet``, checked to be one safe path."""
    if role not in ROLES:
        raise UserInputError(f"role {role!r} unknown: expected one of {ROLES}")
    return (f"experiment={_safe_part(experiment, 'experiment')}/role={role}/"
            f"{_safe_part(writer_id, 'writer id')}.parquet")


def split_order(splits: Iterable[str]) -> list[str]:
    """The splits present, in ``OUTPUT_SPLITS`` order, then any others sorted."""
    present = set(splits)
    return [s for s in OUTPUT_SPLITS if s in present] + sorted(present - set(OUTPUT_SPLITS))


def _write_by_split(table: pa.Table, sink) -> None:
    """Write ``table`` as Parquet with one row group per split (rows of a split keep
    their order). The ``split`` column's row-group statistics (min = max = the split)
    let a filtered read skip every other split without decoding it."""
    with pq.ParquetWriter(sink, table.schema) as writer:
        if "split" not in table.column_names or table.num_rows == 0:
            if table.num_rows:
                writer.write_table(table, row_group_size=table.num_rows)
            return
        column = table.column("split")
        for split in split_order(pc.unique(column).to_pylist()):
            part = table.filter(pc.equal(column, split))
            writer.write_table(part, row_group_size=max(part.num_rows, 1))


def outputs_parquet_bytes(table: pa.Table) -> bytes:
    """One writer's rows as Parquet bytes, one row group per split."""
    sink = pa.BufferOutputStream()
    _write_by_split(table, sink)
    return sink.getvalue().to_pybytes()


def write_outputs(table: pa.Table, root: str | Path, *, experiment: str, role: str,
                  writer_id: str) -> Path:
    """Write one writer's rows to ``<root>/experiment=<e>/role=<r>/<writer_id>.parquet``
    on this machine's disk (same bytes as ``outputs_parquet_bytes``)."""
    path = Path(root) / output_file_name(experiment, role, writer_id)
    with atomic_path(path) as tmp:
        _write_by_split(table, str(tmp))
    return path


def _equality(equals: dict[str, str | int]) -> ds.Expression | None:
    expression = None
    for column, value in equals.items():
        term = pc.field(column) == value
        expression = term if expression is None else expression & term
    return expression


def read_outputs(root: str | Path | Store, **equals: str | int) -> pa.Table:
    """Read all rows under an outputs folder, filtered by column equality (e.g.
    role="retrain"). ``root`` is a local folder or a ``Store`` at that folder.

    Reads every file it finds: for a few models (tests, ``unlearn train``). The
    assembly reads only the committed models' files, with ``read_output_files``.
    """
    if isinstance(root, Store):
        filesystem, base, where = root.fs, root.base, root.uri
        missing = filesystem.get_file_info(base).type != pafs.FileType.Directory
    else:
        filesystem, base, where = None, str(root), str(root)
        missing = not Path(root).is_dir()
    if missing:
        raise UserInputError(f"outputs folder {where} does not exist")
    dataset = ds.dataset(
        base, filesystem=filesystem, format="parquet", partitioning="hive",
        exclude_invalid_files=True, ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(filter=_equality(equals))


def split_filter(splits: Sequence[str]) -> ds.Expression:
    """``split == a | split == b ...``: an expression Parquet row-group statistics prune."""
    expression = None
    for split in splits:
        term = pc.field("split") == split
        expression = term if expression is None else expression | term
    return expression


def output_dataset(filesystem: pafs.FileSystem, paths: Sequence[str],
                   dictionary_columns: Sequence[str] = ()) -> ds.Dataset:
    """A dataset over exactly these files (paths inside ``filesystem``): no listing, so
    files of uncommitted work beside them are never opened. ``dictionary_columns`` are
    read dictionary-encoded (cheap for columns that repeat, like ``model_id``)."""
    fmt = ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary_columns)))
    return ds.dataset(list(paths), filesystem=filesystem, format=fmt)


def read_output_files(filesystem: pafs.FileSystem, paths: Sequence[str], *,
                      splits: Sequence[str] | None = None,
                      columns: Sequence[str] | None = None,
                      dictionary_columns: Sequence[str] = (),
                      **equals: str | int) -> pa.Table:
    """Rows of the given output files (paths inside ``filesystem``), only ``columns``
    (all when None) of the rows in ``splits`` (all when None) and matching ``equals``.

    With files from ``outputs_parquet_bytes`` a split filter reads only that split's
    row group of each file. Files are named explicitly: nothing is listed.
    """
    if not paths:
        raise UserInputError("no output files to read")
    dataset = output_dataset(filesystem, paths, dictionary_columns)
    expression = _equality(equals)
    if splits is not None:
        term = split_filter(splits) if splits else pc.scalar(False)
        expression = term if expression is None else expression & term
    return dataset.to_table(columns=None if columns is None else list(columns),
                            filter=expression)


def model_codes(column: pa.ChunkedArray | pa.Array, model_ids: Sequence[str]) -> np.ndarray:
    """Index of each row's model id in ``model_ids`` (int64; -1 when absent), for a plain
    or dictionary-encoded string column, without turning rows into Python strings."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    value_set = pa.array(list(model_ids), pa.string())
    out = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            lookup = pc.index_in(chunk.dictionary.cast(pa.string()), value_set=value_set)
            lookup = lookup.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            codes = lookup[chunk.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
        else:
            codes = pc.index_in(chunk, value_set=value_set).fill_null(-1)
            codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
        out.append(codes)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def unique_model_ids(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """Sorted distinct model ids of a plain or dictionary-encoded column."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    found: set[str] = set()
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            used = pc.unique(chunk.indices).to_numpy(zero_copy_only=False)
            found.update(chunk.dictionary.take(pa.array(used)).to_pylist())
        else:
            found.update(pc.unique(chunk).to_pylist())
    found.discard(None)
    return sorted(found)


def flat_logits(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list logits column as a float32 ``[rows, C]`` array (one copy)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    width = column.type.list_size
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in chunks]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return flat.astype(np.float32, copy=False).reshape(-1, width)


def logits_matrix(table: pa.Table, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stack one split's logits over models: ([n_models, n_samples, C], labels, model_ids).

    Rows are aligned by sample id; every model must hold the same samples. Model ids
    come sorted; labels are the first model's. One sort of all rows by (model, sample),
    then a reshape: no per-model filtering. ``model_id`` may be dictionary-encoded.
    """
    rows = table.filter(split_mask(table.column("split"), split)) \
        if "split" in table.column_names else table
    model_ids = unique_model_ids(rows.column("model_id")) if rows.num_rows else []
    if not model_ids:
        return np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64), []
    codes = model_codes(rows.column("model_id"), model_ids)
    sample_ids = rows.column("sample_id").to_numpy()
    order = np.lexsort((sample_ids, codes))  # by model, then by sample id
    counts = np.bincount(codes, minlength=len(model_ids))
    n = int(counts[0])
    sorted_ids = sample_ids[order]
    if (counts == n).all():
        by_model = sorted_ids.reshape(len(model_ids), n)
        differ = (by_model != by_model[0]).any(axis=1)
    else:  # only on the way to the error: compare each model's ids with the first's
        starts = np.concatenate([[0], np.cumsum(counts)])
        differ = np.array([not np.array_equal(sorted_ids[a:b], sorted_ids[:n])
                           for a, b in zip(starts[:-1], starts[1:], strict=True)])
    if differ.any():
        bad = model_ids[int(np.flatnonzero(differ)[0])]
        raise UserInputError(f"model {bad} holds other {split} samples than the others")
    labels = rows.column("label").to_numpy()[order[:n]].astype(np.int64, copy=False)
    logits = flat_logits(rows.column("logits"))
    if not np.array_equal(order, np.arange(len(order))):
        logits = logits[order]  # rows stored by model and sample id need no reordering
    elif not logits.flags.writeable:  # a view of Arrow's buffer: hand out an array we own
        logits = logits.copy()
    return logits.reshape(len(model_ids), n, logits.shape[1]), labels, model_ids


def split_mask(column: pa.ChunkedArray | pa.Array, split: str) -> pa.ChunkedArray | pa.Array:
    """Rows of ``split`` (the column may be dictionary-encoded)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    return pc.equal(column, split)
