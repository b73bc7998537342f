"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis): no input a
client can send makes the server answer 5xx, and every answer is one the schema documents (its
status, content type and body). Runs against a real `agentmill up` process with a real account."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cli.test_up import free_port, start_up, stop

EXAMPLES_PER_OPERATION = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    proc, first = start_up(workdir, port)
    try:
        yield f"http://127.0.0.1:{port}", first
    finally:
        stop(proc)


@pytest.mark.slow
def test_no_request_makes_the_server_fail(server: tuple[str, dict[str, str]]) -> None:
    base, first = server
    schema = schemathesis.openapi.from_dict(httpx.get(f"{base}/openapi.json").json())
    headers = {"Authorization": f"Bearer {first['API key']}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the whole API is covered

    with requests.Session() as session:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def probe(case: schemathesis.Case) -> None:
                response = case.call(base_url=base, session=session, headers=headers, timeout=10)
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as failure:  # schemathesis raises a FailureGroup
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:300]}\n{str(failure)[:500]}"
                    )

            probe()

    assert failures == []
