"""The HTTP service: a loaded bundle behind FastAPI, built in-process by ``build_app``.

    POST /v1/score      rows, as columns or as objects -> probabilities (or predictions)
    POST /v1/recommend  one user (features or a known id) -> the k best items
    GET  /v1/health     liveness; never waits for the concurrency limit
    GET  /v1/metadata   input columns, features, objective, versions, training metrics

Scores take the library's path (``Bundle.encode`` + ``predict_parts``; ``PairScorer`` for
items) in micro-batches of ``micro_batch`` rows on ``threads`` threads, the paper's latency
trick, and equal ``bundle.predict(frame, batch_size=micro_batch, precision=precision)`` bit
for bit (so ``bundle.predict(frame)`` when a request fits in one micro-batch). A client's
mistake is a 4xx ``{"error": {"message": ..., "field": ...}}``; load over the limit is an
immediate 503.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray

from widedeep import inference
from widedeep.bundle import Bundle, load_bundle, package_version
from widedeep.data.interactions import key_positions
from widedeep.data.tensors import TensorTable
from widedeep.errors import ConfigError, SchemaError
from widedeep.features import preprocessor as preprocessing
from widedeep.features.preprocessor import SideTable
from widedeep.features.schema import FeatureSchema
from widedeep.inference import predict_parts
from widedeep.precision import Precision, precision_problem
from widedeep.recommend import Catalog, PairScorer, Retrieval, encode_users, load_catalog, retrieve
from widedeep.tables import TableSource

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, create_model
    from starlette.exceptions import HTTPException
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"serving needs FastAPI ({error}): pip install 'widedeep[serve]'") from None

T = TypeVar("T")
ColumnType = Literal["number", "integer", "string", "strings"]


@dataclass(frozen=True)
class ServeSettings:
    """Limits and threading of the service (all positive; checked all at once)."""

    max_body_bytes: int = 1 << 20
    max_rows: int = 10_000
    max_candidates: int = 1_000
    # Requests in flight; one more gets a 503. As many as there are cores: on 2 cores, 2 met
    # p99 <= 14 ms at 100 req/s where 4 and 8 queued in the GIL (benchmarks/SERVE_RESULTS.md).
    max_concurrency: int = field(default_factory=lambda: max(2, os.cpu_count() or 1))
    request_timeout_s: float = 2.0
    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    micro_batch: int = 512  # rows per micro-batch; a request's batches run on `threads`
    default_k: int = 10
    # The deep part's precision in /v1/score (``fp32``, ``bf16``, ``auto``), as ``predict``'s
    # ``precision``; top-K scoring is float32 either way.
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        bad = [
            f"{f.name} must be a positive {'number' if f.type == 'float' else 'integer'}, got {v!r}"
            for f in fields(self)
            if f.type in ("int", "float")
            and (
                type(v := getattr(self, f.name)) not in (int, float if f.type == "float" else int)
                or v <= 0
            )
        ]
        if (problem := precision_problem(self.precision)) is not None:
            bad.append(problem)
        if not bad and self.default_k > self.max_candidates:
            bad.append(f"default_k {self.default_k} exceeds max_candidates {self.max_candidates}")
        if bad:
            raise ConfigError("serve settings: " + "; ".join(bad))


# ------------------------------------------------------------------ request values


def _describe(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return f"{kinds.get(type(value), type(value).__name__)} ({value!r:.40})"


def _number(value: Any) -> float | None:
    """A finite float: JSON's NaN/Infinity and numbers beyond the float range are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_describe(value)}")
    number = float(value) if abs(value) < 2**1024 else math.inf  # a huge int would overflow
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r:.40}")
    return number


def _integer(value: Any) -> int | None:
    value = int(value) if isinstance(value, float) and value.is_integer() else value  # 2.0
    if value is not None and (type(value) is not int or not -(2**63) <= value < 2**63):
        raise ValueError(f"expected a 64-bit integer, got {_describe(value)}")
    return value


