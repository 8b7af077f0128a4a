"""Streaming Parquet: one-pass fitting, row-group reading, the shuffle buffer, rank shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_train import make_table
from widedeep.config import StreamConfig
from widedeep.data.stream import (
    ParquetStream,
    ShuffleBuffer,
    StreamedTable,
    cut_batches,
    encode_stream,
    fit_stream,
    parquet_files,
    prefetch,
)
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError, SchemaError
from widedeep.features import preprocessor as preprocessing
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FeatureSchema

ROWS = 2400


def table_with_gaps() -> pl.DataFrame:
    """The fixture table with missing prices and users, and a second numeric column."""
    frame = make_table(ROWS, seed=1)
    rng = np.random.default_rng(3)
    price = frame.get_column("price").to_numpy().copy()
    price[rng.random(ROWS) < 0.1] = np.nan
    users = frame.get_column("user").to_list()
    for row in np.flatnonzero(rng.random(ROWS) < 0.05):
        users[row] = None
    return frame.with_columns(
        pl.Series("price", price).fill_nan(None),
        pl.Series("user", users, dtype=pl.String),
        pl.Series("count", rng.lognormal(1.0, 1.0, ROWS)),
    )


SCHEMA = FeatureSchema.from_dict(
    {
        "label": {"column": "click"},
        "features": [
            {"name": "user", "kind": "categorical", "min_count": 3},
            {"name": "item", "kind": "categorical", "max_size": 5},
            {"name": "city", "kind": "hashed", "num_buckets": 8},
            {"name": "price", "kind": "numeric", "transform": "standardize", "fill": "mean"},
            {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile",
             "fill": "median", "num_quantiles": 7},
            {"name": "count", "kind": "numeric", "transform": "log1p", "fill": "zero"},
            {"name": "count_b", "column": "count", "kind": "bucketized", "num_buckets": 5},
            {"name": "tags", "kind": "multi_categorical"},
            {"name": "user_x_item", "kind": "cross", "features": ["user", "item"],
             "num_buckets": 50},
        ],
    }
)  # fmt: skip


def write_dataset(frame: pl.DataFrame, folder: Path, files: int = 3, group: int = 170) -> Path:
    """``frame`` as ``files`` Parquet files (in nested folders) of row groups of ``group`` rows."""
    table = frame.to_arrow()
    for index in range(files):
        part = folder / f"part={index}" / "data.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        low, high = index * len(table) // files, (index + 1) * len(table) // files
        pq.write_table(table.slice(low, high - low), part, row_group_size=group)
    return folder


def columns() -> list[str]:
    assert SCHEMA.label is not None
    return [*SCHEMA.input_columns, SCHEMA.label.column]


def assert_same_state(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        for key, value in left[name].items():
            other = right[name][key]
            if isinstance(value, list) and value and isinstance(value[0], str):
                assert value == other, (name, key)
            else:
                assert np.allclose(value, other, rtol=1e-12, atol=1e-12), (name, key)


# ------------------------------------------------------------------------------ fitting


def test_one_streaming_pass_fits_what_fitting_the_whole_table_fits(tmp_path: Path) -> None:
    frame = table_with_gaps()
    stream = ParquetStream(write_dataset(frame, tmp_path), columns(), chunk_rows=64)
    assert stream.rows == ROWS and len(stream.pieces) == 15  # 3 files x 5 row groups
    streamed = fit_stream(Preprocessor(SCHEMA), stream)
    whole = Preprocessor(SCHEMA).fit(frame)
    assert streamed.state_ is not None and whole.state_ is not None
    assert_same_state(streamed.state_, whole.state_)
    assert len(whole.state_["item"]["vocabulary"]) == 5


def test_a_stream_encoded_chunk_by_chunk_is_the_whole_table_encoded(tmp_path: Path) -> None:
    frame = table_with_gaps()
    stream = ParquetStream(write_dataset(frame, tmp_path), columns(), chunk_rows=64)
    preprocessor = fit_stream(Preprocessor(SCHEMA), stream)
    kept = encode_stream(preprocessor, stream)  # 3 files x 5 row groups, in 64-row chunks
    whole = TensorTable.from_encoded(preprocessor.transform(frame, with_labels=True))
    assert len(kept) == ROWS
    assert torch.equal(kept.ids, whole.ids) and torch.equal(kept.dense, whole.dense)
    assert all(torch.equal(a, b) for a, b in zip(kept.multi_ids, whole.multi_ids, strict=True))
    assert kept.labels is not None and whole.labels is not None
    assert torch.equal(kept.labels, whole.labels)


def test_quantiles_of_a_long_stream_come_from_a_bounded_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preprocessing, "QUANTILE_SAMPLE", 300)  # of 2,400 rows
    frame = table_with_gaps()
    stream = ParquetStream(write_dataset(frame, tmp_path), columns(), chunk_rows=100)
    state = fit_stream(Preprocessor(SCHEMA), stream).state_
    assert state is not None
    # a uniform sample of 300 values: each boundary's rank in the data is near its target
    # (standard error about 0.025)
    counts = frame.get_column("count").to_numpy()
    ranks = [(counts < b).mean() for b in state["count_b"]["boundaries"]]
    assert np.allclose(ranks, [0.2, 0.4, 0.6, 0.8], atol=0.08)
    # moments stay exact: they are merged, not sampled
    prices = frame.get_column("price").drop_nulls().to_numpy()
    assert state["price"]["fill"] == pytest.approx(prices.mean(), rel=1e-12)


def test_a_bad_value_names_the_file_and_its_row(tmp_path: Path) -> None:
    frame = table_with_gaps().with_columns(
        pl.when(pl.int_range(pl.len()) == 1234).then(7).otherwise(pl.col("click")).alias("click")
    )
    folder = write_dataset(frame, tmp_path, files=2)
    stream = ParquetStream(folder, columns(), chunk_rows=64)
    with pytest.raises(SchemaError) as error:
        fit_stream(Preprocessor(SCHEMA), stream)
    # row 1234 of the table is row 34 of the second file (which starts at row 1200)
    assert "part=1" in str(error.value) and "in row 34" in str(error.value)
    assert "'click'" in str(error.value)


def test_a_file_missing_a_column_is_named(tmp_path: Path) -> None:
    folder = write_dataset(table_with_gaps(), tmp_path, files=2)
    pq.write_table(table_with_gaps().drop("tags").to_arrow(), folder / "part=1" / "data.parquet")
    with pytest.raises(SchemaError, match=r"part=1.*missing column 'tags'"):
        ParquetStream(folder, columns(), chunk_rows=64)


def test_files_come_from_a_folder_a_glob_or_a_path(tmp_path: Path) -> None:
    folder = write_dataset(table_with_gaps(), tmp_path / "data", files=3)
    found = parquet_files(folder)
    assert [p.parent.name for p in found] == ["part=0", "part=1", "part=2"]
    assert parquet_files(str(folder / "part=[01]" / "*.parquet")) == found[:2]
    assert parquet_files(found[2]) == [found[2]]
    with pytest.raises(SchemaError, match="no such file"):
        parquet_files(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="no Parquet files"):
        parquet_files(tmp_path / "empty")
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(SchemaError, match="Parquet only"):
        parquet_files(str(tmp_path / "*.csv"))


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match=r"bad\.parquet: cannot be read as Parquet"):
        ParquetStream(tmp_path, columns(), chunk_rows=64)


# ------------------------------------------------------------------------ shuffling


def numbered(n: int, start: int = 0) -> TensorTable:
    """A table whose dense column holds each row's number."""
    values = torch.arange(start, start + n)
    return TensorTable(
        ids=values[:, None].clone(),
        multi_ids=(),
        dense=values[:, None].float(),
        labels=values.float(),
    )


