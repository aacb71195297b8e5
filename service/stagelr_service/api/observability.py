"""Observability: Prometheus metrics at /metrics, request ids, and JSON logs.

:func:`install` wires all three into an app:

- a pure ASGI middleware gives every request an id (the caller's ``X-Request-ID`` when it
  is sane, else a fresh one), echoes it in the response header, keeps it in a context
  variable that every log record of the request carries, counts and times the request by
  route template and status, and writes one access-log line (``stagelr.access``);
- ``GET /metrics`` serves the app's own :class:`prometheus_client.CollectorRegistry`
  (one per app, so that many apps in one process, as in the tests, keep apart): the
  request counters, the `next` latency histogram, the observation counters (told by
  :class:`stagelr_service.studies.StudyService`), and gauges of studies and segments per
  status read from the store at scrape time. With ``STAGELR_METRICS_TOKEN`` set, a scrape
  needs that bearer token; unset, anyone who reaches the port may scrape. Under `stagelr
  serve --workers N` (``PROMETHEUS_MULTIPROC_DIR`` set, see ``server.serve``) each worker
  writes its counters and histograms to that folder and a scrape, whichever worker
  answers it, sums every worker's; the store's gauges are the same from any worker, and
  ``stagelr_gc_frozen_objects`` is the answering worker's.

:func:`log_config` is the logging setup of ``stagelr serve`` for ``STAGELR_LOG_FORMAT``
``text`` or ``json`` (one object per line: time, level, logger, message, and for a
request request_id, method, path, status, duration_ms).
"""

from __future__ import annotations

import contextvars
import gc
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UnauthorizedError
from ..settings import Settings

__all__ = ["JsonFormatter", "ServerMetrics", "install", "log_config", "request_id"]

access_log = logging.getLogger("stagelr.access")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stagelr_request_id", default=None
)
# A caller's id is echoed into headers and logs: accept only a short, plain token.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: The route label of a request that matched no route (keeps the label set bounded).
UNMATCHED = "<unmatched>"
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

# Decisions take milliseconds (a GP fit on a handful of points), requests a little more.
_DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


# --------------------------------------------------------------------------- metrics


class ServerMetrics:
    """The metrics of one app, in its own registry.

    It is also the study service's :class:`~stagelr_service.studies.ServiceMetrics`.
    """

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "stagelr_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "stagelr_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "stagelr_decision_seconds",
            "Time the study service took to answer `next` (read the history, decide, "
            "store the segment), excluding HTTP.",
            buckets=_DECISION_BUCKETS,
            registry=self.registry,
        )
        self.observations = Counter(
            "stagelr_observations_ingested",
            "Observations stored (new points; repeats of stored points not counted).",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "stagelr_observations_duplicate",
            "Observations received again that were already stored (retried batches).",
            registry=self.registry,
        )
        # Read at scrape time, by whichever process answers: never summed over workers.
        self.scraped = CollectorRegistry(auto_describe=True)
        self.scraped.register(_FrozenCollector())
        self.scraped.register(_StoreCollector(app))

    # The study service's hooks.
    def decided(self, seconds: float) -> None:
        self.decision_seconds.observe(seconds)

    def ingested(self, accepted: int, duplicates: int) -> None:
        self.observations.inc(accepted)
        self.duplicates.inc(duplicates)

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format: this app's counters and histograms (with
        several workers, every worker's, summed), then the gauges read now."""
        counted = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            counted = CollectorRegistry()
            MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
        return generate_latest(counted) + generate_latest(self.scraped)


class _FrozenCollector(Collector):
    """``stagelr_gc_frozen_objects`` of the process that answers the scrape."""

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("stagelr_gc_frozen_objects", "")]

    def collect(self) -> Iterator[Metric]:
        frozen = GaugeMetricFamily(
            "stagelr_gc_frozen_objects",
            "Objects moved out of the garbage collector's reach at start-up (gc.freeze): "
            "0 means full collections walk torch and BoTorch again, pausing requests.",
        )
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen


