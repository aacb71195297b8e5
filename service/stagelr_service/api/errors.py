"""The one place that turns errors into HTTP: ``application/problem+json`` documents."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors

log = logging.getLogger("stagelr.api")

PROBLEM_TYPE_PREFIX = "urn:stagelr:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"

_STATUS: dict[type[errors.StagelrError], int] = {
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.ObservationConflictError: 409,
    errors.SegmentClosedError: 409,
    errors.InvalidStateError: 409,
    errors.InputError: 422,
    errors.SchemaOutdatedError: 503,
    errors.StoreUnavailableError: 503,
    errors.UnauthorizedError: 401,
    errors.ForbiddenError: 403,
}

# RFC 6750: a 401 names the scheme it wants.
_HEADERS: dict[type[errors.StagelrError], dict[str, str]] = {
    errors.UnauthorizedError: {"WWW-Authenticate": 'Bearer realm="stagelr"'},
}

_HTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}


def _problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def problem_for(exc: Exception, request: Request) -> JSONResponse:
    """Map any exception to its problem document. Unknown ones are a logged 500."""
    if isinstance(exc, errors.StagelrError):
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        headers = next((h for cls, h in _HEADERS.items() if isinstance(exc, cls)), None)
        return _problem(status, exc.slug, exc.title, exc.message, request, headers)
    if isinstance(exc, RequestValidationError):
        problems = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems)
        return _problem(422, "validation-error", "Invalid input", detail, request, errors=problems)
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 400:
        # FastAPI's "error parsing the body" (bytes that are not UTF-8 JSON): the same
        # answer as any other malformed body.
        detail = (
            f"the request body could not be read ({exc.detail}): send UTF-8 JSON with "
            "Content-Type: application/json"
        )
        return _problem(422, "validation-error", "Invalid input", detail, request)
    if isinstance(exc, StarletteHTTPException):
        slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
        detail = str(exc.detail)
        if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
            # Starlette's own routing answer: say which request missed, and where to look.
            detail = (
                f"no route {request.method} {request.url.path}: the API is listed at /docs "
                "(and /openapi.json)"
            )
        return _problem(exc.status_code, slug, str(exc.detail), detail, request)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _problem(500, "internal", "Internal error", "the server failed; see its log", request)


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through :func:`problem_for`."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc, request)

    app.add_exception_handler(errors.StagelrError, handler)
    app.add_exception_handler(RequestValidationError, handler)
    app.add_exception_handler(StarletteHTTPException, handler)
    app.add_exception_handler(Exception, handler)
