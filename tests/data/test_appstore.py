"""The synthetic app store: files, columns, dtypes, seeding, chunking and size checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.data import appstore
from widedeep.data.appstore import make_appstore
from widedeep.errors import ConfigError

SMALL = {"users": 300, "apps": 60, "impressions": 5_000}
USERS_SCHEMA = {
    "user_id": pl.String,
    "country": pl.String,
    "device": pl.String,
    "age_bucket": pl.String,
    "installed_apps": pl.List(pl.String),
}
APPS_SCHEMA = {
    "app_id": pl.String,
    "category": pl.String,
    "developer": pl.String,
    "price_bucket": pl.String,
    "rating": pl.Float64,
}
IMPRESSIONS_SCHEMA = {
    "user_id": pl.String,
    "app_id": pl.String,
    "timestamp": pl.Int64,
    "hour": pl.Int64,
    "installed": pl.Int8,
}


def _read(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return tuple(  # type: ignore[return-value]
        pl.read_parquet(folder / f"{name}.parquet") for name in ("users", "apps", "impressions")
    )


def test_writes_the_documented_files_columns_and_dtypes(tmp_path: Path) -> None:
    files = make_appstore(tmp_path / "store", seed=1, **SMALL)
    folder = tmp_path / "store"
    assert files.folder == folder
    assert (files.users, files.apps, files.impressions) == (
        folder / "users.parquet",
        folder / "apps.parquet",
        folder / "impressions.parquet",
    )
    users, apps, impressions = _read(folder)
    assert dict(users.schema) == USERS_SCHEMA
    assert dict(apps.schema) == APPS_SCHEMA
    assert dict(impressions.schema) == IMPRESSIONS_SCHEMA
    assert (users.height, apps.height, impressions.height) == (300, 60, 5_000)

    assert users.get_column("user_id").is_unique().all()
    assert apps.get_column("app_id").is_unique().all()
    assert users.get_column("user_id")[0] == "u00000000"
    assert apps.get_column("app_id")[7] == "a000007"
    assert set(users.get_column("device")) <= set(appstore.DEVICES)
    assert set(users.get_column("age_bucket")) <= set(appstore.AGE_BUCKETS)
    assert set(apps.get_column("price_bucket")) <= set(appstore.PRICE_BUCKETS)
    assert apps.get_column("category").n_unique() == appstore.CATEGORIES
    ratings = apps.get_column("rating")
    assert ratings.min() >= 1.0 and ratings.max() <= 5.0  # type: ignore[operator]

    app_ids = set(apps.get_column("app_id"))
    installed = users.get_column("installed_apps").explode().drop_nulls()
    assert installed.len() > 0 and set(installed) <= app_ids
    assert (
        users.get_column("installed_apps").list.n_unique()
        == users.get_column("installed_apps").list.len()
    ).all()
    assert set(impressions.get_column("user_id")) <= set(users.get_column("user_id"))
    assert set(impressions.get_column("app_id")) <= app_ids
    assert set(impressions.get_column("installed").unique()) == {0, 1}
    hours = (impressions.get_column("timestamp") // 3600) % 24
    assert (impressions.get_column("hour") == hours).all()
    start = appstore.START_TIMESTAMP
    timestamps = impressions.get_column("timestamp")
    assert timestamps.min() == start
    assert timestamps.max() < start + appstore.DAYS * 86_400  # type: ignore[operator]


def test_settings_json_records_the_arguments_and_positive_rate(tmp_path: Path) -> None:
    files = make_appstore(tmp_path, seed=5, **SMALL)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings == {**SMALL, "seed": 5, "positive_rate": files.positive_rate}
    assert files.settings == {**SMALL, "seed": 5}
    impressions = pl.read_parquet(files.impressions)
    assert files.positive_rate == pytest.approx(impressions.get_column("installed").mean())


def test_positive_rate_is_plausible(tmp_path: Path) -> None:
    files = make_appstore(tmp_path, users=500, apps=100, impressions=20_000, seed=0)
    assert 0.05 <= files.positive_rate <= 0.40


def test_same_seed_same_tables_other_seed_different(tmp_path: Path) -> None:
    make_appstore(tmp_path / "a", seed=3, **SMALL)
    make_appstore(tmp_path / "b", seed=3, **SMALL)
    make_appstore(tmp_path / "c", seed=4, **SMALL)
    first, again, other = (_read(tmp_path / name) for name in "abc")
    for frame, same in zip(first, again, strict=True):
        assert_frame_equal(frame, same)
    assert (tmp_path / "a" / "settings.json").read_text() == (
        tmp_path / "b" / "settings.json"
    ).read_text()
    for frame, different in zip(first, other, strict=True):
        assert not frame.equals(different)


def test_chunked_generation_keeps_rows_and_time_order(tmp_path: Path) -> None:
    whole = make_appstore(tmp_path / "whole", seed=2, **SMALL)
    chunked = make_appstore(tmp_path / "chunked", seed=2, chunk_rows=700, **SMALL)
    impressions = pl.read_parquet(chunked.impressions)
    assert impressions.height == SMALL["impressions"]
    assert impressions.get_column("timestamp").is_sorted()
    assert_frame_equal(  # the timestamps are a function of the row position only
        impressions.select("timestamp", "hour"),
        pl.read_parquet(whole.impressions).select("timestamp", "hour"),
    )
    # same world: the users and apps tables do not depend on chunking
    for name in ("users", "apps"):
        assert_frame_equal(
            pl.read_parquet(tmp_path / "whole" / f"{name}.parquet"),
            pl.read_parquet(tmp_path / "chunked" / f"{name}.parquet"),
        )
    assert 0.05 <= chunked.positive_rate <= 0.40


def test_tiny_sizes_work(tmp_path: Path) -> None:
    for seed in range(3):
        files = make_appstore(
            tmp_path / str(seed), users=2, apps=24, impressions=10, seed=seed, chunk_rows=3
        )
        users, apps, impressions = _read(tmp_path / str(seed))
        assert (users.height, apps.height, impressions.height) == (2, 24, 10)
        assert apps.get_column("category").n_unique() == appstore.CATEGORIES
        assert impressions.get_column("timestamp").is_sorted()
        assert 0.0 <= files.positive_rate <= 1.0


@pytest.mark.parametrize(
    ("sizes", "problem"),
    [
        ({"users": 1}, "users must be >= 2"),
        ({"apps": 23}, "apps must be >= 24"),
        ({"impressions": 0}, "impressions must be >= 1"),
        ({"chunk_rows": 0}, "chunk_rows must be >= 1"),
    ],
)
def test_bad_sizes_are_config_errors(tmp_path: Path, sizes: dict[str, int], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_appstore(tmp_path / "out", **{**SMALL, **sizes})
    assert not (tmp_path / "out").exists()


def test_every_bad_size_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        make_appstore(tmp_path, users=0, apps=3, impressions=-5, chunk_rows=0)
    message = str(error.value)
    for name in ("users", "apps", "impressions", "chunk_rows"):
        assert f"{name} must be" in message


def test_impressions_work_when_no_user_has_installed_apps() -> None:
    rng = np.random.default_rng(0)
    world, _, _ = appstore._build_world(2, 24, rng)
    empty = np.zeros(0, dtype=np.int64)
    world = dataclasses.replace(
        world,
        installed_offsets=np.zeros(3, dtype=np.int64),
        installed_apps=empty,
        installed_keys=empty,
    )
    table, _ = appstore._impression_chunk(world, 0, 50, 50, rng)
    assert table.num_rows == 50
