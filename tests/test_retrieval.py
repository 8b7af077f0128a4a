"""Candidate generation: most popular items, item co-occurrence, and popular fill-ins."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from widedeep.data.interactions import key_positions
from widedeep.errors import ConfigError
from widedeep.retrieval import ItemCooccurrence, MostPopular, fill_with

CATALOG = pl.Series("item_id", ["A", "B", "C", "D", "E"])  # positions 0..4


def _positives(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": [user for user, _ in rows], "item_id": [item for _, item in rows]}
    )


# u1: A B, u2: A C, u3: A B, u4: D; E has no positives
HISTORY = _positives(
    [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "C"), ("u3", "A"), ("u3", "B"), ("u4", "D")]
)


def _histories(rows: dict[int, list[int]]) -> pl.DataFrame:
    pairs = [(row, item) for row, items in rows.items() for item in items]
    return pl.DataFrame(
        {"row": [row for row, _ in pairs], "item": [item for _, item in pairs]},
        schema={"row": pl.Int64, "item": pl.Int64},
    )


def _neighbours(model: ItemCooccurrence, item: int) -> list[tuple[int, int]]:
    rows = model.neighbors.filter(pl.col("item") == item)
    return list(
        zip(rows.get_column("neighbor").to_list(), rows.get_column("count").to_list(), strict=True)
    )


def test_key_positions_maps_values_to_catalog_positions() -> None:
    values = pl.Series(["C", "A", "Z", "E"])
    assert key_positions(values, CATALOG).tolist() == [2, 0, -1, 4]
    numbers = pl.Series([30, 10, 99])
    assert key_positions(numbers, pl.Series([10, 20, 30])).tolist() == [2, 0, -1]


# --- MostPopular ---------------------------------------------------------------------------


def test_most_popular_counts_and_ranking() -> None:
    model = MostPopular.fit(HISTORY, "item_id", CATALOG)
    assert model.counts.tolist() == [3, 2, 1, 1, 0]
    assert model.counts.dtype == np.int64
    # C and D tie at 1: catalog order decides
    assert model.ranking().tolist() == [0, 1, 2, 3, 4]


def test_most_popular_ties_follow_catalog_position() -> None:
    positives = _positives([("u", "E"), ("u", "C"), ("v", "E"), ("v", "C"), ("w", "B")])
    model = MostPopular.fit(positives, "item_id", CATALOG)
    assert model.ranking().tolist() == [2, 4, 1, 0, 3]


def test_most_popular_ignores_items_outside_the_catalog() -> None:
    positives = _positives([("u", "Z"), ("u", "Z"), ("u", "B")])
    model = MostPopular.fit(positives, "item_id", CATALOG)
    assert model.counts.tolist() == [0, 1, 0, 0, 0]


def test_most_popular_candidates_are_the_same_for_every_user() -> None:
    model = MostPopular.fit(HISTORY, "item_id", CATALOG)
    candidates = model.candidates(3, 2)
    assert candidates.tolist() == [[0, 1]] * 3
    candidates[0, 0] = 4  # a writable copy, not a broadcast view
    assert model.candidates(2, 10).shape == (2, 5)


def test_most_popular_frame_round_trip() -> None:
    model = MostPopular.fit(HISTORY, "item_id", CATALOG)
    frame = model.to_frame(CATALOG)
    assert frame.columns == ["item", "positives"]
    assert frame.get_column("item").to_list() == CATALOG.to_list()
    back = MostPopular.from_frame(frame, CATALOG)
    assert back.counts.tolist() == model.counts.tolist()
    # against a reordered catalog with a new item, counts follow the keys
    other = pl.Series("item_id", ["E", "N", "A", "B"])
    moved = MostPopular.from_frame(frame, other)
    assert moved.counts.tolist() == [0, 0, 3, 2]


# --- ItemCooccurrence ------------------------------------------------------------------------


def test_cooccurrence_counts_pairs_in_histories() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG)
    assert _neighbours(model, 0) == [(1, 2), (2, 1)]  # A: B twice, C once
    assert _neighbours(model, 1) == [(0, 2)]
    assert _neighbours(model, 2) == [(0, 1)]
    assert _neighbours(model, 3) == []  # D is alone in u4's history
    assert model.popular.counts.tolist() == [3, 2, 1, 1, 0]


def test_cooccurrence_counts_each_user_once_per_pair() -> None:
    repeated = pl.concat([HISTORY, _positives([("u1", "B"), ("u1", "A")])])
    model = ItemCooccurrence.fit(repeated, "user_id", "item_id", CATALOG)
    assert _neighbours(model, 0) == [(1, 2), (2, 1)]


def test_cooccurrence_keeps_at_most_neighbors_per_item() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG, neighbors=1)
    assert _neighbours(model, 0) == [(1, 2)]
    per_item = model.neighbors.group_by("item").len().get_column("len")
    assert per_item.max() == 1


def test_cooccurrence_uses_only_the_latest_max_history_items() -> None:
    # u's history in time order: A, B, C; with max_history 2 only B and C co-occur
    positives = _positives([("u", "A"), ("u", "B"), ("u", "C")])
    model = ItemCooccurrence.fit(positives, "user_id", "item_id", CATALOG, max_history=2)
    assert set(model.neighbors.get_column("item")) == {1, 2}
    assert _neighbours(model, 1) == [(2, 1)]


@pytest.mark.parametrize(("neighbors", "max_history"), [(0, 50), (10, 1)])
def test_cooccurrence_bad_settings_are_config_errors(neighbors: int, max_history: int) -> None:
    with pytest.raises(ConfigError, match="neighbors"):
        ItemCooccurrence.fit(
            HISTORY, "user_id", "item_id", CATALOG, neighbors=neighbors, max_history=max_history
        )


def test_cooccurrence_candidates_exclude_own_items_and_fill_with_popular() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG)
    histories = _histories({0: [0], 1: [1], 2: [3]})
    candidates = model.candidates(histories, 3)
    # row 0 has A: B (2), C (1), then popular D; row 1 has B: A, then popular C, D
    # row 2 has D (no neighbours): popular A, B, C
    assert candidates.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 2]]
    for row, items in {0: [0], 1: [1], 2: [3]}.items():
        assert not set(items) & set(candidates[row].tolist())
        assert len(set(candidates[row].tolist())) == 3


def test_a_repeated_history_item_counts_once_as_in_fit() -> None:
    # C co-occurs with A once and with E twice; a user with A twice and E once must still
    # see C scored 1 + 2 (not 2 + 2) and rank it as a user with A and E once does.
    positives = pl.concat(
        [HISTORY, _positives([("u5", "C"), ("u5", "E"), ("u6", "C"), ("u6", "E")])]
    )
    model = ItemCooccurrence.fit(positives, "user_id", "item_id", CATALOG)
    once = model.candidates(_histories({0: [0, 4]}), 3)
    repeated = model.candidates(_histories({0: [0, 0, 4, 0]}), 3)
    assert repeated.tolist() == once.tolist()


def test_cooccurrence_scores_sum_over_the_users_items() -> None:
    # B co-occurs with A twice (u1, u3); C with A once and with E twice
    positives = pl.concat(
        [HISTORY, _positives([("u5", "C"), ("u5", "E"), ("u6", "C"), ("u6", "E")])]
    )
    model = ItemCooccurrence.fit(positives, "user_id", "item_id", CATALOG)
    candidates = model.candidates(_histories({0: [0, 4]}), 2)
    assert candidates.tolist() == [[2, 1]]  # C: 1 + 2 = 3 beats B: 2


def test_cooccurrence_candidates_pad_with_minus_one_when_the_catalog_runs_out() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG)
    candidates = model.candidates(_histories({0: [0, 1, 2]}), 4)
    assert candidates.tolist() == [[3, 4, -1, -1]]


def test_cooccurrence_frame_round_trip() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG)
    frame = model.to_frame(CATALOG)
    assert frame.columns == ["item", "neighbor", "count"]
    assert ("A", "B", 2) in set(frame.iter_rows())
    back = ItemCooccurrence.from_frame(frame, model.popular, CATALOG)
    assert_frame_equal(back.neighbors, model.neighbors)
    histories = _histories({0: [0], 1: [2, 3]})
    assert back.candidates(histories, 4).tolist() == model.candidates(histories, 4).tolist()


def test_cooccurrence_from_frame_drops_pairs_of_unknown_items() -> None:
    model = ItemCooccurrence.fit(HISTORY, "user_id", "item_id", CATALOG)
    smaller = pl.Series("item_id", ["A", "B", "D", "E"])  # C is gone
    back = ItemCooccurrence.from_frame(model.to_frame(CATALOG), model.popular, smaller)
    assert set(zip(*back.neighbors.select("item", "neighbor").to_dict().values(), strict=True)) == {
        (0, 1),
        (1, 0),
    }


# --- fill_with -------------------------------------------------------------------------------


def test_fill_with_pads_short_rows_with_unseen_ranked_items() -> None:
    ranking = np.array([4, 0, 1, 2, 3])
    candidates = np.array([[2, -1, -1], [1, 3, 0], [-1, -1, -1]])
    histories = _histories({0: [4], 2: [0, 1]})
    filled = fill_with(candidates, ranking, histories)
    assert filled.tolist() == [[2, 0, 1], [1, 3, 0], [4, 2, 3]]
    assert candidates.tolist() == [[2, -1, -1], [1, 3, 0], [-1, -1, -1]]  # not modified


def test_fill_with_leaves_minus_one_when_nothing_is_left() -> None:
    ranking = np.array([0, 1, 2])
    filled = fill_with(np.full((1, 3), -1), ranking, _histories({0: [1, 2]}))
    assert filled.tolist() == [[0, -1, -1]]


def test_fill_with_without_histories() -> None:
    filled = fill_with(np.full((2, 2), -1), np.array([2, 0, 1]), _histories({}))
    assert filled.tolist() == [[2, 0], [2, 0]]


def test_fill_with_fills_every_minus_one_slot() -> None:
    filled = fill_with(np.array([[3, -1, 5, -1]]), np.arange(8), _histories({}))
    assert sorted(filled[0].tolist()) == [0, 1, 3, 5]
    assert filled[0, 0] == 3 and filled[0, 2] == 5
