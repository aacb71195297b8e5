"""Cross-site request forgery protection: the one mechanism of every state-changing
dashboard request.

The dashboard changes state only by POSTed forms (sign in, sign out, archive, delete).
Every such form carries a token in its ``csrf`` field (the templates' ``csrf_field()``),
and every POST route calls :func:`verify` before it does anything:

- with auth on and a session (the ``stagelr_session`` cookie), the token is bound to the
  session: derived from the session's secret, which only the HttpOnly cookie holds, so
  another site can neither read nor compute it, and it dies with the session;
- otherwise (auth off, or the sign-in form before any session), a double-submit token:
  a random value in the ``stagelr_csrf`` cookie (HttpOnly, ``SameSite=Strict``, path
  ``/dashboard``) that the form must repeat. A page of another site can make a browser
  POST to the server, but cannot read the cookie to put the same value in its form, and
  the strict cookie does not even travel with such a request. This holds with auth off
  too, where no login protects anything: a local server's dashboard is still safe from
  a page open in another tab.

:func:`verify` also refuses a request that says it comes from elsewhere: an ``Origin``
other than the server's own (or the opaque ``null``), or ``Sec-Fetch-Site`` other than
``same-origin``/``none``. A refusal is a 403 (:class:`Refused`), which the dashboard
answers with its error page.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from fastapi import Request, Response

from ..errors import ForbiddenError

__all__ = [
    "COOKIE",
    "FIELD",
    "SESSION_COOKIE",
    "Refused",
    "issue",
    "session_token",
    "verify",
]

#: The double-submit cookie, and the form field every state-changing form fills.
COOKIE = "stagelr_csrf"
FIELD = "csrf"
#: The session cookie (a server-side session's secret, never a project token).
SESSION_COOKIE = "stagelr_session"

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
#: What the refusal of a missing or wrong token says.
STALE = "the form's security token is missing or stale: reload the page and try again"


class Refused(ForbiddenError):
    """A state-changing dashboard request that did not come from the dashboard's own
    page (403)."""

    title = "Refused"


def session_token(secret: str) -> str:
    """The token of a session: derived from its secret (only the HttpOnly cookie holds
    it), so another site can neither read nor compute it."""
    return hashlib.sha256(b"stagelr-csrf:" + secret.encode("utf-8")).hexdigest()[:32]


def _auth_on(request: Request) -> bool:
    return bool(request.app.state.settings.auth != "off")


def _expected(request: Request) -> str | None:
    """The token this request's forms must carry (None: it has none yet)."""
    if _auth_on(request):
        secret = request.cookies.get(SESSION_COOKIE)
        if secret:
            return session_token(secret)
    cookie = request.cookies.get(COOKIE)
    return cookie if cookie and _SHAPE.match(cookie) else None


def issue(request: Request) -> tuple[str, str | None]:
    """The token a page rendered for ``request`` puts in its forms, and the new
    double-submit cookie's value to set on the response (None: nothing to set)."""
    expected = _expected(request)
    if expected is not None:
        return expected, None
    fresh = secrets.token_urlsafe(32)
    return fresh, fresh


def set_cookie(response: Response, request: Request, value: str) -> None:
    """Set the double-submit cookie that :func:`issue` asked for."""
    response.set_cookie(
        COOKIE,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
    )


def verify(request: Request, form: Mapping[str, str]) -> None:
    """Raise :class:`Refused` unless the request comes from the dashboard's own page:
    its origin is this server's and its form carries the token :func:`issue` gave."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Refused(f"the form was sent from another site (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin == "null":
        raise Refused("the form was sent from an opaque origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise Refused(f"the form was sent from {origin}, not from this dashboard")
    expected = _expected(request)
    submitted = form.get(FIELD, "")
    if expected is None or not submitted:
        raise Refused(STALE)
    if not hmac.compare_digest(expected.encode("utf-8"), submitted.encode("utf-8")):
        raise Refused(STALE)
