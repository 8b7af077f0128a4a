"""Reading user tables: Parquet or CSV files (or folders of Parquet files) and DataFrames.

Everything downstream works on a polars DataFrame; this module is the one place that turns
what a user hands us into one, and names the source in every error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import polars as pl
import pyarrow as pa

from widedeep.errors import SchemaError

TableSource: TypeAlias = "str | Path | pl.DataFrame | pl.LazyFrame | pa.Table | Any"

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def describe_source(source: TableSource) -> str:
    """A short name for error messages: the file name, or the kind of in-memory table."""
    if isinstance(source, str | Path):
        return str(source)
    return f"the {type(source).__name__}"


def read_table(source: TableSource, text_columns: Sequence[str] = ()) -> pl.DataFrame:
    """Load ``source`` as a polars DataFrame: a path, polars, pandas or Arrow table.

    ``text_columns`` are read as strings from CSV files (ids like '01234' keep their zeros).
    """
    if isinstance(source, pl.DataFrame):
        return source
    if isinstance(source, pl.LazyFrame):
        return source.collect()
    if isinstance(source, pa.Table):
        frame = pl.from_arrow(source)
        return frame if isinstance(frame, pl.DataFrame) else frame.to_frame()
    if isinstance(source, str | Path):
        return _read_path(Path(source), text_columns)
    if type(source).__module__.startswith("pandas"):
        return pl.from_pandas(source)
    raise SchemaError(
        f"expected a Parquet/CSV path or a polars, pandas or Arrow table, "
        f"got {type(source).__name__}"
    )


def write_table(frame: pl.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as Parquet or CSV, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in PARQUET_SUFFIXES:
        frame.write_parquet(path)
    elif suffix in CSV_SUFFIXES:
        # CSV has no lists: write them as 'a|b|c', which multi_categorical features read back.
        lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
        flat = frame.with_columns(
            pl.col(name).cast(pl.List(pl.String)).list.join("|") for name in lists
        )
        nested = [n for n, dtype in flat.schema.items() if dtype.is_nested()]
        if nested:
            raise SchemaError(f"cannot write nested column(s) {nested} to CSV {path}; use .parquet")
        flat.write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    else:
        raise SchemaError(
            f"cannot write {path}: expected a .parquet or .csv file name, got '{suffix}'"
        )


def check_readable(path: str | Path) -> None:
    """The error ``read_table`` would raise for ``path``, found by reading no more than its
    Parquet metadata or CSV header: a run checks its held-out files this way before it
    reads and encodes the training table. (A CSV row that does not parse is found only by
    the read itself.)"""
    _read_path(Path(path), (), header_only=True)


def _read_path(path: Path, text_columns: Sequence[str], header_only: bool = False) -> pl.DataFrame:
    if not path.exists():
        raise SchemaError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in PARQUET_SUFFIXES)
            if not files:
                raise SchemaError(f"{path}: the folder holds no .parquet files")
            if header_only:
                return pl.DataFrame(schema=pl.read_parquet_schema(files[0]))
            return pl.read_parquet(files)
        suffix = path.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            if header_only:
                return pl.DataFrame(schema=pl.read_parquet_schema(path))
            return pl.read_parquet(path)
        if suffix in CSV_SUFFIXES:
            separator = "\t" if suffix == ".tsv" else ","
            header = pl.read_csv(path, separator=separator, n_rows=0).columns
            if header_only:
                return pl.DataFrame(schema=dict.fromkeys(header, pl.String))
            return pl.read_csv(
                path,
                separator=separator,
                infer_schema_length=10_000,
                schema_overrides={c: pl.String for c in text_columns if c in header},
            )
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as error:
        raise SchemaError(f"{path}: cannot be read as a table: {error}") from None
    raise SchemaError(f"{path}: expected a .parquet or .csv file, got '{path.suffix}'")
