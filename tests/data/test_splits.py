"""Random, global-time and per-user temporal splits on small hand-made tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.data.splits import random_split, split_table, time_split, user_temporal_split
from widedeep.errors import ConfigError


def _rows(*parts: pl.DataFrame) -> list[list[int]]:
    return [part.get_column("row").to_list() for part in parts]


def _shuffled_times(n: int, seed: int = 0) -> pl.DataFrame:
    """n rows with distinct, shuffled timestamps and a 'row' id."""
    times = np.random.default_rng(seed).permutation(n) * 10 + 1000
    return pl.DataFrame({"row": np.arange(n), "ts": times, "value": np.arange(n) * 0.5})


def _histories() -> pl.DataFrame:
    """Users with 1, 2, 3, 5 and 10 interactions, rows interleaved, times out of order."""
    counts = {"u1": 1, "u2": 2, "u3": 3, "u5": 5, "u10": 10}
    rng = np.random.default_rng(3)
    users = [user for user, count in counts.items() for _ in range(count)]
    times = [t for count in counts.values() for t in rng.permutation(count) * 100 + 7]
    order = rng.permutation(len(users))
    return pl.DataFrame(
        {
            "user": [users[k] for k in order],
            "ts": [int(times[k]) for k in order],
            "row": np.arange(len(users)),
        }
    )


# --- random ------------------------------------------------------------------------------


def test_random_split_sizes_disjoint_and_covering() -> None:
    frame = _shuffled_times(100)
    train, validation, test = random_split(frame, 0.2, 0.1, seed=1)
    assert (train.height, validation.height, test.height) == (70, 20, 10)
    rows = _rows(train, validation, test)
    assert sorted(rows[0] + rows[1] + rows[2]) == list(range(100))
    assert train.columns == frame.columns


def test_random_split_is_seeded() -> None:
    frame = _shuffled_times(50)
    first = random_split(frame, 0.2, 0.2, seed=4)
    again = random_split(frame, 0.2, 0.2, seed=4)
    other = random_split(frame, 0.2, 0.2, seed=5)
    for part, same in zip(first, again, strict=True):
        assert_frame_equal(part, same)
    assert _rows(*first) != _rows(*other)


def test_random_split_rounds_sizes_and_allows_empty_parts() -> None:
    train, validation, test = random_split(_shuffled_times(7), 0.3, 0.0, seed=0)
    assert (train.height, validation.height, test.height) == (5, 2, 0)


def test_random_split_refuses_to_leave_no_training_rows() -> None:
    with pytest.raises(ConfigError, match="no training rows"):
        random_split(_shuffled_times(2), 0.5, 0.5, seed=0)


# --- time --------------------------------------------------------------------------------


def test_time_split_holds_out_the_latest_rows() -> None:
    frame = _shuffled_times(20, seed=2)
    train, validation, test = time_split(frame, "ts", 0.25, 0.2)
    assert (train.height, validation.height, test.height) == (11, 5, 4)
    assert set().union(*map(set, _rows(train, validation, test))) == set(range(20))
    assert train.get_column("ts").max() < validation.get_column("ts").min()  # type: ignore[operator]
    assert validation.get_column("ts").max() < test.get_column("ts").min()  # type: ignore[operator]
    times = sorted(frame.get_column("ts").to_list())
    assert sorted(test.get_column("ts").to_list()) == times[-4:]
    assert sorted(validation.get_column("ts").to_list()) == times[-9:-4]
    assert train.columns == frame.columns


def test_time_split_breaks_ties_by_row_order() -> None:
    frame = pl.DataFrame({"row": range(6), "ts": [5, 1, 5, 5, 1, 5]})
    train, validation, test = time_split(frame, "ts", 1 / 6, 2 / 6)
    # by (ts, row): 1, 4, 0, 2, 3, 5
    assert _rows(train, validation, test) == [[1, 4, 0], [2], [3, 5]]


def test_time_split_missing_column_is_named() -> None:
    with pytest.raises(ConfigError, match="'when'"):
        time_split(_shuffled_times(10), "when", 0.1, 0.1)


def test_time_split_refuses_to_leave_no_training_rows() -> None:
    with pytest.raises(ConfigError, match="no training rows"):
        time_split(_shuffled_times(3), "ts", 0.5, 0.5)


# --- per user, by time ----------------------------------------------------------------------


def _check_user_temporal(
    frame: pl.DataFrame,
    parts: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    expected_sizes: dict[str, tuple[int, int, int]],
) -> None:
    train, validation, test = parts
    rows = _rows(train, validation, test)
    assert sorted(rows[0] + rows[1] + rows[2]) == list(range(frame.height))
    for part in parts:  # each part keeps the input's row order and columns
        assert part.get_column("row").is_sorted()
        assert part.columns == frame.columns
    for user, sizes in expected_sizes.items():
        mine = [part.filter(pl.col("user") == user) for part in parts]
        assert tuple(part.height for part in mine) == sizes, user
        assert mine[0].height >= 1
        times = sorted(frame.filter(pl.col("user") == user).get_column("ts").to_list())
        n_test, n_validation = sizes[2], sizes[1]
        assert sorted(mine[2].get_column("ts").to_list()) == times[len(times) - n_test :]
        assert (
            sorted(mine[1].get_column("ts").to_list())
            == times[len(times) - n_test - n_validation : len(times) - n_test]
        )


def test_user_temporal_split_with_last_n() -> None:
    frame = _histories()
    parts = user_temporal_split(frame, "user", "ts", last_n=2, validation_fraction=0.1)
    _check_user_temporal(
        frame,
        parts,
        {
            "u1": (1, 0, 0),
            "u2": (1, 0, 1),
            "u3": (1, 0, 2),
            "u5": (1, 2, 2),
            "u10": (6, 2, 2),
        },
    )


def test_user_temporal_split_with_last_n_and_no_validation() -> None:
    frame = _histories()
    parts = user_temporal_split(frame, "user", "ts", last_n=3, validation_fraction=0.0)
    _check_user_temporal(
        frame,
        parts,
        {"u1": (1, 0, 0), "u2": (1, 0, 1), "u3": (1, 0, 2), "u5": (2, 0, 3), "u10": (7, 0, 3)},
    )


def test_user_temporal_split_with_fractions() -> None:
    frame = _histories()
    parts = user_temporal_split(frame, "user", "ts", validation_fraction=0.2, test_fraction=0.3)
    # floor(count * fraction) per user, never the last training row
    _check_user_temporal(
        frame,
        parts,
        {"u1": (1, 0, 0), "u2": (2, 0, 0), "u3": (3, 0, 0), "u5": (3, 1, 1), "u10": (5, 2, 3)},
    )


def test_user_temporal_split_breaks_time_ties_by_row_order() -> None:
    frame = pl.DataFrame({"user": ["a"] * 4, "ts": [3, 3, 3, 3], "row": [0, 1, 2, 3]})
    train, validation, test = user_temporal_split(
        frame, "user", "ts", last_n=1, validation_fraction=0.5
    )
    assert _rows(train, validation, test) == [[0, 1], [2], [3]]


def test_leave_last_one_out() -> None:
    frame = _histories()
    parts = split_table(
        frame,
        "leave_last_one_out",
        validation_fraction=0.1,
        test_fraction=0.1,
        seed=0,
        user_key="user",
        time_column="ts",
    )
    _check_user_temporal(
        frame,
        parts,
        {"u1": (1, 0, 0), "u2": (1, 0, 1), "u3": (1, 1, 1), "u5": (3, 1, 1), "u10": (8, 1, 1)},
    )
    test = parts[2]
    assert test.get_column("user").is_unique().all()


def test_leave_last_one_out_ignores_last_n() -> None:
    frame = _histories()
    parts = split_table(
        frame,
        "leave_last_one_out",
        validation_fraction=0.1,
        test_fraction=0.1,
        seed=0,
        user_key="user",
        time_column="ts",
        last_n=4,
    )
    assert parts[2].filter(pl.col("user") == "u10").height == 1


@pytest.mark.parametrize("missing", ["user", "ts"])
def test_user_temporal_split_missing_column_is_named(missing: str) -> None:
    frame = _histories().drop(missing)
    with pytest.raises(ConfigError, match=f"'{missing}'"):
        user_temporal_split(frame, "user", "ts", last_n=1)


# --- split_table ---------------------------------------------------------------------------


def test_split_table_dispatches_to_each_kind() -> None:
    frame = _histories()
    common: dict[str, Any] = {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 9}
    for got, want in [
        (split_table(frame, "random", **common), random_split(frame, 0.2, 0.2, 9)),
        (split_table(frame, "time", time_column="ts", **common), time_split(frame, "ts", 0.2, 0.2)),
        (
            split_table(frame, "user_temporal", user_key="user", time_column="ts", **common),
            user_temporal_split(frame, "user", "ts", validation_fraction=0.2, test_fraction=0.2),
        ),
    ]:
        for part, expected in zip(got, want, strict=True):
            assert_frame_equal(part, expected)


@pytest.mark.parametrize("kind", ["time", "user_temporal", "leave_last_one_out"])
def test_split_table_needs_a_time_column(kind: str) -> None:
    with pytest.raises(ConfigError, match="time_column"):
        split_table(
            _histories(), kind, validation_fraction=0.1, test_fraction=0.1, seed=0, user_key="user"
        )


def test_split_table_time_column_missing_from_table_is_named() -> None:
    with pytest.raises(ConfigError, match="'clock'"):
        split_table(
            _histories(),
            "user_temporal",
            validation_fraction=0.1,
            test_fraction=0.1,
            seed=0,
            user_key="user",
            time_column="clock",
        )


@pytest.mark.parametrize("kind", ["user_temporal", "leave_last_one_out"])
def test_split_table_per_user_kinds_need_a_user_key(kind: str) -> None:
    with pytest.raises(ConfigError, match="user_key"):
        split_table(
            _histories(), kind, validation_fraction=0.1, test_fraction=0.1, seed=0, time_column="ts"
        )


def test_split_table_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="unknown split 'weekly'"):
        split_table(
            _histories(),
            "weekly",
            validation_fraction=0.1,
            test_fraction=0.1,
            seed=0,
            user_key="user",
            time_column="ts",
        )


def test_split_table_unknown_kind_without_time_column() -> None:
    with pytest.raises(ConfigError, match="unknown split 'weekly'"):
        split_table(_histories(), "weekly", validation_fraction=0.1, test_fraction=0.1, seed=0)
