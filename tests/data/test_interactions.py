"""Users/items tables joined by key, and seeded negative sampling on tiny hand-made tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.data.interactions import RecTables, sample_negatives, with_sampled_negatives
from widedeep.errors import ConfigError, SchemaError

CATALOG = pl.Series("item", [f"i{k}" for k in range(8)])


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(
        zip(frame.get_column("user").to_list(), frame.get_column("item").to_list(), strict=True)
    )


def _dense_positives(seed: int) -> pl.DataFrame:
    """4 users who each have 5 to 7 of the 8 catalog items (most items are positives)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user, size in zip(["a", "b", "c", "d"], [5, 6, 7, 7], strict=True):
        for item in rng.choice(CATALOG.to_list(), size, replace=False):
            rows.append((user, str(item)))
    return pl.DataFrame(
        {
            "user": [user for user, _ in rows],
            "item": [item for _, item in rows],
            "timestamp": np.arange(len(rows), dtype=np.int64) * 10,
            "device": [f"dev{k % 3}" for k in range(len(rows))],
            "row": np.arange(len(rows), dtype=np.int64),
        }
    )


def _sparse_positives() -> pl.DataFrame:
    """3 users with 1 to 3 items each of a 40-item catalog (plenty of free items)."""
    return pl.DataFrame(
        {
            "user": ["a", "a", "a", "b", "c", "c"],
            "item": ["i0", "i1", "i2", "i0", "i5", "i9"],
            "timestamp": [1, 2, 3, 4, 5, 6],
            "row": [0, 1, 2, 3, 4, 5],
        }
    )


WIDE_CATALOG = pl.Series("item", [f"i{k}" for k in range(40)])


# --- sample_negatives -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "popularity"])
def test_no_negative_is_a_known_positive_over_many_seeds(strategy: str) -> None:
    for seed in range(40):
        positives = _dense_positives(seed)
        negatives = sample_negatives(
            positives,
            user_key="user",
            item_key="item",
            catalog=CATALOG,
            ratio=3,
            strategy=strategy,  # type: ignore[arg-type]
            seed=seed,
        )
        assert negatives.height > 0
        assert not (_pairs(negatives) & _pairs(positives)), f"seed {seed}"
        assert set(negatives.get_column("item")) <= set(CATALOG)


def test_known_positives_from_other_parts_are_never_drawn() -> None:
    positives = pl.DataFrame({"user": ["a", "b"], "item": ["i0", "i0"]})
    known = pl.DataFrame(  # every positive, as load_splits passes: a has all but i7
        {
            "user": ["a"] * 7 + ["b"] * 4,
            "item": [f"i{k}" for k in range(7)] + [f"i{k}" for k in range(4)],
        }
    )
    for seed in range(20):
        negatives = sample_negatives(
            positives,
            user_key="user",
            item_key="item",
            catalog=CATALOG,
            ratio=5,
            seed=seed,
            known_positives=known,
        )
        assert negatives.height == 10
        assert not (_pairs(negatives) & _pairs(known))
        # a has only i7 left; b has i4..i7
        assert set(negatives.filter(pl.col("user") == "a").get_column("item")) == {"i7"}
        assert set(negatives.filter(pl.col("user") == "b").get_column("item")) <= {
            "i4",
            "i5",
            "i6",
            "i7",
        }


@pytest.mark.parametrize("ratio", [1, 2, 5])
def test_ratio_is_honoured_per_positive_row(ratio: int) -> None:
    positives = _sparse_positives()
    negatives = sample_negatives(
        positives, user_key="user", item_key="item", catalog=WIDE_CATALOG, ratio=ratio, seed=3
    )
    assert negatives.height == ratio * positives.height
    per_row = negatives.group_by("row").len().sort("row")
    assert per_row.get_column("row").to_list() == positives.get_column("row").to_list()
    assert set(per_row.get_column("len").to_list()) == {ratio}


def test_user_without_free_items_gets_no_negatives_and_others_keep_the_ratio() -> None:
    full = pl.DataFrame({"user": ["full"] * CATALOG.len(), "item": CATALOG.to_list()})
    light = pl.DataFrame({"user": ["light", "light"], "item": ["i0", "i1"]})
    positives = pl.concat([full, light])
    for seed in range(10):
        negatives = sample_negatives(
            positives, user_key="user", item_key="item", catalog=CATALOG, ratio=3, seed=seed
        )
        assert negatives.get_column("user").to_list() == ["light"] * 6
        assert not (_pairs(negatives) & _pairs(positives))


