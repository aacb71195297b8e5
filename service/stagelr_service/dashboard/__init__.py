"""The web dashboard: server-rendered pages over the study service, served by the API's
own process at ``/dashboard`` (and ``/``).

Pages are Jinja2 templates; charts are SVG drawn on the server (:mod:`.plots`,
:mod:`.charts`); one small script of the package's own refreshes a running study's page.
Nothing is loaded from outside the server (see :mod:`.assets`).
"""

from __future__ import annotations

from fastapi import FastAPI

from .assets import STATIC_PREFIX, DashboardStaticFiles
from .routes import router

__all__ = ["install", "router"]


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages and its static files."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, DashboardStaticFiles(), name="dashboard-static")
