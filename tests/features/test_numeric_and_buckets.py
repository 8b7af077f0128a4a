"""Numeric transforms and fill policies; bucketized features (explicit or quantile boundaries)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from widedeep.errors import SchemaError
from widedeep.features.preprocessor import Chunk, Preprocessor
from widedeep.features.schema import FIRST_ID, UNKNOWN_ID, FeatureSchema


def _numeric(train: list[Any], **options: Any) -> Preprocessor:
    feature = {"name": "x", "kind": "numeric", **options}
    schema = FeatureSchema.from_dict({"features": [feature]})
    return Preprocessor(schema).fit(pl.DataFrame({"x": train}, schema={"x": pl.Float64}))


def _dense(pre: Preprocessor, values: list[Any]) -> list[float]:
    encoded = pre.transform(pl.DataFrame({"x": values}, schema={"x": pl.Float64}))
    assert encoded.dense.dtype == np.float32
    assert encoded.dense.shape == (len(values), 1)
    return encoded.dense[:, 0].tolist()


# --------------------------------------------------------------------------- transforms


def test_standardize_gives_mean_0_std_1_on_the_training_table() -> None:
    train = [3.0, 7.0, 1.0, 12.0, 5.5, 8.0]
    pre = _numeric(train)

    dense = np.asarray(_dense(pre, train), dtype=np.float64)

    assert dense.mean() == pytest.approx(0.0, abs=1e-6)
    assert dense.std() == pytest.approx(1.0, rel=1e-6)
    mean, std = np.mean(train), np.std(train)
    assert _dense(pre, [mean, mean + 2 * std]) == pytest.approx([0.0, 2.0], abs=1e-6)


def test_standardize_of_a_constant_column_does_not_divide_by_zero() -> None:
    pre = _numeric([4.0, 4.0, 4.0])

    assert _dense(pre, [4.0, 5.0]) == [0.0, 1.0]


def test_log1p() -> None:
    pre = _numeric([0.0, 1.0, 10.0], transform="log1p")

    assert _dense(pre, [0.0, 1.0, math.e - 1, -0.5]) == pytest.approx(
        [0.0, math.log(2.0), 1.0, math.log(0.5)], rel=1e-6
    )


def test_quantile_is_the_papers_cdf_mapping() -> None:
    # 1..100 in 5 quantiles: cut points 20.8, 40.6, 60.4, 80.2 (linear interpolation);
    # a value in the i-th quantile maps to (i - 1) / (5 - 1).
    pre = _numeric([float(v) for v in range(1, 101)], transform="quantile", num_quantiles=5)

    assert pre.state_ is not None
    assert pre.state_["x"]["quantiles"] == pytest.approx([20.8, 40.6, 60.4, 80.2])
    values = [1, 20, 21, 40, 41, 60, 61, 80, 81, 100]
    expected = [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert _dense(pre, values) == expected


def test_quantile_clips_values_outside_the_training_range_to_0_and_1() -> None:
    pre = _numeric([float(v) for v in range(1, 101)], transform="quantile", num_quantiles=5)

    assert _dense(pre, [-1000.0, 1e9]) == [0.0, 1.0]


def test_quantile_values_lie_in_0_1_and_are_monotone() -> None:
    rng = np.random.default_rng(0)
    train = rng.lognormal(size=500).tolist()
    pre = _numeric(train, transform="quantile", num_quantiles=10)

    dense = _dense(pre, sorted(train))

    assert min(dense) == 0.0 and max(dense) == 1.0
    assert all(a <= b for a, b in itertools.pairwise(dense))
    assert set(np.round(np.asarray(dense) * 9, 6)) <= set(range(10))


def test_transform_none_passes_values_through() -> None:
    pre = _numeric([1.0, 2.0], transform="none")

    assert _dense(pre, [-3.5, 0.0, 1e6]) == [-3.5, 0.0, 1e6]


def test_integer_and_boolean_columns_are_numbers() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                {"name": "n", "kind": "numeric", "transform": "none"},
                {"name": "b", "kind": "numeric", "transform": "none"},
            ]
        }
    )
    frame = pl.DataFrame({"n": [1, 2], "b": [True, False]})

    encoded = Preprocessor(schema).fit_transform(frame)

    assert encoded.dense.tolist() == [[1.0, 1.0], [2.0, 0.0]]


# --------------------------------------------------------------------------------- fill


@pytest.mark.parametrize(
    ("fill", "extra", "expected"),
    [
        ("mean", {}, 5.0),
        ("median", {}, 2.0),
        ("zero", {}, 0.0),
        ("value", {"fill_value": 7.5}, 7.5),
    ],
)
def test_fill_policies(fill: str, extra: dict[str, float], expected: float) -> None:
    train = [1.0, None, 2.0, 12.0, float("nan")]
    pre = _numeric(train, transform="none", fill=fill, **extra)

    assert _dense(pre, train) == [1.0, expected, 2.0, 12.0, expected]
    assert _dense(pre, [None]) == [expected]  # the training statistic, not the new table's


def test_fill_is_applied_before_the_transform() -> None:
    pre = _numeric([0.0, None], transform="log1p", fill="value", fill_value=math.e - 1)

    assert _dense(pre, [None]) == pytest.approx([1.0])


def test_standardize_statistics_include_the_filled_values() -> None:
    # fill 'zero' then standardize: train becomes [0, 2, 4] -> mean 2.
    pre = _numeric([None, 2.0, 4.0], fill="zero")

    assert _dense(pre, [None, 2.0]) == pytest.approx([-2.0 / np.std([0, 2, 4]), 0.0])


# --------------------------------------------------------------------------- bucketized


def _bucketized(train: list[Any], **options: Any) -> Preprocessor:
    feature = {"name": "age_b", "kind": "bucketized", "column": "age", **options}
    schema = FeatureSchema.from_dict({"features": [feature]})
    return Preprocessor(schema).fit(pl.DataFrame({"age": train}, schema={"age": pl.Float64}))


def _bucket_ids(pre: Preprocessor, values: list[Any]) -> list[int]:
    encoded = pre.transform(pl.DataFrame({"age": values}, schema={"age": pl.Float64}))
    return encoded.ids[:, 0].tolist()


def test_explicit_boundaries_value_on_a_boundary_goes_up() -> None:
    pre = _bucketized([1.0], boundaries=[18, 30, 50])

    values = [0.0, 17.99, 18.0, 29.9, 30.0, 50.0, 99.0]

    # id = 2 + number of boundaries <= x
    assert _bucket_ids(pre, values) == [2, 2, 3, 3, 4, 5, 5]
    assert pre.layout.single[0].cardinality == FIRST_ID + 3 + 1


def test_missing_bucketized_values_map_to_unknown_and_are_counted() -> None:
    pre = _bucketized([1.0], boundaries=[18, 30])

    encoded = pre.transform(pl.DataFrame({"age": [None, 20.0, float("nan")]}))

    assert encoded.ids[:, 0].tolist() == [UNKNOWN_ID, 3, UNKNOWN_ID]
    assert encoded.report.columns["age_b"].missing == 2


def test_quantile_boundaries_from_num_buckets() -> None:
    train = [float(v) for v in range(1, 101)]
    pre = _bucketized(train, num_buckets=4)

    assert pre.state_ is not None
    boundaries = pre.state_["age_b"]["boundaries"]
    assert boundaries == pytest.approx([25.75, 50.5, 75.25])
    ids = _bucket_ids(pre, train)
    expected = [FIRST_ID + sum(b <= x for b in boundaries) for x in train]
    assert ids == expected
    assert [ids.count(FIRST_ID + k) for k in range(4)] == [25, 25, 25, 25]
    assert pre.layout.single[0].cardinality == FIRST_ID + 4


def test_quantile_boundaries_are_deduplicated_for_few_distinct_values() -> None:
    pre = _bucketized([1.0, 1.0, 1.0, 1.0, 2.0], num_buckets=4)

    assert pre.state_ is not None
    boundaries = pre.state_["age_b"]["boundaries"]
    assert boundaries == sorted(set(boundaries))
    assert pre.layout.single[0].cardinality == FIRST_ID + len(boundaries) + 1


def test_quantile_boundaries_ignore_missing_values() -> None:
    pre = _bucketized([1.0, None, 2.0, None, 3.0, 4.0], num_buckets=2)

    assert pre.state_ is not None
    assert pre.state_["age_b"]["boundaries"] == [2.5]


@pytest.mark.parametrize("layout", ["sliced", "two chunks"])
@pytest.mark.parametrize("dtype", [pl.Float64, pl.Float32, pl.Int64, pl.UInt8, pl.Int128])
def test_a_large_column_with_missing_values_encodes_each_row_as_a_small_table_does(
    dtype: pl.DataType, layout: str
) -> None:
    """Large columns with nulls are read from their Arrow buffers, a served request's few
    rows value by value: both give every row the same number, and the fill where missing."""
    values = [None if i % 7 == 0 else i % 200 for i in range(10_000)]
    column = pl.Series("x", values).cast(dtype)
    if layout == "sliced":  # its buffers start at an offset
        column = column.slice(3)
    else:
        column = pl.concat([column.slice(0, 6_000), column.slice(6_000)], rechunk=False)
    schema = FeatureSchema.from_dict(
        {"features": [{"name": "x", "kind": "numeric", "transform": "log1p", "fill": "zero"}]}
    )
    pre = Preprocessor(schema).fit(pl.DataFrame({"x": column}))

    encoded = pre.transform(pl.DataFrame({"x": column})).dense[:, 0]

    rows = range(0, len(column), 97)
    one_by_one = [pre.transform(pl.DataFrame({"x": column.slice(i, 1)})).dense[0, 0] for i in rows]
    assert encoded[list(rows)].tolist() == one_by_one
    missing = column.is_null().to_numpy()
    assert missing.sum() > 1_000 and (encoded[missing] == 0.0).all()
    want = np.log1p(column.fill_null(0).cast(pl.Float64).to_numpy()).astype(np.float32)
    assert np.array_equal(encoded, want)


def test_a_large_table_encodes_block_by_block_as_whole_columns_would() -> None:
    """The dense matrix is filled a block of rows at a time, on threads for large tables,
    from columns that several features share: each feature's values must be its transform
    of the filled column, cast to float32 once, as if the column were encoded whole, and
    the shared column must reach every feature unchanged."""
    rng = np.random.default_rng(0)
    n = 250_003  # several blocks and two thread ranges, the last ones short
    raw = rng.lognormal(1.0, 1.5, n)
    raw[rng.random(n) < 0.2] = np.nan
    features = [
        {"name": "log", "kind": "numeric", "column": "x", "transform": "log1p", "fill": "zero"},
        {
            "name": "std",
            "kind": "numeric",
            "column": "x",
            "transform": "standardize",
            "fill": "mean",
        },
        {"name": "q", "kind": "numeric", "column": "x", "transform": "quantile", "fill": "median"},
        {"name": "raw", "kind": "numeric", "column": "x", "transform": "none", "fill": "zero"},
        {"name": "b", "kind": "bucketized", "column": "x", "boundaries": [1.0, 5.0]},
    ]
    schema = FeatureSchema.from_dict({"features": features})
    frame = pl.DataFrame({"x": pl.Series(raw).fill_nan(None)})

    encoded = Preprocessor(schema).fit_transform(frame)
    pre = Preprocessor(schema).fit(frame)

    state = pre.state_
    assert state is not None
    missing = np.isnan(raw)
    filled = {
        name: np.where(missing, state[name]["fill"], raw) for name in ("log", "std", "q", "raw")
    }
    quantiles = np.asarray(state["q"]["quantiles"])
    low = np.searchsorted(quantiles, filled["q"], side="left")
    high = np.searchsorted(quantiles, filled["q"], side="right")
    want = {
        "log": np.log1p(filled["log"]),
        "std": (filled["std"] - state["std"]["mean"]) / state["std"]["std"],
        "q": (low + high) / (2 * len(quantiles)),
        "raw": filled["raw"],
    }
    assert pre.layout.dense == ("log", "std", "q", "raw")
    for j, name in enumerate(pre.layout.dense):
        assert np.array_equal(encoded.dense[:, j], want[name].astype(np.float32)), name
    assert np.array_equal(encoded.dense, pre.transform(frame).dense)
    buckets = encoded.ids[:, 0]
    assert np.array_equal(buckets[missing], np.full(missing.sum(), UNKNOWN_ID))
    assert np.array_equal(
        buckets[~missing], FIRST_ID + np.searchsorted([1.0, 5.0], raw[~missing], side="right")
    )


def test_a_table_with_several_faults_fails_on_the_same_one_whether_streamed_or_not() -> None:
    """Fitting runs each feature's stats and fit in one task, yet a table with several
    faults reports them as separate passes would, and as fitting it chunk by chunk does:
    a feature's bad values first, then a bad label, then what only its fit finds."""
    schema = FeatureSchema.from_dict(
        {
            "label": {"column": "label"},
            "features": [
                {"name": "empty", "kind": "numeric"},
                {"name": "text", "kind": "numeric"},
            ],
            "deep": ["empty", "text"],
        }
    )
    empty = pl.Series([None] * 3, dtype=pl.Float64)
    cases = [
        ({"empty": empty, "text": ["1", "x", "2"], "label": [0, 1, 0]}, "expected a number"),
        ({"empty": empty, "text": ["1", "2", "3"], "label": [0, 2, 0]}, "label must be 0 or 1"),
        ({"empty": empty, "text": ["1", "2", "3"], "label": [0, 1, 0]}, "every value is missing"),
    ]
    for columns, message in cases:
        frame = pl.DataFrame(columns)
        with pytest.raises(SchemaError, match=message):
            Preprocessor(schema).fit(frame)
        with pytest.raises(SchemaError, match=message):
            Preprocessor(schema).fit_transform(frame)
        with pytest.raises(SchemaError, match=message):
            Preprocessor(schema).fit_chunks([Chunk(frame, "t")], "t")
