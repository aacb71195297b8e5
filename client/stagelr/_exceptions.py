"""The client's exceptions, and the one place a response becomes one.

```
StagelrError
├── APIError                 the service answered with a problem document
│   ├── AuthenticationError  401 unauthorized (no token, or an unknown or revoked one)
│   ├── PermissionDeniedError 403 forbidden (the token's project may not do this)
│   ├── NotFoundError        404 not-found
│   ├── ConflictError        409 config-mismatch, observation-conflict, segment-closed,
│   │                            invalid-state
│   ├── ValidationError      422 validation-error
│   └── ServerError          5xx internal, schema-outdated, store-unavailable, or a
│                            proxy's error page
└── TransportError           the service could not be reached, after retries
```

Errors the service reports carry its RFC 9457 problem document: ``status``, ``type``
(``urn:stagelr:problem:<slug>``), ``title`` and ``detail``.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError as _PydanticValidationError

from .models import Problem

__all__ = [
    "PROBLEM_PREFIX",
    "APIError",
    "AuthenticationError",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "StagelrError",
    "TransportError",
    "ValidationError",
    "error_from_response",
]

#: Every problem ``type`` the service sends starts with this.
PROBLEM_PREFIX = "urn:stagelr:problem:"


class StagelrError(Exception):
    """Base class of every error the stagelr client raises."""


class TransportError(StagelrError):
    """The service could not be reached (connection refused, timeout...), after retries.

    The underlying ``httpx`` exception is the ``__cause__``.
    """


class APIError(StagelrError):
    """The service answered with an error (a problem document)."""

    def __init__(self, status: int, type: str, title: str, detail: str = "") -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        message = f"{status} {title}"
        super().__init__(f"{message}: {detail}" if detail else message)

    def __reduce__(self) -> tuple[type[APIError], tuple[int, str, str, str]]:
        # Picklable across processes despite the custom __init__.
        return (type(self), (self.status, self.type, self.title, self.detail))

    @property
    def slug(self) -> str:
        """The problem type without its ``urn:stagelr:problem:`` prefix, e.g. ``not-found``."""
        return self.type.removeprefix(PROBLEM_PREFIX)


class AuthenticationError(APIError):
    """The service needs a valid project token (401): pass ``token=`` or set
    ``STAGELR_TOKEN``."""


class PermissionDeniedError(APIError):
    """The token is valid, but its project may not do this (403)."""


class NotFoundError(APIError):
    """The study, segment or stage does not exist (or is not visible to this token)."""


class ConflictError(APIError):
    """The request contradicts the stored state.

    ``slug`` says how: ``config-mismatch`` (a study of that name exists with another
    config), ``observation-conflict`` (a step was reported before with another value),
    ``segment-closed`` (new observations for a finished segment) or ``invalid-state``.
    """


class ValidationError(APIError):
    """The service rejected the request body or parameters (422)."""


class ServerError(APIError):
    """The service failed (5xx), after retries."""


SLUG_CLASSES: dict[str, type[APIError]] = {
    "not-found": NotFoundError,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "config-mismatch": ConflictError,
    "observation-conflict": ConflictError,
    "segment-closed": ConflictError,
    "invalid-state": ConflictError,
    "validation-error": ValidationError,
    "schema-outdated": ServerError,
    "store-unavailable": ServerError,
    "internal": ServerError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response: by problem slug, else by status code.

    A body that is not a problem document (a proxy's HTML error page, say) still gives
    the right class from the status code.
    """
    try:
        problem = Problem.model_validate_json(response.content)
    except _PydanticValidationError:
        problem = Problem(
            type="about:blank",
            title=response.reason_phrase or "HTTP error",
            status=response.status_code,
            detail=response.text[:500],
        )
    status = response.status_code
    cls: type[APIError] | None = None
    if problem.type.startswith(PROBLEM_PREFIX):
        cls = SLUG_CLASSES.get(problem.type.removeprefix(PROBLEM_PREFIX))
    if cls is None:
        cls = ServerError if status >= 500 else _BY_STATUS.get(status, APIError)
    return cls(status, problem.type, problem.title, problem.detail)