def _string(value: Any) -> str | None:
    """Text as the preprocessor reads an id: integers and booleans as polars casts them."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))  # JSON Schema's integers include 2.0
    raise ValueError(f"expected a string or an integer, got {_describe(value)}")


def _strings(separator: str) -> Callable[[Any], list[str | None] | None]:
    def check(value: Any) -> list[str | None] | None:
        if value is None or isinstance(value, list):
            return None if value is None else [_string(item) for item in value]
        if isinstance(value, str):  # 'a|b|c', split as the preprocessor splits it
            return [token for token in value.split(separator) if token]
        raise ValueError(f"expected a list of strings, got {_describe(value)}")

    return check


SCALAR = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]}
JSON_TYPES: dict[str, Any] = {
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "string": SCALAR,
    "strings": {"anyOf": [{"type": "array", "items": SCALAR}, {"type": "string"}]},
}
DTYPES = {"number": pl.Float64, "integer": pl.Int64, "string": pl.String}
Token = Annotated[Any, AfterValidator(_string), WithJsonSchema(SCALAR)]


@dataclass(frozen=True)
class _Column:
    """One raw input column: the JSON values it takes and the features that read it."""

    name: str
    type: ColumnType
    features: tuple[str, ...]
    separator: str = "|"

    def value_type(self) -> Any:
        check = {"number": _number, "integer": _integer, "string": _string}.get(self.type)
        json_type = {"anyOf": [JSON_TYPES[self.type], {"type": "null"}]}
        return Annotated[
            Any, AfterValidator(check or _strings(self.separator)), WithJsonSchema(json_type)
        ]

    def series(self, values: list[Any]) -> pl.Series:
        """The values with the dtype the preprocessor reads."""
        return pl.Series(self.name, values, dtype=DTYPES.get(self.type) or pl.List(pl.String))


def _columns(schema: FeatureSchema) -> list[_Column]:
    """The input columns in schema order; one read both as a number and as ids takes ints."""
    readers: dict[str, list[Any]] = {}
    for feature in schema.features:
        if feature.kind != "cross":
            readers.setdefault(feature.source_column, []).append(feature)
    out = []
    for name, found in readers.items():
        kinds = {f.kind for f in found}
        numeric, ids = kinds & {"numeric", "bucketized"}, kinds & {"categorical", "hashed"}
        kind: ColumnType = "integer" if numeric and ids else "number" if numeric else "string"
        multi = [f.separator for f in found if f.kind == "multi_categorical"]
        out.append(
            _Column(name, "strings" if multi else kind, tuple(f.name for f in found), *multi[:1])
        )
    return out


def _model(name: str, columns: list[_Column], required: bool, **limits: Any) -> Any:
    """A model with one field per column, named by its alias; unknown keys are refused."""
    specs: dict[str, Any] = {
        f"c{i}": (
            list[c.value_type()] if limits else c.value_type(),  # type: ignore[misc]
            Field(... if required else None, alias=c.name, **limits),
        )
        for i, c in enumerate(columns)
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), **specs)


def _values(model: Any, columns: list[_Column]) -> dict[str, Any]:
    return {c.name: getattr(model, f"c{i}") for i, c in enumerate(columns)}


# ------------------------------------------------------------------------ responses


class ErrorDetail(BaseModel):
    """What was wrong, and the request field it concerns (a dotted path) if there is one."""

    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ScoreResponse(BaseModel):
    """One score per row, in request order: ``probabilities`` (binary objective) or
    ``predictions`` (regression); with ``explain``, the wide and deep logits summing to it."""

    probabilities: list[float] | None = None
    predictions: list[float] | None = None
    wide_logits: list[float] | None = None
    deep_logits: list[float] | None = None


class RecommendedItem(BaseModel):
    item: str
    score: float


class RecommendResponse(BaseModel):
    """The best items first; ``retrieval`` names the stage that chose the candidates."""

    items: list[RecommendedItem]
    retrieval: str | None = None


class ColumnInfo(BaseModel):
    name: str
    type: ColumnType
    features: list[str]


class FeatureInfo(BaseModel):
    name: str
    kind: str
    wide: bool
    deep: bool


class Metadata(BaseModel):
    """What the model reads and predicts, and the versions that trained and serve it."""

    objective: str
    label: str | None
    score_field: str
    columns: list[ColumnInfo]
    features: list[FeatureInfo]
    user_key: str
    item_key: str
    catalog_items: int | None
    versions: dict[str, str]
    created_utc: str | None
    metrics: dict[str, Any]
    precision: str


class Health(BaseModel):
    status: str
    in_flight: int


# --------------------------------------------------------------------------- errors


class ClientError(Exception):
    """A refused request: its status, the message and the field it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, field=field)).model_dump()
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _problem(error: Any, known: str) -> tuple[str, str | None]:
    """One pydantic error as (message, field path), naming features as features."""
    loc = tuple(error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"])
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    table = loc[:1] in (("columns",), ("rows",), ("user",))
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error')})", None
    if error["type"] == "missing" and table:
        return f"missing feature '{loc[-1]}' ({path})", path
    if error["type"] == "extra_forbidden":
        what = f"unknown feature '{loc[-1]}' (known: {known})" if table else "unknown field"
        return f"{what} at {path}", path
    return f"{path or 'body'}: {str(error['msg']).removeprefix('Value error, ')}", path or None


def _install_handlers(app: FastAPI, columns: list[_Column]) -> None:
    known = ", ".join(c.name for c in columns)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(e, known) for e in exc.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return _error(422, "; ".join(m for m, _ in problems[:3]) + more, problems[0][1])

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ClientError):
            return _error(exc.status, exc.message, exc.field)
        if isinstance(exc, HTTPException):
            return _error(exc.status_code, str(exc.detail))
        message = str(exc).replace("of the DataFrame", "of the request")  # Schema/ConfigError
        named = re.search(r"'([^']+)'", message)
        return _error(422, message, named.group(1) if named else None)

    app.add_exception_handler(RequestValidationError, invalid)
    for kind in (ClientError, HTTPException, SchemaError, ConfigError):
        app.add_exception_handler(kind, refused)


