"""Reading user tables: Parquet or CSV files (or folders of Parquet files) and DataFrames.

Everything downstream works on a polars DataFrame, or, to fit and encode a Parquet table
without holding its raw rows, on ``ParquetColumns``, which reads it a column at a time; this
module is the one place that turns what a user hands us into either, and names the source in
every error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import polars as pl
import pyarrow as pa

from widedeep.errors import SchemaError

TableSource: TypeAlias = "str | Path | pl.DataFrame | pl.LazyFrame | pa.Table | Any"

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")


class ColumnTable(Protocol):
    """What encoding reads of a table: its columns' names and types, its number of rows, and
    one column at a time (a polars DataFrame, or ``ParquetColumns``)."""

    @property
    def columns(self) -> list[str]: ...

    @property
    def schema(self) -> pl.Schema: ...

    @property
    def height(self) -> int: ...

    def get_column(self, name: str) -> pl.Series: ...


@dataclass(frozen=True, eq=False)
class ParquetColumns:
    """A Parquet file (or folder of them) whose columns are read one at a time, as they are
    asked for. Fitting and encoding such a table never holds its raw rows whole: each column
    is read, turned into codes or numbers, and let go (the benchmark's 1M Criteo-shaped rows,
    whose raw columns take about 530 MB: a peak about 450 MB lower; README, "Measured").

    Its files must not change while it is read: before and after each read their sizes and
    modification times are checked against those seen when it was opened, and the column's
    length against the table's, so that a file rewritten meanwhile is an error, never a
    table whose columns come from two versions of it. (A rewrite of the same size within
    one tick of a file system's clock goes unseen.)"""

    path: Path
    files: tuple[Path, ...]
    schema: pl.Schema
    height: int
    stamps: tuple[tuple[int, int], ...]  # each file's size and modification time (ns)

    @classmethod
    def open(cls, path: str | Path) -> ParquetColumns:
        """The table at ``path``, of which only the metadata is read now; the errors of
        ``read_table`` for a path that is not a readable Parquet table."""
        path = Path(path)
        _read_path(path, (), header_only=True)  # its errors, for a path it cannot read
        files = tuple(_parquet_files(path)) if path.is_dir() else (path,)
        try:
            stamps = _stamps(files)
            schema = pl.read_parquet_schema(files[0])
            height = pl.scan_parquet(list(files)).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as error:
            raise SchemaError(f"{path}: cannot be read as a table: {error}") from None
        table = cls(path, files, pl.Schema(schema), int(height), stamps)
        table._check_unchanged()
        return table

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def get_column(self, name: str) -> pl.Series:
        """The column ``name``, read now (each call reads it again)."""
        if name not in self.schema:
            raise SchemaError(f"{self.path}: no column '{name}'")
        self._check_unchanged()
        try:
            column = pl.read_parquet(list(self.files), columns=[name]).to_series()
        except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as error:
            raise SchemaError(f"{self.path}: cannot be read as a table: {error}") from None
        self._check_unchanged()
        if len(column) != self.height:
            raise SchemaError(
                f"{self.path}: changed while it was being read (column '{name}' has "
                f"{len(column)} rows, the table had {self.height})"
            )
        return column

    def _check_unchanged(self) -> None:
        try:
            unchanged = _stamps(self.files) == self.stamps
        except OSError as error:
            raise SchemaError(f"{self.path}: cannot be read as a table: {error}") from None
        if not unchanged:
            raise SchemaError(f"{self.path}: changed while it was being read")


def _stamps(files: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    """Each file's size and modification time, in nanoseconds."""
    stats = [file.stat() for file in files]
    return tuple((stat.st_size, stat.st_mtime_ns) for stat in stats)


def describe_source(source: TableSource) -> str:
    """A short name for error messages: the file name, or the kind of in-memory table."""
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, ParquetColumns):
        return str(source.path)
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


def read_columns(source: TableSource, text_columns: Sequence[str] = ()) -> ColumnTable:
    """``source`` to be fitted or encoded: a Parquet path as ``ParquetColumns``, a column at
    a time; anything else whole, as ``read_table`` reads it."""
    if isinstance(source, ParquetColumns):
        return source
    if isinstance(source, str | Path) and _is_parquet(Path(source)):
        return ParquetColumns.open(source)
    return read_table(source, text_columns)


def _is_parquet(path: Path) -> bool:
    """A Parquet file's name, or a folder (of Parquet files, as ``read_table`` takes it)."""
    return path.suffix.lower() in PARQUET_SUFFIXES or path.is_dir()


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


def read_header(path: str | Path) -> list[str]:
    """The column names of the table at ``path``, from no more than its Parquet metadata or
    CSV header, with the error ``read_table`` would raise for a path it cannot read: a run
    checks its held-out files this way before it reads the training table. (A CSV row that
    does not parse is found only by reading it.) For a folder: the columns every file has."""
    path = Path(path)
    columns = _read_path(path, (), header_only=True).columns
    if path.is_dir():
        for file in _parquet_files(path)[1:]:
            try:
                held = set(pl.read_parquet_schema(file))
            except (pl.exceptions.PolarsError, OSError) as error:
                raise SchemaError(f"{file}: cannot be read as a table: {error}") from None
            columns = [c for c in columns if c in held]
    return columns


def _read_path(path: Path, text_columns: Sequence[str], header_only: bool = False) -> pl.DataFrame:
    if not path.exists():
        raise SchemaError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = _parquet_files(path)
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


def _parquet_files(folder: Path) -> list[Path]:
    """A folder's Parquet files, in name order; an error if it holds none."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PARQUET_SUFFIXES)
    if not files:
        raise SchemaError(f"{folder}: the folder holds no .parquet files")
    return files
