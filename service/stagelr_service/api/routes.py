"""HTTP routes under /v1. They translate only: parse, call the study service, answer.

Handlers are plain ``def``: FastAPI runs them in its thread pool, so a decision (a GP fit
and a store transaction) never blocks the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

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
def create_study(
    body: StudyCreate, service: ServiceDep, scope: ScopeDep, response: Response
) -> StudyView:
    study, created = service.create_study(body, scope=scope.project)
    if not created:
        response.status_code = status.HTTP_200_OK
    return study


@router.get("/studies", response_model=StudyList, summary="List studies")
def list_studies(
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
    return service.list_studies(
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
def get_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return service.get_study(study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/next",
    response_model=NextSegment,
    summary="The segment to train now (the open one again, if there is one)",
)
def next_segment(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> NextSegment:
    return service.next_segment(study_id, scope=scope.project)


@router.post("/studies/{study_id}/stop", response_model=StudyView, summary="Stop a study")
def stop_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return service.stop_study(study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/archive",
    response_model=StudyView,
    summary="Archive a study: out of the default list, its history kept (replay, export)",
)
def archive_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return service.archive_study(study_id, True, scope=scope.project)


@router.post(
    "/studies/{study_id}/unarchive",
    response_model=StudyView,
    summary="Bring an archived study back into the list",
)
def unarchive_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyView:
    return service.archive_study(study_id, False, scope=scope.project)


@router.delete(
    "/studies/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a study and its whole history, for good",
)
def delete_study(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> Response:
    service.delete_study(study_id, scope=scope.project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/studies/{study_id}/outages",
    response_model=StudyView,
    summary="Report steps trained while the service was unreachable (idempotent per key)",
)
def report_outage(
    study_id: StudyId, body: OutageReport, service: ServiceDep, scope: ScopeDep
) -> StudyView:
    return service.report_outage(study_id, body, scope=scope.project)


@router.get(
    "/studies/{study_id}/plan",
    response_model=StudyPlan,
    summary="The study's plan (stage lengths, searches, final decay) against what ran",
)
def study_plan(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> StudyPlan:
    return service.get_plan(study_id, scope=scope.project)


@router.get(
    "/studies/{study_id}/schedule",
    response_model=Schedule,
    summary="The study's trajectory as a portable LR schedule (piecewise, with provenance)",
)
def study_schedule(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> Schedule:
    return service.get_schedule(study_id, scope=scope.project)


@router.get(
    "/studies/{study_id}/stages/{index}",
    response_model=StageDetail,
    summary="A stage's search: candidates, forecasts and the GP posterior over LR",
)
def stage_detail(
    study_id: StudyId, index: int, service: ServiceDep, scope: ScopeDep
) -> StageDetail:
    return service.stage_detail(study_id, index, scope=scope.project)


@router.get(
    "/studies/{study_id}/replay",
    response_model=ReplayReport,
    summary="Verify a study: replay every recorded decision with its stored config",
)
def verify_replay(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> ReplayReport:
    return service.replay(study_id, scope=scope.project)


@router.post(
    "/studies/{study_id}/replay",
    response_model=ReplayReport,
    summary="What-if: replay a study under its config with overrides (estimates flagged)",
)
def what_if_replay(
    study_id: StudyId, body: ReplayRequest, service: ServiceDep, scope: ScopeDep
) -> ReplayReport:
    overrides = {**body.overrides, **({"warm_start": None} if body.without_priors else {})}
    return service.replay(study_id, overrides, scope=scope.project)


@router.get(
    "/studies/{study_id}/segments",
    response_model=list[SegmentView],
    summary="Every segment of a study, in the order they were handed out",
)
def list_segments(study_id: StudyId, service: ServiceDep, scope: ScopeDep) -> list[SegmentView]:
    return service.list_segments(study_id, scope=scope.project)


@router.get("/segments/{segment_id}", response_model=SegmentView, summary="Get a segment")
def get_segment(segment_id: SegmentId, service: ServiceDep, scope: ScopeDep) -> SegmentView:
    return service.get_segment(segment_id, scope=scope.project)


@router.get(
    "/segments/{segment_id}/observations",
    response_model=list[ObservationView],
    summary="A segment's reported losses, by step",
)
def list_observations(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep
) -> list[ObservationView]:
    return service.list_observations(segment_id, scope=scope.project)


@router.post(
    "/segments/{segment_id}/observations",
    response_model=ObservationsAccepted,
    summary="Report losses (batched, idempotent)",
)
def add_observations(
    segment_id: SegmentId, body: ObservationBatch, service: ServiceDep, scope: ScopeDep
) -> ObservationsAccepted:
    return service.add_observations(segment_id, body, scope=scope.project)


@router.post(
    "/segments/{segment_id}/complete",
    response_model=SegmentView,
    summary="Mark a segment trained (idempotent)",
)
def complete_segment(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: CompleteRequest | None = None
) -> SegmentView:
    return service.complete_segment(segment_id, body or CompleteRequest(), scope=scope.project)


@router.post(
    "/segments/{segment_id}/complete-and-next",
    response_model=CompletedAndNext,
    summary="Mark a segment trained and get the next one (idempotent)",
)
def complete_and_next(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: CompleteRequest | None = None
) -> CompletedAndNext:
    """What ``/complete`` and then ``/next`` of the segment's study answer, in one
    request (one write transaction when the segment is its study's open one). A retry
    gets the same answer: the completed segment and the open one after it."""
    return service.complete_and_next(segment_id, body or CompleteRequest(), scope=scope.project)


@router.post(
    "/segments/{segment_id}/fail",
    response_model=SegmentView,
    summary="Mark a segment failed (idempotent)",
)
def fail_segment(
    segment_id: SegmentId, service: ServiceDep, scope: ScopeDep, body: FailRequest | None = None
) -> SegmentView:
    return service.fail_segment(segment_id, body or FailRequest(), scope=scope.project)