class _BodyLimit:
    """ASGI middleware: a body over ``max_bytes``, as declared or as sent, gets a 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_big = not declared.isdigit() or int(declared) > self.max_bytes
        chunks, size, more = [], 0, not too_big
        while more and size <= self.max_bytes:  # the length may be undeclared (chunked)
            message = await receive()
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
        if too_big or size > self.max_bytes:
            text = f"the body is over the limit of {self.max_bytes} bytes (max_body_bytes)"
            return await _error(413, text)(scope, receive, send)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


# -------------------------------------------------------------------------- service


class _Bundle(Bundle):
    """A bundle that reads each of its saved tables once, not on every request."""

    def table(self, name: str) -> pl.DataFrame | None:
        cache: dict[str, pl.DataFrame | None] = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            cache[name] = super().table(name)
        return cache[name]


class _Slots:
    """Requests in flight: a slot is taken without waiting, given back from any thread."""

    def __init__(self, size: int) -> None:
        self.size, self.used, self.lock = size, 0, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            free = self.used < self.size
            self.used += free
            return free

    def give(self, *_: Any) -> None:
        with self.lock:
            self.used -= 1


# A value of each input type that is never missing (a feature's fill may be 'error').
_BLANK: dict[str, Any] = {"number": 0.0, "integer": 0, "string": "", "strings": []}


class _Service:
    """What the routes share: the bundle, its catalog, the thread pools and the limits."""

    def __init__(self, bundle: Bundle, settings: ServeSettings, users: TableSource) -> None:
        self.bundle = _Bundle(**{f.name: getattr(bundle, f.name) for f in fields(bundle)})
        self.bundle.model.eval()  # predict_parts restores the mode it found: keep it one
        self.settings, self.schema = settings, bundle.preprocessor.schema
        self.columns = _columns(self.schema)
        self.slots = _Slots(settings.max_concurrency)
        self.requests = ThreadPoolExecutor(settings.max_concurrency, "widedeep-request")
        self.scoring = ThreadPoolExecutor(settings.threads, "widedeep-score")
        self.user_key, self.item_key = bundle.config.data.user_key, bundle.config.data.item_key
        self.catalog: Catalog | None = None
        self.user_columns: list[_Column] = []
        self.users: tuple[pl.DataFrame, dict[str, int], Any] | None = None
        self._warm_up()
        if self.bundle.table("items") is not None:
            self.catalog = load_catalog(self.bundle)
            self.user_columns = [c for c in self.columns if c.name not in self.catalog.columns]
            dummy = {c.name: _BLANK[c.type] for c in self.user_columns}
            self.template = PairScorer(self.bundle, self._user_side("", dummy), self.catalog)
            self.users = None if users is None else self._users(users)

    def _warm_up(self) -> None:
        """Score one blank row before serving: the first call of each compiled loop
        (encoding, lookups) compiles it or loads it from numba's cache, which can take
        longer than a request may, so it is paid here, at startup. So is making the
        projected first layer, where the micro-batches are large enough to take it."""
        preprocessing.warm_up()  # also what a blank row does not reach (int16/int32 codes)
        frame = pl.DataFrame([c.series([_BLANK[c.type]]) for c in self.columns])
        table, _ = self.bundle.encode(frame, with_labels=False)
        settings = self.settings
        inference.predict_parts(
            self.bundle.model, table, settings.micro_batch, precision=settings.precision
        )
        # made now, not by the first request
        inference.projected_for(self.bundle.model, settings.micro_batch, "cpu", settings.precision)

    async def run(self, work: Callable[[], T]) -> T:
        """``work`` on a request thread if a slot is free (else 503), within the timeout."""
        if not self.slots.take():
            raise ClientError(503, "the server is at its concurrency limit; retry in a second")
        try:
            future = self.requests.submit(work)
        except RuntimeError:
            self.slots.give()
            raise
        future.add_done_callback(self.slots.give)  # when the work ends, even after a timeout
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise ClientError(504, f"scoring took longer than {timeout} s; retry") from None

    def batched(self, n: int, score: Callable[[int, int], T]) -> list[T]:
        """``score(start, stop)`` of each micro-batch of ``n`` rows, on the scoring threads."""
        size = self.settings.micro_batch
        if n <= size:
            return [score(0, n)]
        futures = [self.scoring.submit(score, a, min(a + size, n)) for a in range(0, n, size)]
        return [f.result() for f in futures]

    def score(self, body: Any) -> dict[str, Any]:
        """Scores of the rows: ``Bundle.encode``, then ``predict_parts`` per micro-batch."""
        if (body.columns is None) == (body.rows is None):
            raise ClientError(
                422, "give the rows as 'columns' or as 'rows', one of them", "columns"
            )
        if body.columns is not None:
            values = _values(body.columns, self.columns)
        else:
            values = {
                c.name: [getattr(r, f"c{i}") for r in body.rows] for i, c in enumerate(self.columns)
            }
        n = max(len(v) for v in values.values())
        for name, column in values.items():
            if len(column) != n:
                message = f"columns.{name} has {len(column)} values, another {n}"
                raise ClientError(
                    422, f"{message}: give each column one value per row", f"columns.{name}"
                )
        frame = pl.DataFrame([c.series(values[c.name]) for c in self.columns])
        table, _ = self.bundle.encode(frame, with_labels=False)
        model, size = self.bundle.model, self.settings.micro_batch

        def part(a: int, b: int) -> TensorTable:
            return TensorTable(
                table.ids[a:b], tuple(m[a:b] for m in table.multi_ids), table.dense[a:b], None
            )

        precision = self.settings.precision
        parts = self.batched(
            n, lambda a, b: predict_parts(model, part(a, b), size, precision=precision)
        )
        wide, deep = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        # Joined over the whole request as ``predict`` joins its batches: the last bit of an
        # elementwise op can depend on an element's position (in a SIMD body or tail).
        logits = torch.from_numpy(wide + deep)
        if model.objective == "binary":
            out = {"probabilities": logits.sigmoid().numpy()}
        else:
            out = {"predictions": logits.numpy()}
        if body.explain:
            out |= {"wide_logits": wide, "deep_logits": deep}
        return {name: _finite_list(array) for name, array in out.items()}

    def recommend(self, body: Any) -> dict[str, Any]:
        """The ``k`` best items for one user, among candidates or the retrieval stage's."""
        assert self.catalog is not None
        scorer = self._scorer(self._user_side(*self._user(body)))
        seen = key_positions(pl.Series(body.seen or [], dtype=pl.String), self.catalog.keys)
        seen = np.unique(seen[seen >= 0])
        retrieval: Retrieval | None = None
        if body.candidates is not None and body.retrieval is not None:
            raise ClientError(422, "give candidates or retrieval, not both", "retrieval")
        if body.candidates is not None:
            items = self._candidates(body.candidates)
        else:
            cooccurrence = self.bundle.table("cooccurrence") is not None
            chosen: Retrieval = body.retrieval or ("cooccurrence" if cooccurrence else "popular")
            history = pl.DataFrame({"row": np.zeros(len(seen), np.int64), "item": seen})
            found = retrieve(self.bundle, self.catalog, chosen, history, 1, body.num_candidates)
            items, retrieval = found[0][found[0] >= 0], chosen
        if body.exclude_seen:
            items = items[~np.isin(items, seen)]
        scores = np.concatenate(
            self.batched(len(items), lambda a, b: scorer.score(np.zeros(b - a, int), items[a:b]))
        )
        order = np.argsort(-scores, kind="stable")[: body.k]  # ties keep the candidates' order
        keys = self.catalog.keys.gather(items[order]).to_list()
        ranked = zip(keys, _finite_list(scores[order]), strict=True)
        return {"items": [{"item": k, "score": s} for k, s in ranked], "retrieval": retrieval}

    def _scorer(self, users: SideTable) -> PairScorer:
        """The template scorer for one user: the catalog's share, computed once at start, is
        reused; only the user's share is computed."""
        return self.template.for_users(users, batch_size=self.settings.micro_batch)

    def _user(self, body: Any) -> tuple[str, dict[str, Any]]:
        """The user's key and feature values: from the request, else the users table."""
        if body.user is not None:
            values = _values(body.user, self.user_columns)
            return body.user_id or _string(values.get(self.user_key)) or "", values
        if body.user_id is None:
            raise ClientError(422, "give the user's features ('user') or a known 'user_id'", "user")
        if self.users is None:
            message = "this server has no users table: send the user's features as 'user'"
            raise ClientError(422, message, "user_id")
        frame, index, model = self.users
        if body.user_id not in index:
            raise ClientError(404, f"unknown user_id {body.user_id!r}", "user_id")
        row = model.model_validate(frame.row(index[body.user_id], named=True))
        return body.user_id, _values(row, [c for c in self.user_columns if c.name in frame.columns])

    def _user_side(self, key: str, values: dict[str, Any]) -> SideTable:
        """The user's encoded side, from every user column (absent ones missing) so that its
        fields are those of the template scorer."""
        frame = pl.DataFrame([c.series([values.get(c.name)]) for c in self.user_columns])
        if self.user_key not in frame.columns or frame.get_column(self.user_key).is_null().all():
            frame = frame.with_columns(pl.lit(key, pl.String).alias(self.user_key))
        assert self.catalog is not None
        return encode_users(self.bundle, frame, self.catalog)[1]

    def _candidates(self, candidates: list[str]) -> NDArray[np.int64]:
        """Catalog positions of the candidates, first occurrences only; unknown ones refused."""
        assert self.catalog is not None
        positions = key_positions(pl.Series(candidates, dtype=pl.String), self.catalog.keys)
        unknown = np.flatnonzero(positions < 0)
        if len(unknown):
            at = f"candidates[{unknown[0]}]"
            message = f"{at}: {candidates[unknown[0]]!r} is not in the catalog"
            raise ClientError(422, f"{message} ({len(unknown)} unknown)", at)
        return positions[np.sort(np.unique(positions, return_index=True)[1])]

    def _users(self, source: TableSource) -> tuple[pl.DataFrame, dict[str, int], Any]:
        """The users table, an index of its keys, and a model that checks one of its rows."""
        frame = self.bundle.preprocessor.read(source, keys=[self.user_key])
        if self.user_key not in frame.columns:
            raise ConfigError(f"the users table has no key column '{self.user_key}'")
        keys = frame.get_column(self.user_key).cast(pl.String).to_list()
        present = [c for c in self.user_columns if c.name in frame.columns]
        model = _model("StoredUser", present, required=False)
        return frame.select(c.name for c in present), {k: i for i, k in enumerate(keys)}, model

    def metadata(self) -> dict[str, Any]:
        schema, manifest, objective = self.schema, self.bundle.manifest, self.bundle.model.objective
        wide, deep = set(schema.wide_names), set(schema.deep_names)
        return {
            "objective": objective,
            "label": None if schema.label is None else schema.label.column,
            "score_field": "probabilities" if objective == "binary" else "predictions",
            "columns": [
                {"name": c.name, "type": c.type, "features": c.features} for c in self.columns
            ],
            "features": [
                {"name": f.name, "kind": f.kind, "wide": f.name in wide, "deep": f.name in deep}
                for f in schema.features
            ],
            "user_key": self.user_key,
            "item_key": self.item_key,
            "catalog_items": None if self.catalog is None else len(self.catalog),
            "versions": {
                "widedeep": str(manifest.get("widedeep_version")),
                "torch": str(manifest.get("torch_version")),
                "serving_widedeep": package_version(),
                "serving_torch": torch.__version__,
            },
            "created_utc": manifest.get("created_utc"),
            "metrics": _json_safe(manifest.get("metrics", {})),
            "precision": self.settings.precision,
        }


