"""The study service: applies the tuner's decisions to the store.

This is the one place where the pure tuner meets the database. Every public method is
one use case of the HTTP API; the API layer only translates to and from HTTP.

Concurrency: a decision is computed outside any write transaction (the tuner is pure and
deterministic) and then inserted as segment ``seq = last + 1``. The unique key
``(study_id, seq)`` makes a second, racing insert fail; the loser returns the winner's
segment, which is the same decision anyway. This holds across threads, processes and
replicas, on SQLite and PostgreSQL alike, without holding a lock during the GP fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stagelr.models import (
    MAX_SEGMENT_POINTS,
    CompletedAndNext,
    CompleteRequest,
    FailRequest,
    Metric,
    NextSegment,
    ObservationBatch,
    ObservationIn,
    ObservationsAccepted,
    ObservationView,
    OutageReport,
    ReplayReport,
    SegmentKind,
    SegmentStatus,
    SegmentView,
    StageDetail,
    StudyCreate,
    StudyList,
    StudyPlan,
    StudyStatus,
    StudyView,
    keeps_step,
    point_stride,
)
from stagelr.schedule import Schedule

from . import tuner
from .errors import (
    ConflictError,
    ForbiddenError,
    InputError,
    InvalidStateError,
    NotFoundError,
    SegmentClosedError,
)
from .forecast import Forecast
from .history import (
    finite,
    history_view,
    segment_view,
    stage_detail,
    study_plan,
    study_view,
    trial_of,
    trials_of,
    value_diverged,
)
from .housekeeping import audit as _audit
from .replay import replay_study
from .store import DuplicateSegmentError, Repository, Store
from .store.codec import stored_params
from .store.records import (
    Closing,
    Issue,
    NewForecast,
    NewStage,
    ObservationRecord,
    SegmentRecord,
    StudyEnding,
    StudyHistory,
    StudyRecord,
    StudySummaryRecord,
)
from .tuner import ResolvedConfig

#: Decisions one `next` call may attempt when racing requests keep winning.
_NEXT_ATTEMPTS = 5


@dataclass(frozen=True)
class StudyPage:
    """The read model of one study's page (:meth:`StudyService.study_page`)."""

    summary: StudySummaryRecord
    study: StudyView
    history: StudyHistory
    config: ResolvedConfig
    #: each stage's detail, in stage order
    stages: list[StageDetail]
    plan: StudyPlan


class ServiceMetrics(Protocol):
    """What the study service reports to the metrics (``api/observability.py``)."""

    def decided(self, seconds: float) -> None:
        """A `next` answered (a decision, the open segment again, or the study's end)."""

    def ingested(self, accepted: int, duplicates: int) -> None:
        """An observation batch stored: new points and repeats of stored ones."""