def test_ratio_is_honoured_when_a_single_free_item_is_left() -> None:
    catalog = pl.Series("item", [f"i{k:02d}" for k in range(20)])
    positives = pl.DataFrame({"user": ["u"] * 19, "item": catalog[:19].to_list()})
    for seed in range(5):
        negatives = sample_negatives(
            positives, user_key="user", item_key="item", catalog=catalog, ratio=4, seed=seed
        )
        assert negatives.height == 4 * 19, f"seed {seed}"
        assert set(negatives.get_column("item")) == {"i19"}


def test_same_seed_same_negatives_other_seed_different() -> None:
    positives = _sparse_positives()

    def draw(seed: int) -> pl.DataFrame:
        return sample_negatives(
            positives, user_key="user", item_key="item", catalog=WIDE_CATALOG, ratio=4, seed=seed
        )

    assert_frame_equal(draw(7), draw(7))
    assert not draw(7).equals(draw(8))


def test_popularity_strategy_draws_popular_items_more_often() -> None:
    catalog = pl.Series("item", [f"i{k}" for k in range(10)])
    # i0 has 200 positives, i1 100, ..., i9 none: weights are counts + 1.
    counts = [200, 100, 50, 20, 10, 5, 2, 1, 0, 0]
    popularity = pl.DataFrame(
        {"item": [f"i{k}" for k, count in enumerate(counts) for _ in range(count)]}
    )
    positives = pl.DataFrame({"user": ["z"] * 10, "item": ["i5"] * 10})
    popular = sample_negatives(
        positives,
        user_key="user",
        item_key="item",
        catalog=catalog,
        ratio=300,
        strategy="popularity",
        seed=0,
        popularity=popularity,
    )
    drawn = dict(popular.get_column("item").value_counts().iter_rows())
    assert "i5" not in drawn
    assert drawn["i0"] > 20 * drawn.get("i9", 0) + 200
    assert drawn["i0"] > drawn["i1"] > drawn["i2"]
    uniform = sample_negatives(
        positives, user_key="user", item_key="item", catalog=catalog, ratio=300, seed=0
    )
    even = uniform.get_column("item").value_counts().get_column("count")
    assert even.max() < 1.5 * even.min()  # type: ignore[operator]


def test_popularity_defaults_to_the_positives_counts() -> None:
    catalog = pl.Series("item", [f"i{k}" for k in range(6)])
    # i1 is every other user's item; the sampled user 'z' has only i0.
    positives = pl.DataFrame(
        {"user": ["z"] + [f"u{k}" for k in range(30)], "item": ["i0"] + ["i1"] * 30}
    )
    negatives = sample_negatives(
        positives,
        user_key="user",
        item_key="item",
        catalog=catalog,
        ratio=200,
        strategy="popularity",
        seed=1,
    ).filter(pl.col("user") == "z")
    drawn = dict(negatives.get_column("item").value_counts().iter_rows())
    assert drawn["i1"] > 5 * max(drawn.get(f"i{k}", 0) for k in range(2, 6))


def test_negatives_copy_the_positive_row_with_only_the_item_changed() -> None:
    positives = _dense_positives(0)
    negatives = sample_negatives(
        positives, user_key="user", item_key="item", catalog=CATALOG, ratio=2, seed=5
    )
    assert negatives.columns == positives.columns
    assert negatives.schema == positives.schema
    source = positives.rename({"item": "positive_item"})
    joined = negatives.join(source, on="row", how="left", suffix="_positive")
    for column in ("user", "timestamp", "device"):
        assert joined.get_column(column).equals(
            joined.get_column(f"{column}_positive"), check_names=False
        )
    assert (joined.get_column("item") != joined.get_column("positive_item")).all()


def test_integer_keys_keep_their_dtype() -> None:
    positives = pl.DataFrame({"user": [1, 1, 2], "item": [10, 11, 10]})
    catalog = pl.Series("item", list(range(10, 30)))
    negatives = sample_negatives(
        positives, user_key="user", item_key="item", catalog=catalog, ratio=2, seed=0
    )
    assert negatives.schema == positives.schema
    assert negatives.height == 6
    assert not (set(negatives.iter_rows()) & set(positives.iter_rows()))


