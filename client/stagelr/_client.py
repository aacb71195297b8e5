"""A typed client for the stagelr HTTP API: one method per endpoint."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as _PydanticValidationError

from ._exceptions import StagelrError, TransportError, error_from_response
from ._transport import RetryTransport
from ._version import __version__
from .models import (
    CompletedAndNext,
    CompleteRequest,
    FailRequest,
    NextSegment,
    ObservationBatch,
    ObservationIn,
    ObservationsAccepted,
    ObservationView,
    OutageReport,
    ReplayReport,
    ReplayRequest,
    SegmentView,
    StageDetail,
    StudyConfig,
    StudyCreate,
    StudyList,
    StudyPlan,
    StudyStatus,
    StudyView,
)
from .schedule import Schedule

__all__ = ["DEFAULT_TIMEOUT", "Client"]

#: Connecting should be quick; an answer may wait on a tuning decision or a busy database.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

_M = TypeVar("_M", bound=BaseModel)
_SEGMENT_LIST: TypeAdapter[list[SegmentView]] = TypeAdapter(list[SegmentView])
_OBSERVATION_LIST: TypeAdapter[list[ObservationView]] = TypeAdapter(list[ObservationView])


class Client:
    """The stagelr HTTP API, one method per endpoint, wire models in and out.

    Most training jobs want :class:`stagelr.Tuner`, which drives this client. Use it
    directly for scripts and tools: listing studies, reading a stage's BO state, stopping
    a study.

    Every error is raised as a :class:`stagelr.StagelrError`: :class:`stagelr.APIError`
    subclasses for problem documents, :class:`stagelr.TransportError` when the service
    cannot be reached after the transport's retries.

    Args:
        base_url: The service, e.g. ``http://127.0.0.1:8321``.
        token: A bearer token for the project, when the service has auth on; by default
            the ``STAGELR_TOKEN`` environment variable, if set.
        timeout: Per-request timeouts (on by default).
        transport: The httpx transport; by default a :class:`stagelr.RetryTransport`
            over HTTP. Pass your own ``RetryTransport(...)`` to tune retries.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": f"stagelr-client/{__version__}", "Accept": "application/json"}
        if token is None:
            token = os.environ.get("STAGELR_TOKEN") or None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            transport=transport if transport is not None else RetryTransport(),
        )

    # ------------------------------------------------------------------ studies

    def create_study(
        self, name: str, config: StudyConfig, *, project: str | None = None
    ) -> StudyView:
        """Create a study, or get the one of the same project and name.

        ``project`` defaults to the token's project (or ``default`` without auth).
        Raises :class:`stagelr.ConflictError` (``config-mismatch``) when that study
        exists with another resolved config.
        """
        body = StudyCreate(project=project, name=name, config=config)
        return self._request("POST", "/v1/studies", StudyView, body=body)

    def list_studies(
        self,
        *,
        status: StudyStatus | str | None = None,
        project: str | None = None,
        name: str | None = None,
        archived: bool = False,
        limit: int | None = None,
        offset: int | None = None,
        family: str | None = None,
    ) -> StudyList:
        """Studies visible to this client, newest first, filtered (by status, project,
        family) and paged: ``name`` (a part of the name, any case), ``archived`` (the
        archived ones instead of the others)."""
        params: dict[str, str | int] = {}
        if name is not None:
            params["name"] = name
        if archived:
            params["archived"] = "true"
        if family is not None:
            params["family"] = family
        if status is not None:
            params["status"] = StudyStatus(status).value
        if project is not None:
            params["project"] = project
        if limit is not None:
            params["limit"] = limit
        if offset is not None:
            params["offset"] = offset
        return self._request("GET", "/v1/studies", StudyList, params=params)

    def get_study(self, study_id: int) -> StudyView:
        """One study, with its stages, schedule so far and open segment."""
        return self._request("GET", f"/v1/studies/{study_id}", StudyView)

    def stop_study(self, study_id: int) -> StudyView:
        """End a study: no more segments are handed out."""
        return self._request("POST", f"/v1/studies/{study_id}/stop", StudyView)

    def archive_study(self, study_id: int, archived: bool = True) -> StudyView:
        """Archive a study (it leaves the default list; its history stays for replay and
        the schedule export), or with ``archived=False`` bring it back."""
        action = "archive" if archived else "unarchive"
        return self._request("POST", f"/v1/studies/{study_id}/{action}", StudyView)

    def delete_study(self, study_id: int) -> None:
        """Delete a study and its whole history, for good."""
        self._send("DELETE", f"/v1/studies/{study_id}")

    def get_schedule(self, study_id: int) -> Schedule:
        """The study's trajectory as a portable LR schedule (:mod:`stagelr.schedule`)."""
        return self._request("GET", f"/v1/studies/{study_id}/schedule", Schedule)

    def report_outage(self, study_id: int, key: str, steps: int) -> StudyView:
        """Tell the service that the job trained ``steps`` steps on fallback segments
        while it could not reach it; the study's plan shrinks by them. Idempotent per
        ``key`` (a retry is a no-op)."""
        body = OutageReport(key=key, steps=steps)
        return self._request("POST", f"/v1/studies/{study_id}/outages", StudyView, body=body)

    def get_plan(self, study_id: int) -> StudyPlan:
        """The study's plan (stage lengths, searches, final decay), known before training
        starts when it has a step budget, with what each stage has charged so far."""
        return self._request("GET", f"/v1/studies/{study_id}/plan", StudyPlan)

    def get_stage(self, study_id: int, index: int) -> StageDetail:
        """A stage's BO state: candidates, forecasts, posterior on a grid."""
        return self._request("GET", f"/v1/studies/{study_id}/stages/{index}", StageDetail)

    def replay(self, study_id: int, overrides: dict[str, Any] | None = None) -> ReplayReport:
        """Replay a study: verify its recorded decisions (no ``overrides``), or what-if
        with config overrides such as ``{"k": 6}`` (estimated forecasts are flagged)."""
        if overrides is None:
            return self._request("GET", f"/v1/studies/{study_id}/replay", ReplayReport)
        body = ReplayRequest(overrides=overrides)
        return self._request("POST", f"/v1/studies/{study_id}/replay", ReplayReport, body=body)

    # ------------------------------------------------------------------ segments

    def next_segment(self, study_id: int) -> NextSegment:
        """The segment to train now; the open one again if there is one.

        ``segment`` is None once the study has ended (``status`` says how).
        """
        return self._request("POST", f"/v1/studies/{study_id}/next", NextSegment)

    def list_segments(self, study_id: int) -> list[SegmentView]:
        """Every segment of a study, in the order the service handed them out."""
        response = self._send("GET", f"/v1/studies/{study_id}/segments")
        return _SEGMENT_LIST.validate_json(response.content)

    def list_observations(self, segment_id: int) -> list[ObservationView]:
        """A segment's reported losses, by step (NaN and infinities included)."""
        response = self._send("GET", f"/v1/segments/{segment_id}/observations")
        return _OBSERVATION_LIST.validate_json(response.content)

    def get_segment(self, segment_id: int) -> SegmentView:
        """One segment."""
        return self._request("GET", f"/v1/segments/{segment_id}", SegmentView)

    def post_observations(
        self, segment_id: int, observations: Iterable[ObservationIn]
    ) -> ObservationsAccepted:
        """Report observations of a segment. Re-sending a point is a counted no-op."""
        body = ObservationBatch(observations=list(observations))
        return self._request(
            "POST", f"/v1/segments/{segment_id}/observations", ObservationsAccepted, body=body
        )

    def complete_segment(
        self,
        segment_id: int,
        steps_done: int | None = None,
        observations: Iterable[ObservationIn] = (),
    ) -> SegmentView:
        """Mark a segment trained; ``steps_done`` below its ``steps`` means stopped early.

        ``observations`` (the segment's last reports) are stored first, in the same request.
        """
        body = CompleteRequest(steps_done=steps_done, observations=list(observations))
        return self._request("POST", f"/v1/segments/{segment_id}/complete", SegmentView, body=body)

    def complete_and_next(
        self,
        segment_id: int,
        steps_done: int | None = None,
        observations: Iterable[ObservationIn] = (),
    ) -> CompletedAndNext:
        """:meth:`complete_segment`, then :meth:`next_segment` of its study, in one request:
        ``completed`` is the segment as completed, ``next`` the segment to train now.

        A service older than this request answers 404 (no such route): then use the two.
        """
        body = CompleteRequest(steps_done=steps_done, observations=list(observations))
        return self._request(
            "POST", f"/v1/segments/{segment_id}/complete-and-next", CompletedAndNext, body=body
        )

    def fail_segment(self, segment_id: int, reason: str = "") -> SegmentView:
        """Mark a segment failed (the job could not train it)."""
        body = FailRequest(reason=reason)
        return self._request("POST", f"/v1/segments/{segment_id}/fail", SegmentView, body=body)

    # ------------------------------------------------------------------ service

    def health(self) -> dict[str, Any]:
        """The service's ``/healthz`` answer."""
        response = self._send("GET", "/healthz")
        data: dict[str, Any] = response.json()
        return data

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _request(
        self,
        method: str,
        path: str,
        model: type[_M],
        *,
        body: BaseModel | None = None,
        params: dict[str, str | int] | None = None,
    ) -> _M:
        response = self._send(method, path, body=body, params=params)
        try:
            return model.model_validate_json(response.content)
        except _PydanticValidationError as exc:
            raise StagelrError(
                f"{method} {path}: the service answered with an unexpected body "
                f"(client and server versions differ?): {exc}"
            ) from exc

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, str | int] | None = None,
    ) -> httpx.Response:
        content = None if body is None else _encode(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        try:
            response = self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response)
        return response


def _encode(body: BaseModel) -> bytes:
    """JSON for a request body, with NaN and infinities as strings.

    A diverged loss is NaN or infinite and must reach the server; strict JSON has no
    token for it and pydantic's default dumps it as null. ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` are valid JSON, and pydantic reads them back as floats.

    A study's config carries only the fields the job sets: a field left out (None) is
    the preset's, which the server fills in, so leaving it out means the same, and a
    server that predates a field (it refuses fields it does not know) still takes a
    request that does not set it.
    """
    document = body.model_dump(mode="json")
    if isinstance(body, StudyCreate):
        document["config"] = {k: v for k, v in document["config"].items() if v is not None}
    return json.dumps(_nonfinite_as_strings(document), allow_nan=False).encode()


def _nonfinite_as_strings(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _nonfinite_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nonfinite_as_strings(v) for v in value]
    return value