class StudyService:
    """The use cases of the API, over one store and one optimizer."""

    def __init__(
        self,
        store: Store,
        optimizer: tuner.Optimizer,
        *,
        max_batch: int = 10_000,
        lease_seconds: float = 900.0,
        max_priors: int = 5,
    ):
        self.store = store
        #: Most prior studies a new study reads (``STAGELR_MAX_PRIORS``).
        self.max_priors = max_priors
        self.optimizer = optimizer
        self.max_batch = max_batch
        #: An open segment without a sign of life for this long is stale.
        self.lease_seconds = lease_seconds
        #: Told of each answered `next` and each stored batch (the /metrics counters).
        self.metrics: ServiceMetrics | None = None

    def _view(self, seg: SegmentRecord) -> SegmentView:
        return segment_view(seg, now=self.store.now(), lease_seconds=self.lease_seconds)

    def status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Studies and segments per status, over the whole store (for /metrics)."""
        with self.store.transaction(read_only=True) as repo:
            return repo.count_by_status()

    # ------------------------------------------------------------------ studies

    def create_study(
        self, request: StudyCreate, *, scope: str | None = None
    ) -> tuple[StudyView, bool]:
        """Create the study, or return the one of the same project and name.

        ``scope`` is the caller's project when auth is on (None: any project). A request
        that names no project gets the scope's project, or ``default``.
        """
        name = request.project or scope or "default"
        if scope is not None and name != scope:
            raise ForbiddenError(
                f"this token belongs to project {scope!r}, not {name!r}: create the study "
                f"in {scope!r} (or leave the project out), or use a token of {name!r}"
            )
        try:
            resolved = tuner.resolve(request.config)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        summary = None
        with self.store.transaction(read_only=True) as repo:
            existing = repo.find_study(name, request.name)
            if existing is None and (resolved.family or resolved.prior_studies):
                summary = self._prior_summary(repo, name, resolved)
        if summary is not None:
            resolved = resolved.model_copy(
                update={"warm_start": tuner.warm_start(resolved, summary, self.optimizer)}
            )
        try:
            config = tuner.fit_charged_budget(resolved).to_stored()
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        with self.store.transaction() as repo:
            project = repo.get_or_create_project(name)
            study, created = repo.create_study(project.id, request.name, config, priors=summary)
            # What the priors gave (and the budget fitted with them) was decided when the
            # study was created: a repeated create compares what the request sets.
            mine = _as_requested(config)
            if not created and _as_requested(study.config) != mine:
                theirs = _as_requested(study.config)
                changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise ConflictError(
                    f"study {request.name!r} of project {name!r} exists with "
                    f"another config (differs in: {', '.join(changed)}); use a new name, "
                    "or the stored config"
                )
            history = self._history(repo, study.id)
        return self._study_view(history), created

    def _prior_summary(
        self, repo: Repository, project: str, config: ResolvedConfig
    ) -> dict[str, Any]:
        """The summary of a new study's priors: the completed studies of ``project`` it
        names, or else its family's most recent ones, at most ``max_priors``. Another
        project's study is never read: a named id outside the project reads as missing."""
        named = list(config.prior_studies)
        if len(named) > self.max_priors:
            raise InputError(
                f"{len(named)} prior studies named; this server reads at most "
                f"{self.max_priors} (STAGELR_MAX_PRIORS): name fewer"
            )
        ids = repo.prior_study_ids(project, config.family, named, self.max_priors)
        missing = sorted(set(named) - set(ids))
        if missing:
            raise InputError(
                f"prior study {missing[0]} is not a completed study of project {project!r}: "
                "name completed studies of this project (GET /v1/studies?status=completed)"
            )
        entries = []
        for study_id in ids:
            history = repo.history(study_id)
            assert history is not None  # read in this transaction
            entries.append(
                tuner.summarize_prior(
                    study_id, history.study.name, history.study.config, trials_of(history)
                )
            )
        return tuner.prior_summary(entries, config.family, named)

    def get_study(self, study_id: int, *, scope: str | None = None) -> StudyView:
        with self.store.transaction(read_only=True) as repo:
            return self._study_view(self._history(repo, study_id, scope))

    def get_plan(self, study_id: int, *, scope: str | None = None) -> StudyPlan:
        """The study's plan from its config, against what its history has done so far."""
        with self.store.transaction(read_only=True) as repo:
            history = self._history(repo, study_id, scope)
        return study_plan(history)

    def get_schedule(self, study_id: int, *, scope: str | None = None) -> Schedule:
        """The study's kept trajectory as a portable LR schedule, with its provenance."""
        from .schedule import study_schedule

        with self.store.transaction(read_only=True) as repo:
            history = self._history(repo, study_id, scope)
        return study_schedule(history, exported_at=self.store.now())

    def list_studies(
        self,
        *,
        project: str | None = None,
        status: StudyStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        scope: str | None = None,
        name: str | None = None,
        archived: bool | None = False,
        family: str | None = None,
    ) -> StudyList:
        if scope is not None:
            if project is not None and project != scope:
                return StudyList(studies=[], total=0)  # other projects are invisible
            project = scope
        # One transaction, five statements whatever the page size: the page and its
        # count, then every listed study's stages, segments and best loss at once.
        with self.store.transaction(read_only=True) as repo:
            records, total = repo.list_studies(
                project=project,
                status=status,
                limit=limit,
                offset=offset,
                name=name,
                archived=archived,
                family=family,
            )
            stages, segments, best = repo.studies_children([r.id for r in records])
        now = self.store.now()
        views = [
            study_view(
                r,
                stages[r.id],
                segments[r.id],
                best[r.id],
                now=now,
                lease_seconds=self.lease_seconds,
            )
            for r in records
        ]
        return StudyList(studies=views, total=total)

    def stop_study(self, study_id: int, *, scope: str | None = None) -> StudyView:
        with self.store.transaction() as repo:
            study = self._study(repo, study_id, scope)
            if study.status is StudyStatus.running:
                repo.set_study_status(study_id, StudyStatus.stopped, "stopped by request")
            return self._study_view(self._history(repo, study_id))

    def archive_study(
        self, study_id: int, archived: bool = True, *, scope: str | None = None
    ) -> StudyView:
        """Archive the study (out of the default list; history kept for replay
        and the schedule export), or bring it back; logged for the audit."""
        with self.store.transaction() as repo:
            study = self._study(repo, study_id, scope)
            record = repo.set_archived(study_id, archived)
            view = self._study_view(self._history(repo, study_id))
        if (study.archived_at is None) == archived:  # a change, not a repeat
            _audit("archive" if archived else "unarchive", record, scope)
        return view

    def delete_study(self, study_id: int, *, scope: str | None = None) -> None:
        """Delete the study and its whole history, for good; logged for the audit."""
        with self.store.transaction() as repo:
            study = self._study(repo, study_id, scope)
            repo.lock_study(study_id)
            repo.delete_study(study_id)
        _audit("delete", study, scope)

    def study_histories(
        self, study_ids: Sequence[int], *, scope: str | None = None
    ) -> list[tuple[StudyView, StudyHistory]]:
        """Each study's view and whole history, read in one transaction (the dashboard's
        comparison of a few studies); NotFoundError for one outside the scope."""
        with self.store.transaction(read_only=True) as repo:
            histories = [self._history(repo, study_id, scope) for study_id in study_ids]
        return [(self._study_view(history), history) for history in histories]

    def report_outage(
        self, study_id: int, report: OutageReport, *, scope: str | None = None
    ) -> StudyView:
        """Record steps the job trained on fallback segments while it could not reach the
        service (idempotent per ``report.key``): the plan shrinks by them, so the job
        still ends on its budget. The study's view lists the outage."""
        with self.store.transaction() as repo:
            self._study(repo, study_id, scope)
            if repo.lock_study(study_id) is None:
                raise NotFoundError(f"no study {study_id}: list studies with GET /v1/studies")
            segments = repo.segments_of_study(study_id)
            after = segments[-1].seq if segments else None
            stored, created = repo.add_outage(study_id, report.key, report.steps, after)
            if not created and stored.steps != report.steps:
                raise ConflictError(
                    f"outage {report.key!r} of study {study_id} was reported with "
                    f"{stored.steps} steps, not {report.steps}: report a new outage under "
                    "a new key"
                )
            return self._study_view(self._history(repo, study_id))

    def study_summaries(
        self,
        *,
        lease_seconds: float,
        scope: str | None = None,
        status: str | None = None,
        study_id: int | None = None,
        sort: str = "updated",
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
        name: str | None = None,
        archived: bool | None = False,
        family: str | None = None,
    ) -> tuple[list[StudySummaryRecord], int]:
        """One page of the dashboard's study list and how many studies match
        (:meth:`Repository.study_summaries`: two statements whatever the page size);
        ``name`` searches, ``archived`` picks the archived studies (None: every one)."""
        with self.store.transaction(read_only=True) as repo:
            return repo.study_summaries(
                lease_seconds=lease_seconds,
                project=scope,
                status=status,
                study_id=study_id,
                sort=sort,
                descending=descending,
                limit=limit,
                offset=offset,
                name=name,
                archived=archived,
                family=family,
            )

    def study_page(
        self, study_id: int, *, lease_seconds: float, scope: str | None = None
    ) -> StudyPage:
        """Everything the dashboard's study page shows, read in one transaction of a
        fixed number of statements (the study's list row, then its history), whatever
        its number of stages; computed outside it. NotFoundError outside the scope."""
        with self.store.transaction(read_only=True) as repo:
            found, _ = repo.study_summaries(
                lease_seconds=lease_seconds,
                project=scope,
                study_id=study_id,
                limit=1,
                archived=None,  # an archived study's page still shows
            )
            history = repo.history(study_id) if found else None
        if not found or history is None:
            raise NotFoundError(f"no study {study_id}: see the list of studies")
        trials = trials_of(history)
        config = ResolvedConfig.stored(history.study.config)  # read once for the page
        return StudyPage(
            summary=found[0],
            study=history_view(
                history, now=self.store.now(), lease_seconds=self.lease_seconds, config=config
            ),
            history=history,
            config=config,
            stages=[
                stage_detail(history, st.index, self.optimizer, trials, config)
                for st in history.stages
            ],
            plan=study_plan(history, trials, config),
        )

    # ------------------------------------------------------------------ segments

    def next_segment(self, study_id: int, *, scope: str | None = None) -> NextSegment:
        """The segment to train now: the open one again, or a fresh decision.

        When a racing request (a retry, another replica) stored its decision first, the
        history is read again: its segment is then the open one, handed out as such.
        """
        started = time.perf_counter()
        for _ in range(_NEXT_ATTEMPTS):
            answer = self._decide_next(study_id, scope)
            if answer is not None:
                if self.metrics is not None:
                    self.metrics.decided(time.perf_counter() - started)
                return answer
        raise InvalidStateError(
            f"study {study_id} changed under {_NEXT_ATTEMPTS} decisions in a row; "
            "one job should drive a study: ask /next again"
        )

    def _decide_next(self, study_id: int, scope: str | None = None) -> NextSegment | None:
        """One attempt of :meth:`next_segment`; None when another request won the race."""
        with self.store.transaction(read_only=True) as repo:
            history = self._history(repo, study_id, scope)
        study = history.study
        if study.status is not StudyStatus.running:
            return NextSegment(status=study.status, segment=None)
        open_seg = next((s for s in history.segments if s.status is SegmentStatus.open), None)
        if open_seg is not None:
            # The job asks again: it is alive, and a stale segment becomes live again.
            with self.store.transaction() as repo:
                beating = repo.heartbeat_segment(open_seg.id)
            if beating is None:
                return None  # closed meanwhile by a racing request: read again
            return NextSegment(status=study.status, segment=self._view(beating))

        config = tuner.with_offline_steps(
            ResolvedConfig.stored(study.config), history.offline_steps
        )
        plan = tuner.next_segment(config, trials_of(history), self.optimizer)
        next_seq = history.segments[-1].seq + 1 if history.segments else 0

        with self.store.transaction() as repo:
            current = repo.lock_study(study_id)
            if current is None:
                raise NotFoundError(f"no study {study_id}: list studies with GET /v1/studies")
            if current.status is not StudyStatus.running:
                return NextSegment(status=current.status, segment=None)
            if isinstance(plan, tuner.StudyEnd):
                if repo.segment_by_seq(study_id, next_seq) is not None:
                    return None  # another request decided first
                repo.set_study_status(study_id, plan.status, plan.reason)
                return NextSegment(status=plan.status, segment=None)
            geometry = plan.geometry
            stage = repo.get_or_create_stage(
                study_id, geometry.index, geometry.tau, geometry.tau_explore, geometry.start_step
            )
            try:
                segment = repo.insert_segment(study_id, stage.id, next_seq, plan)
            except DuplicateSegmentError:
                return None
            if plan.kind is SegmentKind.exploit:
                repo.set_stage(stage.id, status="training", chosen_lr=plan.lr)
            return NextSegment(status=current.status, segment=self._view(segment))

    def list_segments(self, study_id: int, *, scope: str | None = None) -> list[SegmentView]:
        with self.store.transaction(read_only=True) as repo:
            return [self._view(s) for s in self._history(repo, study_id, scope).segments]

    def list_observations(
        self, segment_id: int, *, scope: str | None = None
    ) -> list[ObservationView]:
        with self.store.transaction(read_only=True) as repo:
            self._segment(repo, segment_id, scope)
            return [
                ObservationView(step=o.step, metric=o.metric, value=o.value)
                for o in repo.observations_of_segment(segment_id)
            ]

    def get_segment(self, segment_id: int, *, scope: str | None = None) -> SegmentView:
        with self.store.transaction(read_only=True) as repo:
            return self._view(self._segment(repo, segment_id, scope))

    def add_observations(
        self, segment_id: int, batch: ObservationBatch, *, scope: str | None = None
    ) -> ObservationsAccepted:
        """Store a batch of losses; a retried batch is a no-op."""
        self._check_batch_size(batch.observations)
        with self.store.transaction() as repo:
            # Locked: a concurrent complete (another replica) cannot close the segment
            # between this status check and the insert.
            segment, _ = self._locked_segment(repo, segment_id, scope)
            accepted, duplicates = self._store_batch(repo, segment, batch.observations)
            if segment.status is SegmentStatus.open:
                repo.heartbeat_segment(segment_id)
        stop = (
            segment.status is SegmentStatus.open
            and segment.kind in (SegmentKind.explore, SegmentKind.range_test)
            and any(
                value_diverged(o.value, segment.stop_above)
                for o in batch.observations
                if (o.metric or segment.metric) is segment.metric
            )
        )
        return ObservationsAccepted(accepted=accepted, duplicates=duplicates, stop=stop)

    def _check_batch_size(self, observations: Sequence[ObservationIn]) -> None:
        if len(observations) > self.max_batch:
            raise InputError(
                f"{len(observations)} observations in one request; send at most "
                f"{self.max_batch} per batch"
            )

    def _store_batch(
        self, repo: Repository, segment: SegmentRecord, observations: Sequence[ObservationIn]
    ) -> tuple[int, int]:
        """Store a batch for ``segment`` (read under the study's lock): ``(accepted,
        duplicates)``. A closed segment takes only exact repeats of what it has."""
        rows = [(o.step, o.metric or segment.metric, o.value) for o in observations]
        _check_batch_order(segment.id, rows)
        if segment.status is not SegmentStatus.open:
            accepted, duplicates = repo.count_existing(segment.id, rows)
            if accepted:
                raise SegmentClosedError(
                    f"segment {segment.id} is {segment.status.value}; it takes no new "
                    "observations (ask /next for the open segment)"
                )
            if self.metrics is not None:
                self.metrics.ingested(0, duplicates)
            return 0, duplicates
        _check_open_rows(segment, rows)
        # It touches the study (its updated_at) when anything is new.
        accepted, duplicates = repo.add_observations(segment.id, rows, study_id=segment.study_id)
        if self.metrics is not None:
            self.metrics.ingested(accepted, duplicates)
        return accepted, duplicates

    def complete_segment(
        self, segment_id: int, request: CompleteRequest, *, scope: str | None = None
    ) -> SegmentView:
        """Close a trained segment (idempotent). An explore segment gets its forecast.

        Observations that come with the request are stored first, exactly as a batch of
        their own would be, in the same transaction: a completion that is refused
        stores nothing. The forecast (a curve fit, milliseconds of CPU) is computed
        before the write transaction, from the observations read just before plus the
        request's, so that the store's write lock is held only for the writes. Should
        another batch land in between, the forecast is computed again under the lock.
        """
        self._check_batch_size(request.observations)
        closing: tuple[SegmentStatus, int, Forecast | None] | None = None
        expected = -1
        with self.store.transaction(read_only=True) as repo:
            segment = self._segment(repo, segment_id, scope)
            if segment.status in (SegmentStatus.completed, SegmentStatus.diverged):
                if not request.observations:
                    return self._view(segment)
            elif segment.status is SegmentStatus.open:
                stored = repo.observations_of_segment(segment_id)
                config = ResolvedConfig.stored(self._study(repo, segment.study_id).config)
                merged = _merged(stored, segment.metric, request.observations)
                if merged is not None:
                    expected = len(merged)
                    try:
                        closing = self._closing(segment, request, merged, config)
                    except (InputError, InvalidStateError):
                        closing = None  # raised again, in order, under the lock

        with self.store.transaction() as repo:
            segment, study = self._locked_segment(repo, segment_id, scope)
            if request.observations:
                self._store_batch(repo, segment, request.observations)
            if segment.status in (SegmentStatus.completed, SegmentStatus.diverged):
                return self._view(segment)  # a retry or a racing request closed it
            # Stored observations never change, only grow: a count tells whether any landed.
            current = repo.observations_of_segment(segment_id)
            if closing is None or len(current) != expected:
                config = ResolvedConfig.stored(study.config)
                closing = self._closing(segment, request, current, config)
            status, steps_done, forecast = closing
            updated = _store_closing(repo, segment, status, steps_done, forecast)
            repo.touch_study(segment.study_id)
            return self._view(updated)

    def complete_and_next(
        self, segment_id: int, request: CompleteRequest, *, scope: str | None = None
    ) -> CompletedAndNext:
        """Close a trained segment and answer what `next` would answer after it, in one
        request: ``complete_segment`` then ``next_segment``, with the same answers.

        A job's usual decision point (its open segment, the study's last, completes and
        the next one is decided) runs in one read transaction and one write
        transaction: the study's history is read, the completion's forecast and the
        next decision are computed from it outside any transaction (the history the
        tuner sees is the read one with this completion applied, as the store would
        give it back), then the completion and the decision are written together with
        the study locked. Should anything have changed in between (a batch landed,
        another request closed the segment or decided first), nothing is kept and
        the request runs as the two it replaces. Anything else (a retry, a closed or
        failed segment, a study that no longer runs) runs as those two as well.
        """
        self._check_batch_size(request.observations)
        started = time.perf_counter()
        try:
            answer = self._close_and_decide(segment_id, request, scope)
        except _Changed:
            answer = None
        if answer is None:
            completed = self.complete_segment(segment_id, request, scope=scope)
            following = self.next_segment(completed.study_id, scope=scope)
            return CompletedAndNext(completed=completed, next=following)
        if self.metrics is not None:
            self.metrics.decided(time.perf_counter() - started)
        return answer

    def _close_and_decide(
        self, segment_id: int, request: CompleteRequest, scope: str | None
    ) -> CompletedAndNext | None:
        """:meth:`complete_and_next` in one write transaction; None where the plain
        path must answer, :class:`_Changed` when the store moved under the decision."""
        with self.store.transaction(read_only=True) as repo:
            history = repo.history_of_segment(segment_id)
        if history is None or (scope is not None and history.study.project != scope):
            return None  # the plain path says it is not found
        segment = history.segments[-1]
        if (
            history.study.status is not StudyStatus.running
            or segment.id != segment_id
            or segment.status is not SegmentStatus.open
            or any(s.status is SegmentStatus.open for s in history.segments[:-1])
        ):
            return None
        rows = [(o.step, o.metric or segment.metric, o.value) for o in request.observations]
        try:
            _check_batch_order(segment.id, rows)
            _check_open_rows(segment, rows)
        except InputError:
            return None  # refused by the plain path
        stored = history.observations.get(segment_id, [])
        merged = _merged(stored, segment.metric, request.observations)
        if merged is None:
            return None  # a conflicting point: the plain path refuses it
        known = {(o.step, o.metric) for o in stored}
        new = [o for o in merged if (o.step, o.metric) not in known]
        study = history.study
        try:
            status, steps_done, forecast = self._closing(
                segment, request, merged, ResolvedConfig.stored(study.config)
            )
        except (InputError, InvalidStateError):
            return None  # refused, in order, by the plain path
        closed = segment.model_copy(update={"status": status, "steps_done": steps_done})
        as_stored = None if forecast is None else _as_stored(forecast)
        trials = trials_of(history)
        trials[-1] = trial_of(closed, merged, as_stored)
        config = tuner.with_offline_steps(
            ResolvedConfig.stored(study.config), history.offline_steps
        )
        plan = tuner.next_segment(config, trials, self.optimizer)

        with self.store.transaction() as repo:
            # The study locked (PostgreSQL), and still running; then the segment closed
            # if it is still open with the points read before (stored points never
            # change, only grow: a count tells whether any landed), so the new ones are
            # known to be new; then its points, its forecast and the decision stored.
            # The store may send these at once and check after: a check that fails
            # rolls back whatever was written.
            written = repo.close_and_issue(
                _closing_write(segment, status, steps_done, len(stored), new, forecast),
                _following(plan, history, segment.seq + 1),
            )
            if not written.running or written.closed is None:
                raise _Changed
            if self.metrics is not None and request.observations:
                self.metrics.ingested(len(new), len(request.observations) - len(new))
            completed = self._view(written.closed)
            if isinstance(plan, tuner.StudyEnd):
                return CompletedAndNext(
                    completed=completed, next=NextSegment(status=plan.status, segment=None)
                )
            if written.issued is None:
                raise _Changed  # another request issued the next segment first
            return CompletedAndNext(
                completed=completed,
                next=NextSegment(status=StudyStatus.running, segment=self._view(written.issued)),
            )

    @staticmethod
    def _closing(
        segment: SegmentRecord,
        request: CompleteRequest,
        observations: Sequence[ObservationRecord],
        config: ResolvedConfig,
    ) -> tuple[SegmentStatus, int, Forecast | None]:
        """How a completion closes ``segment``: status, steps done, and (explore) forecast.

        Pure: raises the domain errors of a completion that cannot be.
        """
        if segment.status is SegmentStatus.failed:
            raise InvalidStateError(
                f"segment {segment.id} has failed and cannot be completed; ask /next"
            )
        steps_done = segment.steps if request.steps_done is None else request.steps_done
        if steps_done > segment.steps:
            raise InputError(
                f"steps_done {steps_done} exceeds segment {segment.id}'s {segment.steps} steps"
            )
        if segment.kind is not SegmentKind.explore:
            return SegmentStatus.completed, steps_done, None
        diverged = any(
            value_diverged(o.value, segment.stop_above)
            for o in observations
            if o.metric is segment.metric
        )
        status = SegmentStatus.diverged if diverged else SegmentStatus.completed
        closed = segment.model_copy(update={"status": status, "steps_done": steps_done})
        trial = trial_of(closed, observations)
        return status, steps_done, tuner.forecast_trial(config, trial, segment.horizon)

    def fail_segment(
        self, segment_id: int, request: FailRequest, *, scope: str | None = None
    ) -> SegmentView:
        """The job could not train the segment (idempotent)."""
        with self.store.transaction() as repo:
            segment, _ = self._locked_segment(repo, segment_id, scope)
            if segment.status is SegmentStatus.failed:
                return self._view(segment)
            if segment.status is not SegmentStatus.open:
                raise InvalidStateError(
                    f"segment {segment_id} is already {segment.status.value}; only an open "
                    "segment can fail"
                )
            updated = repo.update_segment_status(
                segment_id, SegmentStatus.failed, fail_reason=request.reason or "failed"
            )
            repo.touch_study(segment.study_id)
            return self._view(updated)

    # ------------------------------------------------------------------ stages

    def stage_detail(self, study_id: int, index: int, *, scope: str | None = None) -> StageDetail:
        """A stage's search: each candidate's losses and forecast, and the GP posterior."""
        with self.store.transaction(read_only=True) as repo:
            history = self._history(repo, study_id, scope)
        return stage_detail(history, index, self.optimizer)

    # ------------------------------------------------------------------ replay

    def replay(
        self,
        study_id: int,
        overrides: Mapping[str, Any] | None = None,
        *,
        scope: str | None = None,
    ) -> ReplayReport:
        """Verify the study's decisions (``overrides`` None) or replay it what-if.

        The history is read in one short read-only transaction and replayed outside it;
        the optimizer takes no lock, so live decisions run beside a replay instead of
        waiting for it.
        """
        return replay_study(self.store, study_id, self.optimizer, overrides, scope=scope)

    # ------------------------------------------------------------------ helpers

    # A study outside the caller's scope reads as missing (404, not 403): ids must not
    # tell another project's token what exists.

    def _study(self, repo: Repository, study_id: int, scope: str | None = None) -> StudyRecord:
        study = repo.get_study(study_id)
        if study is None or (scope is not None and study.project != scope):
            raise NotFoundError(f"no study {study_id}: list studies with GET /v1/studies")
        return study

    def _history(self, repo: Repository, study_id: int, scope: str | None = None) -> StudyHistory:
        history = repo.history(study_id)
        if history is None or (scope is not None and history.study.project != scope):
            raise NotFoundError(f"no study {study_id}: list studies with GET /v1/studies")
        return history

    def _segment(
        self, repo: Repository, segment_id: int, scope: str | None = None
    ) -> SegmentRecord:
        segment = repo.get_segment(segment_id)
        if segment is not None and scope is not None:
            study = repo.get_study(segment.study_id)
            if study is None or study.project != scope:
                segment = None
        if segment is None:
            raise NotFoundError(
                f"no segment {segment_id}: ask POST /v1/studies/{{id}}/next for the open one"
            )
        return segment

    def _locked_segment(
        self, repo: Repository, segment_id: int, scope: str | None = None
    ) -> tuple[SegmentRecord, StudyRecord]:
        """The segment, read after its study is locked (status changes are atomic), and
        the study."""
        segment = self._segment(repo, segment_id, scope)
        study = repo.lock_study(segment.study_id)
        if study is None:  # deleted meanwhile (studies are never deleted today)
            raise NotFoundError(f"no segment {segment_id}: its study is gone")
        return self._segment(repo, segment_id), study

    def _study_view(self, history: StudyHistory) -> StudyView:
        return history_view(history, now=self.store.now(), lease_seconds=self.lease_seconds)


