"""What each dashboard page shows, read through the study service's read models.

The pages read through the same doors as the HTTP API: the study service for a study,
its stages and their GP posteriors (the project scope applied there), and one repository
method for the study list, which computes every row of a page in SQL (two queries per
page, whatever its size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup

from stagelr.models import (
    LRShape,
    SegmentKind,
    SegmentStatus,
    StageDetail,
    StudyPlan,
    StudyView,
)

from ..errors import InputError, NotFoundError
from ..store.records import StageRecord, StudySummaryRecord
from ..studies import StudyService
from ..tuner import ResolvedConfig
from . import charts
from .plots import fmt_number

__all__ = [
    "ListPage",
    "ListQuery",
    "StageView",
    "StudyPage",
    "load_list",
    "load_study",
    "load_summary",
    "shown_status",
    "version_of",
]

#: Column keys the list sorts by, with their labels.
SORTS: dict[str, str] = {
    "name": "Study",
    "status": "Status",
    "best_loss": "Best loss",
    "updated": "Last update",
}
#: Status filters of the list, as shown.
STATUSES = ("running", "stalled", "completed", "failed", "stopped")
#: The statuses after which a study does not change any more.
FINISHED = frozenset({"completed", "failed", "stopped"})
PER_PAGE_MAX = 200
#: Pages beyond this hold no study any store has (and their offset would overflow 64 bits).
PAGE_MAX = 10**9


def shown_status(summary: StudySummaryRecord) -> str:
    """The status the dashboard shows: ``stalled`` for a running study whose job has
    gone quiet past its lease, else the stored status."""
    return "stalled" if summary.stalled else summary.status.value


def version_of(summary: StudySummaryRecord) -> str:
    """A token that changes whenever what the study page shows may have changed: every
    write to a study touches its ``updated_at``; stalling changes no row, so it counts
    separately."""
    return f"{summary.updated_at.isoformat()}~{shown_status(summary)}"


# --------------------------------------------------------------------------- list


@dataclass(frozen=True)
class ListQuery:
    """The study list's sorting, filter and page, as they appear in its URL."""

    sort: str = "updated"
    order: str = "desc"
    status: str | None = None
    page: int = 1
    per_page: int = 50
    family: str | None = None
    #: A part of the study's name (any case); None: every name.
    q: str | None = None
    #: The archived studies instead of the others.
    archived: bool = False

    def __post_init__(self) -> None:
        if self.q is not None and len(self.q) > 200:
            raise InputError("a name search is at most 200 characters")
        if self.sort not in SORTS:
            raise InputError(f"unknown sort {self.sort!r}: use one of {', '.join(SORTS)}")
        if self.order not in ("asc", "desc"):
            raise InputError(f"unknown order {self.order!r}: use asc or desc")
        if self.status is not None and self.status not in STATUSES:
            raise InputError(f"unknown status {self.status!r}: use one of {', '.join(STATUSES)}")
        if self.page < 1:
            raise InputError(f"page {self.page} does not exist: pages count from 1")
        if self.family is not None and len(self.family) > 100:
            raise InputError("a family name has at most 100 characters")
        if self.page > PAGE_MAX:
            raise InputError(f"page {self.page} does not exist: the list has fewer pages")
        if not 1 <= self.per_page <= PER_PAGE_MAX:
            raise InputError(f"per_page must be between 1 and {PER_PAGE_MAX}")

    def url(self, **changes: Any) -> str:
        """This list's URL with some parameters changed (defaults left out)."""
        query = replace(self, **changes)
        params: dict[str, str | int] = {}
        defaults = ListQuery()
        for name in ("q", "sort", "order", "status", "page", "per_page", "archived", "family"):
            value = getattr(query, name)
            if value is not None and value != getattr(defaults, name):
                params[name] = int(value) if isinstance(value, bool) else value
        return "/dashboard" + (f"?{urlencode(params)}" if params else "")

    def sort_url(self, key: str) -> str:
        """Sort by ``key``: descending first for times and statuses, ascending for names
        and losses; the current column again flips the order."""
        if key == self.sort:
            return self.url(order="asc" if self.order == "desc" else "desc", page=1)
        return self.url(sort=key, order="asc" if key in ("name", "best_loss") else "desc", page=1)


@dataclass(frozen=True)
class ListRow:
    summary: StudySummaryRecord
    status: str
    spark: Markup


@dataclass(frozen=True)
class ListPage:
    query: ListQuery
    rows: list[ListRow]
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))

    @property
    def first(self) -> int:
        return (self.query.page - 1) * self.query.per_page + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


def load_list(
    service: StudyService, lease_seconds: float, scope: str | None, query: ListQuery
) -> ListPage:
    """One page of the study list (``scope``: the only project shown; None: all)."""
    summaries, total = service.study_summaries(
        lease_seconds=lease_seconds,
        scope=scope,
        status=query.status,
        family=query.family,
        sort=query.sort,
        descending=query.order == "desc",
        limit=query.per_page,
        offset=(query.page - 1) * query.per_page,
        name=query.q,
        archived=query.archived,
    )
    rows = [ListRow(s, shown_status(s), charts.sparkline(s.schedule, s.config)) for s in summaries]
    return ListPage(query=query, rows=rows, total=total)


# --------------------------------------------------------------------------- study


