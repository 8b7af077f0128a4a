"""The FeatureLayout a fitted Preprocessor describes: sizes, embedding dims, wide/deep flags."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from widedeep.features.layout import FeatureLayout, SparseField, default_embedding_dim
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FIRST_ID, FeatureSchema

FEATURES: list[dict[str, Any]] = [
    {"name": "country", "kind": "categorical"},
    {"name": "user", "kind": "hashed", "num_buckets": 1000, "embedding_dim": 16},
    {"name": "age", "kind": "numeric"},
    {"name": "age_b", "kind": "bucketized", "column": "age", "boundaries": [18, 30, 50]},
    {"name": "apps", "kind": "multi_categorical", "pooling": "sum"},
    {"name": "country_x_age", "kind": "cross", "features": ["country", "age_b"], "num_buckets": 50},
    {"name": "apps_x_country", "kind": "cross", "features": ["apps", "country"], "num_buckets": 70},
]

TRAIN = pl.DataFrame(
    {
        "country": ["de", "fr", "de", "us"],
        "user": ["u1", "u2", "u3", "u4"],
        "age": [23.0, 41.0, 35.0, 70.0],
        "apps": [["a", "b"], ["b"], ["c", "d", "e"], []],
    }
)


def _layout(**lists: Any) -> FeatureLayout:
    schema = FeatureSchema.from_dict({"features": FEATURES, **lists})
    return Preprocessor(schema).fit(TRAIN).layout


def _by_name(layout: FeatureLayout) -> dict[str, SparseField]:
    return {f.name: f for f in layout.fields}


def test_cardinalities() -> None:
    fields = _by_name(_layout())

    assert fields["country"].cardinality == FIRST_ID + 3  # de, fr, us
    assert fields["user"].cardinality == FIRST_ID + 1000
    assert fields["age_b"].cardinality == FIRST_ID + 3 + 1  # 3 boundaries, 4 buckets
    assert fields["apps"].cardinality == FIRST_ID + 5  # a..e
    assert fields["country_x_age"].cardinality == FIRST_ID + 50
    assert fields["apps_x_country"].cardinality == FIRST_ID + 70


def test_embedding_dims_default_to_the_rule_of_thumb_unless_given() -> None:
    fields = _by_name(_layout())

    assert fields["user"].embedding_dim == 16
    for name in ("country", "age_b", "apps", "country_x_age"):
        field = fields[name]
        assert field.embedding_dim == default_embedding_dim(field.cardinality)


@pytest.mark.parametrize(
    ("cardinality", "dim"),
    [(1, 6), (2, 7), (5, 9), (16, 12), (10_000, 60), (10**6, 64), (10**9, 64)],
)
def test_default_embedding_dim(cardinality: int, dim: int) -> None:
    # round(6 * cardinality ** 0.25), kept within [4, 64]
    assert default_embedding_dim(cardinality) == dim


def test_default_wide_and_deep_flags_and_order() -> None:
    layout = _layout()

    assert [f.name for f in layout.single] == ["country", "user", "age_b", "country_x_age"]
    assert [f.name for f in layout.multi] == ["apps", "apps_x_country"]
    assert layout.dense == ("age",)
    flags = {f.name: (f.wide, f.deep) for f in layout.fields}
    assert flags == {
        "country": (True, True),
        "user": (True, True),
        "age_b": (True, True),
        "country_x_age": (True, False),
        "apps": (True, True),
        "apps_x_country": (True, False),
    }
    assert layout.fields == layout.single + layout.multi


def test_multi_valued_fields_and_pooling() -> None:
    fields = _by_name(_layout())

    assert fields["apps"].multi_valued and fields["apps"].pooling == "sum"
    assert fields["apps_x_country"].multi_valued and fields["apps_x_country"].pooling == "sum"
    assert not fields["country_x_age"].multi_valued


def test_explicit_lists_set_the_flags_and_drop_unlisted_features() -> None:
    layout = _layout(wide=["country_x_age", "user"], deep=["country", "age"])

    fields = _by_name(layout)
    assert set(fields) == {"country", "user", "country_x_age"}
    assert (fields["user"].wide, fields["user"].deep) == (True, False)
    assert (fields["country"].wide, fields["country"].deep) == (False, True)
    assert layout.dense == ("age",)
    assert layout.multi == ()


def test_layout_to_dict_round_trip() -> None:
    layout = _layout()

    assert FeatureLayout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cardinality": 0}, "cardinality"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"wide": False, "deep": False}, "neither"),
    ],
)
def test_sparse_field_checks(options: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"name": "f", "cardinality": 3, "embedding_dim": 4, **options}

    with pytest.raises(ValueError, match=message):
        SparseField(**values)