def _finite_list(scores: NDArray[Any]) -> list[float]:
    """The scores as floats; a non-finite one (from extreme inputs) is the client's 422."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ClientError(422, f"row {bad[0]}: the model's output is not finite (extreme inputs?)")
    return [float(s) for s in scores.tolist()]


def _json_safe(value: Any) -> Any:
    """A copy where NaN and infinite numbers (undefined metrics) are null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ------------------------------------------------------------------------------ app

DESCRIPTIONS = {
    404: "Unknown user_id",
    409: "The bundle stores no item catalog",
    413: "The body is over max_body_bytes",
    422: "A field is missing, unknown, of the wrong type, not finite or over a limit",
    503: "At the concurrency limit: retry after Retry-After seconds",
    504: "Scoring took longer than request_timeout_s",
}


def _needs(rule: str, *names: str) -> ConfigDict:
    """Unknown keys refused; the document asks for ``rule`` ('oneOf', 'anyOf') of ``names``."""
    required = [{"required": [name]} for name in names]
    return ConfigDict(extra="forbid", json_schema_extra={rule: required})  # type: ignore[dict-item]


def _request_models(service: _Service) -> tuple[Any, Any]:
    """The /v1/score and /v1/recommend request models, with one field per input column."""
    s, user = service.settings, _model("User", service.user_columns, required=False)
    user = user if service.catalog else dict[str, Any]  # (/v1/recommend answers 409 then)
    columns = _model("Columns", service.columns, True, min_length=1, max_length=s.max_rows)
    row = _model("Row", service.columns, required=True)
    limit: dict[str, Any] = {"ge": 1, "le": s.max_candidates}
    score: dict[str, Any] = {
        "columns": (columns, Field(None, description="One array per input column.")),
        "rows": (list[row], Field(None, min_length=1, max_length=s.max_rows)),  # type: ignore[valid-type]
        "explain": (bool, Field(False, description="Also return the wide and deep logits.")),
    }
    recommend: dict[str, Any] = {
        "user_id": (Token, Field(None, description="A key of the server's users table.")),
        "user": (user, Field(None, description="The user's features (absent: missing).")),
        "candidates": (list[Token], Field(None, min_length=1, max_length=s.max_candidates)),
        "seen": (list[Token], Field(None, max_length=s.max_rows, description="Items seen.")),
        "k": (int, Field(s.default_k, **limit)),
        "exclude_seen": (bool, Field(True, description="Leave out the seen items.")),
        "retrieval": (Literal["popular", "cooccurrence"], None),
        "num_candidates": (int, Field(min(200, s.max_candidates), **limit)),
    }
    return (
        create_model("ScoreRequest", __config__=_needs("oneOf", "columns", "rows"), **score),
        create_model(
            "RecommendRequest", __config__=_needs("anyOf", "user", "user_id"), **recommend
        ),
    )


