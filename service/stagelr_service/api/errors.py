"""The one place that turns errors into HTTP: ``application/problem+json`` documents."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

#: Seconds a client should wait before sending a request again after a 503.
RETRY_AFTER_S = 2

# RFC 6750: a 401 names the scheme it wants. A 503 says when to come back.
_HEADERS: dict[type[errors.StagelrError], dict[str, str]] = {
    errors.UnauthorizedError: {"WWW-Authenticate": 'Bearer realm="stagelr"'},
    errors.StoreUnavailableError: {"Retry-After": str(RETRY_AFTER_S)},
}


def status_of(exc: errors.StagelrError) -> tuple[int, dict[str, str] | None]:
    """The HTTP status and extra headers of a domain error (the API's problem documents
    and the dashboard's HTML pages both answer with these)."""
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    headers = next((h for cls, h in _HEADERS.items() if isinstance(exc, cls)), None)
    return status, headers


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
        status, headers = status_of(exc)
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
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and "app" in request.scope:
            # RFC 9110: a 405 lists every method the resource has. Starlette names only
            # the first route that matched the path, and a path may have several.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _problem(exc.status_code, slug, str(exc.detail), detail, request, headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _problem(500, "internal", "Internal error", "the server failed; see its log", request)


class UnhandledErrorMiddleware:
    """Answers an unexpected exception with the 500 problem document, and keeps the
    connection.

    Starlette's outermost middleware answers it too, but then raises it again for the
    server to log, and uvicorn closes a connection whose application raised: a keep-alive
    client would see its next request on that connection fail with a reset. Here the
    exception is logged (by :func:`problem_for`) and ends with the answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:  # half an answer is out: only closing the connection can end it
                raise
            await problem_for(exc, Request(scope))(scope, receive, send)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers fully at the request's path."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through :func:`problem_for`."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc, request)

    app.add_exception_handler(errors.StagelrError, handler)
    app.add_exception_handler(RequestValidationError, handler)
    app.add_exception_handler(StarletteHTTPException, handler)
    app.add_middleware(UnhandledErrorMiddleware)