def _as_requested(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config without what its creation derived from the priors (the warm
    start, and the trajectory fitted to the budget with it)."""
    out = {k: v for k, v in config.items() if k != "warm_start"}
    if out.get("charged_steps") is not None and (out.get("family") or out.get("prior_studies")):
        out.pop("total_steps", None)
    return out


def _merged(
    stored: Sequence[ObservationRecord], metric: Metric, incoming: Iterable[ObservationIn]
) -> list[ObservationRecord] | None:
    """What the segment's observations will be once ``incoming`` is stored, sorted as the
    store returns them; None if ``incoming`` conflicts with itself or ``stored`` (storing
    it then raises the error)."""
    merged = {(o.step, o.metric): o.value for o in stored}
    for o in incoming:
        key = (o.step, o.metric or metric)
        known = merged.setdefault(key, o.value)
        if not (known == o.value or (math.isnan(known) and math.isnan(o.value))):
            return None
    return [
        ObservationRecord(step, m, value)
        for (step, m), value in sorted(
            merged.items(), key=lambda item: (item[0][0], item[0][1].value)
        )
    ]


def _check_batch_order(segment_id: int, rows: Sequence[tuple[int, Metric, float]]) -> None:
    """Within one batch, each metric's steps must strictly increase (one value per step).

    A job reports in training order; a batch out of order or with a step twice is a bug
    on the sending side, refused whole so that nothing half-understood is stored.
    """
    last: dict[Metric, int] = {}
    for step, metric, _ in rows:
        previous = last.get(metric)
        if previous is not None and step <= previous:
            what = "twice" if step == previous else f"after step {previous}"
            raise InputError(
                f"segment {segment_id}: the batch reports {metric.value} at step {step} "
                f"{what}; send each metric's steps in increasing order, one value per step"
            )
        last[metric] = step


class _Changed(Exception):
    """The store moved between a combined request's read and its write: raised inside
    the write transaction, it rolls back whatever was written, and the request runs as
    the two it stands for."""


def _as_stored(forecast: Forecast) -> Forecast:
    """``forecast`` as a history read gives it back once stored: non-finite values
    as NaN, the params through their JSON column."""
    prediction, std = finite(forecast.prediction), finite(forecast.std)
    return Forecast(
        prediction=math.nan if prediction is None else float(prediction),
        std=math.nan if std is None else float(std),
        status=forecast.status,
        model=forecast.model,
        params=stored_params(forecast.params),
        n_points=forecast.n_points,
    )


def _check_open_rows(segment: SegmentRecord, rows: Sequence[tuple[int, Metric, float]]) -> None:
    """What an open segment stores of a batch: steps within it, at the points it keeps."""
    beyond = [step for step, _, _ in rows if step > segment.steps]
    if beyond:
        raise InputError(
            f"step {beyond[0]} is beyond segment {segment.id}'s {segment.steps} "
            "steps: report steps counted from 1 within the segment"
        )
    off = [step for step, _, _ in rows if not keeps_step(step, segment.steps, segment.report_every)]
    if off:
        raise InputError(
            f"step {off[0]}: segment {segment.id} has {segment.steps} steps and stores "
            f"at most {MAX_SEGMENT_POINTS} points a metric, at every "
            f"{point_stride(segment.steps)}th step and at its report cadence (every "
            f"{segment.report_every} steps): report those steps only"
        )


def _store_closing(
    repo: Any,
    segment: Any,
    status: SegmentStatus,
    steps_done: int | None,
    forecast: Any,
) -> Any:
    """Write a segment's closing: its status and steps, and an explore segment's forecast
    (a training segment closes its stage instead). Returns the updated segment."""
    updated = repo.update_segment_status(segment.id, status, steps_done=steps_done)
    _store_closed(repo, segment, forecast)
    return updated


def _closing_write(
    segment: SegmentRecord,
    status: SegmentStatus,
    steps_done: int,
    points: int,
    new: Sequence[ObservationRecord],
    forecast: Forecast | None,
) -> Closing:
    """A completion as :meth:`Repository.close_and_issue` stores it: the segment closed,
    the new points, and what :func:`_store_closed` writes besides."""
    stored = None if forecast is None else NewForecast(**_forecast_values(forecast))
    return Closing(segment, status, steps_done, points, new, stored, forecast is None)


def _forecast_values(forecast: Forecast) -> dict[str, Any]:
    """What is stored of a forecast (a non-finite prediction or std as None: its status
    says why), as :class:`NewForecast` and :meth:`Repository.upsert_forecast` take it."""
    return {
        "model": forecast.model,
        "prediction": finite(forecast.prediction),
        "std": finite(forecast.std),
        "status": forecast.status,
        "params": dict(forecast.params),
        "n_points": forecast.n_points,
    }


def _following(
    plan: tuner.Decision | tuner.StudyEnd, history: StudyHistory, seq: int
) -> Issue | StudyEnding:
    """What follows a completion: the study's end, or ``plan`` issued as segment ``seq``
    in its stage (the one read, whose id, study and index never change; else found or
    created), a stage's training segment setting its stage training at its LR."""
    if isinstance(plan, tuner.StudyEnd):
        return StudyEnding(plan.status, plan.reason)
    geometry = plan.geometry
    read = [st for st in history.stages if st.index == geometry.index]
    stage = (
        read[0]
        if read
        else NewStage(geometry.index, geometry.tau, geometry.tau_explore, geometry.start_step)
    )
    training_lr = plan.lr if plan.kind is SegmentKind.exploit else None
    return Issue(plan, seq, stage, training_lr)


def _store_closed(repo: Any, segment: Any, forecast: Any) -> None:
    """What a segment's closing writes besides the segment: an explore segment's
    forecast, or (a training segment) its stage completed."""
    if forecast is not None:
        repo.upsert_forecast(
            segment.id, **_forecast_values(forecast), objective=None, study_id=segment.study_id
        )
    else:
        repo.set_stage(segment.stage_id, status="completed")
