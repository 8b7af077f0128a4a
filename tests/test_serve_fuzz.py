"""The service's OpenAPI document, fuzzed in-process by schemathesis: whatever a client sends
that the document allows, the answer is no 5xx and has the status, type and shape documented."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import one_thread, shared_run
from test_recommend import shared_rec_run
from widedeep.bundle import load_bundle
from widedeep.serve import build_app

# Fuzzed numbers reach 1e308: the preprocessor warns when they overflow float32, and the
# service answers 422 (the model's output is not finite).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def fuzz(app: FastAPI, examples: int = 25) -> list[str]:
    """Call every operation ``examples`` times (seeded); the operations it covered."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    covered = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
        covered.append(operation.label)
    return covered


def test_the_recommendation_service_answers_as_documented(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rec = shared_rec_run(tmp_path_factory)
    app = build_app(rec.bundle, users=rec.users_path)
    assert sorted(fuzz(app)) == [
        "GET /v1/health",
        "GET /v1/metadata",
        "POST /v1/recommend",
        "POST /v1/score",
    ]


def test_the_ctr_service_answers_as_documented(tmp_path_factory: pytest.TempPathFactory) -> None:
    app = build_app(load_bundle(shared_run(tmp_path_factory).bundle_dir))
    assert "POST /v1/score" in fuzz(app)