@pytest.mark.parametrize("ratio", [0, -1])
def test_ratio_below_one_is_a_config_error(ratio: int) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        sample_negatives(
            _sparse_positives(), user_key="user", item_key="item", catalog=CATALOG, ratio=ratio
        )


def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        sample_negatives(
            _sparse_positives(),
            user_key="user",
            item_key="item",
            catalog=CATALOG,
            ratio=1,
            strategy="trending",  # type: ignore[arg-type]
        )


def test_the_rows_own_positive_is_never_its_negative_with_other_known_positives() -> None:
    positives = pl.DataFrame({"user": ["a"], "item": ["x"]})
    known = pl.DataFrame({"user": ["b"], "item": ["y"]})  # e.g. positives of another split
    negatives = sample_negatives(
        positives,
        user_key="user",
        item_key="item",
        catalog=pl.Series("item", ["x", "y"]),
        ratio=20,
        seed=0,
        known_positives=known,
    )
    assert "x" not in set(negatives.get_column("item"))


def test_a_positive_outside_the_catalog_does_not_block_another_users_item() -> None:
    catalog = pl.Series("item", ["x", "y", "z"])
    # a's only free item is z; b's positive 'w' is not in the catalog.
    positives = pl.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "w"]})
    negatives = sample_negatives(
        positives, user_key="user", item_key="item", catalog=catalog, ratio=2, seed=0
    )
    assert negatives.filter(pl.col("user") == "a").get_column("item").to_list() == ["z"] * 4


def test_popularity_ignores_items_outside_the_catalog() -> None:
    catalog = pl.Series("item", ["p", "q", "r", "s"])
    positives = pl.DataFrame({"user": ["a"], "item": ["s"]})
    popularity = pl.DataFrame({"item": ["gone"] * 1000})  # no catalog item is popular
    negatives = sample_negatives(
        positives,
        user_key="user",
        item_key="item",
        catalog=catalog,
        ratio=3000,
        strategy="popularity",
        seed=0,
        popularity=popularity,
    )
    drawn = negatives.get_column("item").value_counts().get_column("count")
    assert drawn.max() < 1.5 * drawn.min()  # type: ignore[operator]


# --- with_sampled_negatives --------------------------------------------------------------


def test_with_sampled_negatives_labels_positives_one_and_negatives_zero() -> None:
    positives = _sparse_positives()
    labelled = with_sampled_negatives(
        positives,
        label_column="label",
        user_key="user",
        item_key="item",
        catalog=WIDE_CATALOG,
        ratio=2,
        strategy="uniform",
        seed=0,
        known_positives=positives,
    )
    assert labelled.height == 3 * positives.height
    assert labelled.schema["label"] == pl.Int8
    head = labelled.head(positives.height)
    assert_frame_equal(head.drop("label"), positives)
    assert head.get_column("label").to_list() == [1] * positives.height
    tail = labelled.tail(2 * positives.height)
    assert tail.get_column("label").to_list() == [0] * (2 * positives.height)
    assert not (_pairs(tail) & _pairs(positives))


def test_with_sampled_negatives_refuses_an_existing_label_column() -> None:
    positives = _sparse_positives().with_columns(pl.lit(1).alias("clicked"))
    with pytest.raises(ConfigError, match="'clicked'"):
        with_sampled_negatives(
            positives,
            label_column="clicked",
            user_key="user",
            item_key="item",
            catalog=WIDE_CATALOG,
            ratio=1,
            strategy="uniform",
            seed=0,
            known_positives=positives,
        )


def test_with_sampled_negatives_rejects_ratio_zero() -> None:
    positives = _sparse_positives()
    with pytest.raises(ConfigError, match="ratio"):
        with_sampled_negatives(
            positives,
            label_column="label",
            user_key="user",
            item_key="item",
            catalog=WIDE_CATALOG,
            ratio=0,
            strategy="uniform",
            seed=0,
            known_positives=positives,
        )


# --- RecTables ---------------------------------------------------------------------------

USERS = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [31, 45, 22]})
ITEMS = pl.DataFrame({"item_id": [10, 11, 12], "genre": ["rock", "jazz", "pop"]})


