"""Reading user tables: Parquet, CSV, folders, in-memory frames; errors name the path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.errors import SchemaError
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FeatureSchema
from widedeep.tables import describe_source, read_table, write_table

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


def test_preprocessor_fits_the_same_from_every_source(tmp_path: Path) -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                {"name": "country", "kind": "categorical"},
                {"name": "age", "kind": "numeric"},
            ]
        }
    )
    FRAME.write_parquet(tmp_path / "t.parquet")
    FRAME.write_csv(tmp_path / "t.csv")
    sources = [FRAME, tmp_path / "t.parquet", str(tmp_path / "t.csv"), FRAME.to_pandas()]

    states = [Preprocessor(schema).fit(source).state_ for source in sources]

    assert all(state == states[0] for state in states)
