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


SPLIT_KINDS = ("random", "time", "user_temporal", "leave_last_one_out")


def _check_columns(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{what} needs column(s) {missing}, which the table does not have")


def time_split(
    frame: pl.DataFrame, time_column: str, validation_fraction: float, test_fraction: float
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A global time cut: the latest rows are the test part, the ones before the validation."""
    _check_columns(frame, [time_column], "a time split")
    ordered = frame.with_row_index("__row").sort([time_column, "__row"])
    n = ordered.height
    n_test = round(n * test_fraction)
    n_validation = round(n * validation_fraction)
    if n - n_validation - n_test < 1:
        raise ConfigError(f"a split of {n} rows leaves no training rows")
    train = ordered.slice(0, n - n_validation - n_test)
    validation = ordered.slice(n - n_validation - n_test, n_validation)
    test = ordered.slice(n - n_test, n_test)
    return tuple(part.drop("__row") for part in (train, validation, test))  # type: ignore[return-value]


def user_temporal_split(
    frame: pl.DataFrame,
    user_key: str,
    time_column: str,
    *,
    last_n: int | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per user, by time: the latest rows (``last_n``, or a fraction) are test, the ones
    before them validation. A user keeps at least one row in training."""
    _check_columns(frame, [user_key, time_column], "a per-user temporal split")
    ranked = (
        frame.with_row_index("__row")
        .sort([user_key, time_column, "__row"])
        .with_columns(
            pl.int_range(pl.len()).reverse().over(user_key).alias("__from_end"),
            pl.len().over(user_key).alias("__count"),
        )
    )
    if last_n is not None:
        n_test = pl.lit(last_n)
        n_validation = pl.lit(last_n) if validation_fraction > 0 else pl.lit(0)
    else:
        n_test = (pl.col("__count") * test_fraction).floor().cast(pl.Int64)
        n_validation = (pl.col("__count") * validation_fraction).floor().cast(pl.Int64)
    # Never take a user's last training row: shrink the held-out parts for short histories.
    n_test = pl.min_horizontal(n_test, pl.col("__count") - 1)
    n_validation = pl.min_horizontal(n_validation, pl.col("__count") - 1 - n_test)
    ranked = ranked.with_columns(n_test.alias("__n_test"), n_validation.alias("__n_validation"))
    is_test = pl.col("__from_end") < pl.col("__n_test")
    is_validation = ~is_test & (
        pl.col("__from_end") < pl.col("__n_test") + pl.col("__n_validation")
    )
    helpers = ["__row", "__from_end", "__count", "__n_test", "__n_validation"]

    def part(condition: pl.Expr) -> pl.DataFrame:
        return ranked.filter(condition).sort("__row").drop(helpers)

    return part(~is_test & ~is_validation), part(is_validation), part(is_test)


def split_table(
    frame: pl.DataFrame,
    kind: str,
    *,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    user_key: str | None = None,
    time_column: str | None = None,
    last_n: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(train, validation, test) by one of SPLIT_KINDS."""
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"unknown split '{kind}', expected one of {SPLIT_KINDS}")
    if kind == "random":
        return random_split(frame, validation_fraction, test_fraction, seed)
    if time_column is None:
        raise ConfigError(f"the '{kind}' split needs data.time_column")
    if kind == "time":
        return time_split(frame, time_column, validation_fraction, test_fraction)
    if user_key is None:
        raise ConfigError(f"the '{kind}' split needs data.user_key")
    if kind == "leave_last_one_out":
        last_n = 1
    elif kind != "user_temporal":
        raise ConfigError(f"unknown split '{kind}', expected one of {SPLIT_KINDS}")
    return user_temporal_split(
        frame,
        user_key,
        time_column,
        last_n=last_n,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    )
