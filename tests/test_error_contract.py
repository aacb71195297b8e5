"""The client's error classes and the service's domain errors are one contract.

Every domain error of ``stagelr_service/errors.py`` goes through the API's one error map
(``api/errors.py:problem_for``) and back through the client's (``error_from_response``):
the client must know its slug and raise the class its HTTP status means. And every slug
the client knows must be one the service sends. A new error on either side without the
other fails here.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

import stagelr
from stagelr._exceptions import SLUG_CLASSES, error_from_response
from stagelr_service import errors
from stagelr_service.api.errors import PROBLEM_TYPE_PREFIX, problem_for

#: The client class each HTTP status of an error means.
BY_STATUS: dict[int, type[stagelr.APIError]] = {
    401: stagelr.AuthenticationError,
    403: stagelr.PermissionDeniedError,
    404: stagelr.NotFoundError,
    409: stagelr.ConflictError,
    422: stagelr.ValidationError,
    500: stagelr.ServerError,
    503: stagelr.ServerError,
}

#: Domain errors the service handles itself; should one escape, it is a 500.
INTERNAL_ONLY = {errors.DuplicateSegmentError}


def domain_errors() -> list[type[errors.StagelrError]]:
    found: list[type[errors.StagelrError]] = []
    todo = [errors.StagelrError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not errors.StagelrError:
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def request() -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/studies",
        "headers": [],
        "query_string": b"",
    }
    return Request(scope)


def round_trip(exc: Exception) -> tuple[int, str, stagelr.APIError]:
    """The status and slug the API answers ``exc`` with, and what the client raises."""
    answer = problem_for(exc, request())
    response = httpx.Response(
        answer.status_code, content=bytes(answer.body), headers=dict(answer.headers)
    )
    slug = response.json()["type"].removeprefix(PROBLEM_TYPE_PREFIX)
    return answer.status_code, slug, error_from_response(response)


@pytest.mark.parametrize("cls", domain_errors(), ids=lambda c: c.__name__)
def test_each_domain_error_reaches_the_client_as_its_status_says(
    cls: type[errors.StagelrError],
) -> None:
    status, slug, raised = round_trip(cls("what went wrong"))
    assert slug == cls.slug
    assert type(raised) is BY_STATUS[status], (cls.__name__, status)
    assert raised.slug == cls.slug and raised.detail == "what went wrong"
    if cls in INTERNAL_ONLY:
        assert status == 500
    else:
        assert SLUG_CLASSES[cls.slug] is BY_STATUS[status], cls.slug


def test_every_slug_the_client_knows_is_one_the_service_sends() -> None:
    sent = {cls.slug for cls in domain_errors()}
    for exc in (
        RequestValidationError([]),
        HTTPException(404),
        HTTPException(405),
        HTTPException(413),
        RuntimeError("a bug"),
    ):
        sent.add(round_trip(exc)[1])
    assert set(SLUG_CLASSES) <= sent, set(SLUG_CLASSES) - sent


def test_a_status_the_client_has_no_slug_for_still_gets_its_class() -> None:
    for exc, cls in (
        (HTTPException(405), stagelr.APIError),
        (HTTPException(413), stagelr.APIError),
        (RuntimeError("a bug"), stagelr.ServerError),
    ):
        assert type(round_trip(exc)[2]) is cls
