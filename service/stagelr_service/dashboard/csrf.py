"""Cross-site request forgery protection for the dashboard's state-changing forms.

The dashboard changes state only by POSTed forms (sign in, sign out, archive, delete).
A form that archives or deletes carries a token that must match the ``stagelr_csrf``
cookie (the double-submit pattern): a page of another site can make a browser POST to
the server, but cannot read the cookie to put the same token in its form, and the
cookie is ``SameSite=Strict`` so such a request does not even carry it. This holds with
auth off too, where no login cookie exists to protect anything: a local server's
dashboard is still safe from a page open in another tab. A request whose ``Origin``
header names another origin is refused as well.
"""

from __future__ import annotations

import hmac
import re
import secrets

from fastapi import Request, Response

__all__ = ["COOKIE", "FIELD", "check", "ensure_token", "set_cookie"]

#: The cookie holding the token, and the form field that must repeat it.
COOKIE = "stagelr_csrf"
FIELD = "csrf"

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


def _cookie(request: Request) -> str | None:
    value = request.cookies.get(COOKIE)
    return value if value and _SHAPE.match(value) else None


def ensure_token(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (then :func:`set_cookie` it)."""
    existing = _cookie(request)
    if existing is not None:
        return existing, False
    return secrets.token_urlsafe(32), True


def set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
    )


def check(request: Request, submitted: str | None) -> str | None:
    """Why the POST must be refused, or None when its token and origin are good."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            return f"the form was sent from {origin}, not from this dashboard"
    elif origin == "null":
        return "the form was sent from an opaque origin"
    cookie = _cookie(request)
    if cookie is None or not submitted or not hmac.compare_digest(cookie, submitted):
        return "the form's security token is missing or stale: reload the page and try again"
    return None
