"""The dashboard's static files and the security headers on everything it serves.

Every script, style sheet and icon ships inside the package (``static/``) and is served
by the stagelr server itself: the dashboard works offline, and its Content-Security-Policy
lets a page load nothing from anywhere else. Asset URLs carry a hash of the file's
content (``?v=...``, as datasette does), so a browser may cache them for a year and still
gets the new file the moment a release changes it.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["SECURITY_HEADERS", "STATIC_PREFIX", "DashboardStaticFiles", "asset_url", "static_dir"]

STATIC_PREFIX = "/dashboard/static"

#: Sent with every dashboard response. ``default-src 'self'`` and no inline script or
#: style: a page can run only the package's own script and load only its own files.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def static_dir() -> Path:
    """The folder of the dashboard's static files (inside the installed package)."""
    return Path(str(resources.files("stagelr_service.dashboard") / "static"))


def _digests() -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted(static_dir().iterdir())
        if path.is_file()
    }


_DIGESTS = _digests()


def asset_url(name: str) -> str:
    """The URL of static file ``name`` with its content hash; KeyError if there is none."""
    return f"{STATIC_PREFIX}/{name}?v={_DIGESTS[name]}"


class DashboardStaticFiles(StaticFiles):
    """Starlette's static files, with the security headers and long caching of
    hashed URLs."""

    def __init__(self) -> None:
        super().__init__(directory=static_dir())

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        version = parse_qs(scope.get("query_string", b"").decode()).get("v", [""])[0]
        if response.status_code == 200 and version and version == _DIGESTS.get(Path(path).name):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers["Cache-Control"] = "no-cache"
        return response
