"""The FastAPI application: wiring only (store, optimizer, study service, routes)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..settings import Settings
from ..store import Store
from ..studies import StudyService
from . import errors, routes

log = logging.getLogger("stagelr.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The store is opened and its schema checked at start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..optimizer import GPOptimizer  # heavy import: paid once, at start

        store = Store(settings.resolved_database_url)
        if settings.auto_migrate:
            store.migrate()
        store.check_schema()
        optimizer = GPOptimizer()
        optimizer.warm_up()
        app.state.studies = StudyService(store, optimizer, max_batch=settings.max_batch)
        log.info("stagelr %s serving %s", __version__, store.safe_url)
        try:
            yield
        finally:
            store.close()

    app = FastAPI(
        title="stagelr",
        version=__version__,
        summary="Online learning-rate tuning: AutoLRS-style Bayesian optimization per stage.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(routes.router)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
