"""Domain errors: small classes the service raises and the API maps to HTTP in one place.

Every error carries a stable ``slug`` (the last part of the problem ``type``) and a short
``title``; the instance message says what happened and what to do about it::

    StagelrError
     +-- NotFoundError            not-found
     +-- ConflictError            config-mismatch
     +-- ObservationConflictError observation-conflict
     +-- SegmentClosedError       segment-closed
     +-- InvalidStateError        invalid-state
     +-- DuplicateSegmentError    concurrent-update
     +-- SchemaOutdatedError      schema-outdated
     +-- StoreUnavailableError    store-unavailable
     +-- InputError               validation-error
     +-- UnauthorizedError        unauthorized
     +-- ForbiddenError           forbidden
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "DuplicateSegmentError",
    "InputError",
    "InvalidStateError",
    "NotFoundError",
    "ObservationConflictError",
    "SchemaOutdatedError",
    "SegmentClosedError",
    "StagelrError",
    "StoreUnavailableError",
    "UnauthorizedError",
    "ForbiddenError",
]


class StagelrError(Exception):
    """Base of every stagelr domain error. The message tells the user what to fix."""

    slug: str = "error"
    title: str = "stagelr error"

    @property
    def message(self) -> str:
        """The human message: what happened and what to do."""
        return str(self.args[0]) if self.args else self.title


class NotFoundError(StagelrError):
    slug = "not-found"
    title = "Not found"


class ConflictError(StagelrError):
    """A study of that project and name exists with another config."""

    slug = "config-mismatch"
    title = "Study exists with a different config"


class ObservationConflictError(StagelrError):
    """An observation was already stored with a different value."""

    slug = "observation-conflict"
    title = "Observation conflicts with a stored one"


class SegmentClosedError(StagelrError):
    slug = "segment-closed"
    title = "Segment is closed"


class InvalidStateError(StagelrError):
    slug = "invalid-state"
    title = "Invalid state for this operation"


class DuplicateSegmentError(StagelrError):
    """Another request (or replica) issued this segment of the study first.

    The store raises it on the (study, seq) unique key; the caller re-reads the study and
    answers from what is stored.
    """

    slug = "concurrent-update"
    title = "Concurrent update"


class SchemaOutdatedError(StagelrError):
    """The database schema is missing or not the one this version needs."""

    slug = "schema-outdated"
    title = "Database schema is outdated"


class InputError(StagelrError):
    slug = "validation-error"
    title = "Invalid input"


class StoreUnavailableError(StagelrError):
    """The database does not answer (down, unreachable, out of connections)."""

    slug = "store-unavailable"
    title = "The store is unavailable"


class UnauthorizedError(StagelrError):
    """No token, or one the service does not know (or that was revoked)."""

    slug = "unauthorized"
    title = "A valid project token is needed"


class ForbiddenError(StagelrError):
    """The token is valid but its project may not do this."""

    slug = "forbidden"
    title = "Not allowed for this project's token"
