"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis).

Every operation gets a bounded number of generated requests, valid ones (positive) and
invalid ones (negative); none may answer 5xx, and every answer must conform to the
schema (documented status code, content type and body).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(own_live_server):  # type: ignore[no-untyped-def]
    """This module's own server: the generated requests act on whatever ids exist
    (stopping studies, failing segments of other modules), and the derandomized run
    is the same run only on a database of its own."""
    return own_live_server


#: Generated requests per operation and mode: enough to reach every validator, and the
#: whole run stays well under a minute.
EXAMPLES = 15


#: Schema-valid requests may still be refused: some rules span fields (lr_min < lr_max,
#: tau0 <= tau_max) or the stored state (a step beyond the segment), which a JSON schema
#: cannot say. Those answers are 422 problem documents, checked by every other check.
NOT_CHECKED = positive_data_acceptance


def operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx_or_off_schema(live_server: Any, mode: GenerationMode) -> None:
    ops = operations(live_server.url)
    assert len(ops) >= 12  # every /v1 endpoint, /healthz, /readyz

    for operation in ops:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=live_server.url, excluded_checks=[NOT_CHECKED])

        try:
            check()
        except Unsatisfiable:
            # No invalid request exists for an operation without inputs (/healthz).
            assert mode is GenerationMode.NEGATIVE, operation.label
