"""HTTP routes under /v1. They translate only: parse, call the study service, answer.

Each handler is ``async`` and hands its service call to the request thread pool
(:func:`_call`), so a decision (a GP fit and store transactions) never blocks the event
loop. A plain ``def`` handler would cost a second hop through that pool per request:
FastAPI checks a sync handler's return value against its ``response_model`` in the pool
too, so at load a finished decision queued again behind new requests for a thread before
its answer could be sent. Here the check runs on the event loop, where it is a type
check (the service returns the response model's own class) and the fast JSON path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from stagelr.models import (
    CompletedAndNext,
    CompleteRequest,
    FailRequest,
    NextSegment,
    ObservationBatch,
    ObservationsAccepted,
    ObservationView,
    OutageReport,
    Problem,
    ReplayReport,
    ReplayRequest,
    SegmentView,
    StageDetail,
    StudyCreate,
    StudyList,
    StudyPlan,
    StudyStatus,
    StudyView,
)
from stagelr.schedule import Schedule

from ..studies import StudyService
from .auth import ScopeDep

#: Ids are 64-bit in the store: a larger number is a 422 naming the bound, not a 500.
_MAX_ID = 2**63 - 1
StudyId = Annotated[int, Path(ge=0, le=_MAX_ID, description="The study's id.")]
SegmentId = Annotated[int, Path(ge=0, le=_MAX_ID, description="The segment's id.")]


async def _service(request: Request) -> StudyService:
    # async: a plain ``def`` dependency would cost a thread-pool hop per request.
    service: StudyService = request.app.state.studies
    return service


ServiceDep = Annotated[StudyService, Depends(_service)]

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def _call(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run a service call in the request thread pool (its size: ``request_threads``)."""
    return await run_in_threadpool(function, *args, **kwargs)


_PROBLEMS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 404, 409, 422, 503)
}

router = APIRouter(prefix="/v1", responses=_PROBLEMS)


@router.post(
    "/studies",
    response_model=StudyView,
    status_code=status.HTTP_201_CREATED,
    summary="Create a study, or get the one of the same project and name",
    responses={200: {"model": StudyView, "description": "The study already existed."}},
)
async def create_study(
    body: StudyCreate, service: ServiceDep, scope: ScopeDep, response: Response
) -> StudyView:
    study, created = await _call(service.create_study, body, scope=scope.project)
    if not created:
        response.status_code = status.HTTP_200_OK
    return study


@router.get("/studies", response_model=StudyList, summary="List studies")
async def list_studies(
    service: ServiceDep,
    scope: ScopeDep,
    project: str | None = None,
    status_: Annotated[StudyStatus | None, Query(alias="status")] = None,
    family: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0,
    name: Annotated[
        str | None,
        Query(max_length=200, description="A part of the study's name (any case)."),
    ] = None,
    archived: Annotated[
        bool, Query(description="List the archived studies instead of the others.")
    ] = False,
) -> StudyList:
    return await _call(
        service.list_studies,
        project=project,
        status=status_,
        limit=limit,
        offset=offset,
        scope=scope.project,
        name=name,
        archived=archived,
        family=family,
    )


