"""load_splits on a recommendation config: split first, then sampled negatives, then the join."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from widedeep.config import DataConfig
from widedeep.data.sources import load_splits
from widedeep.errors import ConfigError
from widedeep.features.schema import LabelSpec

N_USERS = 6
N_ITEMS = 15
PER_USER = 6
LABEL = LabelSpec(column="label")


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(
        zip(
            frame.get_column("user_id").to_list(),
            frame.get_column("item_id").to_list(),
            strict=True,
        )
    )


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Any]:
    """Parquet interactions (unique user-item pairs, distinct times), users and items."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for u in range(N_USERS):
        slots = rng.permutation(PER_USER)  # each user's items in a random time order
        for k, item in enumerate(rng.choice(N_ITEMS, PER_USER, replace=False)):
            users.append(f"u{u}")
            items.append(f"i{item:02d}")
            times.append(1000 * u + 10 * int(slots[k]) + u)
    order = rng.permutation(len(users))
    interactions = pl.DataFrame(
        {
            "user_id": [users[k] for k in order],
            "item_id": [items[k] for k in order],
            "timestamp": [times[k] for k in order],
            "hour": [times[k] % 24 for k in order],
        }
    )
    user_table = pl.DataFrame(
        {"user_id": [f"u{u}" for u in range(N_USERS)], "age": [20 + u for u in range(N_USERS)]}
    )
    item_table = pl.DataFrame(
        {
            "item_id": [f"i{i:02d}" for i in range(N_ITEMS)],
            "genre": [f"g{i % 4}" for i in range(N_ITEMS)],
        }
    )
    paths = {}
    for name, frame in (
        ("interactions", interactions),
        ("users", user_table),
        ("items", item_table),
    ):
        paths[name] = str(tmp_path / f"{name}.parquet")
        frame.write_parquet(paths[name])
    return {"paths": paths, "interactions": interactions}


def _config(paths: dict[str, str], **overrides: Any) -> DataConfig:
    data: dict[str, Any] = {
        "train": paths["interactions"],
        "users": paths["users"],
        "items": paths["items"],
        "user_key": "user_id",
        "item_key": "item_id",
        "split": "user_temporal",
        "time_column": "timestamp",
        "validation_fraction": 0.2,
        "test_fraction": 0.34,
        "negatives": {"ratio": 2},
    }
    data.update(overrides)
    return DataConfig.model_validate(data)


@pytest.mark.parametrize("last_n", [None, 1])
def test_recommendation_splits_are_joined_labelled_and_held_out(
    tables: dict[str, Any], last_n: int | None
) -> None:
    interactions: pl.DataFrame = tables["interactions"]
    config = _config(tables["paths"], last_n=last_n)
    assert config.is_recommendation
    splits = load_splits(config, LABEL)
    assert splits.test is not None and splits.rec is not None
    expected_columns = {"user_id", "item_id", "timestamp", "hour", "label", "age", "genre"}
    for part in (splits.train, splits.validation, splits.test):
        assert set(part.columns) == expected_columns
        assert part.schema["label"] == pl.Int8
        assert set(part.get_column("label").unique().to_list()) == {0, 1}
        # every row's user and item features come from their tables
        assert (
            part.get_column("age") == part.get_column("user_id").str.slice(1).cast(int) + 20
        ).all()
        assert part.get_column("genre").null_count() == 0

    labelled_parts = (splits.train, splits.validation, splits.test)
    positives = [part.filter(pl.col("label") == 1) for part in labelled_parts]
    assert sum(part.height for part in positives) == interactions.height
    assert set().union(*map(_pairs, positives)) == _pairs(interactions)
    _, validation, test = positives
    held_out = _pairs(validation) | _pairs(test)
    assert not (held_out & _pairs(splits.train))  # not as positives, nor as negatives
    assert not (_pairs(test) & _pairs(splits.validation))

    # per user, the test part holds that user's latest interactions, validation the ones before
    for user in interactions.get_column("user_id").unique():
        mine = [part.filter(pl.col("user_id") == user) for part in positives]
        assert mine[0].height >= 1
        expected_test = 1 if last_n == 1 else 2  # floor(6 * 0.34)
        assert mine[2].height == expected_test
        assert mine[1].height == 1
        assert mine[0].get_column("timestamp").max() < mine[1].get_column("timestamp").min()  # type: ignore[operator]
        assert mine[1].get_column("timestamp").max() < mine[2].get_column("timestamp").min()  # type: ignore[operator]

    # ratio 2: two negatives per positive; none is a known positive of any split
    known = _pairs(interactions)
    for part, labelled in zip(positives, labelled_parts, strict=True):
        negatives = labelled.filter(pl.col("label") == 0)
        assert negatives.height == 2 * part.height
        assert not (_pairs(negatives) & known)
        assert set(negatives.get_column("item_id")) <= {f"i{i:02d}" for i in range(N_ITEMS)}


