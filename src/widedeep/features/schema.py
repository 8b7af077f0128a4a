"""The declarative feature schema: what each input column becomes, and which part it feeds.

A schema is written in YAML (or built in Python) as a list of features, each of one kind::

    categorical        strings/ints -> ids from a vocabulary learned in `fit`
    hashed             strings/ints -> stable hash % num_buckets (no vocabulary to store)
    numeric            a number -> standardize | log1p | quantile (the paper's CDF) | none
    bucketized         a number -> the id of its bucket (explicit or quantile boundaries)
    multi_categorical  a list (or 'a|b|c' string) -> several ids, pooled in the deep part
    cross              the cross-product of two or more categorical-like features, hashed

plus the label, and the names that feed the ``wide`` and the ``deep`` part.
Every categorical-like feature reserves id 0 for padding and id 1 for unseen or missing values.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from widedeep.config_base import Record, read_yaml, validate_model

PADDING_ID = 0
UNKNOWN_ID = 1
FIRST_ID = 2

Name = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(ge=1)]
# ids are held as int32 (half the memory of an encoded table): a field's ids lie below 2**31
MAX_BUCKETS = 2**31 - 1 - FIRST_ID
Buckets = Annotated[int, Field(ge=1, le=MAX_BUCKETS)]


class _Base(Record):
    name: Name
    column: str | None = None

    @property
    def source_column(self) -> str:
        """The input column this feature reads (defaults to its name)."""
        return self.column or self.name


class _Embedded(_Base):
    embedding_dim: PositiveInt | None = None


class CategoricalFeature(_Embedded):
    """Strings or integers mapped to ids by a vocabulary learned from the training table."""

    kind: Literal["categorical"] = "categorical"
    min_count: PositiveInt = 1
    max_size: PositiveInt | None = None


class HashedFeature(_Embedded):
    """Strings or integers hashed (stably) into ``num_buckets`` ids; no vocabulary."""

    kind: Literal["hashed"] = "hashed"
    num_buckets: Buckets


class NumericFeature(_Base):
    """A number fed to the deep part, normalized; missing values filled by ``fill``."""

    kind: Literal["numeric"] = "numeric"
    transform: Literal["standardize", "log1p", "quantile", "none"] = "standardize"
    num_quantiles: Annotated[int, Field(ge=2)] = 100
    fill: Literal["mean", "median", "zero", "value", "error"] = "mean"
    fill_value: float | None = None

    @model_validator(mode="after")
    def _fill_value_matches(self) -> NumericFeature:
        if self.fill == "value" and self.fill_value is None:
            raise ValueError(f"feature '{self.name}': fill 'value' needs fill_value")
        if self.fill != "value" and self.fill_value is not None:
            raise ValueError(f"feature '{self.name}': fill_value is only used with fill 'value'")
        return self


class BucketizedFeature(_Embedded):
    """A number mapped to the id of its bucket: explicit ``boundaries`` or quantile ones."""

    kind: Literal["bucketized"] = "bucketized"
    boundaries: tuple[float, ...] | None = None
    num_buckets: Annotated[int, Field(ge=2)] | None = None

    @model_validator(mode="after")
    def _one_way_to_bucket(self) -> BucketizedFeature:
        if (self.boundaries is None) == (self.num_buckets is None):
            raise ValueError(
                f"feature '{self.name}': give exactly one of boundaries or num_buckets"
            )
        if self.boundaries is not None:
            if not self.boundaries:
                raise ValueError(f"feature '{self.name}': boundaries is empty")
            if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:], strict=False)):
                raise ValueError(f"feature '{self.name}': boundaries must be strictly increasing")
        return self


class MultiCategoricalFeature(_Embedded):
    """Several values per row (a list column, or a string split on ``separator``)."""

    kind: Literal["multi_categorical"] = "multi_categorical"
    separator: Annotated[str, Field(min_length=1)] = "|"
    min_count: PositiveInt = 1
    max_size: PositiveInt | None = None
    max_values: PositiveInt | None = None
    pooling: Literal["sum", "mean"] = "mean"


class CrossFeature(_Embedded):
    """The cross-product of categorical-like features, hashed into ``num_buckets`` ids.

    A multi-valued component yields every pair (installed apps x impression app).
    """

    kind: Literal["cross"] = "cross"
    features: Annotated[tuple[Name, ...], Field(min_length=2)]
    num_buckets: Buckets


Feature = Annotated[
    CategoricalFeature
    | HashedFeature
    | NumericFeature
    | BucketizedFeature
    | MultiCategoricalFeature
    | CrossFeature,
    Field(discriminator="kind"),
]

CATEGORICAL_KINDS = ("categorical", "hashed", "bucketized", "multi_categorical", "cross")


class LabelSpec(Record):
    """The target column and how it becomes a training label.

    Binary: a 0/1 or boolean column, or any column with ``positive`` values (click, install),
    or a number with ``threshold`` (rating >= threshold). Regression: the number itself.
    """

    column: Name
    objective: Literal["binary", "regression"] = "binary"
    positive: tuple[str | int | bool, ...] | None = None
    threshold: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LabelSpec:
        if self.positive is not None and self.threshold is not None:
            raise ValueError("label: give positive or threshold, not both")
        if self.objective == "regression" and (
            self.positive is not None or self.threshold is not None
        ):
            raise ValueError("label: positive/threshold only apply to the binary objective")
        return self


class FeatureSchema(Record):
    """Features, label and the wide/deep membership, checked for consistency as a whole."""

    features: tuple[Feature, ...]
    label: LabelSpec | None = None
    wide: tuple[Name, ...] | None = None
    deep: tuple[Name, ...] | None = None

    @model_validator(mode="after")
    def _references(self) -> FeatureSchema:
        problems = _reference_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def feature(self, name: str) -> Feature:
        """The feature called ``name``."""
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def wide_names(self) -> tuple[str, ...]:
        """Features of the wide part: the explicit list, or every categorical-like feature."""
        if self.wide is not None:
            return self.wide
        return tuple(f.name for f in self.features if f.kind in CATEGORICAL_KINDS)

    @property
    def deep_names(self) -> tuple[str, ...]:
        """Features of the deep part: the explicit list, or every feature but the crosses."""
        if self.deep is not None:
            return self.deep
        return tuple(f.name for f in self.features if f.kind != "cross")

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The table columns that the features read, in first-use order."""
        columns: dict[str, None] = {}
        for feature in self.features:
            if feature.kind != "cross":
                columns[feature.source_column] = None
        return tuple(columns)

    @property
    def id_columns(self) -> tuple[str, ...]:
        """The columns read as ids (categorical, hashed, multi-categorical): from CSV they
        must be read as text, so that '007' stays '007' and is not the number 7."""
        kinds = ("categorical", "hashed", "multi_categorical")
        columns = {f.source_column: None for f in self.features if f.kind in kinds}
        return tuple(columns)

    @classmethod
    def from_dict(cls, data: Any, where: str = "schema") -> FeatureSchema:
        """Build and check a schema from plain data (a parsed YAML document)."""
        return validate_model(cls, data, where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FeatureSchema:
        """Read a schema from a YAML file (``yaml.safe_load`` only)."""
        return cls.from_dict(read_yaml(path, "schema file"), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` turns back into an equal schema."""
        return self.model_dump(mode="json", exclude_none=True)


def _reference_problems(schema: FeatureSchema) -> list[str]:
    """Every inconsistency between names in the schema, collected so all are reported at once."""
    problems: list[str] = []
    if not schema.features:
        problems.append("the schema declares no features")
    names = [f.name for f in schema.features]
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(f"feature '{name}' is declared {count} times")
    kinds = {f.name: f.kind for f in schema.features}
    for feature in schema.features:
        if isinstance(feature, CrossFeature):
            for part in feature.features:
                if part not in kinds:
                    problems.append(f"cross '{feature.name}' names '{part}', which is not declared")
                elif kinds[part] in ("numeric", "cross"):
                    problems.append(
                        f"cross '{feature.name}' names '{part}', a {kinds[part]} feature; "
                        "crosses take categorical, hashed, bucketized or multi_categorical ones"
                    )
    for part, listed in (("wide", schema.wide), ("deep", schema.deep)):
        for name in listed or ():
            if name not in kinds:
                problems.append(f"{part} names '{name}', which is not declared")
        for name, count in Counter(listed or ()).items():
            if count > 1:
                problems.append(f"{part} names '{name}' {count} times")
    for name in schema.wide or ():
        if kinds.get(name) == "numeric":
            problems.append(
                f"wide names '{name}', a numeric feature; the wide part takes sparse ids "
                "(declare a bucketized feature over the same column instead)"
            )
    if not schema.wide_names and not schema.deep_names:
        problems.append("neither the wide nor the deep part has any feature")
    if schema.label is not None:
        for feature in schema.features:
            if feature.kind != "cross" and feature.source_column == schema.label.column:
                problems.append(
                    f"feature '{feature.name}' reads the label column '{schema.label.column}'"
                )
    return problems