@router.get("/studies/{study_id}", response_model=StudyView, summary="Get a study")
async def get_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return await _call(service.get_study, study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/next",
    response_model=NextSegment,
    summary="The segment to train now (the open one again, if there is one)",
)
async def next_segment(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> NextSegment:
    return await _call(service.next_segment, study_id, scope=scope.project)


@router.post("/studies/{study_id}/stop", response_model=StudyView, summary="Stop a study")
async def stop_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return await _call(service.stop_study, study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/archive",
    response_model=StudyView,
    summary="Archive a study: out of the default list, its history kept (replay, export)",
)
async def archive_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return await _call(service.archive_study, study_id, True, scope=scope.project)


@router.post(
    "/studies/{study_id}/unarchive",
    response_model=StudyView,
    summary="Bring an archived study back into the list",
)
async def unarchive_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return await _call(service.archive_study, study_id, False, scope=scope.project)


@router.delete(
    "/studies/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a study and its whole history, for good",
)
async def delete_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> Response:
    await _call(service.delete_study, study_id, scope=scope.project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/studies/{study_id}/outages",
    response_model=StudyView,
    summary="Report steps trained while the service was unreachable (idempotent per key)",
)
async def report_outage(
    study_id: StudyId, body: OutageReport, service: ServiceDep, scope: ScopeDep
) -> StudyView:
    return await _call(service.report_outage, study_id, body, scope=scope.project)


@router.get(
    "/studies/{study_id}/plan",
    response_model=StudyPlan,
    summary="The study's plan (stage lengths, searches, final decay) against what ran",
)
async def study_plan(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyPlan:
    return await _call(service.get_plan, study_id, scope=scope.project)


@router.get(
    "/studies/{study_id}/schedule",
    response_model=Schedule,
    summary="The study's trajectory as a portable LR schedule (piecewise, with provenance)",
)
async def study_schedule(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> Schedule:
    return await _call(service.get_schedule, study_id, scope=scope.project)


@router.get(
    "/studies/{study_id}/stages/{index}",
    response_model=StageDetail,
    summary="A stage's search: candidates, forecasts and the GP posterior over LR",
)
async def stage_detail(
    study_id: StudyId, index: int, service: ServiceDep, scope: ScopeDep
) -> StageDetail:
    return await _call(service.stage_detail, study_id, index, scope=scope.project)


@router.get(
    "/studies/{study_id}/replay",
    response_model=ReplayReport,
    summary="Verify a study: replay every recorded decision with its stored config",
)
async def verify_replay(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> ReplayReport:
    return await _call(service.replay, study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/replay",
    response_model=ReplayReport,
    summary="What-if: replay a study under its config with overrides (estimates flagged)",
)
async def what_if_replay(
    study_id: StudyId, body: ReplayRequest, service: ServiceDep, scope: ScopeDep
) -> ReplayReport:
    overrides = {**body.overrides, **({"warm_start": None} if body.without_priors else {})}
    return await _call(service.replay, study_id, overrides, scope=scope.project)


@router.get(
    "/studies/{study_id}/segments",
    response_model=list[SegmentView],
    summary="Every segment of a study, in the order they were handed out",
)
async def list_segments(
    study_id: StudyId, service: ServiceDep, scope: ScopeDep
) -> list[SegmentView]:
    return await _call(service.list_segments, study_id, scope=scope.project)


@router.get("/segments/{segment_id}", response_model=SegmentView, summary="Get a segment")
async def get_segment(segment_id: SegmentId, service: ServiceDep, scope: ScopeDep) -> SegmentView:
    return await _call(service.get_segment, segment_id, scope=scope.project)


@router.get(
    "/segments/{segment_id}/observations",
    response_model=list[ObservationView],
    summary="A segment's reported losses, by step",
)
async def list_observations(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep
) -> list[ObservationView]:
    return await _call(service.list_observations, segment_id, scope=scope.project)


@router.post(
    "/segments/{segment_id}/observations",
    response_model=ObservationsAccepted,
    summary="Report losses (batched, idempotent)",
)
async def add_observations(
    segment_id: SegmentId, body: ObservationBatch, service: ServiceDep, scope: ScopeDep
) -> ObservationsAccepted:
    return await _call(service.add_observations, segment_id, body, scope=scope.project)


@router.post(
    "/segments/{segment_id}/complete",
    response_model=SegmentView,
    summary="Mark a segment trained (idempotent)",
)
async def complete_segment(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: CompleteRequest | None = None
) -> SegmentView:
    return await _call(
        service.complete_segment, segment_id, body or CompleteRequest(), scope=scope.project
    )


@router.post(
    "/segments/{segment_id}/complete-and-next",
    response_model=CompletedAndNext,
    summary="Mark a segment trained and get the next one (idempotent)",
)
async def complete_and_next(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: CompleteRequest | None = None
) -> CompletedAndNext:
    """What ``/complete`` and then ``/next`` of the segment's study answer, in one
    request (one write transaction when the segment is its study's open one). A retry
    gets the same answer: the completed segment and the open one after it."""
    return await _call(
        service.complete_and_next, segment_id, body or CompleteRequest(), scope=scope.project
    )


@router.post(
    "/segments/{segment_id}/fail",
    response_model=SegmentView,
    summary="Mark a segment failed (idempotent)",
)
async def fail_segment(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: FailRequest | None = None
) -> SegmentView:
    return await _call(service.fail_segment, segment_id, body or FailRequest(), scope=scope.project)
