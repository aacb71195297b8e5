"""The FastAPI application: wiring only (store, optimizer, study service, routes)."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request

from stagelr.models import Problem

from .. import __version__, dashboard
from ..errors import SchemaOutdatedError, StoreUnavailableError
from ..settings import Settings
from ..store import Store
from ..studies import StudyService
from ..tokens import Tokens
from . import errors, observability, routes

log = logging.getLogger("stagelr.server")

#: How often a computing thread hands the GIL to a waiting one (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005

#: /readyz answers within this many seconds, ready or not.
READY_TIMEOUT_S = 1.0
# Unauthenticated: says nothing of hosts, ports or driver messages (those are logged).
_NOT_READY = "the store does not answer: see the server log"


def warn_auth_off(settings: Settings) -> None:
    """Say loudly that anyone who reaches the port can read and change every study."""
    exposed = settings.host not in {"127.0.0.1", "localhost", "::1"}
    lines = [
        "*" * 72,
        "AUTH IS OFF (STAGELR_AUTH=off): every request may read and change every study",
        "of every project. Meant for a local, single-user run only.",
        "For a shared service: set STAGELR_AUTH=required and create tokens with",
        "`stagelr token create --project NAME`.",
    ]
    if exposed:
        lines.insert(3, f"This server listens on {settings.host}, not only on loopback!")
    lines.append("*" * 72)
    for line in lines:
        log.warning(line)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The store is opened and its schema checked at start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..optimizer import GPOptimizer  # heavy import: paid once, at start

        store = Store(
            settings.resolved_database_url,
            connect_timeout=settings.db_connect_timeout,
            statement_timeout=settings.db_statement_timeout,
            pool_timeout=settings.db_pool_timeout,
            pool_size=settings.db_pool_size,
        )
        if settings.auto_migrate:
            store.migrate()
        store.check_schema()
        optimizer = GPOptimizer()
        optimizer.warm_up()
        # What is loaded by now (torch, BoTorch, the app) lives as long as the process:
        # move it out of the collector's reach, so that a full collection scans only what
        # requests allocate. Measured without it: a 170 ms pause inside a decision every
        # ~130 decisions (a full collection walking torch's and BoTorch's objects).
        gc.collect()
        gc.freeze()
        app.state.studies = StudyService(
            store,
            optimizer,
            max_batch=settings.max_batch,
            lease_seconds=settings.lease_seconds,
            max_priors=settings.max_priors,
        )
        app.state.studies.metrics = app.state.metrics
        app.state.tokens = Tokens(store, cache_seconds=settings.auth_cache_seconds)
        log.info("stagelr %s serving %s", __version__, store.safe_url)
        if settings.auth == "off":
            warn_auth_off(settings)
        # A thread back from the database (a statement, a lock) waits for the GIL while
        # the others compute; with the default 5 ms interval it waited that long after
        # every statement, and the holder of SQLite's write queue made every writer wait
        # with it. 0.5 ms hands the GIL over ten times as often.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        try:
            yield
        finally:
            sys.setswitchinterval(switch_interval)
            store.close()

    app = FastAPI(
        title="stagelr",
        version=__version__,
        summary="Online learning-rate tuning: AutoLRS-style Bayesian optimization per stage.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    observability.install(app)  # request ids, access log, /metrics
    app.include_router(routes.router)
    dashboard.install(app)  # the HTML pages at / and /dashboard, and their static files

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        # async: answered by the event loop, even when every request thread is busy.
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: the store answers and its schema is current",
        responses={503: {"model": Problem, "content": {"application/problem+json": {}}}},
    )
    async def readyz(request: Request) -> dict[str, str]:
        # Within a second, whatever the database does: a probe that hangs is no answer.
        # The check's thread is left to finish on its own (the store's deadlines end it).
        service: StudyService = request.app.state.studies
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                revision = await anyio.to_thread.run_sync(
                    service.store.check_schema, abandon_on_cancel=True
                )
        except SchemaOutdatedError as exc:
            log.error("not ready: %s", exc.message)
            raise SchemaOutdatedError(
                "the database schema is not the one this version of stagelr needs: run "
                "`stagelr migrate` (the server log says more)"
            ) from exc
        except TimeoutError as exc:
            log.error("not ready: the store did not answer within %.1f s", READY_TIMEOUT_S)
            raise StoreUnavailableError(_NOT_READY) from exc
        except Exception as exc:  # any store or driver error: not ready; the log says why
            log.error("not ready: the store failed its check: %s", exc)
            raise StoreUnavailableError(_NOT_READY) from exc
        return {"status": "ready", "schema": revision}

    return app