def load_summary(
    service: StudyService, lease_seconds: float, scope: str | None, study_id: int
) -> StudySummaryRecord:
    """The study's list row (status with stalling, best loss, stage); NotFoundError if
    there is no such study in the scope."""
    found, _ = service.study_summaries(
        lease_seconds=lease_seconds,
        scope=scope,
        study_id=study_id,
        limit=1,
        archived=None,  # an archived study's page still shows
    )
    if not found:
        raise NotFoundError(f"no study {study_id}: see the list of studies")
    return found[0]


@dataclass(frozen=True)
class CandidateRow:
    index: int
    colour: str
    lr: float
    status: str
    steps: str
    forecast: str
    objective: float | None
    chosen: bool
    #: a finalist's check window: the index of the candidate it continued (None: a
    #: candidate of the search)
    checks: int | None = None


@dataclass(frozen=True)
class StageView:
    record: StageRecord
    detail: StageDetail
    posterior: Markup
    fits: Markup
    candidates: list[CandidateRow]
    #: How a stage without a search trained when its LR moved (the final decay).
    decay: str | None = None


@dataclass(frozen=True)
class StudyPage:
    summary: StudySummaryRecord
    status: str
    version: str
    live: bool
    study: StudyView
    totals: list[tuple[str, str]]
    config: list[tuple[str, str]]
    schedule_chart: Markup
    loss_chart: Markup
    stages: list[StageView] = field(default_factory=list)
    plan: StudyPlan | None = None


def _candidate_rows(detail: StageDetail) -> list[CandidateRow]:
    rows = []
    for cand in detail.candidates:
        fc = cand.forecast
        if fc is None:
            forecast = "–"
        elif fc.prediction is None:
            forecast = f"none ({fc.status})"
        else:
            spread = f" ± {fmt_number(fc.std, 2)}" if fc.std is not None else ""
            forecast = f"{fmt_number(fc.prediction, 4)}{spread} ({fc.status})"
        rows.append(
            CandidateRow(
                index=cand.index,
                colour=charts.colour(cand.index),
                lr=cand.lr,
                status=cand.status.value,
                steps=str(cand.steps_done) if cand.steps_done is not None else "–",
                forecast=forecast,
                objective=cand.objective,
                chosen=detail.chosen_lr is not None and cand.lr == detail.chosen_lr,
                checks=cand.checks,
            )
        )
    return rows


def _config_rows(config: ResolvedConfig) -> list[tuple[str, str]]:
    def text(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return fmt_number(value, 6)
        return str(value)

    dumped: Mapping[str, Any] = config.model_dump(mode="json")
    return [(key, text(value)) for key, value in dumped.items()]


def load_study(
    service: StudyService, lease_seconds: float, scope: str | None, study_id: int
) -> StudyPage:
    """Everything the study page shows; NotFoundError outside the scope."""
    read = service.study_page(study_id, lease_seconds=lease_seconds, scope=scope)
    summary, study, history, details = read.summary, read.study, read.history, read.stages
    config = read.config
    forecasts = {
        c.segment_id: c.forecast.prediction
        for d in details
        for c in d.candidates
        if c.forecast is not None
    }
    # Charged but not kept: a chosen candidate's window that its stage continued
    # (continue_best) is on the trajectory, not spent searching.
    searched = study.charged_steps - study.trajectory_steps
    observed = sum(len(v) for v in history.observations.values())
    checks = {c.segment_id for d in details for c in d.candidates if c.checks is not None}
    explores = [s for s in history.segments if s.kind is SegmentKind.explore and s.id not in checks]
    diverged = sum(s.status is SegmentStatus.diverged for s in explores)
    checked = f", {len(checks)} checked again" if checks else ""
    planned = f"{config.total_steps:,}" if config.total_steps else "open-ended"
    totals = [
        ("Steps trained", f"{study.trajectory_steps:,}"),
        ("Planned steps", planned),
        ("Steps spent searching", f"{searched:,}"),
        ("Steps charged", f"{study.charged_steps:,}"),
        ("Stages", str(len(history.stages))),
        ("Candidates tried", f"{len(explores)} ({diverged} diverged){checked}"),
        ("Losses reported", f"{observed:,}"),
        ("Best loss", fmt_number(study.best_loss, 4) if study.best_loss is not None else "–"),
    ]
    decays = {
        s.stage: f"a {s.lr_shape.value} decay from lr {fmt_number(s.lr)} to "
        f"{fmt_number(s.lr_end or 0.0)} over {s.steps:,} steps"
        for s in history.segments
        if s.kind is SegmentKind.exploit
        and s.lr_shape is not LRShape.constant
        and s.lr_end is not None
    }
    stages = [
        StageView(
            record=record,
            detail=detail,
            posterior=charts.posterior_chart(config, detail),
            fits=charts.fits_chart(detail),
            candidates=_candidate_rows(detail),
            decay=decays.get(record.index),
        )
        for record, detail in zip(history.stages, details, strict=True)
    ]
    status = shown_status(summary)
    return StudyPage(
        summary=summary,
        status=status,
        version=version_of(summary),
        live=status not in FINISHED,
        study=study,
        totals=totals,
        config=_config_rows(config),
        schedule_chart=charts.lr_schedule_chart(
            config, history.segments, history.stages, forecasts
        ),
        loss_chart=charts.loss_chart(
            config, history.segments, history.stages, history.observations
        ),
        stages=list(reversed(stages)),  # the stage being searched now first
        plan=read.plan,
    )
