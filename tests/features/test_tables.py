"""Reading user tables: Parquet, CSV, folders, in-memory frames; errors name the path."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
from numpy.typing import NDArray
from polars.testing import assert_frame_equal, assert_series_equal

from widedeep import tables
from widedeep.errors import SchemaError
from widedeep.features import preprocessor
from widedeep.features.preprocessor import ColumnCache, EncodedTable, Preprocessor
from widedeep.features.schema import FeatureSchema
from widedeep.tables import (
    ParquetColumns,
    describe_source,
    read_columns,
    read_header,
    read_table,
    write_table,
)

FRAME = pl.DataFrame({"country": ["de", "fr", None], "age": [23, 41, 35], "score": [0.5, 1.5, 2.0]})


@pytest.mark.parametrize("name", ["t.parquet", "t.pq", "T.PARQUET"])
def test_parquet_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    FRAME.write_parquet(path)

    assert_frame_equal(read_table(path), FRAME)
    assert_frame_equal(read_table(str(path)), FRAME)


def test_csv_and_tsv_files(tmp_path: Path) -> None:
    csv, tsv = tmp_path / "t.csv", tmp_path / "t.tsv"
    FRAME.write_csv(csv)
    FRAME.write_csv(tsv, separator="\t")

    assert_frame_equal(read_table(csv), FRAME)
    assert_frame_equal(read_table(tsv), FRAME)


def test_write_table_round_trips_by_suffix(tmp_path: Path) -> None:
    for name in ("out/a.parquet", "out/b.csv", "out/c.tsv"):
        write_table(FRAME, tmp_path / name)
        assert_frame_equal(read_table(tmp_path / name), FRAME)


def test_write_table_rejects_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"a\.json"):
        write_table(FRAME, tmp_path / "a.json")


def test_folder_of_parquet_files_is_read_in_name_order(tmp_path: Path) -> None:
    FRAME[2:].write_parquet(tmp_path / "part-1.parquet")
    FRAME[:2].write_parquet(tmp_path / "part-0.parquet")
    (tmp_path / "notes.txt").write_text("not a table")

    assert_frame_equal(read_table(tmp_path), FRAME)


def test_pandas_arrow_and_lazy_frames() -> None:
    pandas = pd.DataFrame({"country": ["de", "fr"], "age": [23, 41]})
    expected = pl.DataFrame({"country": ["de", "fr"], "age": [23, 41]})

    assert_frame_equal(read_table(pandas), expected)
    assert_frame_equal(read_table(expected.to_arrow()), expected)
    assert_frame_equal(read_table(expected.lazy()), expected)
    assert read_table(expected) is expected


def test_nonexistent_path_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing.parquet"

    with pytest.raises(SchemaError, match=r"missing\.parquet") as caught:
        read_table(path)
    assert "no such file" in str(caught.value)


def test_unsupported_suffix_is_named(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text("{}")

    with pytest.raises(SchemaError, match=r"table\.json") as caught:
        read_table(path)
    assert ".json" in str(caught.value)


def test_empty_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()

    with pytest.raises(SchemaError, match="empty") as caught:
        read_table(folder)
    assert str(folder) in str(caught.value)


def test_corrupt_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")

    with pytest.raises(SchemaError, match=r"broken\.parquet"):
        read_table(path)


def test_unsupported_object() -> None:
    with pytest.raises(SchemaError, match="list"):
        read_table([1, 2, 3])


def test_describe_source() -> None:
    assert describe_source("data/train.parquet") == "data/train.parquet"
    assert describe_source(Path("a.csv")) == "a.csv"
    assert describe_source(FRAME) == "the DataFrame"


COUNTRY_AND_AGE = FeatureSchema.from_dict(
    {
        "features": [
            {"name": "country", "kind": "categorical"},
            {"name": "age", "kind": "numeric"},
        ]
    }
)


def test_preprocessor_fits_the_same_from_every_source(tmp_path: Path) -> None:
    schema = COUNTRY_AND_AGE
    FRAME.write_parquet(tmp_path / "t.parquet")
    FRAME.write_csv(tmp_path / "t.csv")
    sources = [FRAME, tmp_path / "t.parquet", str(tmp_path / "t.csv"), FRAME.to_pandas()]

    states = [Preprocessor(schema).fit(source).state_ for source in sources]

    assert all(state == states[0] for state in states)


# Every kind of feature, and columns that several features read.
RICH_SCHEMA = FeatureSchema.from_dict(
    {
        "label": {"column": "clicked"},
        "features": [
            {"name": "user", "kind": "categorical", "min_count": 2},
            {"name": "item", "kind": "hashed", "num_buckets": 1000},
            {"name": "apps", "kind": "multi_categorical"},
            {"name": "price", "kind": "numeric", "transform": "log1p", "fill": "zero"},
            {"name": "price_z", "kind": "numeric", "column": "price", "transform": "standardize"},
            {"name": "age", "kind": "bucketized", "boundaries": [20, 40]},
            {
                "name": "user_x_item",
                "kind": "cross",
                "features": ["user", "item"],
                "num_buckets": 97,
            },
        ],
        "wide": ["user", "item", "user_x_item"],
        "deep": ["user", "item", "apps", "price", "price_z", "age"],
    }
)


def rich_frame(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(2.0, 1.0, rows)
    price[rng.random(rows) < 0.1] = np.nan
    apps = [[f"a{j}" for j in rng.integers(0, 30, rng.integers(0, 4))] for _ in range(rows)]
    users = rng.integers(0, 400, rows).astype(str).astype(object)
    users[rng.random(rows) < 0.05] = None
    return pl.DataFrame(
        {
            "user": users.tolist(),
            "item": [f"item-{i}" for i in rng.zipf(1.3, rows) % 5000],
            "apps": apps,
            "price": pl.Series(price).fill_nan(None),
            "age": rng.integers(15, 70, rows),
            "clicked": rng.integers(0, 2, rows),
        }
    )


def assert_same_encoding(left: EncodedTable, right: EncodedTable) -> None:
    np.testing.assert_array_equal(left.ids, right.ids)
    assert left.ids.dtype == right.ids.dtype
    for a, b in zip(left.multi_ids, right.multi_ids, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(left.dense, right.dense)
    assert left.labels is not None and right.labels is not None
    np.testing.assert_array_equal(left.labels, right.labels)
    assert left.report == right.report


def spy_on_column_reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``columns`` argument of every Parquet read, in order."""
    asked: list[Any] = []
    read_parquet = pl.read_parquet

    def spy(source: Any, *args: Any, **kwargs: Any) -> pl.DataFrame:
        asked.append(kwargs.get("columns"))
        return read_parquet(source, *args, **kwargs)

    monkeypatch.setattr(tables.pl, "read_parquet", spy)
    return asked


