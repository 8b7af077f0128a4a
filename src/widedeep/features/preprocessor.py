"""The fitted transformer: raw table -> encoded numpy arrays, with its state saved as JSON.

Follows the scikit-learn contract: the constructor only stores the schema, ``fit`` learns the
state (``state_``), ``transform`` refuses to run before that. Every step works on whole columns
(polars / numpy); no row is visited in Python. Unseen categories map to id 1 and are counted
in the ``TransformReport``, never raised; malformed data raises SchemaError naming the column
and the first bad row (rows are counted from 0).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from widedeep.errors import NotFittedError, SchemaError
from widedeep.features import hashing, stacking, strings
from widedeep.features.layout import FeatureLayout, SparseField, default_embedding_dim
from widedeep.features.schema import (
    FIRST_ID,
    PADDING_ID,
    UNKNOWN_ID,
    BucketizedFeature,
    CategoricalFeature,
    CrossFeature,
    Feature,
    FeatureSchema,
    HashedFeature,
    MultiCategoricalFeature,
    NumericFeature,
)
from widedeep.features.stacking import (
    CodeArray,
    CodedIds,
    Column,
    IdMatrix,
    narrowest_codes,
    over_row_ranges,
    stack_ids,
)
from widedeep.tables import ColumnTable, TableSource, describe_source, read_columns, read_table

STATE_VERSION = 1
T = TypeVar("T")
IdArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
DenseColumn = NDArray[np.float32]  # a numeric feature's encoded column


@dataclass
class ColumnReport:
    """What ``transform`` met in one feature: unseen values, missing values, truncated lists."""

    unseen: int = 0
    missing: int = 0
    truncated: int = 0


@dataclass
class TransformReport:
    """Per-feature counts of values that did not map to a learned id."""

    rows: int
    columns: dict[str, ColumnReport] = field(default_factory=dict)

    def notable(self) -> dict[str, ColumnReport]:
        """Only the features with something to report."""
        return {name: c for name, c in self.columns.items() if c.unseen or c.missing or c.truncated}

    def __str__(self) -> str:
        lines = [
            f"{name}: {c.unseen} unseen, {c.missing} missing, {c.truncated} truncated"
            for name, c in self.notable().items()
        ]
        return f"{self.rows} rows" + ("; " + "; ".join(lines) if lines else "; all values known")


@dataclass(frozen=True)
class EncodedTable:
    """A table encoded for the model, in the column order of ``layout``.

    ids: (N, F) int32 single-valued ids; multi_ids: one (N, L) int32 matrix per multi-valued
    field (0 = padding); dense: (N, D) float32; labels: (N,) float32, or None.
    """

    ids: IdMatrix
    multi_ids: tuple[IdMatrix, ...]
    dense: NDArray[np.float32]
    labels: NDArray[np.float32] | None
    report: TransformReport

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of a larger table: ``frame`` holds rows ``offset``, ``offset + 1``,
    ... of the table named ``where``."""

    frame: ColumnTable
    where: str
    offset: int = 0

    @contextmanager
    def numbered(self) -> Iterator[None]:
        """Errors raised inside name the row in the whole table, not in the chunk."""
        try:
            yield
        except SchemaError as error:
            if not self.offset:
                raise
            shift = self.offset
            message = re.sub(r"\bin row (\d+)", lambda m: f"in row {int(m[1]) + shift}", str(error))
            raise SchemaError(message) from None


@dataclass(frozen=True)
class _Tokens:
    """Hashes of one cross component: (N, L) hashes and a validity mask (L = 1 if single)."""

    hashes: NDArray[np.uint64]
    valid: NDArray[np.bool_]


@dataclass(frozen=True)
class SideTable:
    """The features of one side (a users or items table) encoded once, row-aligned.

    values: per feature, ids (N,) / (N, L) or a numeric column (N,); tokens: the raw-value
    hashes of cross components, so crosses with the other side can be formed per pair.
    """

    names: tuple[str, ...]
    values: dict[str, NDArray[Any] | CodedIds]
    tokens: dict[str, _Tokens]
    report: TransformReport


