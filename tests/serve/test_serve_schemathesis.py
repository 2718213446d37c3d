"""Schemathesis fuzzes every operation of the service's own OpenAPI schema in process (ASGI): no request it makes,
schema-conforming or not, gets a 5xx. ``PNEUMO_FUZZ_EXAMPLES`` raises the per-operation budget (default 25).

The cases come from ``operation.as_strategy()`` under Hypothesis' ``@given`` rather than ``@schema.parametrize()``
over ``schemathesis.pytest.from_fixture``: that lazy loader (schemathesis 4.32) sets ``request.node._nodeid``, which
pytest 9.2 no longer has, and an eager schema would need the model at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from pneumo.config import ServeConfig
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app

MAX_EXAMPLES = int(os.environ.get("PNEUMO_FUZZ_EXAMPLES", "25"))
OPERATIONS = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/v1/model"), ("POST", "/api/v1/predict")]
# Negative data needs something to break: only the predict operation has parameters and a body.
RUNS = [(*operation, GenerationMode.POSITIVE) for operation in OPERATIONS] + [
    ("POST", "/api/v1/predict", GenerationMode.NEGATIVE)]


@pytest.fixture(scope="module")
def api_schema(tiny_model: Path) -> Iterator[object]:
    """The app's schema, loaded through its ASGI interface. Schemathesis runs the app's lifespan itself (which
    starts the micro-batcher) on its first request and keeps it for the process, so it is shut down here."""
    app = create_app(ServeConfig(max_upload_mb=1.0), Predictor(tiny_model, threads=1))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()


def test_every_operation_in_the_schema_is_fuzzed(api_schema) -> None:
    listed = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), RUNS, ids=[f"{m} {p} {g.value}" for m, p, g in RUNS])
def test_no_generated_request_gets_a_server_error(api_schema, method: str, path: str,
                                                  mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call()
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail

    fuzz()
    assert statuses, "schemathesis generated no request: the test would prove nothing"
