"""Posting the dashboard's forms as its pages do: with the CSRF token the page put in
the form (``csrf_field()``)."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx

_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def form_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _FIELD.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(
    web: httpx.Client, token: str, next: str = "/dashboard", **headers: str
) -> httpx.Response:
    """Open the sign-in form, then post ``token`` with the form's CSRF token."""
    form = web.get(f"/dashboard/login?next={quote(next, safe='')}")
    assert form.status_code == 200, form.text
    return web.post(
        "/dashboard/login",
        data={"token": token, "next": next, "csrf": form_token(form.text)},
        headers=headers,
    )