@pytest.mark.parametrize(("layout", "rows"), [("file", 60_000), ("folder", 3000)])
def test_a_parquet_table_is_fitted_and_encoded_a_column_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, rows: int
) -> None:
    """Fitting and encoding a Parquet path reads one column per read, never the whole
    table, and gives the same bits as the table read whole (row groups and files split;
    60,000 rows: features encoded on threads, several at once)."""
    train, test = rich_frame(rows, seed=0), rich_frame(700, seed=1)
    if layout == "file":
        train_path, test_path = tmp_path / "train.parquet", tmp_path / "test.parquet"
        train.write_parquet(train_path, row_group_size=500)
        test.write_parquet(test_path, row_group_size=500)
    else:
        train_path, test_path = tmp_path / "train", tmp_path / "test"
        for folder, frame in ((train_path, train), (test_path, test)):
            folder.mkdir()
            for part, start in enumerate(range(0, frame.height, 1000)):
                frame[start : start + 1000].write_parquet(folder / f"part-{part}.parquet")
    whole = Preprocessor(RICH_SCHEMA)
    want_train = whole.fit_transform(train)
    want_test = whole.transform(test)

    asked = spy_on_column_reads(monkeypatch)
    by_column = Preprocessor(RICH_SCHEMA)
    got_train = by_column.fit_transform(train_path)
    read_by_fit_transform = list(asked)
    got_test = by_column.transform(test_path)
    got_fit = Preprocessor(RICH_SCHEMA).fit(str(train_path))

    assert asked and all(columns is not None and len(columns) == 1 for columns in asked)
    # each column once, though several features read it, some on other threads at once
    assert sorted(c for (c,) in read_by_fit_transform) == sorted(train.columns)
    assert by_column.state_ == whole.state_ == got_fit.state_
    assert_same_encoding(got_train, want_train)
    assert_same_encoding(got_test, want_test)


