"""A schema fuzz: schemathesis sends requests generated from the running server's /openapi.json (a
bounded number per operation) and checks that none is answered with a 5xx."""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.server.helpers import Server, make_workdir

EXAMPLES_PER_OPERATION = 6  # keeps the whole fuzz well under two minutes on 2 cores


def test_no_generated_request_gets_a_server_error(tmp_path):
    # --max-text-length 200: every generated text stays short, so each synthesis takes a moment.
    server = Server(make_workdir(tmp_path), "--max-text-length", "200")
    try:
        spec = requests.get(server.url + "/openapi.json", timeout=30).json()
        invoke = spec["paths"]["/v1/models/{name}/invoke"]["post"]["requestBody"]["content"]["application/json"]
        text = invoke["schema"]["properties"]["text"]
        assert text["maxLength"] == 200  # the server's own limit, not the default's
        assert "x-fishtts-text-limit" not in str(spec)
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def no_server_error(case):
                case.call_and_validate(checks=[not_a_server_error], timeout=60)

            no_server_error()
    finally:
        server.stop()
