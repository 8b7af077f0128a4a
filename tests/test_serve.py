"""The HTTP service, in-process: the library's exact scores, every bad request named, overload
answered at once, micro-batches, recommendations, metadata and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import (
    config_dict,
    make_table,
    one_thread,
    run_config,
    shared_run,
    skip_plots,
    write_tables,
)
from test_inference import projected_batches
from test_recommend import ITEM, LABEL, USER, RecRun, shared_rec_run
from widedeep import serve as serve_module
from widedeep.bundle import Bundle, load_bundle
from widedeep.errors import ConfigError, SchemaError
from widedeep.model import deep as deep_module
from widedeep.recommend import top_k
from widedeep.serve import ServeSettings, build_app, serve
from widedeep.training.loop import train

COLUMNS = ["user", "item", "city", "price", "tags"]


class Api:
    """Synchronous calls into an ASGI app through httpx's in-process transport."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:  # Python's json writes NaN/Infinity tokens, as some clients do
            kwargs["content"] = json.dumps(body)
            kwargs["headers"] = {"content-type": "application/json"}
        return self("POST", path, **kwargs)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The shared CTR bundle (every feature kind; no item catalog)."""
    return load_bundle(shared_run(tmp_path_factory).bundle_dir)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> RecRun:
    return shared_rec_run(tmp_path_factory)


@pytest.fixture(scope="module")
def api(ctr: Bundle) -> Api:
    return Api(build_app(ctr))


@pytest.fixture(scope="module")
def rec_api(rec: RecRun) -> Api:
    return Api(build_app(rec.bundle, users=rec.users_path))


def features(n: int, seed: int = 7) -> pl.DataFrame:
    return make_table(n, seed).select(COLUMNS)


def columnar(frame: pl.DataFrame) -> dict[str, list[Any]]:
    return {name: frame.get_column(name).to_list() for name in frame.columns}


def scores(response: httpx.Response, name: str = "probabilities") -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()[name], dtype=np.float32)


# ------------------------------------------------------------------------------ /v1/score


def test_scores_equal_bundle_predict_bit_for_bit(api: Api, ctr: Bundle) -> None:
    frame = features(60)
    expected = ctr.predict(frame)
    by_columns = scores(api.post("/v1/score", {"columns": columnar(frame)}))
    by_rows = scores(api.post("/v1/score", {"rows": frame.to_dicts()}))
    assert np.array_equal(by_columns, expected)
    assert np.array_equal(by_rows, expected)


def test_explain_returns_the_parts_of_the_logit(api: Api, ctr: Bundle) -> None:
    frame = features(20)
    body = api.post("/v1/score", {"columns": columnar(frame), "explain": True}).json()
    wide = np.array(body["wide_logits"], dtype=np.float32)
    deep = np.array(body["deep_logits"], dtype=np.float32)
    parts = ctr.explain(frame)
    assert np.array_equal(wide, parts["wide_logit"]) and np.array_equal(deep, parts["deep_logit"])
    joint = torch.sigmoid(torch.from_numpy(wide + deep)).numpy()
    assert np.array_equal(joint, np.array(body["probabilities"], dtype=np.float32))


def test_json_values_are_read_as_the_library_reads_a_table(api: Api, ctr: Bundle) -> None:
    """Integers in id columns, integer prices, tag lists or 'a|b' text, and nulls."""
    body = {
        "user": [3, 4, None],
        "item": ["i1", 2, "i3"],
        "city": ["c1", True, None],
        "price": [1, -0.5, None],
        "tags": [["t0", "t1"], "t2|t3", None],
    }
    frame = pl.DataFrame(
        {
            "user": pl.Series([3, 4, None], dtype=pl.Int64),
            "item": ["i1", "2", "i3"],
            "city": ["c1", "true", None],
            "price": [1.0, -0.5, None],
            "tags": pl.Series([["t0", "t1"], ["t2", "t3"], None], dtype=pl.List(pl.String)),
        }
    )
    assert np.array_equal(scores(api.post("/v1/score", {"columns": body})), ctr.predict(frame))


def test_unseen_categories_are_scored(api: Api, ctr: Bundle) -> None:
    frame = pl.DataFrame(
        {"user": ["nobody"], "item": ["new"], "city": ["x"], "price": [0.1], "tags": ["t99"]}
    )
    assert np.array_equal(
        scores(api.post("/v1/score", {"rows": frame.to_dicts()})), ctr.predict(frame)
    )


def test_micro_batches_on_threads_equal_the_library_in_those_batches(ctr: Bundle) -> None:
    frame = features(101)
    app = build_app(ctr, ServeSettings(micro_batch=8, threads=3))
    got = scores(Api(app).post("/v1/score", {"columns": columnar(frame)}))
    assert np.array_equal(got, ctr.predict(frame, batch_size=8))  # order kept, same batches
    # One batch of 101 rows may round differently in the last bit (MKL's GEMM blocking).
    np.testing.assert_allclose(got, ctr.predict(frame), rtol=0, atol=1e-6)


def test_micro_batches_of_1024_rows_take_the_projected_tables_as_the_library_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose sparse fields share one table: micro-batches of 1024 rows or more score
    through the projected first layer, made at startup, as ``predict`` in those batches."""
    skip_plots(monkeypatch)
    train_path, test_path = write_tables(tmp_path / "data")
    base = config_dict(train_path, test_path)
    base["schema"]["features"] = [
        {"name": "user", "kind": "categorical", "embedding_dim": 4},
        {"name": "item", "kind": "categorical", "embedding_dim": 4},
        {"name": "price", "kind": "numeric"},
    ]
    base["schema"]["wide"], base["schema"]["deep"] = ["user", "item"], ["user", "item", "price"]
    run = train(run_config(base, ["train.epochs=1"]), tmp_path / "run")
    bundle = load_bundle(run.bundle_dir)
    used = projected_batches(monkeypatch)
    made: list[int] = []
    build = deep_module.project_first_layer
    monkeypatch.setattr(deep_module, "project_first_layer", lambda *a: made.append(1) or build(*a))
    api = Api(build_app(bundle, ServeSettings(micro_batch=1024, threads=2)))
    assert made == [1]  # at startup
    frame = make_table(2500, seed=5).select("user", "item", "price")
    got = scores(api.post("/v1/score", {"columns": columnar(frame)}))
    assert used == [1024, 1024]  # the last 452 rows: the plain product
    assert made == [1]
    assert np.array_equal(got, bundle.predict(frame, batch_size=1024))


