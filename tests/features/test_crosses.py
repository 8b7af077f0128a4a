"""Cross features: hashed ids of value pairs, every pair for a multi-valued component."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FIRST_ID, PADDING_ID, UNKNOWN_ID, FeatureSchema

BUCKETS = 1 << 20


def _cat(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "categorical"}


def _cross(name: str, parts: list[str], num_buckets: int = BUCKETS) -> dict[str, Any]:
    return {"name": name, "kind": "cross", "features": parts, "num_buckets": num_buckets}


def _single_cross(
    left: str = "a", right: str = "b", num_buckets: int = BUCKETS, train: pl.DataFrame | None = None
) -> Preprocessor:
    schema = FeatureSchema.from_dict(
        {
            "features": [_cat(left), _cat(right), _cross("x", [left, right], num_buckets)],
            "wide": ["x"],
            "deep": [left],
        }
    )
    frame = train if train is not None else pl.DataFrame({left: ["p"], right: ["q"]})
    return Preprocessor(schema).fit(frame)


def _cross_ids(pre: Preprocessor, frame: pl.DataFrame, name: str = "x") -> np.ndarray:
    layout = pre.layout
    encoded = pre.transform(frame)
    single = [f.name for f in layout.single]
    if name in single:
        return encoded.ids[:, single.index(name)]
    return encoded.multi_ids[[f.name for f in layout.multi].index(name)]


def test_single_cross_ids_lie_in_range() -> None:
    pre = _single_cross(num_buckets=5)
    frame = pl.DataFrame({"a": [f"a{i}" for i in range(100)], "b": ["q"] * 100})

    ids = _cross_ids(pre, frame)

    assert ids.min() >= FIRST_ID and ids.max() < FIRST_ID + 5
    assert len(set(ids.tolist())) == 5
    cross = next(f for f in pre.layout.single if f.name == "x")
    assert cross.cardinality == FIRST_ID + 5
    assert (cross.wide, cross.deep, cross.multi_valued) == (True, False, False)


def test_same_pair_same_id_different_pairs_usually_differ() -> None:
    pre = _single_cross()
    a = [f"a{i}" for i in range(50)]
    frame = pl.DataFrame({"a": [*a, "a0", "a0"], "b": ["q"] * 50 + ["q", "r"]})

    ids = _cross_ids(pre, frame).tolist()

    assert ids[50] == ids[0]  # (a0, q) twice
    assert ids[51] != ids[0]  # (a0, r)
    assert len(set(ids[:50])) >= 49


def test_pair_order_matters() -> None:
    pre = _single_cross()

    ids = _cross_ids(pre, pl.DataFrame({"a": ["u", "v"], "b": ["v", "u"]})).tolist()

    assert ids[0] != ids[1]


def test_any_missing_component_gives_unknown() -> None:
    pre = _single_cross()

    ids = _cross_ids(pre, pl.DataFrame({"a": ["p", None, "p", None], "b": ["q", "q", None, None]}))

    assert ids.tolist()[1:] == [UNKNOWN_ID] * 3
    assert ids[0] >= FIRST_ID


def test_unseen_raw_values_still_hash_without_a_vocabulary() -> None:
    # Two preprocessors fitted on tables with different vocabularies agree on every cross id.
    one = _single_cross(train=pl.DataFrame({"a": ["p"], "b": ["q"]}))
    two = _single_cross(train=pl.DataFrame({"a": ["zz", "yy", "zz"], "b": ["q", "w", "w"]}))
    frame = pl.DataFrame({"a": ["never", "p", "zz"], "b": ["seen", "q", "w"]})

    ids_one, ids_two = _cross_ids(one, frame), _cross_ids(two, frame)

    np.testing.assert_array_equal(ids_one, ids_two)
    assert UNKNOWN_ID not in ids_one.tolist()


def test_three_way_cross() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [_cat("a"), _cat("b"), _cat("c"), _cross("abc", ["a", "b", "c"])],
            "wide": ["abc"],
            "deep": ["a"],
        }
    )
    frame = pl.DataFrame({"a": ["1", "1", "1", "1"], "b": ["2", "2", "2", None], "c": list("3349")})
    pre = Preprocessor(schema).fit(frame)

    ids = _cross_ids(pre, frame, "abc").tolist()

    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == UNKNOWN_ID


def test_cross_with_a_bucketized_component_uses_the_bucket_not_the_value() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                _cat("a"),
                {"name": "age_b", "kind": "bucketized", "column": "age", "boundaries": [30.0]},
                _cross("x", ["a", "age_b"]),
            ],
            "wide": ["x"],
            "deep": ["a"],
        }
    )
    frame = pl.DataFrame({"a": ["p", "p", "p", "p"], "age": [20.0, 25.0, 30.0, None]})
    pre = Preprocessor(schema).fit(frame)

    ids = _cross_ids(pre, frame).tolist()

    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == UNKNOWN_ID


def test_cross_with_a_hashed_component() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                _cat("a"),
                {"name": "h", "kind": "hashed", "num_buckets": 4},
                _cross("x", ["a", "h"]),
            ],
            "wide": ["x"],
            "deep": ["a"],
        }
    )
    cat_schema = _single_cross("a", "h")
    frame = pl.DataFrame({"a": ["p", "p"], "h": ["u", "v"]})
    pre = Preprocessor(schema).fit(frame)

    # A cross hashes the raw value, not the hashed feature's bucket.
    np.testing.assert_array_equal(_cross_ids(pre, frame), _cross_ids(cat_schema, frame))


# ------------------------------------------------------------------------ multi x single

# 'apps' feeds only the cross here, so these tests do not depend on multi_categorical's own
# encoding (see test_multi_categorical.py).
MULTI_SCHEMA = {
    "features": [
        {"name": "apps", "kind": "multi_categorical"},
        _cat("imp"),
        _cross("apps_x_imp", ["apps", "imp"]),
    ],
    "wide": ["apps_x_imp"],
    "deep": ["imp"],
}


def _multi_cross() -> Preprocessor:
    train = pl.DataFrame({"apps": [["a", "b"], ["c"]], "imp": ["x", "y"]})
    return Preprocessor(FeatureSchema.from_dict(MULTI_SCHEMA)).fit(train)


def test_layout_marks_a_multi_valued_cross() -> None:
    layout = _multi_cross().layout

    assert [f.name for f in layout.single] == ["imp"]
    (cross,) = layout.multi
    assert cross.name == "apps_x_imp"
    assert cross.multi_valued and cross.wide and not cross.deep
    assert cross.cardinality == FIRST_ID + BUCKETS


def test_multi_cross_yields_exactly_every_pair() -> None:
    pre = _multi_cross()
    frame = pl.DataFrame({"apps": [["a", "b"], ["c"], ["a", "zz"]], "imp": ["x", "x", "q"]})

    ids = _cross_ids(pre, frame, "apps_x_imp")

    # The same pairs from a single x single cross over one-value columns.
    reference = _cross_ids(
        _single_cross("app", "imp"),
        pl.DataFrame({"app": ["a", "b", "c", "a", "zz"], "imp": ["x", "x", "x", "q", "q"]}),
    ).tolist()
    assert ids.shape == (3, 2)  # longest training list: 2 apps
    assert ids.tolist() == [reference[0:2], [reference[2], PADDING_ID], reference[3:5]]


def test_multi_cross_pads_empty_lists() -> None:
    pre = _multi_cross()
    frame = pl.DataFrame(
        {"apps": [[], None, ["b"]], "imp": ["x", "x", "x"]},
        schema={"apps": pl.List(pl.String), "imp": pl.String},
    )

    ids = _cross_ids(pre, frame, "apps_x_imp").tolist()

    assert ids[:2] == [[PADDING_ID, PADDING_ID], [PADDING_ID, PADDING_ID]]
    assert ids[2][0] >= FIRST_ID and ids[2][1] == PADDING_ID


def test_multi_cross_of_a_batch_of_only_empty_lists() -> None:
    pre = _multi_cross()

    ids = _cross_ids(pre, pl.DataFrame({"apps": [[]], "imp": ["x"]}), "apps_x_imp")

    assert ids.tolist() == [[PADDING_ID, PADDING_ID]]


def test_multi_cross_from_separated_strings_matches_lists() -> None:
    pre = _multi_cross()
    lists = pl.DataFrame({"apps": [["a", "b"]], "imp": ["x"]})
    strings = pl.DataFrame({"apps": ["a|b"], "imp": ["x"]})

    np.testing.assert_array_equal(
        _cross_ids(pre, lists, "apps_x_imp"), _cross_ids(pre, strings, "apps_x_imp")
    )