def test_fit_transform_encodes_numeric_features_as_fit_then_transform_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fit_transform`` writes each numeric feature into the dense matrix as soon as it is
    fitted (on threads, for a large table read a column at a time): once each, the same
    bits as fitting, then encoding, and each column read once, whether it feeds one
    feature or several. A numeric feature outside the model is still checked by the fit."""
    rng = np.random.default_rng(1)
    n = 120_000
    own, shared = rng.lognormal(1.0, 1.0, n), rng.normal(5.0, 2.0, n)
    own[rng.random(n) < 0.1] = np.nan
    frame = pl.DataFrame(
        {
            "own": pl.Series(own).fill_nan(None),
            "shared": shared,
            "checked": rng.random(n),
            "city": rng.integers(0, 50, n).astype(str),
            "label": rng.integers(0, 2, n),
        }
    )
    path = tmp_path / "train.parquet"
    frame.write_parquet(path, row_group_size=30_000)
    schema = FeatureSchema.from_dict(
        {
            "label": {"column": "label"},
            "features": [
                {"name": "own", "kind": "numeric", "transform": "log1p", "fill": "median"},
                {"name": "shared", "kind": "numeric", "transform": "standardize"},
                {
                    "name": "shared_q",
                    "kind": "numeric",
                    "column": "shared",
                    "transform": "quantile",
                },
                {"name": "shared_b", "kind": "bucketized", "column": "shared", "num_buckets": 4},
                {"name": "checked", "kind": "numeric", "fill": "error"},
                {"name": "city", "kind": "categorical"},
            ],
            "wide": ["city", "shared_b"],
            "deep": ["own", "shared", "shared_q", "city"],
        }
    )

    together = Preprocessor(schema)
    encodes: list[tuple[str, bool]] = []  # (feature, while fitting)
    encode = preprocessor._encode_numeric

    def spy(feature: Any, *args: Any, **kwargs: Any) -> Any:
        encodes.append((feature.name, together.state_ is None))
        return encode(feature, *args, **kwargs)

    monkeypatch.setattr(preprocessor, "_encode_numeric", spy)
    reads = spy_on_column_reads(monkeypatch)
    encoded = together.fit_transform(path)
    monkeypatch.undo()
    apart = Preprocessor(schema).fit(path)
    want = apart.transform(path)

    # the model's numeric features, each once, as it is fitted ('checked' is not encoded)
    assert sorted(encodes) == [("own", True), ("shared", True), ("shared_q", True)]
    assert sorted(column for (column,) in reads) == sorted(frame.columns)
    assert together.state_ == apart.state_
    assert together.layout.dense == ("own", "shared", "shared_q")
    assert np.array_equal(encoded.dense, want.dense)
    assert np.array_equal(encoded.ids, want.ids)
    assert np.isfinite(encoded.dense).all()

    frame.with_columns(checked=pl.lit(None, dtype=pl.Float64)).write_parquet(path)
    with pytest.raises(SchemaError, match="'checked'"):
        Preprocessor(schema).fit_transform(path)


def test_parquet_columns_reads_metadata_then_each_column_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    FRAME.write_parquet(path)

    table = read_columns(path)

    assert isinstance(table, ParquetColumns)
    assert (table.columns, table.height) == (FRAME.columns, FRAME.height)
    assert read_columns(table) is table
    assert describe_source(table) == str(path)
    for name in FRAME.columns:
        assert_series_equal(table.get_column(name), FRAME.get_column(name))
    with pytest.raises(SchemaError, match=r"t\.parquet: no column 'city'"):
        table.get_column("city")


def test_csv_and_frames_are_still_read_whole(tmp_path: Path) -> None:
    FRAME.write_csv(tmp_path / "t.csv")

    assert_frame_equal(read_columns(tmp_path / "t.csv"), FRAME)  # type: ignore[arg-type]
    assert read_columns(FRAME) is FRAME


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("absent.parquet", "no such file"),
        ("empty-folder", "the folder holds no .parquet files"),
        ("broken.parquet", "cannot be read as a table"),
    ],
)
def test_an_unreadable_parquet_table_is_named_when_opened(
    tmp_path: Path, name: str, message: str
) -> None:
    bad = tmp_path / name
    if name == "empty-folder":
        bad.mkdir()
    elif name == "broken.parquet":
        bad.write_bytes(b"this is not parquet")

    with pytest.raises(SchemaError, match=rf"{name}: {message}"):
        Preprocessor(RICH_SCHEMA).fit_transform(bad)


def test_a_parquet_file_that_breaks_after_it_was_opened_is_named(tmp_path: Path) -> None:
    """Damaged in place (same size, same modification time): the read's own error."""
    path = tmp_path / "t.parquet"
    FRAME.write_parquet(path)
    table = ParquetColumns.open(path)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[4:-8] = bytes(len(data) - 12)  # every page and the footer zeroed
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    with pytest.raises(SchemaError, match=r"t\.parquet: cannot be read as a table"):
        table.get_column("age")


