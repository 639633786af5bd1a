import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from tests.conftest import make_dataset
from tests.test_train import tiny_net
from unlearn_core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from unlearn_core.data.manifest import make_manifest
from unlearn_core.errors import UserInputError
from unlearn_core.outputs import (
    logits_matrix,
    model_outputs,
    output_schema,
    read_outputs,
    write_outputs,
)


@pytest.fixture
def setup():
    ds = make_dataset(n=120, num_classes=4)
    manifest = make_manifest(ds, "classes=2", seed=0)
    return ds, manifest


def test_outputs_round_trip_through_parquet(setup, tmp_path):
    ds, manifest = setup
    tables = {}
    for seed in (0, 1):
        model = tiny_net(seed=seed)
        table = model_outputs(model, ds, manifest, method="retrain", seed=seed,
                              model_id=f"retrain-{seed}", hparams_hash="h")
        write_outputs(table, tmp_path, experiment="exp", role="retrain", writer_id=f"w{seed}")
        tables[seed] = table
    assert tables[0].schema.equals(output_schema(4))
    assert tables[0].schema.field("logits").type == pa.list_(pa.float32(), 4)
    back = read_outputs(tmp_path, role="retrain")
    assert back.num_rows == 2 * manifest.sizes()["train"] + 2 * manifest.sizes()["val"] \
        + 2 * manifest.sizes()["test"]
    assert set(back.column("experiment").to_pylist()) == {"exp"}
    one = read_outputs(tmp_path, model_id="retrain-1")
    assert one.num_rows == tables[1].num_rows
    stacked, labels, model_ids = logits_matrix(back, "forget")
    assert stacked.shape == (2, manifest.sizes()["forget"], 4)
    assert model_ids == ["retrain-0", "retrain-1"]
    # logits survive exactly, and loss/correct agree with them
    forget = tables[1].filter(pc.equal(tables[1].column("split"), "forget"))
    order = np.argsort(forget.column("sample_id").to_numpy())
    original = np.stack(forget.column("logits").to_pylist())[order]
    np.testing.assert_array_equal(stacked[1], original)
    assert (labels == 2).all()
    correct = forget.column("correct").to_numpy(zero_copy_only=False)[order]
    np.testing.assert_array_equal(correct, original.argmax(1) == labels)
    loss = forget.column("loss").to_numpy()[order]
    expected = torch.nn.functional.cross_entropy(torch.tensor(original), torch.tensor(labels),
                                                 reduction="none").numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_no_half_files_and_bad_names(setup, tmp_path):
    ds, manifest = setup
    table = model_outputs(tiny_net(), ds, manifest, method="m", seed=0, model_id="x")
    path = write_outputs(table, tmp_path, experiment="e", role="unlearned", writer_id="t1")
    assert [p.name for p in path.parent.iterdir()] == ["t1.parquet"]
    # a stray temp file from a crashed writer is ignored by readers
    (path.parent / ".tmp-t2.parquet.abc").write_bytes(b"half")
    assert read_outputs(tmp_path).num_rows == table.num_rows
    with pytest.raises(UserInputError, match="role"):
        write_outputs(table, tmp_path, experiment="e", role="teacher", writer_id="t")
    with pytest.raises(UserInputError, match="path"):
        write_outputs(table, tmp_path, experiment="a/b", role="source", writer_id="t")