class Preprocessor:
    """Fits vocabularies, statistics and boundaries on a training table; encodes tables."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.state_: dict[str, dict[str, Any]] | None = None
        self._layout_of: tuple[object, FeatureLayout] | None = None  # (state it was made from)

    # ----------------------------------------------------------------------------- fitting
    def fit(self, source: TableSource) -> Preprocessor:
        """Learn each feature's state from the training table ``source``."""
        return self._fit_frame(self._open(source), describe_source(source))

    def fit_transform(self, source: TableSource) -> EncodedTable:
        """``fit`` then ``transform`` on the same table (read once, each id column
        dictionary-encoded once for both)."""
        frame, where = self._open(source), describe_source(source)
        cache = ColumnCache(dense=self._dense_out(frame.height))
        self._fit_frame(frame, where, cache)
        return self._transform_frame(frame, where, with_labels=None, cache=cache)

    def _fit_frame(
        self, frame: ColumnTable, where: str, cache: ColumnCache | None = None
    ) -> Preprocessor:
        """``fit`` on one whole table: each feature's stats and state in one task, so that
        sorting one column's vocabulary overlaps reading and counting the next. With a
        ``cache`` that holds the dense matrix (``fit_transform``), a numeric feature is
        encoded into it in the same task, and its float64 column let go then where no
        other feature reads it, not once every feature is fitted."""
        features = list(self.schema.features)
        dense = set() if cache is None or cache.dense is None else set(cache.dense.index)

        def fit(feature: Feature, stats: FeatureStats) -> dict[str, Any]:
            state = _fit_feature(feature, stats, where)
            if feature.name in dense:
                assert cache is not None and isinstance(feature, NumericFeature)
                _encode_dense(feature, frame, state, where, cache, self.schema)
            return state

        states = self._chunk_stats(Chunk(frame, where), cache, then=fit)
        self.state_ = {f.name: state for f, state in zip(features, states, strict=True)}
        return self

    def fit_chunks(self, chunks: Iterable[Chunk], where: str) -> Preprocessor:
        """Learn each feature's state in one pass over a table read in ``chunks`` (named
        ``where``): counts and moments merge chunk by chunk, and medians and quantiles come
        from a sample of at most ``QUANTILE_SAMPLE`` values per feature (``FeatureStats``),
        so memory holds one chunk and the vocabularies, never the table. With up to that
        many observed values the state equals ``fit``'s (up to float rounding of means)."""
        total: list[FeatureStats] | None = None
        for chunk in chunks:
            stats = self._chunk_stats(chunk)
            total = (
                stats if total is None else [a.merge(b) for a, b in zip(total, stats, strict=True)]
            )
        if total is None:
            raise SchemaError(f"{where}: the table is empty (0 rows)")
        return self._finish_fit(total, where)

    def _chunk_stats(
        self,
        chunk: Chunk,
        cache: ColumnCache | None = None,
        then: Callable[[Feature, FeatureStats], Any] | None = None,
    ) -> list[Any]:
        """Each feature's stats of ``chunk``; with ``then``, ``then(feature, stats)`` instead,
        in the same task. A table with several faults fails as separate passes would (and
        as ``fit_chunks`` does): on the first feature whose stats fail, else a bad label,
        else the first feature whose ``then`` fails."""
        frame, where = chunk.frame, chunk.where

        def work(feature: Feature) -> Any:
            stats = _feature_stats(feature, frame, where, chunk.offset, cache)
            if then is None:
                return stats
            try:
                return then(feature, stats)
            except SchemaError as error:  # raised once every feature's stats and the label pass
                return _Failed(error)

        with chunk.numbered():
            _check_table(frame, self.schema, where, need_label=self.schema.label is not None)
            results = _per_feature(work, list(self.schema.features), frame.height)
            if self.schema.label is not None:  # fails before any feature's fit
                labels = _encode_labels(frame, self.schema, where)
                if cache is not None:
                    cache.labels = labels
            failed = next((r for r in results if isinstance(r, _Failed)), None)
            if failed is not None:
                raise failed.error
        return results

    def _finish_fit(self, stats: list[FeatureStats], where: str) -> Preprocessor:
        features = list(self.schema.features)
        # sorting vocabularies is most of this: on threads when they are large
        values = sum(len(counts) for f_stats in stats for counts in f_stats.counts)
        states = _per_feature(
            lambda pair: _fit_feature(pair[0], pair[1], where),
            list(zip(features, stats, strict=True)),
            values * (PARALLEL_ROWS // PARALLEL_VALUES),
        )
        self.state_ = {f.name: state for f, state in zip(features, states, strict=True)}
        return self

    # --------------------------------------------------------------------------- transform
    def transform(self, source: TableSource, *, with_labels: bool | None = None) -> EncodedTable:
        """Encode ``source``. ``with_labels``: None = if the label column is there, True = must."""
        self._check_fitted()
        return self._transform_frame(self._open(source), describe_source(source), with_labels)

    def transform_chunk(self, chunk: Chunk, *, with_labels: bool | None = None) -> EncodedTable:
        """Encode the rows of one chunk of a larger table (errors name the table's rows)."""
        self._check_fitted()
        with chunk.numbered():
            return self._transform_frame(chunk.frame, chunk.where, with_labels)

    def read(self, source: TableSource, keys: Sequence[str] = ()) -> pl.DataFrame:
        """Read ``source``; from CSV, id columns (and ``keys``) stay text ('01234' keeps its 0)."""
        return read_table(source, text_columns=[*self.schema.id_columns, *keys])

    def _open(self, source: TableSource) -> ColumnTable:
        """``source`` for fitting and encoding: a Parquet path is read a column at a time, as
        each is encoded, so that its raw rows are never whole in memory."""
        return read_columns(source, text_columns=self.schema.id_columns)

    def _transform_frame(
        self,
        frame: ColumnTable,
        where: str,
        with_labels: bool | None,
        cache: ColumnCache | None = None,
    ) -> EncodedTable:
        label = self.schema.label
        has_label = label is not None and label.column in frame.columns
        if with_labels and label is None:
            raise SchemaError("labels were asked for, but the schema declares no label")
        need_label = bool(with_labels) or (with_labels is None and has_label)
        _check_table(frame, self.schema, where, need_label=need_label)
        if cache is None:
            cache = ColumnCache(dense=self._dense_out(frame.height))
        out = cache.dense
        assert out is not None  # numeric features are encoded straight into it
        side = self._encode_side(frame, where, self._base_features(), cache)
        assert out.filled == set(out.index)  # every column of the matrix written
        fitted_labels = cache.labels  # fit_transform's, if any
        cache.clear()  # the side now holds the only references to the columns read
        encoded = self._assemble(
            lambda name: (side, None), frame.height, release=True, dense=out.matrix
        )
        labels = None
        if need_label:
            labels = (
                fitted_labels
                if fitted_labels is not None
                else _encode_labels(frame, self.schema, where)
            )
        return replace(encoded, labels=labels, report=side.report)

    def encode_labels(self, source: TableSource) -> NDArray[np.float32]:
        """Only the labels of ``source`` (0/1 or the target), as training encodes them."""
        if self.schema.label is None:
            raise SchemaError("the schema declares no label")
        frame, where = self.read(source), describe_source(source)
        if self.schema.label.column not in frame.columns:
            raise SchemaError(f"{where}: missing label column '{self.schema.label.column}'")
        return _encode_labels(frame, self.schema, where)

    # ----------------------------------------------------------------------- pairs of sides
    def encode_side(self, source: TableSource, columns: Iterable[str] | None = None) -> SideTable:
        """Encode, once, the features whose input columns a side table (users, items) holds.

        ``columns`` limits which of its columns count as feature inputs (default: all).
        Pairs of rows from two sides become model inputs with ``encode_pairs``.
        """
        self._check_fitted()
        frame, where = self.read(source), describe_source(source)
        available = set(frame.columns if columns is None else columns) & set(frame.columns)
        names = [f.name for f in self._base_features() if f.source_column in available]
        if frame.height == 0:
            raise SchemaError(f"{where}: the table is empty (0 rows)")
        return self._encode_side(frame, where, names)

    def encode_pairs(
        self,
        sides: Sequence[tuple[SideTable, NDArray[np.int64]]],
        fields: Collection[str] | None = None,
    ) -> EncodedTable:
        """Model inputs for rows that pair one row of each side: ``[(side, rows), ...]``.

        Each feature comes from the side that encoded it; a feature on no side (a context
        column absent at scoring time) is encoded as missing. Crosses between features of
        different sides (installed apps x candidate app) are hashed per pair here. With
        ``fields``, only those layout fields are encoded; the others are zero placeholders
        (for scoring that adds per-side shares computed once, see ``WideDeep.partial``).
        """
        n = len(sides[0][1])
        owner: dict[str, tuple[SideTable, NDArray[np.int64] | None]] = {}
        for side, rows in sides:
            if len(rows) != n:
                raise ValueError("every side needs one row index per pair")
            for name in side.names:
                owner.setdefault(name, (side, rows))
        missing = [f.name for f in self._base_features() if f.name not in owner]
        if missing:
            empty = self._missing_side(missing)
            zeros = np.zeros(n, dtype=np.int64)
            for name in missing:
                owner[name] = (empty, zeros)
        return self._assemble(lambda name: owner[name], n, fields)

    def owners(self, sides: Sequence[SideTable]) -> dict[str, int | None]:
        """For each layout field, the index of the one side that determines it, else None
        (a cross of features from several sides, or a feature on no side)."""
        owner_of: dict[str, int] = {}
        for index, side in enumerate(sides):
            for name in side.names:
                owner_of.setdefault(name, index)
        out: dict[str, int | None] = {}
        layout = self.layout
        for name in [*(f.name for f in layout.fields), *layout.dense]:
            feature = self.schema.feature(name)
            parts = feature.features if isinstance(feature, CrossFeature) else (name,)
            found = {owner_of.get(part) for part in parts}
            out[name] = found.pop() if len(found) == 1 else None
        return out

    def _base_features(self) -> list[Feature]:
        """The non-cross features that feed a part or a cross (what a table must supply)."""
        used = {f.name for f in self.layout.fields} | set(self.layout.dense)
        for feature in self.schema.features:
            if isinstance(feature, CrossFeature) and feature.name in used:
                used.update(feature.features)
        return [f for f in self.schema.features if f.kind != "cross" and f.name in used]

    def _missing_side(self, names: list[str]) -> SideTable:
        """A one-row side where every listed feature's input is missing."""
        columns = {self.schema.feature(name).source_column for name in names}
        frame = pl.DataFrame({column: [None] for column in columns})
        return self._encode_side(frame, "missing context", names)

    def _encode_side(
        self,
        frame: ColumnTable,
        where: str,
        features: Iterable[Feature | str],
        cache: ColumnCache | None = None,
    ) -> SideTable:
        state = self._check_fitted()
        cache = ColumnCache() if cache is None else cache  # a column read by several features: once
        layout = self.layout
        in_layout = {f.name for f in layout.fields} | set(layout.dense)
        components = {
            part
            for f in self.schema.features
            if isinstance(f, CrossFeature) and f.name in in_layout
            for part in f.features
        }
        report = TransformReport(rows=frame.height)
        values: dict[str, NDArray[Any] | CodedIds] = {}
        tokens: dict[str, _Tokens] = {}
        resolved = [self.schema.feature(i) if isinstance(i, str) else i for i in features]

        def encode(feature: Feature) -> tuple[Any, ColumnReport | None, _Tokens | None]:
            if isinstance(feature, NumericFeature):
                numeric = _encode_dense(
                    feature, frame, state[feature.name], where, cache, self.schema
                )
                return numeric, None, None
            value, column_report, token = None, None, None
            if feature.name in in_layout:
                column_report = ColumnReport()
                value = _encode_sparse(
                    feature, frame, state[feature.name], where, column_report, cache
                )
            if feature.name in components:
                token = _component_tokens(feature, frame, state[feature.name], where, cache)
            return value, column_report, token

        for feature, (value, column_report, token) in zip(
            resolved, _per_feature(encode, resolved, frame.height), strict=True
        ):
            if value is not None:
                values[feature.name] = value
            if column_report is not None:
                report.columns[feature.name] = column_report
            if token is not None:
                tokens[feature.name] = token
        names = tuple(f.name for f in resolved)
        return SideTable(names=names, values=values, tokens=tokens, report=report)

    def _assemble(
        self,
        source_of: Callable[[str], tuple[SideTable, NDArray[np.int64] | None]],
        n: int,
        fields: Collection[str] | None = None,
        release: bool = False,
        dense: NDArray[np.float32] | None = None,
    ) -> EncodedTable:
        """Stack features in layout order, gathering each from its side's rows. ``release``:
        take each feature's column out of its side as it is read (a side used once), so that
        a column is let go once it is in its matrix. The numeric columns go first: the id
        matrix, the largest, is then made without them. ``dense``: the dense matrix, filled
        already as the numeric features were encoded (a table's own encoding, not pairs)."""
        layout = self.layout

        def value(name: str) -> NDArray[Any] | CodedIds:
            side, rows = source_of(name)
            array = side.values.pop(name) if release else side.values[name]
            if rows is None:
                return array
            if isinstance(array, CodedIds):
                return array.take(rows)
            return array[rows]

        def tokens(name: str) -> _Tokens:
            side, rows = source_of(name)
            found = side.tokens[name]
            if rows is None:
                return found
            return _Tokens(found.hashes[rows], found.valid[rows])

        def column(name: str) -> Column:
            if fields is not None and name not in fields:
                return np.zeros(n, dtype=np.int64)  # a placeholder, never read
            feature = self.schema.feature(name)
            if isinstance(feature, CrossFeature):
                return _encode_cross(feature, tokens, self.schema)
            return value(name)

        def numeric(name: str) -> DenseColumn:
            if fields is not None and name not in fields:
                return np.zeros(n, dtype=np.float32)  # a placeholder, never read
            column = value(name)
            assert not isinstance(column, CodedIds)  # the layout's dense columns are numeric
            return column

        if dense is None:
            dense = _dense_matrix([numeric(name) for name in layout.dense], n)
        ids = stack_ids([column(f.name) for f in layout.single], n)
        multi = tuple(
            _expanded(column(f.name)).reshape(n, -1).astype(np.int32) for f in layout.multi
        )
        return EncodedTable(
            ids=ids,
            multi_ids=multi,
            dense=np.ascontiguousarray(dense),
            labels=None,
            report=TransformReport(rows=n),
        )

    # ------------------------------------------------------------------------------ layout
    @property
    def layout(self) -> FeatureLayout:
        """The encoded columns this preprocessor produces (needs ``fit``)."""
        state = self._check_fitted()
        if self._layout_of is not None and self._layout_of[0] is state:
            return self._layout_of[1]  # every transform asks; serving asks per request
        self._layout_of = (state, self._make_layout(state))
        return self._layout_of[1]

    def _dense_names(self) -> list[str]:
        """The numeric features of the model, in the order of the dense matrix's columns."""
        used = set(self.schema.wide_names) | set(self.schema.deep_names)
        return [
            f.name for f in self.schema.features if isinstance(f, NumericFeature) and f.name in used
        ]

    def _dense_out(self, rows: int) -> DenseOut:
        """An empty dense matrix for a table of ``rows`` rows."""
        names = self._dense_names()
        return DenseOut(
            np.empty((rows, len(names)), dtype=np.float32), {n: j for j, n in enumerate(names)}
        )

    def _make_layout(self, state: dict[str, dict[str, Any]]) -> FeatureLayout:
        wide, deep = set(self.schema.wide_names), set(self.schema.deep_names)
        single: list[SparseField] = []
        multi: list[SparseField] = []
        for feature in self.schema.features:
            if feature.name not in wide and feature.name not in deep:
                continue
            if isinstance(feature, NumericFeature):
                continue
            cardinality = _cardinality(feature, state[feature.name])
            is_multi = self._is_multi_valued(feature)
            sparse = SparseField(
                name=feature.name,
                cardinality=cardinality,
                embedding_dim=feature.embedding_dim or default_embedding_dim(cardinality),
                wide=feature.name in wide,
                deep=feature.name in deep,
                multi_valued=is_multi,
                pooling=feature.pooling if isinstance(feature, MultiCategoricalFeature) else "sum",
            )
            (multi if is_multi else single).append(sparse)
        dense = tuple(self._dense_names())
        return FeatureLayout(single=tuple(single), multi=tuple(multi), dense=dense)

    def _is_multi_valued(self, feature: Feature) -> bool:
        if isinstance(feature, MultiCategoricalFeature):
            return True
        if isinstance(feature, CrossFeature):
            return any(self._is_multi_valued(self.schema.feature(p)) for p in feature.features)
        return False

    # ------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """The schema and fitted state as plain JSON-ready data."""
        return {
            "version": STATE_VERSION,
            "schema": self.schema.to_dict(),
            "state": copy.deepcopy(self._check_fitted()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """Rebuild a fitted preprocessor from ``to_dict`` output."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise SchemaError(
                f"preprocessor state: expected version {STATE_VERSION}, got {version!r}"
            )
        preprocessor = cls(FeatureSchema.from_dict(data["schema"], where="preprocessor schema"))
        state = data.get("state")
        names = {f.name for f in preprocessor.schema.features}
        if not isinstance(state, dict) or set(state) != names:
            raise SchemaError("preprocessor state does not match its schema's features")
        preprocessor.state_ = state
        return preprocessor

    def save(self, path: str | Path) -> None:
        """Write the fitted state as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        """Read a preprocessor written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def _check_fitted(self) -> dict[str, dict[str, Any]]:
        if self.state_ is None:
            raise NotFittedError(
                "this Preprocessor is not fitted yet: call fit(table) before transform"
            )
        return self.state_


# ------------------------------------------------------------------------- column access


def check_columns(
    columns: Sequence[str], schema: FeatureSchema, where: str, need_label: bool
) -> None:
    """The error for a table (named ``where``, with ``columns``) that lacks a column the
    schema reads, or its label column where ``need_label`` (every missing one listed)."""
    required = list(schema.input_columns)
    if need_label and schema.label is not None:
        required.append(schema.label.column)
    missing = [c for c in required if c not in columns]
    if missing:
        listed = ", ".join(f"'{c}'" for c in missing)
        raise SchemaError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {listed} "
            f"(the table has {len(columns)} columns: {', '.join(columns[:20])})"
        )


def _check_table(frame: ColumnTable, schema: FeatureSchema, where: str, need_label: bool) -> None:
    """The table is non-empty and has every column the schema reads (all missing listed)."""
    check_columns(frame.columns, schema, where, need_label)
    if frame.height == 0:
        raise SchemaError(f"{where}: the table is empty (0 rows)")


def _strings(frame: ColumnTable, feature: Feature, where: str) -> pl.Series:
    """The feature's column as strings; integers, booleans and categoricals are accepted."""
    series = frame.get_column(feature.source_column)
    _check_strings(series.dtype, feature, where)
    return series if series.dtype == pl.String else series.cast(pl.String)


def _check_strings(dtype: pl.DataType, feature: Feature, where: str) -> None:
    """The error for a column ``_strings`` cannot read as strings."""
    if not (
        dtype in (pl.String, pl.Boolean, pl.Null)
        or dtype.is_integer()
        or isinstance(dtype, pl.Categorical | pl.Enum)
    ):
        raise SchemaError(
            f"Column '{feature.source_column}' of {where}: feature '{feature.name}' "
            f"({feature.kind}) expects strings or integers, got {dtype}"
        )


# From this many rows, a numeric column with nulls is read from its Arrow buffers: polars'
# to_numpy fills the nulls value by value (7.2 ms against 1.7 ms for 1M float64 values), but
# costs ~15 us less per column on the few rows of a served request.
_BUFFER_READ_ROWS = 4096
_FIXED_WIDTH_NUMBERS = frozenset(
    {pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64}
    | {pl.Float32, pl.Float64}
)


def _with_nan_for_nulls(series: pl.Series) -> FloatArray:
    """A column of one of ``_FIXED_WIDTH_NUMBERS`` as float64, NaN where it is null."""
    if len(series) < _BUFFER_READ_ROWS or not series.null_count():
        return np.asarray(series.to_numpy(), dtype=np.float64)
    array = series.to_arrow()
    validity, data = array.buffers()[:2]
    assert validity is not None and data is not None  # a numeric array with nulls has both
    end = array.offset + len(array)
    values = np.frombuffer(data, dtype=array.type.to_pandas_dtype(), count=end)
    bits = np.frombuffer(validity, dtype=np.uint8)
    valid = np.unpackbits(bits, count=end, bitorder="little").view(np.bool_)
    return np.where(valid[array.offset :], values[array.offset :], np.float64("nan"))


def _numbers(series: pl.Series, column: str, where: str, feature_name: str) -> FloatArray:
    """The column ``column`` (``series``) as float64 with NaN for missing; text that is not a
    number is an error."""
    dtype = series.dtype
    if dtype == pl.String:
        converted = series.str.strip_chars().cast(pl.Float64, strict=False)
        bad = converted.is_null() & series.is_not_null() & (series.str.strip_chars() != "")
        if bad.any():
            row = int(bad.arg_true()[0])
            raise SchemaError(
                f"Column '{column}' of {where}: expected a number, got {series[row]!r} "
                f"in row {row} (feature '{feature_name}')"
            )
        series = converted
    elif not (dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)):
        raise SchemaError(
            f"Column '{column}' of {where}: feature '{feature_name}' expects numbers, got {dtype}"
        )
    if dtype in _FIXED_WIDTH_NUMBERS:
        # No polars expression: to_numpy gives NaN for nulls (ints with nulls as float64),
        # and a small request's table is not charged an expression's fixed cost per column.
        values = _with_nan_for_nulls(series)
    else:
        values = series.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        values = np.asarray(values, dtype=np.float64)
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise SchemaError(
            f"Column '{column}' of {where}: infinite value {values[row]} in row {row} "
            f"(feature '{feature_name}'); only finite numbers or missing values are allowed"
        )
    return values


def _list_values(frame: ColumnTable, feature: MultiCategoricalFeature, where: str) -> pa.Array:
    """The multi-valued column as an Arrow large_list<large_string> array."""
    column = feature.source_column
    series = frame.get_column(column)
    if series.dtype in (pl.String, pl.Null):
        # '' is an empty list, not a list holding the empty string.
        series = (
            series.cast(pl.String)
            .str.split(feature.separator)
            .list.eval(pl.element().filter(pl.element() != ""))
        )
    elif not isinstance(series.dtype, pl.List):
        raise SchemaError(
            f"Column '{column}' of {where}: feature '{feature.name}' (multi_categorical) expects "
            f"a list column or '{feature.separator}'-separated strings, got {series.dtype}"
        )
    inner = series.dtype.inner  # type: ignore[attr-defined]
    if inner != pl.String:
        if not (inner.is_integer() or inner in (pl.Boolean, pl.Null)):
            raise SchemaError(
                f"Column '{column}' of {where}: feature '{feature.name}' expects lists of "
                f"strings or integers, got {series.dtype}"
            )
        series = series.cast(pl.List(pl.String))
    return pc.cast(series.to_arrow(), pa.large_list(pa.large_string()))


# ------------------------------------------------------------------------------- fitting


QUANTILE_SAMPLE = 1_000_000  # medians and quantiles come from at most this many rows


@dataclass
class FeatureStats:
    """What fitting one feature needs from the rows read so far; chunks' stats merge.

    counts: value -> count tables, merged lazily (vocabularies); longest: longest list
    (multi-valued); rows / missing: numbers read / missing; mean, m2: mean and summed
    squared deviation of the observed numbers (merged as Chan et al.'s parallel variance;
    computed only for a feature that uses them, else 0);
    keys, sample: a bottom-k sample of the observed numbers for medians and quantiles: each
    value has a pseudo-random key (a hash of its row's number and table) and the
    ``QUANTILE_SAMPLE`` smallest keys are kept. It is every observed value up to that many,
    a uniform sample of them beyond, the same whatever the chunking, and bounded in memory.
    """

    counts: list[pl.DataFrame] = field(default_factory=list)
    codes: _Codes | None = None  # the one chunk's codes the counts came from (not merged)
    longest: int = 0
    rows: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0
    keys: list[NDArray[np.uint64]] = field(default_factory=list)  # parts, joined when full
    sample: list[FloatArray] = field(default_factory=list)
    limit: int | None = None  # once the sample is full: the largest key it keeps

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The stats of both chunks' rows together (``self`` first)."""
        seen, more = self.rows - self.missing, other.rows - other.missing
        total = seen + more
        delta = other.mean - self.mean
        mean = self.mean + delta * more / total if total else 0.0
        m2 = self.m2 + other.m2 + (delta * delta * seen * more / total if total else 0.0)
        keys, sample = other.keys, other.sample
        if self.limit is not None:  # keys above the full sample's largest can never enter it
            kept = [part <= self.limit for part in keys]
            keys = [part[k] for part, k in zip(keys, kept, strict=True)]
            sample = [part[k] for part, k in zip(sample, kept, strict=True)]
        merged = FeatureStats(
            counts=_pending_counts([*self.counts, *other.counts]),
            longest=max(self.longest, other.longest),
            rows=self.rows + other.rows,
            missing=self.missing + other.missing,
            mean=mean,
            m2=m2,
            keys=[*self.keys, *keys],
            sample=[*self.sample, *sample],
            limit=self.limit,
        )
        if sum(len(part) for part in merged.keys) > QUANTILE_SAMPLE * 5 // 4:  # with slack
            smallest_keys, smallest = _smallest(_joined(merged.keys), _joined(merged.sample))
            merged.keys, merged.sample = [smallest_keys], [smallest]
            merged.limit = int(smallest_keys.max())
        return merged

    def value_counts(self) -> pl.DataFrame:
        """Each value's count over all rows read."""
        return _merged_counts(self.counts)

    def observed_sample(self) -> FloatArray:
        """The sampled observed numbers (all of them, up to ``QUANTILE_SAMPLE``)."""
        return _smallest(_joined(self.keys), _joined(self.sample))[1]


def _joined(parts: list[NDArray[Any]]) -> NDArray[Any]:
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0)


def _smallest(
    keys: NDArray[np.uint64], values: FloatArray
) -> tuple[NDArray[np.uint64], FloatArray]:
    """The ``QUANTILE_SAMPLE`` entries with the smallest keys."""
    if len(keys) <= QUANTILE_SAMPLE:
        return keys, values
    chosen = np.argpartition(keys, QUANTILE_SAMPLE - 1)[:QUANTILE_SAMPLE]
    return keys[chosen], values[chosen]


def _merged_counts(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames).group_by("value").agg(pl.col("count").sum())


def _pending_counts(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Count tables merged once the unmerged ones outgrow the merged first one, so a
    stream of chunks costs O(rows) merging, not chunks x vocabulary."""
    if len(frames) > 1 and sum(len(f) for f in frames[1:]) >= len(frames[0]):
        return [_merged_counts(frames)]
    return frames


def _sample_keys(where: str, offset: int, n: int) -> NDArray[np.uint64]:
    """Pseudo-random keys of rows ``offset`` .. ``offset + n - 1`` of the table ``where``
    (a bijective hash of the row number, salted with the table's name)."""
    return hashing.mix64(np.arange(offset, offset + n, dtype=np.uint64) ^ _salt(where))


@functools.lru_cache(maxsize=1024)
def _salt(where: str) -> np.uint64:
    return np.uint64(hashing.hash_string_list([where])[0])


@dataclass(frozen=True)
class _Codes:
    """A string column dictionary-encoded: each row's position in ``dictionary`` (-1 for
    null) and each value's count. One hash pass over the rows serves both fitting (counts)
    and encoding (ids)."""

    indices: CodeArray  # int8, int16 or int32 by the count of values (``narrowest_codes``)
    dictionary: pa.Array
    value_counts: NDArray[np.int64]
    # vocabularies fitted on these very codes (id -> (vocabulary, each value's position)):
    # fit_transform then encodes without looking its values up
    fitted: dict[int, tuple[list[str], NDArray[np.int64]]] = field(
        default_factory=dict, compare=False
    )

    @classmethod
    def of(cls, values: pl.Series) -> _Codes:
        if strings.ENABLED:
            indices, dictionary, counts = strings.distinct(values)
            return cls(narrowest_codes(indices, len(dictionary)), dictionary, counts)
        column = strings.as_large_strings(values)
        encoded = pc.dictionary_encode(column)
        indices = np.asarray(
            pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int32
        )
        counts = np.bincount(indices[indices >= 0], minlength=len(encoded.dictionary))
        dictionary = encoded.dictionary
        return cls(narrowest_codes(indices, len(dictionary)), dictionary, counts.astype(np.int64))

    @functools.cached_property
    def value_hashes(self) -> NDArray[np.uint64]:
        """Each distinct value's string hash (``hashing.hash_strings``), then that of ''
        (a null hashes like '')."""
        return hashing.hash_strings(
            pa.concat_arrays(
                [self.dictionary.cast(pa.large_string()), pa.array([""], pa.large_string())]
            )
        )

    @functools.cached_property
    def hashes(self) -> NDArray[np.uint64]:
        """Each row's string hash, computed once per distinct value, and once per column
        when a hashed field and a cross both read it."""
        return self.value_hashes[self.indices]  # index -1: the '' appended last

    @property
    def missing(self) -> int:
        """How many rows are null."""
        return len(self.indices) - int(self.value_counts.sum())

    def counts(self) -> pl.DataFrame:
        """How many rows hold each (non-null) value, in the order of ``dictionary``."""
        values = pl.Series("value", self.dictionary).cast(pl.String)
        return pl.DataFrame({"value": values, "count": self.value_counts})

    def remember(self, vocabulary: list[str], codes_in_order: NDArray[np.int64]) -> None:
        """Note that ``vocabulary`` lists the values numbered ``codes_in_order``."""
        positions = np.full(len(self.dictionary), -1, dtype=np.int64)
        positions[codes_in_order] = np.arange(len(codes_in_order))
        self.fitted[id(vocabulary)] = (vocabulary, positions)

    def positions_in(self, vocabulary: list[str]) -> NDArray[np.int64]:
        """Each distinct value's position in ``vocabulary``, -1 where it is not there."""
        known = self.fitted.get(id(vocabulary))
        if known is not None and known[0] is vocabulary:
            return known[1]
        index = _vocabulary_index(vocabulary)
        if isinstance(index, strings.StringIndex):
            return index.positions(self.dictionary)
        positions = pc.fill_null(pc.index_in(self.dictionary.cast(index.type), value_set=index), -1)
        return np.asarray(positions.to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class _Failed:
    """A feature's fit that failed, raised once the other checks have had their turn."""

    error: SchemaError


@dataclass(frozen=True)
class DenseOut:
    """A table's dense matrix as its numeric features are encoded into it: ``index``, each
    feature's column; ``filled``, the features encoded so far."""

    matrix: NDArray[np.float32]
    index: dict[str, int]
    filled: set[str] = field(default_factory=set)

    def column(self, name: str) -> NDArray[np.float32]:
        """The feature's column of the matrix (a strided view, written in place)."""
        return self.matrix[:, self.index[name]]


@dataclass
class ColumnCache:
    """Columns already read and converted, by source column: ``fit_transform`` reads each
    once for both fitting and encoding, and a column that feeds several features is read
    once, also when those features are encoded at the same time on different threads."""

    codes: dict[str, _Codes] = field(default_factory=dict)
    numbers: dict[str, FloatArray] = field(default_factory=dict)
    dense: DenseOut | None = None  # the table's dense matrix, filled as features are encoded
    lists: dict[tuple[str, str], pa.Array] = field(default_factory=dict)  # (column, separator)
    labels: NDArray[np.float32] | None = None
    _locks: dict[Hashable, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def once(self, store: dict[Any, T], key: Hashable, read: Callable[[], T]) -> T:
        """``store[key]``, made by ``read()`` the first time it is asked for; a thread that
        asks while another reads it waits for that read."""
        with self._guard:
            lock = self._locks.setdefault((id(store), key), threading.Lock())
        with lock:
            if key not in store:
                store[key] = read()
            return store[key]

    def clear(self) -> None:
        """Let go of every column read (the labels too)."""
        self.codes.clear()
        self.numbers.clear()
        self.dense = None
        self.lists.clear()
        self.labels = None


def _column_codes(
    frame: ColumnTable, feature: Feature, where: str, cache: ColumnCache | None
) -> _Codes:
    def read() -> _Codes:
        return _Codes.of(_strings(frame, feature, where))

    return read() if cache is None else cache.once(cache.codes, feature.source_column, read)


def _column_numbers(
    frame: ColumnTable, feature: Feature, where: str, cache: ColumnCache | None
) -> FloatArray:
    """``_numbers`` of the feature's column (callers must not write to it: it is shared)."""
    column = feature.source_column

    def read() -> FloatArray:
        return _numbers(frame.get_column(column), column, where, feature.name)

    return read() if cache is None else cache.once(cache.numbers, column, read)


def _column_lists(
    frame: ColumnTable, feature: MultiCategoricalFeature, where: str, cache: ColumnCache | None
) -> pa.Array:
    """``_list_values`` of the feature's column (shared, like ``_column_numbers``)."""

    def read() -> pa.Array:
        return _list_values(frame, feature, where)

    key = (feature.source_column, feature.separator)
    return read() if cache is None else cache.once(cache.lists, key, read)


def _vocabulary(
    counts: pl.DataFrame,
    feature: CategoricalFeature | MultiCategoricalFeature,
    codes: _Codes | None = None,
) -> list[str]:
    """Values seen at least ``min_count`` times, most frequent first (ties by value), at
    most ``max_size``. ``codes``: the codes whose ``counts()`` these are (one chunk's),
    told which of their values the vocabulary lists, in its order."""
    if codes is not None:
        counts = counts.with_row_index("code")  # a value's row in counts() is its code
    counts = counts.filter(pl.col("count") >= feature.min_count).sort(
        ["count", "value"], descending=[True, False]
    )
    if feature.max_size is not None:
        counts = counts.head(feature.max_size)
    vocabulary: list[str] = counts.get_column("value").cast(pl.String).to_list()
    if codes is not None:
        codes.remember(vocabulary, counts.get_column("code").to_numpy().astype(np.int64))
    return vocabulary


def _feature_stats(
    feature: Feature,
    frame: ColumnTable,
    where: str,
    offset: int,
    cache: ColumnCache | None = None,
) -> FeatureStats:
    """One chunk's stats for ``feature``; ``offset``: the chunk's first row in the table
    ``where`` (it keys the sample)."""
    if isinstance(feature, CategoricalFeature):
        codes = _column_codes(frame, feature, where, cache)
        return FeatureStats(counts=[codes.counts()], codes=codes)
    if isinstance(feature, MultiCategoricalFeature):
        lists = _column_lists(frame, feature, where, cache)
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        return FeatureStats(
            counts=[_Codes.of(pl.Series("value", pc.list_flatten(lists))).counts()],
            longest=int(lengths.max()) if len(lengths) else 0,
        )
    if isinstance(feature, HashedFeature):  # nothing to learn: the type is checked, not read
        _check_strings(frame.schema[feature.source_column], feature, where)
        return FeatureStats()
    if isinstance(feature, BucketizedFeature) and feature.boundaries is not None:
        _column_numbers(frame, feature, where, cache)  # dtype check only
        return FeatureStats()
    if isinstance(feature, NumericFeature | BucketizedFeature):
        values = _column_numbers(frame, feature, where, cache)
        missing = np.isnan(values)
        if isinstance(feature, NumericFeature):
            if feature.fill == "error" and missing.any():
                _raise_missing(feature, values, where)
            if feature.transform == "log1p":
                _check_log1p(feature, values, where)  # the fill is checked once it is fitted
        stats = FeatureStats(rows=len(values), missing=int(np.count_nonzero(missing)))
        needs_moments, needs_sample = _needs_moments(feature), _needs_sample(feature)
        if not (needs_moments or needs_sample):
            return stats  # five passes over the column saved (log1p with a constant fill)
        observed = values[~missing]  # a copy, so no view keeps the chunk alive
        if needs_moments and observed.size:
            stats.mean = float(observed.mean())
            squares = observed - stats.mean
            np.square(squares, out=squares)  # in place: a table's worth less memory to touch
            stats.m2 = float(squares.sum())
        if needs_sample:
            keys, sample = _smallest(_sample_keys(where, offset, len(values))[~missing], observed)
            stats.keys, stats.sample = [keys], [sample]
        return stats
    return FeatureStats()  # crosses hash their components; nothing to learn


def _needs_moments(feature: NumericFeature | BucketizedFeature) -> bool:
    """Whether fitting takes the observed values' mean and variance."""
    return isinstance(feature, NumericFeature) and (
        feature.fill == "mean" or feature.transform == "standardize"
    )


def _needs_sample(feature: NumericFeature | BucketizedFeature) -> bool:
    """Whether fitting takes a median or quantiles (from a sample of the values)."""
    if isinstance(feature, BucketizedFeature):
        return feature.boundaries is None
    return feature.fill == "median" or feature.transform == "quantile"


def _fit_feature(feature: Feature, stats: FeatureStats, where: str) -> dict[str, Any]:
    """The fitted state of ``feature`` from the stats of all its training rows."""
    if isinstance(feature, CategoricalFeature):
        return {"vocabulary": _vocabulary(stats.value_counts(), feature, stats.codes)}
    if isinstance(feature, MultiCategoricalFeature):
        return {
            "vocabulary": _vocabulary(stats.value_counts(), feature),
            "max_values": feature.max_values or max(1, stats.longest),
        }
    if isinstance(feature, BucketizedFeature):
        if feature.boundaries is not None:
            return {"boundaries": list(feature.boundaries)}
        observed = _observed(feature, stats, where)
        assert feature.num_buckets is not None
        probs = np.arange(1, feature.num_buckets) / feature.num_buckets
        return {"boundaries": np.unique(np.quantile(observed, probs)).tolist()}
    if isinstance(feature, NumericFeature):
        return _fit_numeric(feature, stats, where)
    return {}  # hashed features and crosses hash their values; nothing to learn


def _observed(
    feature: NumericFeature | BucketizedFeature, stats: FeatureStats, where: str
) -> FloatArray:
    """The sampled observed values; an error when every value is missing."""
    if stats.rows == stats.missing:
        raise SchemaError(
            f"Column '{feature.source_column}' of {where}: every value is missing, "
            f"nothing to fit feature '{feature.name}' on"
        )
    return stats.observed_sample()


def _fit_numeric(feature: NumericFeature, stats: FeatureStats, where: str) -> dict[str, Any]:
    observed = _observed(feature, stats, where)
    fill = {
        "mean": lambda: stats.mean,
        "median": lambda: float(np.median(observed)),
        "zero": lambda: 0.0,
        "value": lambda: float(feature.fill_value or 0.0),
        "error": lambda: 0.0,
    }[feature.fill]()
    state: dict[str, Any] = {"fill": fill}
    if feature.transform == "log1p" and stats.missing and fill <= -1:
        raise SchemaError(
            f"Column '{feature.source_column}' of {where}: log1p needs values > -1, but the "
            f"{stats.missing} missing values are filled with {fill} (feature '{feature.name}')"
        )
    if feature.transform == "standardize":
        # the filled values' statistics: the observed ones merged with `missing` copies of fill
        observed_moments = FeatureStats(
            rows=stats.rows - stats.missing, mean=stats.mean, m2=stats.m2
        )
        filled = observed_moments.merge(FeatureStats(rows=stats.missing, mean=fill))
        std = float(np.sqrt(filled.m2 / filled.rows))
        state.update(mean=filled.mean, std=std if std > 0 else 1.0)
    elif feature.transform == "quantile":
        # the missing values' share of the sample, as copies of the fill (all of them when
        # the sample holds every observed value)
        copies = round(len(observed) * stats.missing / (stats.rows - stats.missing))
        filled_sample = np.concatenate([observed, np.full(copies, fill)])
        probs = np.arange(1, feature.num_quantiles) / feature.num_quantiles
        state["quantiles"] = np.quantile(filled_sample, probs).tolist()
    return state


def _raise_missing(feature: NumericFeature, values: FloatArray, where: str) -> None:
    row = int(np.flatnonzero(np.isnan(values))[0])
    raise SchemaError(
        f"Column '{feature.source_column}' of {where}: missing value (null or NaN) in row {row}, "
        f"and feature '{feature.name}' has fill 'error'"
    )


def _check_log1p(
    feature: NumericFeature,
    values: FloatArray,
    where: str,
    missing: NDArray[np.bool_] | None = None,
    fill: float = 0.0,
) -> None:
    """log1p needs values > -1: the column's, and ``fill`` in the ``missing`` rows if given."""
    below = values <= -1  # False where missing (NaN)
    if missing is not None and fill <= -1:
        below |= missing
    if below.any():
        row = int(np.flatnonzero(below)[0])
        value = fill if missing is not None and missing[row] else values[row]
        raise SchemaError(
            f"Column '{feature.source_column}' of {where}: log1p needs values > -1, "
            f"got {value} in row {row} (feature '{feature.name}')"
        )


def _cardinality(feature: Feature, state: dict[str, Any]) -> int:
    if isinstance(feature, CategoricalFeature | MultiCategoricalFeature):
        return FIRST_ID + len(state["vocabulary"])
    if isinstance(feature, HashedFeature | CrossFeature):
        return FIRST_ID + feature.num_buckets
    if isinstance(feature, BucketizedFeature):
        return FIRST_ID + len(state["boundaries"]) + 1
    raise TypeError(f"feature '{feature.name}' ({feature.kind}) has no ids")


# ------------------------------------------------------------------------------ encoding


_VOCABULARY_INDEXES: dict[int, tuple[list[str], strings.StringIndex | pa.Array]] = {}


def _vocabulary_index(vocabulary: list[str]) -> strings.StringIndex | pa.Array:
    """The vocabulary's lookup table (an Arrow array where numba is missing), built once
    per vocabulary list: a server encodes a few rows per request, and rebuilding a
    million-value table each time would dominate."""
    cached = _VOCABULARY_INDEXES.get(id(vocabulary))
    if cached is not None and cached[0] is vocabulary:
        return cached[1]
    array = pa.array(vocabulary, type=pa.large_string())
    index = strings.StringIndex(array) if strings.ENABLED else array
    if len(_VOCABULARY_INDEXES) >= 256:  # bounded: many short-lived preprocessors (tests, sweeps)
        _VOCABULARY_INDEXES.clear()
    _VOCABULARY_INDEXES[id(vocabulary)] = (vocabulary, index)
    return index


def _lookup(codes: _Codes, vocabulary: list[str]) -> tuple[CodedIds, int]:
    """Vocabulary ids (unknown -> 1, null -> 1) and how many non-null values were unseen.

    Only the column's distinct values are looked up in the vocabulary; the rows then take
    their value's id by position.
    """
    found = codes.positions_in(vocabulary)
    id_of = np.full(len(found) + 1, UNKNOWN_ID, dtype=np.int64)  # the last one: null rows
    id_of[:-1] = np.where(found >= 0, found + FIRST_ID, UNKNOWN_ID)
    unseen = int(codes.value_counts[found < 0].sum())
    return CodedIds(codes.indices, id_of), unseen


def warm_up() -> None:
    """Load the preprocessor's compiled loops now (compiling them where no cache holds
    them). A process pays this on its first encoding, about 0.5 s here (numba's own start
    and the loops' machine code), seconds when it compiles: training calls it before it
    times preprocessing, so that the time is the tables' and not this."""
    if strings.ENABLED:
        values = pl.Series(["", "a value longer than twelve bytes", None])
        _, dictionary, _ = strings.distinct(values)
        strings.StringIndex(dictionary).positions(values)
    stacking.warm_up()  # each type a column's codes may take


PARALLEL_ROWS = 50_000  # below this, threads cost more than they save
PARALLEL_VALUES = 10_000  # the same for the distinct values whose vocabularies are sorted


def _per_feature(work: Callable[[Any], T], features: Sequence[Any], rows: int) -> list[T]:
    """``work`` on each feature, in order; on threads for large tables (polars, Arrow and
    numpy release the GIL in their column kernels). The first failure, in feature order,
    is raised, as a serial loop would."""
    workers = min(os.cpu_count() or 1, len(features))
    if rows < PARALLEL_ROWS or workers < 2:
        return [work(f) for f in features]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, features))


def _expanded(column: Column | NDArray[Any]) -> NDArray[Any]:
    """A column as one array (ids expanded from their codes)."""
    return column.expand() if isinstance(column, CodedIds) else np.ascontiguousarray(column)


_DENSE_BLOCK = 16_384  # rows: the block's float64 temporaries (128 kB a column) stay in L2


def _dense_matrix(columns: Sequence[DenseColumn], n: int) -> NDArray[np.float32]:
    """The numeric columns side by side as one row-major (n, len(columns)) float32 matrix,
    copied a block of rows at a time (the rows being written stay in cache)."""
    out = np.empty((n, len(columns)), dtype=np.float32)

    def fill(first: int, last: int) -> None:
        for start in range(first, last, _DENSE_BLOCK):
            stop = min(start + _DENSE_BLOCK, last)
            for j, column in enumerate(columns):
                out[start:stop, j] = column[start:stop]

    if columns:
        over_row_ranges(fill, n)
    return out


def _bucket_index(values: FloatArray, boundaries: list[float]) -> IdArray:
    """0-based bucket of each value: bucket i holds boundaries[i-1] <= x < boundaries[i]."""
    return np.searchsorted(np.asarray(boundaries, dtype=np.float64), values, side="right")


def _padded(
    lists: pa.Array, values: NDArray[Any], width: int, fill: Any
) -> tuple[NDArray[Any], NDArray[np.bool_], int]:
    """Scatter flattened per-row ``values`` into an (N, width) matrix; count truncated values."""
    n = len(lists)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.repeat(np.arange(n), lengths)
    positions = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    keep = positions < width
    out = np.full((n, width), fill, dtype=values.dtype)
    valid = np.zeros((n, width), dtype=bool)
    out[rows[keep], positions[keep]] = values[keep]
    valid[rows[keep], positions[keep]] = True
    return out, valid, int((~keep).sum())


def _encode_sparse(
    feature: Feature,
    frame: ColumnTable,
    state: dict[str, Any],
    where: str,
    report: ColumnReport,
    cache: ColumnCache | None = None,
) -> Column:
    """Ids of one categorical-like (non-cross) feature: (N,) or (N, L) for multi-valued."""
    if isinstance(feature, CategoricalFeature):
        codes = _column_codes(frame, feature, where, cache)
        coded, report.unseen = _lookup(codes, state["vocabulary"])
        report.missing = codes.missing
        return coded
    if isinstance(feature, HashedFeature):
        codes = _column_codes(frame, feature, where, cache)
        id_of = (FIRST_ID + codes.value_hashes % np.uint64(feature.num_buckets)).astype(np.int64)
        id_of[-1] = UNKNOWN_ID  # null rows
        report.missing = codes.missing
        return CodedIds(codes.indices, id_of)
    if isinstance(feature, BucketizedFeature):
        numbers = _column_numbers(frame, feature, where, cache)
        missing = np.isnan(numbers)
        buckets = FIRST_ID + _bucket_index(np.where(missing, 0.0, numbers), state["boundaries"])
        buckets[missing] = UNKNOWN_ID
        report.missing = int(missing.sum())
        return buckets.astype(np.int64)
    if isinstance(feature, MultiCategoricalFeature):
        lists = _column_lists(frame, feature, where, cache)
        flat = pl.Series("value", pc.list_flatten(lists))
        coded, report.unseen = _lookup(_Codes.of(flat), state["vocabulary"])
        flat_ids = coded.expand()
        flat_ids[coded.codes < 0] = PADDING_ID
        padded, _, report.truncated = _padded(lists, flat_ids, state["max_values"], PADDING_ID)
        report.missing = int(lists.null_count)
        return padded
    raise TypeError(f"feature '{feature.name}' ({feature.kind}) has no ids")


def _component_tokens(
    feature: Feature,
    frame: ColumnTable,
    state: dict[str, Any],
    where: str,
    cache: ColumnCache | None = None,
) -> _Tokens:
    """Hashes of a cross component's raw values (unseen values keep their own identity)."""
    if isinstance(feature, CategoricalFeature | HashedFeature):
        codes = _column_codes(frame, feature, where, cache)
        return _Tokens(codes.hashes[:, None], (codes.indices >= 0)[:, None])
    if isinstance(feature, BucketizedFeature):
        numbers = _column_numbers(frame, feature, where, cache)
        missing = np.isnan(numbers)
        buckets = _bucket_index(np.where(missing, 0.0, numbers), state["boundaries"])
        return _Tokens(hashing.hash_ints(buckets)[:, None], ~missing[:, None])
    if isinstance(feature, MultiCategoricalFeature):
        lists = _column_lists(frame, feature, where, cache)
        flat = pc.list_flatten(lists)
        flat_hashes = hashing.hash_strings(flat)
        hashes, valid, _ = _padded(lists, flat_hashes, state["max_values"], np.uint64(0))
        flat_valid = np.asarray(flat.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        present, _, _ = _padded(lists, flat_valid, state["max_values"], False)
        return _Tokens(hashes, valid & present)
    raise TypeError(f"feature '{feature.name}' ({feature.kind}) cannot be crossed")


def _encode_cross(
    feature: CrossFeature, tokens_of: Callable[[str], _Tokens], schema: FeatureSchema
) -> IdArray:
    """Hash every combination of the components' values: (N,) or (N, L1*L2*...) ids."""
    combined: _Tokens | None = None
    for name in feature.features:
        tokens = tokens_of(name)
        if combined is None:
            combined = tokens
            continue
        n = tokens.hashes.shape[0]
        hashes = hashing.combine(combined.hashes[:, :, None], tokens.hashes[:, None, :])
        valid = combined.valid[:, :, None] & tokens.valid[:, None, :]
        combined = _Tokens(hashes.reshape(n, -1), valid.reshape(n, -1))
    assert combined is not None
    ids = (FIRST_ID + combined.hashes % np.uint64(feature.num_buckets)).astype(np.int64)
    multi_valued = any(
        isinstance(schema.feature(p), MultiCategoricalFeature) for p in feature.features
    )
    if multi_valued:
        return np.where(combined.valid, ids, PADDING_ID)
    return np.where(combined.valid[:, 0], ids[:, 0], UNKNOWN_ID)


def _encode_numeric(
    feature: NumericFeature,
    frame: ColumnTable,
    state: dict[str, Any],
    where: str,
    cache: ColumnCache | None = None,
    out: DenseColumn | None = None,
    release: bool = False,
) -> DenseColumn:
    """The feature's column, checked (a missing value with fill 'error', a value log1p
    cannot take), filled and transformed into float32, a block of rows at a time: the
    whole column in float64 would be a copy of it (8 MB a million rows) touched for the
    first time, which was most of preprocessing's time on a VM whose host backs a page
    only when it is first written (README, "Preprocessing"). ``out``: where to write it (a
    column of the dense matrix), else a new array. ``release``: let go of the float64 column
    in ``cache`` once encoded (no other feature reads it)."""
    values = _column_numbers(frame, feature, where, cache)
    missing = np.isnan(values)
    if feature.fill == "error" and missing.any():
        _raise_missing(feature, values, where)
    if feature.transform == "log1p":
        _check_log1p(feature, values, where, missing, state["fill"])
    if out is None:
        out = np.empty(len(values), dtype=np.float32)
    for start in range(0, len(values), _DENSE_BLOCK):
        block = values[start : start + _DENSE_BLOCK]
        filled = np.where(missing[start : start + _DENSE_BLOCK], state["fill"], block)
        out[start : start + len(block)] = _transformed(feature, state, filled)
    if cache is not None and release:
        cache.numbers.pop(feature.source_column, None)
    return out


def _encode_dense(
    feature: NumericFeature,
    frame: ColumnTable,
    state: dict[str, Any],
    where: str,
    cache: ColumnCache,
    schema: FeatureSchema,
) -> DenseColumn:
    """``_encode_numeric`` into the cache's dense matrix, once, where it has a column for
    ``feature``; else into a new array. The float64 column read is let go once encoded
    where no other feature of ``schema`` reads it."""
    out, release = cache.dense, _sole_reader(feature, schema)
    if out is None or feature.name not in out.index:
        return _encode_numeric(feature, frame, state, where, cache, release=release)
    column = out.column(feature.name)
    if feature.name not in out.filled:  # fit_transform fills it as the feature is fitted
        _encode_numeric(feature, frame, state, where, cache, column, release)
        out.filled.add(feature.name)
    return column


def _sole_reader(feature: Feature, schema: FeatureSchema) -> bool:
    """Whether ``feature`` is the only feature of ``schema`` that reads its column as numbers."""
    readers = (
        f
        for f in schema.features
        if isinstance(f, NumericFeature | BucketizedFeature)
        and f.source_column == feature.source_column
    )
    return sum(1 for _ in readers) == 1


def _transformed(feature: NumericFeature, state: dict[str, Any], values: FloatArray) -> FloatArray:
    """``feature``'s transform of the filled ``values`` (overwritten where it can be)."""
    if feature.transform == "log1p":
        return np.log1p(values, out=values)
    if feature.transform == "standardize":
        values -= state["mean"]
        values /= state["std"]
        return values
    if feature.transform == "quantile":
        quantiles = np.asarray(state["quantiles"], dtype=np.float64)
        # The paper: a value in the i-th of n_q quantiles maps to (i - 1) / (n_q - 1). A value
        # equal to several cut points (a heavily repeated one, like 0) takes the middle of
        # the quantiles it spans, so a 92% mass at 0 maps near 0.46, not to 0.92.
        low = np.searchsorted(quantiles, values, side="left")
        high = np.searchsorted(quantiles, values, side="right")
        return (low + high) / (2 * len(quantiles))
    return values


def _encode_labels(frame: ColumnTable, schema: FeatureSchema, where: str) -> NDArray[np.float32]:
    """Labels as float32: 0/1 for binary, the number itself for regression."""
    label = schema.label
    assert label is not None
    column = label.column
    series = frame.get_column(column)
    if series.null_count():
        row = int(series.is_null().arg_true()[0])
        raise SchemaError(f"Column '{column}' of {where}: the label is missing in row {row}")
    if label.objective == "binary" and label.positive is not None:
        if not (
            series.dtype == pl.String or series.dtype.is_integer() or series.dtype == pl.Boolean
        ):
            raise SchemaError(
                f"Column '{column}' of {where}: label with 'positive' values expects strings, "
                f"integers or booleans, got {series.dtype}"
            )
        positive = [str(v).lower() if isinstance(v, bool) else str(v) for v in label.positive]
        labels = series.cast(pl.String).is_in(positive).to_numpy()
        return labels.astype(np.float32)
    if series.dtype == pl.String and label.objective == "binary" and label.threshold is None:
        raise SchemaError(
            f"Column '{column}' of {where}: the label holds strings; give label.positive "
            f"(the values that mean 1, e.g. [{series[0]!r}])"
        )
    values = _numbers(series, column, where, "label")
    nan = np.isnan(values)
    if nan.any():
        row = int(np.flatnonzero(nan)[0])
        raise SchemaError(f"Column '{column}' of {where}: the label is missing (NaN) in row {row}")
    if label.objective == "regression":
        return values.astype(np.float32)
    if label.threshold is not None:
        return (values >= label.threshold).astype(np.float32)
    bad = (values != 0) & (values != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SchemaError(
            f"Column '{column}' of {where}: a binary label must be 0 or 1, got {values[row]} "
            f"in row {row} (give label.positive or label.threshold to map other values)"
        )
    return values.astype(np.float32)
