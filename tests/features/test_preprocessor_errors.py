"""Bad input to the Preprocessor: each SchemaError names the column, and the row if any."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from widedeep.errors import NotFittedError, SchemaError
from widedeep.features.preprocessor import Preprocessor
from widedeep.features.schema import FeatureSchema


def _preprocessor(features: list[dict[str, Any]], **extra: Any) -> Preprocessor:
    return Preprocessor(FeatureSchema.from_dict({"features": features, **extra}))


def _fit_error(features: list[dict[str, Any]], frame: pl.DataFrame, **extra: Any) -> str:
    with pytest.raises(SchemaError) as caught:
        _preprocessor(features, **extra).fit(frame)
    return str(caught.value)


CAT = {"name": "country", "kind": "categorical"}
AGE = {"name": "age", "kind": "numeric"}
LABEL = {"column": "clicked"}


# ------------------------------------------------------------------------- table shape


def test_missing_columns_are_all_listed() -> None:
    frame = pl.DataFrame({"other": [1, 2]})

    message = _fit_error([CAT, AGE, {"name": "user", "kind": "hashed", "num_buckets": 8}], frame)

    for column in ("'country'", "'age'", "'user'"):
        assert column in message
    assert "missing columns" in message


def test_missing_label_column_at_fit() -> None:
    message = _fit_error([CAT], pl.DataFrame({"country": ["a"]}), label=LABEL)

    assert "'clicked'" in message


def test_missing_column_at_transform_names_it() -> None:
    pre = _preprocessor([CAT, AGE]).fit(pl.DataFrame({"country": ["a"], "age": [1.0]}))

    with pytest.raises(SchemaError, match="'age'"):
        pre.transform(pl.DataFrame({"country": ["a"]}))


def test_empty_table() -> None:
    frame = pl.DataFrame({"country": pl.Series([], dtype=pl.String)})

    message = _fit_error([CAT], frame)

    assert "empty" in message


# ------------------------------------------------------------------------------ dtypes


def test_float_column_for_a_categorical_feature() -> None:
    message = _fit_error([CAT], pl.DataFrame({"country": [1.5, 2.5]}))

    assert "'country'" in message
    assert "Float64" in message


def test_float_column_for_a_categorical_feature_at_transform() -> None:
    pre = _preprocessor([CAT]).fit(pl.DataFrame({"country": ["a", "b"]}))

    with pytest.raises(SchemaError, match="'country'"):
        pre.transform(pl.DataFrame({"country": [0.5]}))


def test_text_in_a_numeric_column_names_column_value_and_row() -> None:
    frame = pl.DataFrame({"age": ["39", "50", "forty", "28"]})

    message = _fit_error([AGE], frame)

    assert "'age'" in message
    assert "'forty'" in message
    assert "row 2" in message


def test_numeric_strings_are_accepted_and_blank_is_missing() -> None:
    pre = _preprocessor([{"name": "age", "kind": "numeric", "transform": "none"}])

    encoded = pre.fit_transform(pl.DataFrame({"age": [" 39", "41 ", ""]}))

    np.testing.assert_allclose(encoded.dense[:, 0], [39.0, 41.0, 40.0])


def test_text_in_a_numeric_column_at_transform() -> None:
    pre = _preprocessor([AGE]).fit(pl.DataFrame({"age": [1.0, 2.0]}))

    with pytest.raises(SchemaError) as caught:
        pre.transform(pl.DataFrame({"age": ["3", "x"]}))
    assert "'age'" in str(caught.value) and "'x'" in str(caught.value)
    assert "row 1" in str(caught.value)


def test_list_column_for_a_numeric_feature() -> None:
    message = _fit_error([AGE], pl.DataFrame({"age": [[1.0], [2.0]]}))

    assert "'age'" in message


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_value_names_the_row(bad: float) -> None:
    message = _fit_error([AGE], pl.DataFrame({"age": [1.0, 2.0, 3.0, bad]}))

    assert "'age'" in message
    assert "infinite" in message
    assert "row 3" in message


def test_infinite_value_in_a_bucketized_column() -> None:
    feature = {"name": "age_b", "kind": "bucketized", "column": "age", "boundaries": [1.0]}
    pre = _preprocessor([feature]).fit(pl.DataFrame({"age": [0.0, 2.0]}))

    with pytest.raises(SchemaError) as caught:
        pre.transform(pl.DataFrame({"age": [1.0, float("inf")]}))
    assert "'age'" in str(caught.value) and "row 1" in str(caught.value)


@pytest.mark.parametrize("missing", [None, float("nan")], ids=["null", "nan"])
def test_missing_value_with_fill_error_names_the_row(missing: float | None) -> None:
    feature = {"name": "age", "kind": "numeric", "fill": "error"}
    frame = pl.DataFrame({"age": [1.0, 2.0, missing]})

    message = _fit_error([feature], frame)

    assert "'age'" in message
    assert "row 2" in message
    assert "fill 'error'" in message


def test_missing_value_with_fill_error_at_transform() -> None:
    pre = _preprocessor([{"name": "age", "kind": "numeric", "fill": "error"}])
    pre.fit(pl.DataFrame({"age": [1.0, 2.0]}))

    with pytest.raises(SchemaError, match="row 1"):
        pre.transform(pl.DataFrame({"age": [1.0, None]}))


def test_every_value_missing_cannot_be_fitted() -> None:
    message = _fit_error([AGE], pl.DataFrame({"age": pl.Series([None, None], dtype=pl.Float64)}))

    assert "'age'" in message
    assert "missing" in message


@pytest.mark.parametrize("bad", [-1.0, -3.0])
def test_log1p_of_a_value_at_or_below_minus_one(bad: float) -> None:
    feature = {"name": "age", "kind": "numeric", "transform": "log1p"}

    message = _fit_error([feature], pl.DataFrame({"age": [0.0, bad, 2.0]}))

    assert "'age'" in message
    assert "log1p" in message
    assert "row 1" in message


def test_log1p_check_at_transform() -> None:
    pre = _preprocessor([{"name": "age", "kind": "numeric", "transform": "log1p"}])
    pre.fit(pl.DataFrame({"age": [0.0, 1.0]}))

    with pytest.raises(SchemaError, match="row 0"):
        pre.transform(pl.DataFrame({"age": [-1.5]}))


def test_log1p_of_the_fill_is_checked_where_a_value_is_missing_at_transform() -> None:
    """Fitted on a column with no missing values, a fill of -2 passes fit; a table with a
    missing value would take log1p(-2)."""
    feature = {"name": "age", "kind": "numeric", "transform": "log1p", "fill": "value"}
    pre = _preprocessor([{**feature, "fill_value": -2.0}])
    pre.fit(pl.DataFrame({"age": [0.0, 1.0]}))

    with pytest.raises(SchemaError, match=r"got -2.0 in row 1 \(feature 'age'\)"):
        pre.transform(pl.DataFrame({"age": [3.0, None]}))


def test_multi_categorical_rejects_a_float_column() -> None:
    message = _fit_error(
        [{"name": "apps", "kind": "multi_categorical"}], pl.DataFrame({"apps": [1.5]})
    )

    assert "'apps'" in message


# ------------------------------------------------------------------------------- labels


def test_string_label_without_positive_is_an_error_naming_the_column() -> None:
    frame = pl.DataFrame({"country": ["a", "b"], "clicked": ["yes", "no"]})

    message = _fit_error([CAT], frame, label=LABEL)

    assert "'clicked'" in message


def test_string_label_without_positive_hints_at_positive() -> None:
    frame = pl.DataFrame({"country": ["a", "b"], "clicked": ["yes", "no"]})

    message = _fit_error([CAT], frame, label=LABEL)

    assert "positive" in message


def test_binary_label_not_zero_or_one_names_row_and_value() -> None:
    frame = pl.DataFrame({"country": ["a", "b", "c"], "clicked": [0, 1, 2]})

    message = _fit_error([CAT], frame, label=LABEL)

    assert "'clicked'" in message
    assert "row 2" in message
    assert "2" in message.split("got", 1)[1]


def test_missing_label_value_names_the_row() -> None:
    frame = pl.DataFrame({"country": ["a", "b", "c"], "clicked": [0, None, 1]})

    message = _fit_error([CAT], frame, label=LABEL)

    assert "'clicked'" in message
    assert "row 1" in message


def test_nan_label_is_missing_for_regression() -> None:
    frame = pl.DataFrame({"country": ["a", "b"], "rating": [4.0, float("nan")]})

    message = _fit_error([CAT], frame, label={"column": "rating", "objective": "regression"})

    assert "row 1" in message


def test_nan_label_is_missing_with_a_threshold() -> None:
    frame = pl.DataFrame({"country": ["a", "b"], "rating": [4.0, float("nan")]})

    message = _fit_error([CAT], frame, label={"column": "rating", "threshold": 3.0})

    assert "row 1" in message


def test_positive_label_on_a_float_column_is_an_error() -> None:
    frame = pl.DataFrame({"country": ["a"], "clicked": [1.0]})

    message = _fit_error([CAT], frame, label={"column": "clicked", "positive": [1]})

    assert "'clicked'" in message


def test_labels_asked_for_without_a_label_in_the_schema() -> None:
    pre = _preprocessor([CAT]).fit(pl.DataFrame({"country": ["a"]}))

    with pytest.raises(SchemaError, match="no label"):
        pre.transform(pl.DataFrame({"country": ["a"]}), with_labels=True)


def test_labels_asked_for_but_the_column_is_missing() -> None:
    frame = pl.DataFrame({"country": ["a"], "clicked": [1]})
    pre = _preprocessor([CAT], label=LABEL).fit(frame)

    with pytest.raises(SchemaError, match="'clicked'"):
        pre.transform(frame.drop("clicked"), with_labels=True)


# ---------------------------------------------------------------------------- not fitted


def test_transform_before_fit() -> None:
    pre = _preprocessor([CAT])

    with pytest.raises(NotFittedError, match="not fitted"):
        pre.transform(pl.DataFrame({"country": ["a"]}))


@pytest.mark.parametrize("use", ["layout", "to_dict", "save"])
def test_fitted_state_needed_by_layout_and_persistence(use: str, tmp_path: Path) -> None:
    pre = _preprocessor([CAT])

    with pytest.raises(NotFittedError, match="not fitted"):
        if use == "layout":
            _ = pre.layout
        elif use == "to_dict":
            pre.to_dict()
        else:
            pre.save(tmp_path / "state.json")


# ------------------------------------------------------------------------ where: a path


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    pl.DataFrame({"age": ["1", "forty"]}).write_parquet(path)

    with pytest.raises(SchemaError) as fit_error:
        _preprocessor([AGE]).fit(path)
    with pytest.raises(SchemaError) as fit_transform_error:
        _preprocessor([AGE]).fit_transform(path)

    for error in (fit_error, fit_transform_error):
        assert "train.parquet" in str(error.value)
        assert "'forty'" in str(error.value) and "row 1" in str(error.value)


def test_errors_in_a_cross_component_name_the_file(tmp_path: Path) -> None:
    # 'b' feeds only the cross, so only the cross reads it at transform time.
    schema = {
        "features": [
            CAT,
            {"name": "b", "kind": "categorical"},
            {"name": "cx", "kind": "cross", "features": ["country", "b"], "num_buckets": 16},
        ],
        "wide": ["cx"],
        "deep": ["country"],
    }
    pre = Preprocessor(FeatureSchema.from_dict(schema))
    pre.fit(pl.DataFrame({"country": ["a"], "b": ["x"]}))
    path = tmp_path / "serve.parquet"
    pl.DataFrame({"country": ["a"], "b": [0.5]}).write_parquet(path)

    with pytest.raises(SchemaError) as caught:
        pre.transform(path)
    assert "'b'" in str(caught.value)
    assert "serve.parquet" in str(caught.value)


def test_a_categorical_column_named_count() -> None:
    pre = _preprocessor([{"name": "count", "kind": "categorical"}])

    encoded = pre.fit_transform(pl.DataFrame({"count": ["a", "b", "a"]}))

    assert encoded.ids[:, 0].tolist() == [2, 3, 2]


def test_an_all_null_categorical_column_maps_to_unknown() -> None:
    pre = _preprocessor([CAT]).fit(pl.DataFrame({"country": ["a", "b"]}))

    encoded = pre.transform(pl.DataFrame({"country": [None]}))

    assert encoded.ids[:, 0].tolist() == [1]
    assert encoded.report.columns["country"].missing == 1


def test_an_all_null_numeric_column_is_filled() -> None:
    feature = {"name": "age", "kind": "numeric", "transform": "none", "fill": "mean"}
    pre = _preprocessor([feature]).fit(pl.DataFrame({"age": [1.0, 3.0]}))

    encoded = pre.transform(pl.DataFrame({"age": [None]}))

    assert encoded.dense[:, 0].tolist() == [2.0]