def test_join_adds_user_and_item_features_by_key_keeping_row_order() -> None:
    interactions = pl.DataFrame(
        {
            "user_id": ["u3", "u1", "u9", "u2", "u1"],
            "item_id": [12, 99, 10, 11, 10],
            "timestamp": [5, 4, 3, 2, 1],
        }
    )
    joined = RecTables(USERS, ITEMS, "user_id", "item_id").join(interactions)
    expected = interactions.with_columns(
        pl.Series("age", [22, 31, None, 45, 31]),
        pl.Series("genre", ["pop", None, "rock", "jazz", "rock"]),
    )
    assert_frame_equal(joined, expected)


def test_join_keeps_row_order_on_a_larger_table() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    users = pl.DataFrame({"user_id": np.arange(0, 500, 2), "score": np.arange(250) * 1.0})
    interactions = pl.DataFrame(
        {"user_id": rng.integers(0, 500, n), "item_id": rng.integers(0, 50, n), "row": range(n)}
    )
    joined = RecTables(users, None, "user_id", "item_id").join(interactions)
    assert joined.get_column("row").to_list() == list(range(n))
    even = joined.filter(pl.col("user_id") % 2 == 0)
    assert (even.get_column("score") == even.get_column("user_id") / 2).all()
    assert joined.filter(pl.col("user_id") % 2 == 1).get_column("score").is_null().all()


def test_join_with_only_one_side_table() -> None:
    interactions = pl.DataFrame({"user_id": ["u1"], "item_id": [11]})
    only_items = RecTables(None, ITEMS, "user_id", "item_id").join(interactions)
    assert only_items.columns == ["user_id", "item_id", "genre"]
    assert only_items.get_column("genre").to_list() == ["jazz"]
    neither = RecTables(None, None, "user_id", "item_id").join(interactions)
    assert_frame_equal(neither, interactions)


def test_join_casts_the_side_table_key_to_the_interactions_dtype() -> None:
    items = ITEMS.with_columns(pl.col("item_id").cast(pl.Int32))
    interactions = pl.DataFrame({"user_id": ["u2"], "item_id": [12]})  # Int64
    joined = RecTables(None, items, "user_id", "item_id").join(interactions)
    assert joined.schema["item_id"] == pl.Int64
    assert joined.get_column("genre").to_list() == ["pop"]


@pytest.mark.parametrize("side", ["users", "items"])
def test_duplicate_key_is_a_schema_error_naming_value_and_row(side: str) -> None:
    users = USERS
    items = ITEMS
    if side == "users":
        users = pl.DataFrame({"user_id": ["u1", "u2", "u7", "u7"], "age": [1, 2, 3, 4]})
        value = "'u7'"
    else:
        items = pl.DataFrame({"item_id": [10, 42, 11, 42], "genre": ["a", "b", "c", "d"]})
        value = "42"
    with pytest.raises(SchemaError) as error:
        RecTables(users, items, "user_id", "item_id")
    message = str(error.value)
    assert side in message
    assert value in message
    assert "row 2" in message if side == "users" else "row 1" in message


def test_column_in_both_side_tables_is_a_schema_error() -> None:
    users = USERS.with_columns(pl.lit("x").alias("country"))
    items = ITEMS.with_columns(pl.lit("y").alias("country"))
    with pytest.raises(SchemaError, match="country"):
        RecTables(users, items, "user_id", "item_id")


def test_side_table_column_already_in_interactions_is_a_schema_error() -> None:
    interactions = pl.DataFrame({"user_id": ["u1"], "item_id": [10], "age": [3]})
    with pytest.raises(SchemaError, match="age"):
        RecTables(USERS, ITEMS, "user_id", "item_id").join(interactions)


@pytest.mark.parametrize(
    ("users", "items", "missing"),
    [
        (USERS.rename({"user_id": "uid"}), ITEMS, "user_id"),
        (USERS, ITEMS.rename({"item_id": "iid"}), "item_id"),
    ],
)
def test_missing_key_column_in_a_side_table_is_a_schema_error(
    users: pl.DataFrame, items: pl.DataFrame, missing: str
) -> None:
    with pytest.raises(SchemaError, match=f"'{missing}'"):
        RecTables(users, items, "user_id", "item_id")


@pytest.mark.parametrize("missing", ["user_id", "item_id"])
def test_missing_key_column_in_interactions_is_a_schema_error(missing: str) -> None:
    interactions = pl.DataFrame({"user_id": ["u1"], "item_id": [10]}).drop(missing)
    with pytest.raises(SchemaError, match=f"interactions.*'{missing}'"):
        RecTables(USERS, ITEMS, "user_id", "item_id").join(interactions)