def test_checkpoint_round_trip(tmp_path):
    model = tiny_net(seed=0)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"seed": 0, "model": "tiny"})
    other = tiny_net(seed=1)
    meta = load_checkpoint(other, path)
    assert meta == {"seed": 0, "model": "tiny"} == read_metadata(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    with pytest.raises(UserInputError, match="does not exist"):
        load_checkpoint(other, tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------
# one row group per split; reading only what is needed


def _hand_table(rows: list[tuple[str, str, int, int, list[float]]]) -> pa.Table:
    """Rows (model_id, split, sample_id, label, logits) in the output schema."""
    n = len(rows)
    return pa.table({
        "method": pa.array(["m"] * n, pa.string()),
        "hparams_hash": pa.array([""] * n, pa.string()),
        "seed": pa.array([0] * n, pa.int64()),
        "model_id": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "sample_id": pa.array([r[2] for r in rows], pa.int64()),
        "label": pa.array([r[3] for r in rows], pa.int64()),
        "logits": pa.FixedSizeListArray.from_arrays(
            pa.array([v for r in rows for v in r[4]], pa.float32()), 2),
        "loss": pa.array([0.0] * n, pa.float32()),
        "correct": pa.array([True] * n, pa.bool_()),
    }, schema=output_schema(2))


# model b's and a's rows, splits and samples interleaved on purpose
SHUFFLED = [
    ("b", "forget", 9, 1, [0.5, 1.5]),
    ("a", "test", 30, 0, [3.0, 0.0]),
    ("a", "forget", 5, 0, [1.0, 2.0]),
    ("b", "retain", 20, 1, [7.0, 7.0]),
    ("b", "forget", 2, 1, [2.5, 3.5]),
    ("a", "forget", 9, 1, [4.0, 5.0]),
    ("b", "test", 30, 0, [8.0, 8.5]),
    ("a", "retain", 20, 1, [6.0, 6.0]),
    ("b", "forget", 5, 0, [4.5, 5.5]),
    ("a", "forget", 2, 1, [0.0, 0.25]),
]


def test_outputs_have_one_row_group_per_split(setup, tmp_path):
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from unlearn_core.outputs import (
        outputs_parquet_bytes,
        read_output_files,
        split_filter,
    )

    ds, manifest = setup
    table = model_outputs(tiny_net(), ds, manifest, method="m", seed=0, model_id="x")
    # rows shuffled across splits: the file still holds one row group per split
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    path = write_outputs(shuffled, tmp_path, experiment="e", role="source", writer_id="x")
    assert path.read_bytes() == outputs_parquet_bytes(shuffled)
    meta = pq.ParquetFile(path).metadata
    sizes = {s: n for s, n in manifest.sizes().items() if s in ("forget", "retain", "val",
                                                                 "test") and n}
    assert meta.num_row_groups == len(sizes) == 4
    column = meta.schema.names.index("split")
    groups = {}
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        assert stats.has_min_max and stats.min == stats.max
        groups[stats.min] = meta.row_group(g).num_rows
    assert groups == sizes
    assert list(groups) == ["forget", "retain", "val", "test"]
    # a split filter keeps one row group by its statistics: the others are never decoded
    fragment = next(pads.dataset([str(path)], format="parquet").get_fragments())
    kept = fragment.subset(split_filter(["forget"])).row_groups
    assert [g.id for g in kept] == [list(groups).index("forget")]
    assert len(fragment.subset(split_filter(["forget", "test"])).row_groups) == 2
    forget = read_output_files(pafs.LocalFileSystem(), [str(path)], splits=["forget"],
                               columns=["model_id", "sample_id", "logits"])
    assert forget.column_names == ["model_id", "sample_id", "logits"]
    assert forget.num_rows == sizes["forget"]
    expected = table.filter(pc.equal(table.column("split"), "forget"))
    assert sorted(forget.column("sample_id").to_pylist()) == \
        sorted(expected.column("sample_id").to_pylist())
    # rows of a split keep their order
    in_file = pq.read_table(path)
    for split in sizes:
        mine = pc.equal(in_file.column("split"), split)
        theirs = pc.equal(shuffled.column("split"), split)
        assert in_file.filter(mine).equals(shuffled.filter(theirs))


def test_logits_matrix_sorts_shuffled_rows():
    table = _hand_table(SHUFFLED)
    expected = np.array([
        [[0.0, 0.25], [1.0, 2.0], [4.0, 5.0]],  # a: samples 2, 5, 9
        [[2.5, 3.5], [4.5, 5.5], [0.5, 1.5]],  # b: samples 2, 5, 9
    ], dtype=np.float32)
    for variant in (table, table.set_column(3, "model_id", pc.dictionary_encode(
            table.column("model_id"))), pa.concat_tables([table.slice(0, 4),
                                                          table.slice(4)])):
        stacked, labels, model_ids = logits_matrix(variant, "forget")
        assert model_ids == ["a", "b"]
        assert stacked.dtype == np.float32 and stacked.shape == (2, 3, 2)
        np.testing.assert_array_equal(stacked, expected)
        np.testing.assert_array_equal(labels, [1, 0, 1])
        assert labels.dtype == np.int64
    # rows already in (model, sample) order: the same array, writable as before
    in_order = sorted((r for r in SHUFFLED if r[1] == "forget"), key=lambda r: (r[0], r[2]))
    stacked, labels, _ = logits_matrix(_hand_table(in_order), "forget")
    np.testing.assert_array_equal(stacked, expected)
    assert stacked.flags.writeable and labels.tolist() == [1, 0, 1]
    stacked, labels, model_ids = logits_matrix(table, "test")
    np.testing.assert_array_equal(stacked, [[[3.0, 0.0]], [[8.0, 8.5]]])
    assert model_ids == ["a", "b"] and labels.tolist() == [0]
    empty, labels, model_ids = logits_matrix(table, "val")
    assert empty.shape == (0, 0, 0) and labels.shape == (0,) and model_ids == []


def test_logits_matrix_refuses_models_with_other_samples():
    other_ids = [r if r[:3] != ("b", "forget", 9) else ("b", "forget", 8, 1, r[4])
                 for r in SHUFFLED]
    with pytest.raises(UserInputError, match="model b holds other forget samples"):
        logits_matrix(_hand_table(other_ids), "forget")
    # as before: each model is compared with the first (sorted) one
    fewer = [r for r in SHUFFLED if r[:3] != ("a", "forget", 9)]
    with pytest.raises(UserInputError, match="model b holds other forget samples"):
        logits_matrix(_hand_table(fewer), "forget")
    more = SHUFFLED + [("c", "forget", 1, 1, [0.0, 0.0]), ("c", "forget", 2, 1, [0.0, 0.0]),
                       ("c", "forget", 5, 1, [0.0, 0.0]), ("c", "forget", 9, 1, [0.0, 0.0])]
    with pytest.raises(UserInputError, match="model c holds other forget samples"):
        logits_matrix(_hand_table(more), "forget")


def test_read_outputs_from_a_store(setup, tmp_path):
    from unlearn_core.storage import Store

    ds, manifest = setup
    table = model_outputs(tiny_net(), ds, manifest, method="m", seed=0, model_id="x")
    write_outputs(table, tmp_path / "outputs", experiment="e", role="source", writer_id="x")
    back = read_outputs(Store.at(tmp_path / "outputs", create=False), role="source")
    assert back.num_rows == table.num_rows
    assert read_outputs(tmp_path / "outputs", role="source").equals(back)
    with pytest.raises(UserInputError, match="does not exist"):
        read_outputs(Store.at(tmp_path / "missing", create=False))
