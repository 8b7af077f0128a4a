"""Which columns of a benchmark table are features, and of which kind: the one rule every
runner, ours and the peers', reads them by (polars only, so any peer venv can import it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

LABEL = "label"


@dataclass(frozen=True)
class Columns:
    """A table's features, in the file's order: its string columns are categorical, every
    other column but the label is numeric (Criteo: I1..I13 and C1..C26)."""

    numeric: list[str]
    categorical: list[str]

    @classmethod
    def of(cls, schema: pl.Schema) -> Columns:
        """The features of a table with this schema."""
        features = [name for name in schema if name != LABEL]
        categorical = [name for name in features if schema[name] == pl.String]
        return cls([name for name in features if name not in categorical], categorical)

    @classmethod
    def of_file(cls, path: str | Path) -> Columns:
        """The features of a Parquet file, read from its footer alone."""
        return cls.of(pl.read_parquet_schema(path))
