"""FeatureSchema: YAML and dict construction, every feature kind, and every consistency error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from widedeep.errors import ConfigError
from widedeep.features.schema import (
    MAX_BUCKETS,
    BucketizedFeature,
    CategoricalFeature,
    CrossFeature,
    FeatureSchema,
    HashedFeature,
    LabelSpec,
    MultiCategoricalFeature,
    NumericFeature,
)

SCHEMA_YAML = """\
label:
  column: clicked
  positive: ["yes"]
features:
  - {name: country, kind: categorical, min_count: 2, max_size: 100, embedding_dim: 8}
  - {name: user, kind: hashed, num_buckets: 1000}
  - {name: age, kind: numeric, transform: log1p, fill: median}
  - {name: age_bucket, kind: bucketized, column: age, boundaries: [18, 30, 50]}
  - {name: income_bucket, kind: bucketized, column: income, num_buckets: 4}
  - {name: apps, kind: multi_categorical, separator: ",", max_values: 5, pooling: sum}
  - {name: country_x_apps, kind: cross, features: [country, apps], num_buckets: 500}
"""


def _cat(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "kind": "categorical", **extra}


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        FeatureSchema.from_dict(data)
    return str(caught.value)


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.yaml"
    path.write_text(SCHEMA_YAML)
    return path


# ------------------------------------------------------------------------------ building


def test_from_yaml_builds_every_feature_kind(schema_file: Path) -> None:
    schema = FeatureSchema.from_yaml(schema_file)

    kinds = [type(f) for f in schema.features]
    assert kinds == [
        CategoricalFeature,
        HashedFeature,
        NumericFeature,
        BucketizedFeature,
        BucketizedFeature,
        MultiCategoricalFeature,
        CrossFeature,
    ]
    country = schema.feature("country")
    assert isinstance(country, CategoricalFeature)
    assert (country.min_count, country.max_size, country.embedding_dim) == (2, 100, 8)
    user = schema.feature("user")
    assert isinstance(user, HashedFeature) and user.num_buckets == 1000
    age = schema.feature("age")
    assert isinstance(age, NumericFeature)
    assert (age.transform, age.fill) == ("log1p", "median")
    age_bucket = schema.feature("age_bucket")
    assert isinstance(age_bucket, BucketizedFeature)
    assert age_bucket.boundaries == (18.0, 30.0, 50.0)
    assert age_bucket.source_column == "age"
    income = schema.feature("income_bucket")
    assert isinstance(income, BucketizedFeature) and income.num_buckets == 4
    apps = schema.feature("apps")
    assert isinstance(apps, MultiCategoricalFeature)
    assert (apps.separator, apps.max_values, apps.pooling) == (",", 5, "sum")
    cross = schema.feature("country_x_apps")
    assert isinstance(cross, CrossFeature)
    assert cross.features == ("country", "apps") and cross.num_buckets == 500
    assert schema.label == LabelSpec(column="clicked", positive=("yes",))


def test_from_dict_equals_from_yaml(schema_file: Path) -> None:
    from_yaml = FeatureSchema.from_yaml(schema_file)
    from_dict = FeatureSchema.from_dict(yaml.safe_load(SCHEMA_YAML))

    assert from_dict == from_yaml


def test_defaults_of_each_kind() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                _cat("c"),
                {"name": "x", "kind": "numeric"},
                {"name": "m", "kind": "multi_categorical"},
            ]
        }
    )
    c, x, m = schema.features
    assert isinstance(c, CategoricalFeature)
    assert (c.min_count, c.max_size, c.embedding_dim, c.column) == (1, None, None, None)
    assert isinstance(x, NumericFeature)
    assert (x.transform, x.fill, x.num_quantiles) == ("standardize", "mean", 100)
    assert isinstance(m, MultiCategoricalFeature)
    assert (m.separator, m.pooling, m.max_values) == ("|", "mean", None)
    assert schema.label is None


def test_input_columns_are_the_read_columns_in_first_use_order(schema_file: Path) -> None:
    schema = FeatureSchema.from_yaml(schema_file)

    # age_bucket reads 'age' again; crosses read no column of their own.
    assert schema.input_columns == ("country", "user", "age", "income", "apps")


def test_default_wide_is_every_categorical_like_feature_and_deep_all_but_crosses(
    schema_file: Path,
) -> None:
    schema = FeatureSchema.from_yaml(schema_file)

    assert schema.wide is None and schema.deep is None
    assert schema.wide_names == (
        "country",
        "user",
        "age_bucket",
        "income_bucket",
        "apps",
        "country_x_apps",
    )
    assert schema.deep_names == ("country", "user", "age", "age_bucket", "income_bucket", "apps")


def test_explicit_wide_and_deep_lists_are_kept() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [_cat("a"), _cat("b"), {"name": "x", "kind": "numeric"}],
            "wide": ["b"],
            "deep": ["a", "x"],
        }
    )

    assert schema.wide_names == ("b",)
    assert schema.deep_names == ("a", "x")


def test_feature_lookup_by_name_raises_key_error_for_unknown_names() -> None:
    schema = FeatureSchema.from_dict({"features": [_cat("a")]})

    with pytest.raises(KeyError):
        schema.feature("nope")


def test_schema_is_immutable() -> None:
    schema = FeatureSchema.from_dict({"features": [_cat("a")]})

    with pytest.raises(Exception, match="frozen"):
        schema.wide = ("a",)  # type: ignore[misc]


# --------------------------------------------------------------------------- round trip


def test_to_dict_from_dict_round_trip_through_json(schema_file: Path) -> None:
    schema = FeatureSchema.from_yaml(schema_file)

    data = json.loads(json.dumps(schema.to_dict()))

    assert FeatureSchema.from_dict(data) == schema
    assert FeatureSchema.from_dict(data).to_dict() == schema.to_dict()


def test_round_trip_keeps_explicit_lists_and_label_options() -> None:
    schema = FeatureSchema.from_dict(
        {
            "features": [
                _cat("a", column="col_a"),
                {"name": "x", "kind": "numeric", "fill": "value", "fill_value": 3.5},
                {"name": "b", "kind": "bucketized", "column": "x", "boundaries": [0.5, 1.5]},
            ],
            "wide": ["a", "b"],
            "deep": ["a", "x"],
            "label": {"column": "rating", "threshold": 4},
        }
    )

    data = yaml.safe_load(yaml.safe_dump(schema.to_dict()))

    assert FeatureSchema.from_dict(data) == schema


# ------------------------------------------------------------------------------ errors


def test_unknown_key_in_a_feature_is_named() -> None:
    message = _error({"features": [_cat("country", min_cont=2)]})

    assert "min_cont" in message
    assert "unknown key" in message


def test_unknown_top_level_key_is_named() -> None:
    message = _error({"features": [_cat("a")], "wdie": ["a"]})

    assert "wdie" in message
    assert "unknown key" in message


def test_unknown_kind_is_an_error_naming_it() -> None:
    message = _error({"features": [{"name": "a", "kind": "categorial"}]})

    assert "categorial" in message


def test_two_field_mistakes_are_both_named_in_one_error() -> None:
    message = _error(
        {
            "features": [
                _cat("a", min_cont=2),
                {"name": "h", "kind": "hashed", "num_buckets": 0},
            ]
        }
    )

    assert "min_cont" in message
    assert "features.1 ('h').hashed.num_buckets: " in message
    assert "features.0 ('a').categorical.min_cont: unknown key" in message


def test_two_reference_mistakes_are_both_named_in_one_error() -> None:
    message = _error(
        {
            "features": [
                _cat("a"),
                {"name": "ab", "kind": "cross", "features": ["a", "ghost"], "num_buckets": 8},
            ],
            "wide": ["phantom"],
        }
    )

    assert "'ghost'" in message
    assert "'phantom'" in message


def test_one_mistake_is_reported_as_one_problem() -> None:
    message = _error({"features": [_cat("a", min_cont=2)]})

    assert "1 problem" in message
    assert "at least 1 item" not in message


def test_cross_naming_an_undeclared_feature() -> None:
    message = _error(
        {
            "features": [
                _cat("a"),
                {"name": "a_x_b", "kind": "cross", "features": ["a", "b"], "num_buckets": 8},
            ]
        }
    )

    assert "'a_x_b'" in message
    assert "'b'" in message
    assert "not declared" in message


def test_cross_over_a_numeric_feature() -> None:
    message = _error(
        {
            "features": [
                _cat("a"),
                {"name": "age", "kind": "numeric"},
                {"name": "a_x_age", "kind": "cross", "features": ["a", "age"], "num_buckets": 8},
            ]
        }
    )

    assert "'a_x_age'" in message
    assert "'age'" in message
    assert "numeric" in message


def test_cross_needs_two_features() -> None:
    message = _error(
        {
            "features": [
                _cat("a"),
                {"name": "c", "kind": "cross", "features": ["a"], "num_buckets": 8},
            ]
        }
    )

    assert "features.1" in message


@pytest.mark.parametrize("part", ["wide", "deep"])
def test_wide_or_deep_naming_an_undeclared_feature(part: str) -> None:
    message = _error({"features": [_cat("a")], part: ["a", "ghost"]})

    assert f"{part} names 'ghost'" in message


def test_numeric_feature_in_wide_is_rejected() -> None:
    message = _error(
        {"features": [_cat("a"), {"name": "age", "kind": "numeric"}], "wide": ["a", "age"]}
    )

    assert "'age'" in message
    assert "numeric" in message


def test_duplicate_feature_names() -> None:
    message = _error({"features": [_cat("a"), _cat("b"), _cat("a", column="other")]})

    assert "'a'" in message
    assert "2 times" in message


@pytest.mark.parametrize("extra", [{}, {"column": "clicked"}])
def test_feature_reading_the_label_column_is_named(extra: dict[str, str]) -> None:
    name = "clicked" if not extra else "leak"
    message = _error({"features": [_cat("a"), _cat(name, **extra)], "label": {"column": "clicked"}})

    assert f"feature '{name}'" in message
    assert "label" in message


@pytest.mark.parametrize(
    "options",
    [{}, {"boundaries": [1.0, 2.0], "num_buckets": 3}],
    ids=["neither", "both"],
)
def test_bucketized_needs_exactly_one_of_boundaries_or_num_buckets(
    options: dict[str, object],
) -> None:
    message = _error({"features": [{"name": "age_b", "kind": "bucketized", **options}]})

    assert "'age_b'" in message
    assert "exactly one of boundaries or num_buckets" in message


@pytest.mark.parametrize("boundaries", [[1.0, 1.0, 2.0], [3.0, 2.0], [0.0, 5.0, 4.0]])
def test_bucketized_boundaries_must_be_strictly_increasing(boundaries: list[float]) -> None:
    message = _error({"features": [{"name": "b", "kind": "bucketized", "boundaries": boundaries}]})

    assert "'b'" in message
    assert "strictly increasing" in message


def test_bucketized_boundaries_must_not_be_empty() -> None:
    message = _error({"features": [{"name": "b", "kind": "bucketized", "boundaries": []}]})

    assert "empty" in message


def test_fill_value_goes_with_fill_value_policy_only() -> None:
    missing = _error({"features": [{"name": "x", "kind": "numeric", "fill": "value"}]})
    stray = _error({"features": [{"name": "x", "kind": "numeric", "fill_value": 1.0}]})

    assert "fill_value" in missing and "'x'" in missing
    assert "fill_value" in stray and "'x'" in stray


def test_label_positive_and_threshold_are_exclusive() -> None:
    message = _error(
        {"features": [_cat("a")], "label": {"column": "y", "positive": [1], "threshold": 0.5}}
    )

    assert "positive" in message and "threshold" in message


def test_empty_feature_list_is_rejected() -> None:
    message = _error({"features": []})

    assert "features" in message


def test_from_yaml_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("features:\n  - {name: a, kind: categorical, min_cont: 2}\n")

    with pytest.raises(ConfigError, match=r"bad\.yaml") as caught:
        FeatureSchema.from_yaml(path)
    assert "min_cont" in str(caught.value)


def test_from_yaml_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("features: [\n")

    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        FeatureSchema.from_yaml(broken)
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        FeatureSchema.from_yaml(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("kind", ["hashed", "cross"])
def test_num_buckets_beyond_what_int32_ids_hold_is_an_error_naming_the_feature(kind: str) -> None:
    too_many = {"name": "big", "kind": kind, "num_buckets": MAX_BUCKETS + 1}
    if kind == "cross":
        too_many["features"] = ["a", "b"]

    message = _error({"features": [_cat("a"), _cat("b"), too_many]})

    assert f"features.2 ('big').{kind}.num_buckets: " in message
    assert str(MAX_BUCKETS) in message
    largest = {**too_many, "num_buckets": MAX_BUCKETS}
    assert FeatureSchema.from_dict({"features": [_cat("a"), _cat("b"), largest]})


def test_a_path_through_an_unnamed_or_odd_item_is_still_given() -> None:
    """Items without a string name keep their bare index; a path past the document (a
    tag pydantic adds) still prints whole."""
    message = _error({"features": [{"kind": "categorical"}, {"name": 7, "kind": "hashed"}]})

    assert "features.0.categorical.name: Field required" in message
    assert "features.1.hashed.name: " in message


def test_items_of_a_tuple_are_named_too() -> None:
    message = _error({"features": ({"name": "a", "kind": "categorical", "min_cont": 1},)})

    assert "features.0 ('a').categorical.min_cont: unknown key" in message
