"""Schemathesis fuzzes a running matcher from its own /openapi.json: no request it can make from the
schema may get a 5xx, and every response must be one the schema states (status code, content type,
body). A bounded number of examples per operation keeps the run short.

`POST /rounds/close` is fuzzed with the admin token (the closes find nothing to match and return
202); the formats the schema names (address, bytes32, signature) are generated from their patterns.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from underbid.protocol.eip712 import ADDRESS_PATTERN, BYTES32_PATTERN, SIGNATURE_PATTERN

from .conftest import ADMIN_TOKEN, on_both_stores

for name, pattern in (("address", ADDRESS_PATTERN), ("bytes32", BYTES32_PATTERN), ("signature", SIGNATURE_PATTERN)):
    schemathesis.openapi.format(name, st.from_regex(pattern.rstrip("$") + r"\Z", fullmatch=True))

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def matcher_schema(matcher_process):
    return schemathesis.openapi.from_url(matcher_process.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("matcher_schema")


# On both back ends: Postgres's integer columns are strict where SQLite's are not, so a fuzzed
# integer the API lets through must not overflow one into a 500.
@on_both_stores
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_matcher_answers_within_its_schema(case):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if case.path == "/rounds/close" else None
    case.call_and_validate(headers=headers, checks=CHECKS)