def shuffled(chunks: list[int], capacity: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    buffer = ShuffleBuffer(capacity, generator)
    out: list[int] = []
    start = 0
    for size in chunks:
        for table in buffer.push(numbered(size, start)):
            out += table.ids[:, 0].tolist()
        start += size
    for table in buffer.drain():
        out += table.ids[:, 0].tolist()
    return out


def test_the_shuffle_buffer_emits_every_row_once_in_a_seeded_mixed_order() -> None:
    chunks = [70, 130, 5, 400, 95]  # one chunk larger than the buffer
    order = shuffled(chunks, capacity=150, seed=0)
    assert sorted(order) == list(range(sum(chunks)))
    assert order == shuffled(chunks, capacity=150, seed=0)
    assert order != shuffled(chunks, capacity=150, seed=1)
    # rows leave far from where they arrived: the first 100 out span much of the stream
    assert max(order[:100]) - min(order[:100]) > 150


def test_batches_are_cut_across_tables() -> None:
    tables = [numbered(5, 0), numbered(2, 5), numbered(9, 7)]
    sizes = [len(b) for b in cut_batches(tables, 4)]
    assert sizes == [4, 4, 4, 4]
    rows = torch.cat([b.ids[:, 0] for b in cut_batches(tables, 3)]).tolist()
    assert rows == list(range(16))


# ---------------------------------------------------------------------- epochs and ranks


@pytest.fixture
def streamed(tmp_path: Path) -> StreamedTable:
    frame = table_with_gaps().with_columns(pl.Series("count", np.arange(ROWS, dtype=float)))
    stream = ParquetStream(write_dataset(frame, tmp_path), columns(), chunk_rows=64)
    preprocessor = fit_stream(Preprocessor(SCHEMA), stream)
    return StreamedTable(stream, preprocessor, StreamConfig(shuffle_buffer=300, chunk_rows=64))


def row_numbers(batches: list[Any]) -> list[int]:
    """The rows a list of batches holds, by their log1p(count) = log1p(row number)."""
    dense = torch.cat([b.dense[:, 2] for b in batches])  # dense columns: price, price_q, count
    return sorted(np.rint(np.expm1(dense.double().numpy())).astype(int).tolist())


def test_an_epoch_trains_every_row_once_in_a_new_order_each_epoch(
    streamed: StreamedTable,
) -> None:
    generator = torch.Generator().manual_seed(0)
    first = list(streamed.batches(100, generator))
    second = list(streamed.batches(100, generator))
    assert len(first) == streamed.steps(100) == 24
    assert row_numbers(first) == row_numbers(second) == list(range(ROWS))
    assert not torch.equal(first[0].dense, second[0].dense)
    again = list(streamed.batches(100, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(first, again, strict=True))


def test_ranks_read_disjoint_shares_and_agree_on_steps_and_batch_sizes(
    streamed: StreamedTable,
) -> None:
    per_rank = []
    for rank in range(3):
        generator = torch.Generator().manual_seed(5)
        per_rank.append(list(streamed.batches(101, generator, rank=rank, world=3)))
    steps = streamed.steps(101, world=3)
    assert [len(batches) for batches in per_rank] == [steps] * 3
    rows = [row_numbers(batches) for batches in per_rank]
    assert sorted(rows[0] + rows[1] + rows[2]) == list(range(ROWS))
    assert [len(r) for r in rows] == [800, 800, 800]
    for step in range(1, steps + 1):
        sizes = sum(len(batches[step - 1]) for batches in per_rank)
        assert sizes == streamed.global_rows(step, 101, world=3)
    with pytest.raises(ConfigError, match="batch_size is 2, below the 3 processes"):
        streamed.steps(2, world=3)


def test_prefetch_keeps_order_and_raises_the_producers_error() -> None:
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def failing() -> Any:
        yield 1
        raise SchemaError("row 3 is bad")

    produced = prefetch(failing())
    assert next(produced) == 1
    with pytest.raises(SchemaError, match="row 3 is bad"):
        next(produced)
    endless = prefetch(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()  # stops the thread instead of producing forever


def test_the_quantile_sample_holds_observed_values_only_and_no_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = table_with_gaps()
    stats = preprocessing._feature_stats(SCHEMA.feature("price_q"), frame, "t", 0)
    (sample,) = stats.sample
    assert sample.base is None  # a view would keep the chunk's whole column alive
    assert len(sample) == ROWS - frame.get_column("price").null_count()
    # a mean and a standard deviation need no sample: none is kept
    assert preprocessing._feature_stats(SCHEMA.feature("price"), frame, "t", 0).sample == []
    # 3 observed values in 30 rows, a sample of 10: the median still comes from them
    monkeypatch.setattr(preprocessing, "QUANTILE_SAMPLE", 10)
    sparse = pl.DataFrame({"x": [None] * 30, "click": [0] * 30}).with_columns(
        pl.when(pl.int_range(30).is_in([1, 4, 7])).then(pl.int_range(30)).alias("x")
    )
    schema = FeatureSchema.from_dict(
        {
            "label": {"column": "click"},
            "features": [
                {"name": "x", "kind": "numeric", "fill": "median", "transform": "standardize"},
                {"name": "xb", "column": "x", "kind": "bucketized", "num_buckets": 2},
            ],
        }
    )
    chunks = [preprocessing.Chunk(sparse.slice(i, 7), "t", i) for i in range(0, 30, 7)]
    state = Preprocessor(schema).fit_chunks(chunks, "t").state_
    assert state is not None
    assert state["x"]["fill"] == 4.0 and state["xb"]["boundaries"] == [4.0]
