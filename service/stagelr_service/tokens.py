"""Project tokens: bearer secrets made here, stored as SHA-256 digests, checked per request.

A token is ``stg_`` + 32 random bytes (URL-safe base64), shown once when created. The
store keeps its SHA-256 hex digest and its first characters (to tell tokens apart in a
listing). A request's token is hashed and looked up by digest; the stored digest is then
compared to the computed one with :func:`hmac.compare_digest`, so no comparison that
decides access depends on how many leading characters match.

Dashboard sessions are rows of the same table: a login with a project token opens one,
a fresh ``sess_`` secret kept only in the dashboard's HttpOnly cookie (its digest in the
store, its row named :data:`SESSION_NAME`). A session is valid for ``session_seconds``
after it was opened and until it is closed (sign-out revokes its row), on every replica;
it opens the dashboard only, never the ``/v1`` API, and a project token never opens a
dashboard page through the cookie.

Checked tokens are remembered for ``cache_seconds`` (default 10 s) so that a job's
stream of requests costs one store read per token per interval, not one per request; a
revoked token therefore stops working within that interval on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable

from .errors import InputError, NotFoundError, UnauthorizedError
from .store import Store, TokenRecord

__all__ = ["SESSION_NAME", "SESSION_PREFIX", "TOKEN_PREFIX", "Tokens", "hash_token", "new_token"]

TOKEN_PREFIX = "stg_"
SESSION_PREFIX = "sess_"
SESSION_NAME = "dashboard session"
_SHOWN = 12  # characters of the token kept in clear for listings ("stg_" + 8)
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    """A fresh secret token (256 bits of randomness)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The digest the store keeps. SHA-256 suffices: tokens are random, not passwords."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """Create, list, revoke and check project tokens."""

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def create(self, project: str, name: str = "default") -> tuple[TokenRecord, str]:
        """A new token for ``project`` (created if new): its record and the secret."""
        if not _PROJECT.match(project):
            raise InputError(
                f"project name {project!r} is not valid: use letters, digits, '.', '_' "
                "and '-', starting with a letter or digit (at most 100 characters)"
            )
        if not name or len(name) > 100:
            raise InputError("a token name must have 1 to 100 characters")
        secret = new_token()
        with self.store.transaction() as repo:
            record = repo.create_token(project, name, secret[:_SHOWN], hash_token(secret))
        return record, secret

    def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        with self.store.transaction(read_only=True) as repo:
            return repo.list_tokens(project)

    def revoke(self, token_id: int) -> TokenRecord:
        with self.store.transaction() as repo:
            record = repo.revoke_token(token_id)
        if record is None:
            raise NotFoundError(f"no token {token_id}: see `stagelr token list`")
        with self._lock:
            self._cache.clear()
        return record

    def cached_project(self, token: str | None) -> str | None:
        """The project of ``token`` if it was checked within the cache's seconds, else
        None; never touches the store (so it may run on the event loop)."""
        return self._cached(hash_token(token), self._clock()) if token else None

    def _cached(self, digest: str, now: float) -> str | None:
        with self._lock:
            cached = self._cache.get(digest)
        return cached[0] if cached is not None and cached[1] > now else None

    # ------------------------------------------------------------------ sessions

    def open_session(self, project: str) -> str:
        """A new dashboard session of ``project``: its secret (the cookie's value)."""
        secret = new_token(SESSION_PREFIX)
        with self.store.transaction() as repo:
            repo.create_token(project, SESSION_NAME, secret[:_SHOWN], hash_token(secret))
        return secret

    def session_project(self, secret: str | None, lifetime_seconds: float) -> str:
        """The project of an open, unexpired session; UnauthorizedError otherwise. Read
        from the store each time (a page view is rare), so a sign-out ends it at once."""
        if not secret or not secret.startswith(SESSION_PREFIX):
            raise UnauthorizedError("no dashboard session: sign in")
        digest = hash_token(secret)
        with self.store.transaction(read_only=True) as repo:
            found = repo.token_by_hash(digest)
            now = self.store.now()
        if (
            found is None
            or not hmac.compare_digest(found[1], digest)
            or found[0].name != SESSION_NAME
            or (now - found[0].created_at).total_seconds() > lifetime_seconds
        ):
            raise UnauthorizedError("the dashboard session has ended: sign in again")
        return found[0].project

    def close_session(self, secret: str | None) -> None:
        """Revoke a dashboard session (sign-out); nothing if it is unknown or closed."""
        if not secret or not secret.startswith(SESSION_PREFIX):
            return
        with self.store.transaction() as repo:
            found = repo.token_by_hash(hash_token(secret))
            if found is not None and found[0].name == SESSION_NAME:
                repo.revoke_token(found[0].id)

    # ------------------------------------------------------------------ checks

    def project_of(self, token: str | None) -> str:
        """The project ``token`` belongs to; UnauthorizedError if none or unknown."""
        if not token:
            raise UnauthorizedError(
                "this service needs a project token: send `Authorization: Bearer <token>` "
                "(create one with `stagelr token create --project NAME`)"
            )
        digest = hash_token(token)
        now = self._clock()
        cached = self._cached(digest, now)
        if cached is not None:
            return cached
        with self.store.transaction() as repo:
            found = repo.token_by_hash(digest)
            if found is not None:
                repo.mark_token_used(found[0].id)
        if (
            found is None
            or not hmac.compare_digest(found[1], digest)
            or found[0].prefix.startswith(SESSION_PREFIX)  # a dashboard session: no API key
        ):
            raise UnauthorizedError(
                "the token is not valid (unknown or revoked): create one with "
                "`stagelr token create --project NAME`"
            )
        project = found[0].project
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (project, now + self.cache_seconds)
        return project