def test_bf16_scores_equal_the_library_in_bf16_in_the_same_micro_batches(ctr: Bundle) -> None:
    frame = features(101)
    api = Api(build_app(ctr, ServeSettings(micro_batch=8, threads=3, precision="bf16")))
    got = scores(api.post("/v1/score", {"columns": columnar(frame)}))
    expected = ctr.predict(frame, batch_size=8, precision="bf16")
    assert np.array_equal(got, expected)
    assert not np.array_equal(expected, ctr.predict(frame, batch_size=8))  # it ran in bf16
    assert api("GET", "/v1/metadata").json()["precision"] == "bf16"


BASE = {
    "user": ["u1", "u2", "u3"],
    "item": ["i1", "i2", "i3"],
    "city": ["c1", "c2", "c3"],
    "price": [0.5, -1.0, 2.0],
    "tags": ["t0", "t1|t2", ""],
}


def _with(column: str, values: Any) -> dict[str, Any]:
    return {"columns": {**BASE, column: values}}


BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "missing feature": ({"columns": {k: v for k, v in BASE.items() if k != "price"}}, "price"),
    "string in a numeric column": (_with("price", [0.5, "cheap", 1.0]), "price"),
    "boolean in a numeric column": (_with("price", [0.5, True, 1.0]), "price"),
    "object in a list column": (_with("tags", [{"t": 1}, "t1", "t2"]), "tags"),
    "object in a string column": (_with("city", ["c1", ["c2"], "c3"]), "city"),
    "float in a string column": (_with("user", ["u1", 2.5, "u3"]), "user"),
    "NaN": (_with("price", [0.5, float("nan"), 1.0]), "price"),
    "Infinity": (_with("price", [float("inf"), 0.5, 1.0]), "price"),
    "huge integer": (_with("price", [10**400, 0.5, 1.0]), "price"),
    "unequal lengths": (_with("item", ["i1", "i2"]), "item"),
    "unknown feature": ({"columns": {**BASE, "colour": ["red"] * 3}}, "colour"),
    "empty request": ({}, "columns"),
    "zero rows": ({"columns": {k: [] for k in BASE}}, "user"),
    "no rows": ({"rows": []}, "rows"),
    "row without a feature": (
        {"rows": [{k: v[0] for k, v in BASE.items()}, {"user": "u2"}]},
        "rows[1].item",
    ),
    "columns and rows": ({"columns": BASE, "rows": [{k: v[0] for k, v in BASE.items()}]}, ""),
    "unknown top-level field": ({**_with("price", BASE["price"]), "explian": True}, "explian"),
    "body not an object": ([1, 2], ""),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_a_422_that_names_the_field(api: Api, case: str) -> None:
    body, name = BAD_REQUESTS[case]
    response = api.post("/v1/score", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert name in (error["field"] or "") and name in error["message"], error


def test_json_that_does_not_parse_is_a_422(api: Api) -> None:
    response = api.post(
        "/v1/score", content=b'{"columns": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


def test_numbers_that_overflow_to_infinity_are_refused(api: Api) -> None:
    text = json.dumps(_with("price", [0.5, 1.0, 2.0])).replace("2.0", "1e999")
    response = api.post(
        "/v1/score", content=text.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "columns.price[2]"


def test_too_many_rows_are_refused(ctr: Bundle) -> None:
    small = Api(build_app(ctr, ServeSettings(max_rows=5)))
    response = small.post("/v1/score", {"columns": columnar(features(6))})
    assert response.status_code == 422
    assert "at most 5" in response.json()["error"]["message"]
    assert response.json()["error"]["field"].startswith("columns.")


def test_a_body_over_the_limit_is_a_413_by_header_and_by_length(ctr: Bundle) -> None:
    small = Api(build_app(ctr, ServeSettings(max_body_bytes=2_000)))
    body = json.dumps({"columns": columnar(features(60))}).encode()
    assert len(body) > 2_000
    declared = small.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert "max_body_bytes" in declared.json()["error"]["message"]

    async def chunks() -> Any:  # no Content-Length: the body is sent chunked
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    streamed = small(
        "POST", "/v1/score", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    small_body = {"columns": columnar(features(2))}
    assert small.post("/v1/score", small_body).status_code == 200


def test_a_library_schema_error_is_a_422_naming_the_column(
    ctr: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_app(ctr)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SchemaError("Column 'price' of the DataFrame: expected a number, got 'x' in row 0")

    monkeypatch.setattr(Bundle, "encode", refuse)
    response = Api(app).post("/v1/score", {"columns": BASE})
    assert response.status_code == 422
    assert response.json()["error"] == {
        "message": "Column 'price' of the request: expected a number, got 'x' in row 0",
        "field": "price",
    }


def test_a_regression_bundle_answers_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_plots(monkeypatch)
    train_path, _ = write_tables(tmp_path / "data")
    overrides = [
        "schema.label={column: rating, objective: regression}",
        "train.early_stopping={metric: mae}",
        "train.epochs=1",
    ]
    run = train(run_config(config_dict(train_path), overrides), tmp_path / "run")
    bundle = load_bundle(run.bundle_dir)
    frame = features(30)
    body = Api(build_app(bundle)).post("/v1/score", {"columns": columnar(frame), "explain": True})
    assert set(body.json()) == {"predictions", "wide_logits", "deep_logits"}
    assert np.array_equal(scores(body, "predictions"), bundle.predict(frame))
    assert Api(build_app(bundle))("GET", "/v1/metadata").json()["score_field"] == "predictions"


# ------------------------------------------------------------------------------- overload


def _slow_predict(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make scoring wait until released; returns (started, release)."""
    started, release = threading.Event(), threading.Event()
    original = serve_module.predict_parts

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(serve_module, "predict_parts", slow)
    return started, release


def test_overload_is_an_immediate_503_while_health_answers(
    ctr: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = _slow_predict(monkeypatch)
    app = build_app(ctr, ServeSettings(max_concurrency=1, request_timeout_s=10))
    body = {"columns": BASE}

    async def scenario() -> tuple[httpx.Response, ...]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post("/v1/score", json=body))
            while not started.is_set():
                await asyncio.sleep(0.005)
            began = time.perf_counter()
            second = await client.post("/v1/score", json=body)
            third = await client.post("/v1/recommend", json={"user": {}})
            invalid = await client.post("/v1/score", json={})  # refused before validation
            health = await client.get("/v1/health")
            waited = time.perf_counter() - began
            assert waited < 1.0, waited
            release.set()
            return second, third, invalid, health, await first

    second, third, invalid, health, first = asyncio.run(scenario())
    assert second.status_code == third.status_code == invalid.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert "concurrency" in second.json()["error"]["message"]
    assert health.status_code == 200 and health.json()["in_flight"] == 1
    assert first.status_code == 200
    assert Api(app)("GET", "/v1/health").json()["in_flight"] == 0


def test_a_request_over_the_timeout_is_a_504_and_frees_its_slot_when_done(
    ctr: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, release = _slow_predict(monkeypatch)
    api = Api(build_app(ctr, ServeSettings(max_concurrency=1, request_timeout_s=0.2)))
    began = time.perf_counter()
    response = api.post("/v1/score", {"columns": BASE})
    assert response.status_code == 504 and time.perf_counter() - began < 2
    assert "request_timeout_s" in response.json()["error"]["message"] or "longer" in response.text
    assert api.post("/v1/score", {"columns": BASE}).status_code == 503  # still scoring
    release.set()
    for _ in range(200):
        if api("GET", "/v1/health").json()["in_flight"] == 0:
            break
        time.sleep(0.01)
    assert api.post("/v1/score", {"columns": BASE}).status_code == 200


# ---------------------------------------------------------------------------- /v1/recommend


def user_row(rec: RecRun, index: int = 0) -> tuple[str, pl.DataFrame]:
    users = rec.users
    return users[USER][index], users.slice(index, 1)


def test_recommend_over_candidates_equals_top_k(rec: RecRun, rec_api: Api) -> None:
    key, users = user_row(rec)
    items = ["a000003", "a000010", "a000011", "a000050", "a000020", "a000021", "a000003"]
    response = rec_api.post(
        "/v1/recommend",
        {"user": users.to_dicts()[0], "candidates": items, "k": 4},
    )
    assert response.status_code == 200, response.text
    got = response.json()["items"]
    assert len(got) == 4 and response.json().get("retrieval") is None
    candidates = pl.DataFrame({USER: [key] * len(items), ITEM: items})
    expected = top_k(rec.bundle, users, k=4, candidates=candidates)
    assert [g["item"] for g in got] == expected[ITEM].to_list()
    assert np.array_equal(np.array([g["score"] for g in got], np.float32), expected["score"])


def test_recommend_a_known_user_by_id_with_retrieval_excluding_seen(
    rec: RecRun, rec_api: Api
) -> None:
    key, users = user_row(rec, 3)
    installed = rec.train.filter((pl.col(USER) == key) & (pl.col(LABEL) == 1)).select(USER, ITEM)
    # Each item once: top_k's co-occurrence counts a repeated history row twice.
    installed = installed.unique(maintain_order=True)
    seen = installed[ITEM].to_list()
    assert seen
    body = {"user_id": key, "seen": seen, "k": 5, "num_candidates": 12}
    response = rec_api.post("/v1/recommend", body)
    assert response.status_code == 200, response.text
    assert response.json()["retrieval"] == "cooccurrence"
    got = response.json()["items"]
    got_scores = [item["score"] for item in got]
    assert len(got) == 5 and got_scores == sorted(got_scores, reverse=True)
    assert not set(seen) & {item["item"] for item in got}
    expected = top_k(
        rec.bundle, users, k=5, exclude_seen=installed, retrieval="cooccurrence", num_candidates=12
    )
    assert [item["item"] for item in got] == expected[ITEM].to_list()
    np.testing.assert_allclose(got_scores, expected["score"], rtol=0, atol=1e-6)


def test_exclude_seen_can_be_turned_off(rec: RecRun, rec_api: Api) -> None:
    key, _ = user_row(rec, 3)
    seen = rec.train.filter(pl.col(USER) == key)[ITEM].unique().to_list()
    body = {"user_id": key, "candidates": seen, "seen": seen, "k": len(seen)}
    assert rec_api.post("/v1/recommend", body).json()["items"] == []
    kept = rec_api.post("/v1/recommend", {**body, "exclude_seen": False}).json()["items"]
    assert sorted(item["item"] for item in kept) == sorted(seen)


def test_a_cold_user_with_request_history_gets_popular_items(rec: RecRun, rec_api: Api) -> None:
    body = {"user": {"country": "atlantis", "installed_apps": []}, "seen": ["a000001"]}
    response = rec_api.post("/v1/recommend", {**body, "k": 3, "retrieval": "popular"})
    assert response.status_code == 200, response.text
    items = [item["item"] for item in response.json()["items"]]
    assert len(items) == 3 and "a000001" not in items


def test_recommend_micro_batches_rank_like_top_k(rec: RecRun) -> None:
    _, users = user_row(rec, 5)
    api = Api(build_app(rec.bundle, ServeSettings(micro_batch=7, threads=3)))
    response = api.post(
        "/v1/recommend",
        {"user": users.to_dicts()[0], "candidates": rec.apps[ITEM].to_list(), "k": 60},
    )
    got = response.json()["items"]
    expected = top_k(rec.bundle, users, k=60)
    assert len(got) == expected.height == rec.apps.height
    np.testing.assert_allclose([g["score"] for g in got], expected["score"], rtol=0, atol=1e-6)


RECOMMEND_MISTAKES: dict[str, tuple[dict[str, Any], int, str]] = {
    "unknown user id": ({"user_id": "nobody"}, 404, "user_id"),
    "no user": ({"k": 3}, 422, "user"),
    "unknown candidate": ({"user": {}, "candidates": ["a000001", "zzz"]}, 422, "candidates[1]"),
    "too many candidates": ({"user": {}, "candidates": ["a000001"] * 1001}, 422, "candidates"),
    "k of zero": ({"user": {}, "k": 0}, 422, "k"),
    "unknown user feature": ({"user": {"shoe_size": 42}}, 422, "shoe_size"),
    "wrong type of user feature": ({"user": {"installed_apps": 7}}, 422, "installed_apps"),
    "unknown retrieval": ({"user": {}, "retrieval": "magic"}, 422, "retrieval"),
    "candidates and retrieval": (
        {"user": {}, "candidates": ["a000001"], "retrieval": "popular"},
        422,
        "retrieval",
    ),
}


@pytest.mark.parametrize("case", list(RECOMMEND_MISTAKES))
def test_a_bad_recommend_request_names_the_field(rec_api: Api, case: str) -> None:
    body, status, name = RECOMMEND_MISTAKES[case]
    response = rec_api.post("/v1/recommend", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert name in error["field"] and name.split("[")[0] in error["message"], error


def test_recommend_without_a_catalog_is_a_409(api: Api) -> None:
    response = api.post("/v1/recommend", {"user": {"user": "u1"}})
    assert response.status_code == 409
    assert "catalog" in response.json()["error"]["message"]


# ------------------------------------------------------------------------ metadata, docs


def test_metadata_lists_features_versions_and_metrics(api: Api, ctr: Bundle) -> None:
    body = api("GET", "/v1/metadata").json()
    assert body["objective"] == "binary" and body["label"] == "click"
    assert body["score_field"] == "probabilities"
    assert [c["name"] for c in body["columns"]] == COLUMNS
    price = next(c for c in body["columns"] if c["name"] == "price")
    assert price == {"name": "price", "type": "number", "features": ["price", "price_bucket"]}
    kinds = {f["name"]: f["kind"] for f in body["features"]}
    assert kinds["user_x_item"] == "cross" and kinds["tags"] == "multi_categorical"
    assert body["versions"]["torch"] == ctr.manifest["torch_version"]
    assert body["versions"]["serving_torch"] == torch.__version__
    assert body["metrics"]["test"]["auc"] == ctr.manifest["metrics"]["test"]["auc"]
    assert body["catalog_items"] is None
    assert body["precision"] == "fp32"


def test_health_and_the_openapi_document(api: Api) -> None:
    assert api("GET", "/v1/health").json() == {"status": "ok", "in_flight": 0}
    assert api("GET", "/docs").status_code == 200
    spec = api("GET", "/openapi.json").json()
    score = spec["paths"]["/v1/score"]["post"]
    assert {"200", "413", "422", "503", "504"} <= set(score["responses"])
    error = score["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/ErrorBody")
    row = spec["components"]["schemas"]["Row"]
    assert set(row["properties"]) == set(COLUMNS) and set(row["required"]) == set(COLUMNS)


def test_settings_are_checked_all_at_once() -> None:
    with pytest.raises(ConfigError, match=r"max_rows.*threads.*precision must be one of"):
        ServeSettings(max_rows=0, threads=-1, precision="fp16")
    with pytest.raises(ConfigError, match="bogus"):
        serve("no-such-bundle", bogus=1)


def test_the_server_loads_its_compiled_loops_before_the_first_request(
    ctr: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Including those a blank row does not reach: the id copy of a column with more than
    127 distinct values in a request (int16 codes)."""
    calls: list[str] = []
    warm = serve_module.preprocessing.warm_up
    monkeypatch.setattr(
        serve_module.preprocessing, "warm_up", lambda: calls.append("warm") or warm()
    )
    build_app(ctr)
    assert calls == ["warm"]
