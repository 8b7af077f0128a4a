"""Saving a fitted Preprocessor as JSON and loading it back gives identical encodings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from widedeep.errors import ConfigError, SchemaError
from widedeep.features.preprocessor import EncodedTable, Preprocessor
from widedeep.features.schema import FeatureSchema

SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "country", "kind": "categorical"},
        {"name": "user", "kind": "hashed", "num_buckets": 64},
        {"name": "age", "kind": "numeric"},
        {"name": "age_log", "kind": "numeric", "column": "age", "transform": "log1p"},
        {"name": "income", "kind": "numeric", "transform": "quantile", "num_quantiles": 4},
        {"name": "hours", "kind": "numeric", "transform": "none", "fill": "median"},
        {"name": "age_b", "kind": "bucketized", "column": "age", "boundaries": [30, 50]},
        {"name": "income_b", "kind": "bucketized", "column": "income", "num_buckets": 3},
        {
            "name": "country_x_age",
            "kind": "cross",
            "features": ["country", "age_b"],
            "num_buckets": 99,
        },
    ],
    "label": {"column": "clicked", "positive": ["yes"]},
}

TRAIN = pl.DataFrame(
    {
        "country": ["de", "fr", "de", "us", None, "fr"],
        "user": ["u1", "u2", "u3", "u1", "u4", "u5"],
        "age": [23.0, 41.0, 35.5, 67.0, 29.0, 52.0],
        "income": [1.5, 3.25, 10.0, 7.0, 0.1, 2.0],
        "hours": [40.0, None, 38.0, 20.0, 60.0, 45.0],
        "clicked": ["yes", "no", "no", "yes", "yes", "no"],
    }
)

NEW = pl.DataFrame(
    {
        "country": ["it", "de", None],
        "user": ["u9", "u1", "u2"],
        "age": [19.0, 50.0, None],
        "income": [100.0, 3.0, 0.0],
        "hours": [None, 12.0, 99.0],
        "clicked": ["no", "yes", "yes"],
    }
)


def _assert_same(left: EncodedTable, right: EncodedTable) -> None:
    np.testing.assert_array_equal(left.ids, right.ids)
    assert len(left.multi_ids) == len(right.multi_ids)
    for a, b in zip(left.multi_ids, right.multi_ids, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(left.dense, right.dense)  # exact, not approximate
    assert left.labels is not None and right.labels is not None
    np.testing.assert_array_equal(left.labels, right.labels)
    assert left.report == right.report


@pytest.fixture
def fitted() -> Preprocessor:
    return Preprocessor(FeatureSchema.from_dict(SCHEMA)).fit(TRAIN)


def test_to_dict_is_json_and_from_dict_encodes_identically(fitted: Preprocessor) -> None:
    data = json.loads(json.dumps(fitted.to_dict()))

    restored = Preprocessor.from_dict(data)

    assert restored.schema == fitted.schema
    assert restored.layout == fitted.layout
    for frame in (TRAIN, NEW):
        _assert_same(restored.transform(frame), fitted.transform(frame))


def test_save_and_load_through_a_file(fitted: Preprocessor, tmp_path: Path) -> None:
    path = tmp_path / "preprocessor.json"

    fitted.save(path)
    restored = Preprocessor.load(path)

    _assert_same(restored.transform(NEW), fitted.transform(NEW))


def test_round_trip_with_a_multi_valued_feature() -> None:
    schema = FeatureSchema.from_dict(
        {"features": [{"name": "apps", "kind": "multi_categorical", "max_values": 2}]}
    )
    frame = pl.DataFrame({"apps": [["a", "b", "c"], ["b"], []]})
    fitted = Preprocessor(schema).fit(frame)

    restored = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict())))

    np.testing.assert_array_equal(
        restored.transform(frame).multi_ids[0], fitted.transform(frame).multi_ids[0]
    )


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_wrong_version_is_a_schema_error(fitted: Preprocessor, version: Any) -> None:
    data = fitted.to_dict()
    data["version"] = version

    with pytest.raises(SchemaError, match="version"):
        Preprocessor.from_dict(data)


def test_not_a_dict_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="version"):
        Preprocessor.from_dict([1, 2])  # type: ignore[arg-type]


def test_state_that_does_not_match_the_schema(fitted: Preprocessor) -> None:
    data = json.loads(json.dumps(fitted.to_dict()))
    del data["state"]["country"]

    with pytest.raises(SchemaError, match="state"):
        Preprocessor.from_dict(data)


def test_an_invalid_schema_in_saved_state_is_a_config_error(fitted: Preprocessor) -> None:
    data = json.loads(json.dumps(fitted.to_dict()))
    data["schema"]["features"][0]["min_cont"] = 3

    with pytest.raises(ConfigError, match="min_cont"):
        Preprocessor.from_dict(data)


def test_large_tables_encode_on_threads_exactly_as_serially(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Features are fitted and encoded on threads past PARALLEL_ROWS; nothing may change."""
    import widedeep.features.preprocessor as module

    big = pl.concat([TRAIN] * 50)
    schema = FeatureSchema.from_dict(SCHEMA)
    monkeypatch.setattr(module, "PARALLEL_ROWS", 10**9)
    serial = Preprocessor(schema).fit(big)
    expected = serial.transform(pl.concat([NEW, big]))
    monkeypatch.setattr(module, "PARALLEL_ROWS", 0)
    threaded = Preprocessor(schema).fit(big)
    assert threaded.to_dict() == serial.to_dict()
    _assert_same(threaded.transform(pl.concat([NEW, big])), expected)


def test_on_threads_the_first_bad_column_in_schema_order_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import widedeep.features.preprocessor as module

    monkeypatch.setattr(module, "PARALLEL_ROWS", 0)
    bad = TRAIN.with_columns(
        pl.lit("x").alias("age"), pl.lit("y").alias("hours"), pl.lit(1.5).alias("country")
    )
    with pytest.raises(SchemaError, match="Column 'country'"):
        Preprocessor(FeatureSchema.from_dict(SCHEMA)).fit(bad)