@pytest.mark.parametrize("rows", [2, 3, 5])
def test_a_parquet_file_rewritten_while_it_is_read_is_named(tmp_path: Path, rows: int) -> None:
    """Columns from two versions of a file would make a table whose rows do not belong
    together (or whose columns differ in length): an error, not an encoding."""
    path = tmp_path / "t.parquet"
    FRAME.write_parquet(path)
    table = ParquetColumns.open(path)
    rewritten = pl.concat([FRAME, FRAME])[:rows]
    rewritten.write_parquet(path)

    with pytest.raises(SchemaError, match=r"t\.parquet: changed while it was being read"):
        table.get_column("age")
    with pytest.raises(SchemaError, match=r"t\.parquet: changed while it was being read"):
        Preprocessor(COUNTRY_AND_AGE).fit(table)


def test_a_rewrite_during_a_read_is_found_by_that_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last column read has no later read to notice the rewrite: the read itself must."""
    path = tmp_path / "t.parquet"
    FRAME.write_parquet(path)
    table = ParquetColumns.open(path)
    read_parquet = pl.read_parquet

    def rewrite_then_read(*args: Any, **kwargs: Any) -> pl.DataFrame:
        FRAME.with_columns(pl.col("age") * 10).write_parquet(path)  # the same rows
        return read_parquet(*args, **kwargs)

    monkeypatch.setattr(tables.pl, "read_parquet", rewrite_then_read)
    with pytest.raises(SchemaError, match=r"t\.parquet: changed while it was being read"):
        table.get_column("age")


def test_the_header_of_a_folder_lists_the_columns_every_file_has(tmp_path: Path) -> None:
    FRAME.write_parquet(tmp_path / "part-0.parquet")
    FRAME.drop("score").write_parquet(tmp_path / "part-1.parquet")

    assert read_header(tmp_path) == ["country", "age"]
    assert read_header(tmp_path / "part-0.parquet") == FRAME.columns


def test_the_column_cache_reads_a_column_once_and_keeps_stores_apart() -> None:
    """One read per store and column however many threads ask at once; a read that asks
    another store for the same column does not wait on itself."""
    cache = ColumnCache()
    reads: list[str] = []
    gate = threading.Barrier(4)

    def slow_read() -> NDArray[np.float64]:
        reads.append("numbers")
        time.sleep(0.05)
        return np.zeros(3)

    def ask() -> NDArray[np.float64]:
        gate.wait()
        return cache.once(cache.numbers, "age", slow_read)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ask(), range(4)))
    nested: list[str] = []  # on a thread of its own, so that a deadlock fails, not hangs
    asker = threading.Thread(
        target=lambda: nested.append(
            cache.once(cache.codes, "age", lambda: cache.once(cache.lists, "age", lambda: "x"))
        ),
        daemon=True,
    )
    asker.start()
    asker.join(timeout=10)

    assert reads == ["numbers"] and all(r is results[0] for r in results)
    assert nested == ["x"]