def test_rec_splits_keep_the_unjoined_tables(tables: dict[str, Any]) -> None:
    splits = load_splits(_config(tables["paths"]), LABEL)
    rec = splits.rec
    assert rec is not None and rec.test is not None
    assert set(rec.train.columns) == {"user_id", "item_id", "timestamp", "hour", "label"}
    assert rec.train.height == splits.train.height
    assert rec.tables.users is not None and rec.tables.users.height == N_USERS
    assert rec.tables.items is not None and rec.tables.items.height == N_ITEMS


def test_negatives_follow_the_configured_seed(tables: dict[str, Any]) -> None:
    paths = tables["paths"]
    first = load_splits(_config(paths, negatives={"ratio": 2, "seed": 3}), LABEL)
    again = load_splits(_config(paths, negatives={"ratio": 2, "seed": 3}), LABEL)
    other = load_splits(_config(paths, negatives={"ratio": 2, "seed": 4}), LABEL)
    assert first.train.equals(again.train)
    assert not first.train.equals(other.train)


def test_popularity_strategy_through_the_config(tables: dict[str, Any]) -> None:
    config = _config(tables["paths"], negatives={"ratio": 3, "strategy": "popularity"})
    splits = load_splits(config, LABEL)
    negatives = splits.train.filter(pl.col("label") == 0)
    positives = splits.train.filter(pl.col("label") == 1)
    assert negatives.height == 3 * positives.height
    assert not (_pairs(negatives) & _pairs(tables["interactions"]))


def test_without_negatives_the_interactions_keep_their_own_label(
    tables: dict[str, Any], tmp_path: Path
) -> None:
    interactions: pl.DataFrame = tables["interactions"]
    labelled = interactions.with_columns((pl.col("timestamp") % 2).cast(pl.Int8).alias("label"))
    path = tmp_path / "labelled.parquet"
    labelled.write_parquet(path)
    paths = {**tables["paths"], "interactions": str(path)}
    splits = load_splits(_config(paths, negatives=None), LABEL)
    assert splits.test is not None
    total = splits.train.height + splits.validation.height + splits.test.height
    assert total == interactions.height


def test_negatives_refuse_an_existing_label_column(tables: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "labelled.parquet"
    tables["interactions"].with_columns(pl.lit(1).alias("label")).write_parquet(path)
    paths = {**tables["paths"], "interactions": str(path)}
    with pytest.raises(ConfigError, match="'label'"):
        load_splits(_config(paths), LABEL)


def test_keys_read_as_text_from_csv_and_as_numbers_from_parquet_are_made_alike(
    tmp_path: Path,
) -> None:
    """CSV keys are read as text ('007' stays '007'); the same keys in a Parquet table may be
    integers. The tables must still concatenate (for the negatives) and join, so where their
    key types differ the keys become text in all of them."""
    numbers = pl.DataFrame(
        {
            "user_id": [1, 2, 3, 1, 2, 3] * 4,
            "item_id": [10, 11, 12, 13, 14, 15] * 4,
            "timestamp": list(range(24)),
        }
    )
    numbers.write_csv(tmp_path / "interactions.csv")
    numbers.head(6).write_parquet(tmp_path / "validation.parquet")
    items = pl.DataFrame({"item_id": list(range(10, 18)), "genre": list("abcdefgh")})
    items.write_parquet(tmp_path / "items.parquet")
    config = DataConfig.model_validate(
        {
            "train": str(tmp_path / "interactions.csv"),
            "validation": str(tmp_path / "validation.parquet"),
            "items": str(tmp_path / "items.parquet"),
            "test_fraction": 0,
            "negatives": {"ratio": 1},
        }
    )
    splits = load_splits(config, LABEL, id_columns=["user_id", "item_id"])
    for frame in (splits.train, splits.validation):
        assert frame.schema["user_id"] == frame.schema["item_id"] == pl.String
        assert frame.get_column("genre").null_count() == 0  # every item joined its row
    assert ("1", "10") in _pairs(splits.train)
