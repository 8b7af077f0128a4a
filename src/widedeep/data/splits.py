"""Seeded splits of a table into train, validation and test parts."""

from __future__ import annotations

import numpy as np
import polars as pl

from widedeep.errors import ConfigError


def random_split(
    frame: pl.DataFrame, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Shuffle rows with ``seed`` and cut them into (train, validation, test)."""
    n = frame.height
    n_validation = round(n * validation_fraction)
    n_test = round(n * test_fraction)
    if n - n_validation - n_test < 1:
        raise ConfigError(f"a split of {n} rows leaves no training rows")
    order = np.random.default_rng(seed).permutation(n)
    test_rows = order[:n_test]
    validation_rows = order[n_test : n_test + n_validation]
    train_rows = order[n_test + n_validation :]
    return frame[train_rows], frame[validation_rows], frame[test_rows]
