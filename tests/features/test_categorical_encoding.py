"""Categorical and hashed features: vocabularies, unseen values, ids; and label encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from widedeep.features import preprocessor as preprocessing
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FIRST_ID, PADDING_ID, UNKNOWN_ID, FeatureSchema

# b x3, a x2, c x1, d x1: most frequent first, ties by value.
TRAIN = ["b", "a", "b", "c", "a", "b", "d"]


def _fitted(frame: pl.DataFrame, features: list[dict[str, Any]], **extra: Any) -> Preprocessor:
    return Preprocessor(FeatureSchema.from_dict({"features": features, **extra})).fit(frame)


def _country(**options: Any) -> Preprocessor:
    feature = {"name": "country", "kind": "categorical", **options}
    return _fitted(pl.DataFrame({"country": TRAIN}), [feature])


def _ids(pre: Preprocessor, values: list[Any]) -> list[int]:
    return pre.transform(pl.DataFrame({"country": values})).ids[:, 0].tolist()


def test_reserved_ids() -> None:
    assert (PADDING_ID, UNKNOWN_ID, FIRST_ID) == (0, 1, 2)


def test_vocabulary_is_most_frequent_first_then_by_value_and_ids_start_at_2() -> None:
    pre = _country()

    assert pre.state_ is not None
    assert pre.state_["country"]["vocabulary"] == ["b", "a", "c", "d"]
    assert _ids(pre, ["b", "a", "c", "d"]) == [2, 3, 4, 5]


def test_vocabulary_does_not_depend_on_row_order() -> None:
    shuffled = list(reversed(TRAIN))
    pre = _fitted(pl.DataFrame({"country": shuffled}), [{"name": "country", "kind": "categorical"}])

    assert pre.state_ is not None
    assert pre.state_["country"]["vocabulary"] == ["b", "a", "c", "d"]


def test_ties_are_broken_by_value() -> None:
    pre = _fitted(
        pl.DataFrame({"country": ["z", "y", "x", "y"]}),
        [{"name": "country", "kind": "categorical"}],
    )

    assert _ids(pre, ["y", "x", "z"]) == [2, 3, 4]


def test_unseen_values_map_to_unknown_and_are_counted_not_raised() -> None:
    pre = _country()

    encoded = pre.transform(pl.DataFrame({"country": ["a", "zz", None, "yy", "b"]}))

    assert encoded.ids[:, 0].tolist() == [3, UNKNOWN_ID, UNKNOWN_ID, UNKNOWN_ID, 2]
    report = encoded.report.columns["country"]
    assert (report.unseen, report.missing, report.truncated) == (2, 1, 0)
    assert encoded.report.rows == 5
    assert "2 unseen" in str(encoded.report) and "1 missing" in str(encoded.report)


def test_a_clean_table_reports_nothing_notable() -> None:
    encoded = _country().transform(pl.DataFrame({"country": ["a", "b"]}))

    assert encoded.report.notable() == {}
    assert "all values known" in str(encoded.report)


def test_missing_values_at_fit_are_not_in_the_vocabulary() -> None:
    pre = _fitted(
        pl.DataFrame({"country": ["a", None, None, None]}),
        [{"name": "country", "kind": "categorical"}],
    )

    assert pre.state_ is not None
    assert pre.state_["country"]["vocabulary"] == ["a"]


def test_min_count_drops_rare_values_to_unknown() -> None:
    pre = _country(min_count=2)

    assert _ids(pre, ["b", "a", "c", "d"]) == [2, 3, UNKNOWN_ID, UNKNOWN_ID]
    assert pre.layout.single[0].cardinality == FIRST_ID + 2


def test_min_count_above_every_count_leaves_an_empty_vocabulary() -> None:
    pre = _country(min_count=10)

    assert _ids(pre, ["a", "b"]) == [UNKNOWN_ID, UNKNOWN_ID]
    assert pre.layout.single[0].cardinality == FIRST_ID


def test_max_size_keeps_the_most_frequent() -> None:
    pre = _country(max_size=2)

    assert _ids(pre, ["b", "a", "c", "d"]) == [2, 3, UNKNOWN_ID, UNKNOWN_ID]


def test_integer_columns_share_ids_with_their_string_form() -> None:
    pre = _fitted(pl.DataFrame({"zip": [10, 9, 10]}), [{"name": "zip", "kind": "categorical"}])

    as_ints = pre.transform(pl.DataFrame({"zip": [10, 9, 7]})).ids[:, 0].tolist()
    as_strings = pre.transform(pl.DataFrame({"zip": ["10", "9", "7"]})).ids[:, 0].tolist()

    assert as_ints == as_strings == [2, 3, UNKNOWN_ID]


def test_boolean_and_categorical_dtypes_are_accepted() -> None:
    frame = pl.DataFrame(
        {
            "flag": [True, False, True],
            "color": pl.Series(["red", "blue", "red"], dtype=pl.Categorical),
        }
    )
    features = [{"name": "flag", "kind": "categorical"}, {"name": "color", "kind": "categorical"}]

    encoded = _fitted(frame, features).transform(frame)

    assert encoded.ids.tolist() == [[2, 2], [3, 3], [2, 2]]


def test_feature_can_read_a_differently_named_column() -> None:
    feature = {"name": "country", "kind": "categorical", "column": "cc"}
    pre = _fitted(pl.DataFrame({"cc": ["a", "b", "b"]}), [feature])

    encoded = pre.transform(pl.DataFrame({"cc": ["b", "a"]}))

    assert encoded.ids[:, 0].tolist() == [2, 3]
    assert "country" in encoded.report.columns


def test_ids_are_int32_in_layout_column_order() -> None:
    frame = pl.DataFrame({"a": ["x", "y"], "b": ["p", "p"]})
    features = [{"name": "b", "kind": "categorical"}, {"name": "a", "kind": "categorical"}]
    pre = _fitted(frame, features)

    encoded = pre.transform(frame)

    assert [f.name for f in pre.layout.single] == ["b", "a"]
    assert encoded.ids.dtype == np.int32
    assert encoded.ids.tolist() == [[2, 2], [2, 3]]
    assert len(encoded) == 2
    assert encoded.labels is None


# ------------------------------------------------------------------------------- hashed


def _hashed(num_buckets: int = 1 << 16) -> Preprocessor:
    feature = {"name": "user", "kind": "hashed", "num_buckets": num_buckets}
    return _fitted(pl.DataFrame({"user": ["u1", "u2"]}), [feature])


def test_hashed_ids_are_in_range_and_need_no_vocabulary() -> None:
    pre = _hashed(num_buckets=7)
    users = [f"user-{i}" for i in range(200)]

    ids = pre.transform(pl.DataFrame({"user": users})).ids[:, 0]

    assert pre.state_ == {"user": {}}
    assert ids.min() >= FIRST_ID and ids.max() < FIRST_ID + 7
    assert len(set(ids.tolist())) == 7  # 200 values fill all 7 buckets


def test_hashed_same_value_same_id_and_unseen_is_not_unknown() -> None:
    pre = _hashed()

    encoded = pre.transform(pl.DataFrame({"user": ["never-seen", "u1", "never-seen", None]}))

    ids = encoded.ids[:, 0].tolist()
    assert ids[0] == ids[2]
    assert ids[0] != ids[1]
    assert UNKNOWN_ID not in ids[:3]
    assert ids[3] == UNKNOWN_ID
    assert encoded.report.columns["user"].missing == 1
    assert encoded.report.columns["user"].unseen == 0


def test_hashed_integers_hash_like_their_string_form() -> None:
    feature = {"name": "item", "kind": "hashed", "num_buckets": 1000}
    pre = _fitted(pl.DataFrame({"item": [1, 2]}), [feature])

    as_ints = pre.transform(pl.DataFrame({"item": [12345, 7]})).ids[:, 0].tolist()
    as_strings = pre.transform(pl.DataFrame({"item": ["12345", "7"]})).ids[:, 0].tolist()

    assert as_ints == as_strings


# ------------------------------------------------------------------------------- labels


def _labels(values: list[Any], **label: Any) -> list[float]:
    frame = pl.DataFrame({"country": ["a"] * len(values), "y": values})
    pre = _fitted(
        frame, [{"name": "country", "kind": "categorical"}], label={"column": "y", **label}
    )
    encoded = pre.transform(frame)
    assert encoded.labels is not None
    assert encoded.labels.dtype == np.float32
    return encoded.labels.tolist()


@pytest.mark.parametrize(
    ("values", "label", "expected"),
    [
        ([0, 1, 1], {}, [0.0, 1.0, 1.0]),
        ([0.0, 1.0], {}, [0.0, 1.0]),
        ([True, False], {}, [1.0, 0.0]),
        (["yes", "no", "yes"], {"positive": ["yes"]}, [1.0, 0.0, 1.0]),
        ([">50K", "<=50K"], {"positive": [">50K"]}, [1.0, 0.0]),
        ([3, 7, 9], {"positive": [7, 9]}, [0.0, 1.0, 1.0]),
        ([True, False], {"positive": [True]}, [1.0, 0.0]),
        ([1.0, 3.5, 4.0, 5.0], {"threshold": 4.0}, [0.0, 0.0, 1.0, 1.0]),
        ([1.5, -2.0], {"objective": "regression"}, [1.5, -2.0]),
    ],
)
def test_label_encoding(values: list[Any], label: dict[str, Any], expected: list[float]) -> None:
    assert _labels(values, **label) == expected


def test_labels_only_when_asked_or_present() -> None:
    frame = pl.DataFrame({"country": ["a", "b"], "y": [0, 1]})
    pre = _fitted(frame, [{"name": "country", "kind": "categorical"}], label={"column": "y"})

    assert pre.transform(frame.drop("y")).labels is None
    assert pre.transform(frame, with_labels=False).labels is None
    with_labels = pre.transform(frame, with_labels=True).labels
    assert with_labels is not None and with_labels.tolist() == [0.0, 1.0]


def _mixed_table(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.array(["a", "bb", "a long value past the twelve bytes", "é", "", "z" * 13])
    return pl.DataFrame(
        {
            "city": rng.choice(words, rows),
            "code": rng.integers(0, 40, rows),
            "apps": [list(rng.choice(words, int(k))) for k in rng.integers(0, 3, rows)],
            "price": rng.random(rows),
        }
    ).with_columns(
        pl.when(pl.int_range(rows) % 7 == 3).then(None).otherwise(pl.col("city")).alias("city")
    )


def test_fit_transform_is_the_same_with_the_compiled_tables_and_with_arrow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Categorical (nulls, min_count, max_size, integers), hashed, crossed and
    multi-valued features, fitted then applied to new rows with unseen values."""
    schema = FeatureSchema.from_dict(
        {
            "features": [
                {"name": "city", "kind": "categorical", "min_count": 2},
                {"name": "code", "kind": "categorical", "max_size": 25},
                {"name": "city_h", "column": "city", "kind": "hashed", "num_buckets": 17},
                {"name": "apps", "kind": "multi_categorical"},
                {"name": "x", "kind": "cross", "features": ["city", "code"], "num_buckets": 50},
                {"name": "price", "kind": "numeric"},
            ]
        }
    )
    train, new = _mixed_table(3000, 0), _mixed_table(500, 1)
    new = new.with_columns(pl.col("code") + 20)  # codes 40..59 were never seen

    def run() -> tuple[Any, ...]:
        pre = Preprocessor(schema)
        fitted = pre.fit_transform(train)  # ids from the vocabulary's sort: no lookups
        looked_up = pre.transform(train)  # ids looked up in the vocabulary
        applied = pre.transform(new)
        return pre.to_dict(), fitted, looked_up, applied

    def assert_same(ours: Any, theirs: Any) -> None:
        np.testing.assert_array_equal(ours.ids, theirs.ids)
        for mine, other in zip(ours.multi_ids, theirs.multi_ids, strict=True):
            np.testing.assert_array_equal(mine, other)
        np.testing.assert_array_equal(ours.dense, theirs.dense)
        assert str(ours.report) == str(theirs.report)

    compiled = run()
    # the features and vocabularies on threads, as for large tables
    monkeypatch.setattr(preprocessing, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(preprocessing, "PARALLEL_VALUES", 1)
    on_threads = run()
    monkeypatch.setattr(preprocessing.strings, "ENABLED", False)
    monkeypatch.setattr(preprocessing, "_VOCABULARY_INDEXES", {})
    arrow = run()
    assert compiled[0] == on_threads[0] == arrow[0]
    assert_same(compiled[1], compiled[2])
    for other in (on_threads, arrow):
        for ours, theirs in zip(compiled[1:], other[1:], strict=True):
            assert_same(ours, theirs)
    assert compiled[3].report.columns["code"].unseen > 0


def test_fit_transform_takes_ids_from_the_fit_and_transform_looks_them_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups: list[int] = []
    build = preprocessing._vocabulary_index
    monkeypatch.setattr(
        preprocessing, "_vocabulary_index", lambda v: lookups.append(len(v)) or build(v)
    )
    schema = FeatureSchema.from_dict({"features": [{"name": "country", "kind": "categorical"}]})
    pre = Preprocessor(schema)
    fitted = pre.fit_transform(pl.DataFrame({"country": TRAIN}))
    assert lookups == []
    looked_up = pre.transform(pl.DataFrame({"country": TRAIN}))
    assert lookups == [4]
    np.testing.assert_array_equal(fitted.ids, looked_up.ids)


def test_columns_of_every_code_width_take_their_vocabulary_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A column's codes are held in int8, int16 or int32 by its count of distinct values:
    10, 300 and 40,000 values (and nulls) each take their own vocabulary's ids, fitted and
    looked up, with the compiled tables and with Arrow."""
    rows = 80_000
    rng = np.random.default_rng(3)
    numbers = {
        "few": rng.integers(0, 10, rows),
        "some": rng.integers(0, 300, rows),
        "many": rng.permutation(np.arange(rows) % 40_000),
    }
    null = np.arange(rows) % 9 == 4
    frame = pl.DataFrame(
        {
            name: [None if gone else f"v{v}" for v, gone in zip(values, null, strict=True)]
            for name, values in numbers.items()
        }
    )
    names = list(frame.columns)
    schema = FeatureSchema.from_dict(
        {"features": [{"name": n, "kind": "categorical"} for n in names]}
    )

    def expected(pre: Preprocessor) -> np.ndarray:
        state = pre.to_dict()["state"]
        columns = []
        for name in names:
            position = {v: i for i, v in enumerate(state[name]["vocabulary"])}
            columns.append(
                [FIRST_ID + position[v] if v is not None else UNKNOWN_ID for v in frame[name]]
            )
        return np.array(columns).T

    for enabled in (True, False):
        monkeypatch.setattr(preprocessing.strings, "ENABLED", enabled)
        monkeypatch.setattr(preprocessing, "_VOCABULARY_INDEXES", {})
        pre = Preprocessor(schema)
        fitted = pre.fit_transform(frame)
        few, some, many = (len(pre.to_dict()["state"][n]["vocabulary"]) for n in names)
        assert few == 10 and some == 300 and many > 32_767
        widths = [preprocessing._Codes.of(frame.get_column(n)).indices.dtype for n in names]
        assert widths == [np.int8, np.int16, np.int32]  # held in 1, 2 and 4 bytes a row
        np.testing.assert_array_equal(fitted.ids, expected(pre))
        np.testing.assert_array_equal(pre.transform(frame).ids, expected(pre))
