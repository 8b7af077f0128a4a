"""Data sets shipped inside the package, so the demo and the tests run offline."""

from __future__ import annotations

from importlib import resources

import polars as pl

from widedeep.errors import ConfigError


def load_adult() -> pl.DataFrame:
    """The UCI Adult census income data (48,842 rows, CC BY 4.0); label column 'income'.

    The data set of the original TensorFlow Wide & Deep tutorial.
    """
    path = resources.files("widedeep.data") / "datasets" / "adult.parquet"
    with resources.as_file(path) as file:
        return pl.read_parquet(file)


BUILTIN = {"adult": load_adult}


def load_builtin(name: str) -> pl.DataFrame:
    """A built-in data set by name."""
    if name not in BUILTIN:
        raise ConfigError(f"unknown built-in data set '{name}', expected one of {sorted(BUILTIN)}")
    return BUILTIN[name]()
