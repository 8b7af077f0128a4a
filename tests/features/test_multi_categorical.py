"""Multi-valued categorical features: list columns and 'a|b|c' strings, padding and truncation."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from widedeep.features.preprocessor import EncodedTable, Preprocessor
from widedeep.features.schema import PADDING_ID, UNKNOWN_ID, FeatureSchema

# 'a' x3, 'b' x2, 'c' x1 -> ids a=2, b=3, c=4
TRAIN_LISTS = [["a", "b"], ["a"], ["c", "a", "b"]]
TRAIN_STRINGS = ["a|b", "a", "c|a|b"]


def _preprocessor(train: pl.Series, **options: Any) -> Preprocessor:
    feature = {"name": "apps", "kind": "multi_categorical", **options}
    schema = FeatureSchema.from_dict({"features": [feature]})
    return Preprocessor(schema).fit(pl.DataFrame({"apps": train}))


def _encode(pre: Preprocessor, values: list[Any]) -> EncodedTable:
    return pre.transform(pl.DataFrame({"apps": values}))


def test_fit_learns_a_vocabulary_over_all_values_and_the_longest_list() -> None:
    pre = _preprocessor(pl.Series(TRAIN_LISTS))

    assert pre.state_ == {"apps": {"vocabulary": ["a", "b", "c"], "max_values": 3}}
    (field,) = pre.layout.multi
    assert (field.name, field.cardinality, field.multi_valued) == ("apps", 5, True)
    assert field.pooling == "mean"
    assert pre.layout.single == ()


def test_list_and_separated_strings_learn_the_same_state() -> None:
    from_lists = _preprocessor(pl.Series(TRAIN_LISTS))
    from_strings = _preprocessor(pl.Series(TRAIN_STRINGS))

    assert from_lists.state_ == from_strings.state_


def test_list_and_separated_strings_give_the_same_ids() -> None:
    from_lists = _encode(_preprocessor(pl.Series(TRAIN_LISTS)), TRAIN_LISTS)
    from_strings = _encode(_preprocessor(pl.Series(TRAIN_STRINGS)), TRAIN_STRINGS)

    (ids,) = from_lists.multi_ids
    assert ids.tolist() == [[2, 3, 0], [2, 0, 0], [4, 2, 3]]
    np.testing.assert_array_equal(from_strings.multi_ids[0], ids)
    assert ids.dtype == np.int32
    assert from_lists.ids.shape == (3, 0)


def test_custom_separator() -> None:
    pre = _preprocessor(pl.Series(["a,b", "c"]), separator=",")

    (ids,) = _encode(pre, ["b,a", "c"]).multi_ids

    assert ids.tolist() == [[3, 2], [4, 0]]


def test_integer_lists_are_accepted() -> None:
    pre = _preprocessor(pl.Series([[10, 20], [10]]))

    (ids,) = _encode(pre, [["20", "10"], ["30"]]).multi_ids

    assert ids.tolist() == [[3, 2], [UNKNOWN_ID, PADDING_ID]]


def test_max_values_truncates_and_counts_the_dropped_values() -> None:
    pre = _preprocessor(pl.Series(TRAIN_LISTS), max_values=2)

    encoded = _encode(pre, [["a", "b", "c"], ["c", "b", "a", "a"], ["b"]])

    (ids,) = encoded.multi_ids
    assert ids.tolist() == [[2, 3], [4, 3], [3, 0]]
    assert encoded.report.columns["apps"].truncated == 3  # 1 + 2 values dropped


def test_lists_longer_than_any_training_list_are_truncated() -> None:
    pre = _preprocessor(pl.Series(TRAIN_LISTS))  # longest training list: 3

    encoded = _encode(pre, [["a", "b", "c", "a"]])

    assert encoded.multi_ids[0].tolist() == [[2, 3, 4]]
    assert encoded.report.columns["apps"].truncated == 1


def test_unseen_values_map_to_unknown_and_are_counted() -> None:
    pre = _preprocessor(pl.Series(TRAIN_LISTS))

    encoded = _encode(pre, [["a", "zz"], ["yy", "xx", "b"]])

    assert encoded.multi_ids[0].tolist() == [[2, 1, 0], [1, 1, 3]]
    report = encoded.report.columns["apps"]
    assert (report.unseen, report.missing) == (3, 0)


def test_empty_and_missing_lists_are_all_padding() -> None:
    pre = _preprocessor(pl.Series(TRAIN_LISTS))

    encoded = _encode(pre, [[], None, ["b"]])

    assert encoded.multi_ids[0].tolist() == [[0, 0, 0], [0, 0, 0], [3, 0, 0]]
    assert encoded.report.columns["apps"].missing == 1


def test_min_count_and_max_size_apply_to_the_flattened_values() -> None:
    rare = _preprocessor(pl.Series(TRAIN_LISTS), min_count=2)
    small = _preprocessor(pl.Series(TRAIN_LISTS), max_size=1)

    assert rare.state_ is not None and rare.state_["apps"]["vocabulary"] == ["a", "b"]
    assert small.state_ is not None and small.state_["apps"]["vocabulary"] == ["a"]
    assert _encode(rare, [["c", "b"]]).multi_ids[0].tolist() == [[1, 3, 0]]
    assert _encode(small, [["c", "b"]]).multi_ids[0].tolist() == [[1, 1, 0]]


def test_an_empty_string_is_an_empty_list() -> None:
    pre = _preprocessor(pl.Series(["a|b", "", "a"]))

    encoded = _encode(pre, ["", "a"])

    assert pre.state_ is not None and pre.state_["apps"]["vocabulary"] == ["a", "b"]
    assert encoded.multi_ids[0].tolist() == [[0, 0], [2, 0]]