class _StoreCollector(Collector):
    """Gauges read from the store at scrape time: the same figures on every replica."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        # Declared up front so that auto_describe does not run a query at registration.
        return [
            GaugeMetricFamily("stagelr_store_up", ""),
            GaugeMetricFamily("stagelr_active_studies", ""),
            GaugeMetricFamily("stagelr_studies", "", labels=["status"]),
            GaugeMetricFamily("stagelr_segments", "", labels=["status"]),
        ]

    def collect(self) -> Iterator[Metric]:
        service = getattr(self._app.state, "studies", None)
        up = GaugeMetricFamily(
            "stagelr_store_up", "1 if the store answered the scrape's count query, else 0."
        )
        if service is None:  # not started yet
            up.add_metric([], 0)
            yield up
            return
        try:
            studies, segments = service.status_counts()
        except Exception:  # a scrape must not fail because the database is away
            logging.getLogger("stagelr.server").exception("metrics: the store did not answer")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        active = GaugeMetricFamily(
            "stagelr_active_studies", "Studies running now (status running), in the store."
        )
        active.add_metric([], studies.get("running", 0))
        yield active
        by_study = GaugeMetricFamily(
            "stagelr_studies", "Studies in the store, by status.", labels=["status"]
        )
        for status, count in sorted(studies.items()):
            by_study.add_metric([status], count)
        yield by_study
        by_segment = GaugeMetricFamily(
            "stagelr_segments", "Segments in the store, by status.", labels=["status"]
        )
        for status, count in sorted(segments.items()):
            by_segment.add_metric([status], count)
        yield by_segment


# --------------------------------------------------------------------------- requests


class RequestMiddleware:
    """Request id, metrics and the access log for every HTTP request (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = _request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(seconds)
            # Probes and scrapes come every few seconds: debug, not info.
            level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
            access_log.log(
                level,
                "%s %s %d %.1f ms",
                method,
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )
            _request_id.reset(token)


# --------------------------------------------------------------------------- logging


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record logged while serving it."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or _request_id.get()
        record.request_id = rid
        record.request_tag = rid or "-"  # for the text format
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request fields."""

    #: Record attributes written when present (the access log sets them).
    FIELDS = (
        "request_id",
        "method",
        "path",
        "route",
        "status",
        "duration_ms",
        # the audit log of housekeeping (stagelr.audit)
        "action",
        "study_id",
        "study",
        "project",
        "scope",
    )

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry["request_id"] = getattr(record, "request_id", None)
        for key in self.FIELDS[1:]:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the server (uvicorn's loggers included).

    uvicorn's own access log is left off: :class:`RequestMiddleware` writes a richer one.
    """
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    if settings.log_format == "json":
        formatter: dict[str, Any] = {"()": JsonFormatter}
    else:
        formatter = {"format": "%(asctime)s %(levelname)-7s %(name)s [%(request_tag)s] %(message)s"}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "stagelr",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"stagelr": formatter},
        "handlers": {"stagelr": handler},
        "root": {"handlers": ["stagelr"], "level": "WARNING"},
        "loggers": {
            "stagelr": {"handlers": ["stagelr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stagelr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


# --------------------------------------------------------------------------- wiring


def install(app: FastAPI) -> ServerMetrics:
    """Add the request middleware and ``GET /metrics`` to ``app``; its metrics, kept in
    ``app.state.metrics`` (the lifespan hands them to the study service)."""
    metrics = ServerMetrics(app)
    app.state.metrics = metrics
    app.add_middleware(RequestMiddleware, metrics=metrics)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def prometheus_metrics(request: Request) -> Response:
        expected: str | None = request.app.state.settings.metrics_token
        if expected:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
                raise UnauthorizedError(
                    "/metrics needs the scraper's token (STAGELR_METRICS_TOKEN): send "
                    "`Authorization: Bearer <token>`"
                )
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