def build_app(
    bundle: Bundle, settings: ServeSettings | None = None, *, users: TableSource | None = None
) -> FastAPI:
    """The app serving ``bundle``; with ``users`` (a table of user features by user key),
    /v1/recommend also takes a bare ``user_id``."""
    settings = settings or ServeSettings()
    service = _Service(bundle, settings, users)
    score_request, recommend_request = _request_models(service)
    app = FastAPI(title="widedeep", version=package_version(), description=__doc__ or "")
    _install_handlers(app, service.columns)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)

    async def not_busy() -> None:  # runs before the body is validated: overload costs little
        if service.slots.used >= service.slots.size:
            raise ClientError(503, "the server is at its concurrency limit; retry in a second")

    def route(path: str, response: type[BaseModel], *codes: int) -> Any:
        responses = {c: {"model": ErrorBody, "description": DESCRIPTIONS[c]} for c in codes}
        return app.post(
            path,
            response_model=response,
            response_model_exclude_none=True,
            responses=responses,  # type: ignore[arg-type]
            dependencies=[Depends(not_busy)],
        )

    async def score(body: Any) -> Any:
        """Score rows: ``columns`` (one array per input column) or ``rows`` (objects)."""
        return await service.run(lambda: service.score(body))

    async def recommend(body: Any) -> Any:
        """The k best items for one user, among the candidates or the retrieval stage's."""
        if service.catalog is None:
            raise ClientError(409, "this bundle stores no item catalog (train on interactions)")
        return await service.run(lambda: service.recommend(body))

    score.__annotations__["body"] = score_request  # FastAPI reads the body's model here
    recommend.__annotations__["body"] = recommend_request
    route("/v1/score", ScoreResponse, 413, 422, 503, 504)(score)
    route("/v1/recommend", RecommendResponse, 404, 409, 413, 422, 503, 504)(recommend)

    @app.get("/v1/health", response_model=Health)
    async def health() -> Any:
        """Liveness: answers at once, whatever the load."""
        return {"status": "ok", "in_flight": service.slots.used}

    @app.get("/v1/metadata", response_model=Metadata)
    async def metadata() -> Any:
        """The input columns, features, objective, versions and training metrics."""
        return service.metadata()

    return app


def serve(
    bundle_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    *,
    users: str | Path | None = None,
    log_level: str = "info",
    **settings: Any,
) -> None:
    """Load the bundle in ``bundle_dir`` and answer HTTP on ``host:port`` until stopped;
    ``settings`` are ``ServeSettings`` fields (max_rows=..., micro_batch=...)."""
    try:
        import uvicorn
    except ImportError as error:
        raise ConfigError(
            f"serving needs uvicorn ({error}): pip install 'widedeep[serve]'"
        ) from None
    unknown = sorted(set(settings) - {f.name for f in fields(ServeSettings)} - {"threads"})
    if unknown:
        raise ConfigError(f"unknown serve setting(s) {unknown}; see widedeep.serve.ServeSettings")
    if threads is not None:
        settings["threads"] = threads
    options = ServeSettings(**settings)
    # The micro-batch threads are the parallelism; each torch op gets the cores left over.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.threads))
    app = build_app(load_bundle(bundle_dir), options, users=users)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
