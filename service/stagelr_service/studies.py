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

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from stagelr.models import (
    MAX_SEGMENT_POINTS,
    CandidateView,
    CompleteRequest,
    FailRequest,
    ForecastView,
    Metric,
    NextSegment,
    ObservationBatch,
    ObservationIn,
    ObservationsAccepted,
    ObservationView,
    OutageReport,
    OutageView,
    PlanStage,
    PosteriorPoint,
    ReplayReport,
    SegmentKind,
    SegmentStatus,
    SegmentView,
    StageDetail,
    StageSummary,
    StudyConfig,
    StudyCreate,
    StudyList,
    StudyPlan,
    StudyStatus,
    StudyView,
    keeps_step,
    point_stride,
)

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
from .store import DuplicateSegmentError, Repository, Store
from .store.records import (
    ForecastRecord,
    ObservationRecord,
    SegmentRecord,
    StudyHistory,
    StudyRecord,
)

#: Decisions one `next` call may attempt when racing requests keep winning.
_NEXT_ATTEMPTS = 5


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def is_stale(seg: SegmentRecord, now: datetime | None, lease_seconds: float | None) -> bool:
    """An open segment whose job has shown no sign of life for longer than the lease."""
    if now is None or lease_seconds is None or seg.status is not SegmentStatus.open:
        return False
    last = seg.heartbeat_at or seg.created_at
    return (now - last).total_seconds() > lease_seconds


def segment_view(
    seg: SegmentRecord, *, now: datetime | None = None, lease_seconds: float | None = None
) -> SegmentView:
    """The wire view of a segment; ``stale`` is computed when ``now`` and a lease are given."""
    return SegmentView(
        id=seg.id,
        study_id=seg.study_id,
        seq=seg.seq,
        stage=seg.stage,
        index=seg.index,
        kind=seg.kind,
        status=seg.status,
        lr=seg.lr,
        steps=seg.steps,
        start_step=seg.start_step,
        horizon=seg.horizon,
        metric=seg.metric,
        report_every=seg.report_every,
        restore=seg.restore,
        save_start=seg.save_start,
        save_end=seg.save_end,
        discard=list(seg.discard),
        stop_above=seg.stop_above,
        lr_end=seg.lr_end,
        lr_shape=seg.lr_shape,
        data_seed=seg.data_seed,
        steps_done=seg.steps_done,
        heartbeat_at=seg.heartbeat_at,
        stale=is_stale(seg, now, lease_seconds),
    )


def stored_forecast(record: ForecastRecord | None) -> Forecast | None:
    """A forecast as it was computed at completion (the store keeps non-finite as None)."""
    if record is None:
        return None
    return Forecast(
        prediction=math.nan if record.prediction is None else record.prediction,
        std=math.nan if record.std is None else record.std,
        status=record.status,
        model=record.model,
        params=dict(record.params),
        n_points=record.n_points,
    )


def trial_of(
    seg: SegmentRecord,
    observations: Iterable[ObservationRecord],
    forecast: Forecast | None = None,
) -> tuner.Trial:
    """One segment as the tuner sees it: its own metric's losses, by step."""
    return tuner.Trial(
        seq=seg.seq,
        stage=seg.stage,
        index=seg.index,
        kind=seg.kind,
        lr=seg.lr,
        steps=seg.steps,
        status=seg.status,
        steps_done=seg.steps_done,
        metric=seg.metric,
        observations=tuple((o.step, o.value) for o in observations if o.metric is seg.metric),
        forecast=forecast,
    )


def trials_of(history: StudyHistory) -> list[tuner.Trial]:
    """The study's segments as the tuner sees them, with the forecasts stored for them."""
    return [
        trial_of(
            seg,
            history.observations.get(seg.id, ()),
            stored_forecast(history.forecasts.get(seg.id)),
        )
        for seg in history.segments
    ]


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
    ):
        self.store = store
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
            config = tuner.fit_charged_budget(request.config).resolved()
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        with self.store.transaction() as repo:
            project = repo.get_or_create_project(name)
            study, created = repo.create_study(project.id, request.name, config)
            if not created and study.config != config:
                changed = sorted(
                    k
                    for k in set(config) | set(study.config)
                    if config.get(k) != study.config.get(k)
                )
                raise ConflictError(
                    f"study {request.name!r} of project {name!r} exists with "
                    f"another config (differs in: {', '.join(changed)}); use a new name, "
                    "or the stored config"
                )
            history = self._history(repo, study.id)
        return self._study_view(history), created

    def get_study(self, study_id: int, *, scope: str | None = None) -> StudyView:
        with self.store.transaction(read_only=True) as repo:
            return self._study_view(self._history(repo, study_id, scope))

    def get_plan(self, study_id: int, *, scope: str | None = None) -> StudyPlan:
        """The study's plan from its config, against what its history has done so far."""
        with self.store.transaction(read_only=True) as repo:
            history = self._history(repo, study_id, scope)
        return study_plan(history)

    def list_studies(
        self,
        *,
        project: str | None = None,
        status: StudyStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        scope: str | None = None,
    ) -> StudyList:
        if scope is not None:
            if project is not None and project != scope:
                return StudyList(studies=[], total=0)  # other projects are invisible
            project = scope
        with self.store.transaction(read_only=True) as repo:
            records, total = repo.list_studies(
                project=project, status=status, limit=limit, offset=offset
            )
            views = [self._study_view(self._history(repo, r.id)) for r in records]
        return StudyList(studies=views, total=total)

    def stop_study(self, study_id: int, *, scope: str | None = None) -> StudyView:
        with self.store.transaction() as repo:
            study = self._study(repo, study_id, scope)
            if study.status is StudyStatus.running:
                repo.set_study_status(study_id, StudyStatus.stopped, "stopped by request")
            return self._study_view(self._history(repo, study_id))

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
            StudyConfig.model_validate(study.config), history.offline_steps
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
            geometry = plan.stage
            stage = repo.get_or_create_stage(
                study_id, geometry.index, geometry.tau, geometry.tau_explore, geometry.start_step
            )
            try:
                segment = repo.insert_segment(
                    study_id=study_id,
                    stage_id=stage.id,
                    seq=next_seq,
                    index=plan.index,
                    kind=plan.kind,
                    lr=plan.lr,
                    steps=plan.steps,
                    start_step=plan.start_step,
                    horizon=plan.horizon,
                    metric=plan.metric,
                    report_every=plan.report_every,
                    restore=plan.restore,
                    save_start=plan.save_start,
                    save_end=plan.save_end,
                    discard=list(plan.discard),
                    stop_above=plan.stop_above,
                    data_seed=plan.data_seed,
                    lr_end=plan.lr_end,
                    lr_shape=plan.lr_shape,
                )
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
        beyond = [step for step, _, _ in rows if step > segment.steps]
        if beyond:
            raise InputError(
                f"step {beyond[0]} is beyond segment {segment.id}'s {segment.steps} "
                "steps: report steps counted from 1 within the segment"
            )
        off = [
            step for step, _, _ in rows if not keeps_step(step, segment.steps, segment.report_every)
        ]
        if off:
            raise InputError(
                f"step {off[0]}: segment {segment.id} has {segment.steps} steps and stores "
                f"at most {MAX_SEGMENT_POINTS} points a metric, at every "
                f"{point_stride(segment.steps)}th step and at its report cadence (every "
                f"{segment.report_every} steps): report those steps only"
            )
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
                config = StudyConfig.model_validate(self._study(repo, segment.study_id).config)
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
                config = StudyConfig.model_validate(study.config)
                closing = self._closing(segment, request, current, config)
            status, steps_done, forecast = closing
            updated = repo.update_segment_status(segment_id, status, steps_done=steps_done)
            if forecast is not None:
                repo.upsert_forecast(
                    segment_id,
                    model=forecast.model,
                    prediction=_finite(forecast.prediction),
                    std=_finite(forecast.std),
                    status=forecast.status,
                    params=dict(forecast.params),
                    n_points=forecast.n_points,
                    objective=None,
                    study_id=segment.study_id,
                )
            else:
                repo.set_stage(segment.stage_id, status="completed")
            repo.touch_study(segment.study_id)
            return self._view(updated)

    @staticmethod
    def _closing(
        segment: SegmentRecord,
        request: CompleteRequest,
        observations: Sequence[ObservationRecord],
        config: StudyConfig,
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
        closed = dataclasses.replace(segment, status=status, steps_done=steps_done)
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
        trials = trials_of(history)
        config = tuner.search_config(StudyConfig.model_validate(history.study.config), trials)
        geometries = tuner.stage_geometries(config, trials)
        if not 0 <= index < len(geometries):
            raise NotFoundError(
                f"study {study_id} has no stage {index} yet (it has {len(geometries)})"
            )
        geometry = geometries[index]
        stage_trials = [t for t in trials if t.stage == index]
        analysis = tuner.analyze_stage(config, geometry, stage_trials)
        posterior = (
            tuner.stage_posterior(config, analysis, self.optimizer) if geometry.search else []
        )
        segments = {s.seq: s for s in history.segments}
        candidates = []
        analysed = {c.trial.seq: c for c in analysis.candidates}
        for trial in stage_trials:
            if trial.kind is not SegmentKind.explore:
                continue
            seg = segments[trial.seq]
            cand = analysed.get(trial.seq)
            candidates.append(
                CandidateView(
                    segment_id=seg.id,
                    index=trial.index,
                    lr=trial.lr,
                    status=trial.status,
                    steps_done=trial.steps_done,
                    forecast=_forecast_view(cand.forecast) if cand else None,
                    objective=_finite(cand.objective) if cand else None,
                    observations=[(s, v) for s, v in trial.observations if math.isfinite(v)],
                )
            )
        return StageDetail(
            study_id=study_id,
            index=index,
            tau=geometry.tau,
            tau_explore=geometry.tau_explore,
            start_step=geometry.start_step,
            chosen_lr=analysis.chosen_lr,
            candidates=candidates,
            posterior=[PosteriorPoint(lr=lr, mean=m, std=s) for lr, m, s in posterior],
        )

    # ------------------------------------------------------------------ replay

    def replay(
        self,
        study_id: int,
        overrides: Mapping[str, Any] | None = None,
        *,
        scope: str | None = None,
    ) -> ReplayReport:
        """Verify the study's decisions (``overrides`` None) or replay it what-if.

        The history is read in one short read-only transaction and replayed outside it.
        The optimizer's lock is taken per GP call (milliseconds), never for the whole
        replay, so live decisions interleave with a replay instead of waiting for it.
        """
        from .replay import replay_study  # the replay package imports this module

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
        study = history.study
        trajectory = charged = 0
        best: float | None = None
        schedule: list[tuple[int, float]] = []
        # A training segment that continues a candidate starts after the candidate's
        # steps; its LR holds from the stage's start.
        stage_start = {st.index: st.start_step for st in history.stages}
        for seg in history.segments:
            done = trained_steps(seg)
            charged += done
            if seg.kind is SegmentKind.exploit:
                schedule.append((stage_start.get(seg.stage, seg.start_step), seg.lr))
                if seg.status is SegmentStatus.completed:
                    # A training segment may continue a candidate (continue_best): the
                    # trajectory ends where the last one ended.
                    trajectory = max(trajectory, seg.start_step + done)
                for o in history.observations.get(seg.id, ()):
                    if o.metric is seg.metric and math.isfinite(o.value):
                        best = o.value if best is None else min(best, o.value)
        counts: dict[int, int] = {}
        for seg in history.segments:
            if seg.kind is SegmentKind.explore:
                counts[seg.stage] = counts.get(seg.stage, 0) + 1
        stages = [
            StageSummary(
                index=st.index,
                tau=st.tau,
                tau_explore=st.tau_explore,
                start_step=st.start_step,
                status=st.status,
                chosen_lr=st.chosen_lr,
                candidates=counts.get(st.index, 0),
            )
            for st in history.stages
        ]
        open_seg = next((s for s in history.segments if s.status is SegmentStatus.open), None)
        open_view = self._view(open_seg) if open_seg else None
        return StudyView(
            id=study.id,
            project=study.project,
            name=study.name,
            status=study.status,
            config=StudyConfig.model_validate(study.config),
            created_at=study.created_at,
            updated_at=study.updated_at,
            trajectory_steps=trajectory,
            charged_steps=charged,
            best_loss=best,
            stages=stages,
            schedule=schedule,
            open_segment=open_view,
            stalled=study.status is StudyStatus.running
            and open_view is not None
            and open_view.stale,
            outages=[
                OutageView(
                    key=o.key, steps=o.steps, after_seq=o.after_seq, reported_at=o.reported_at
                )
                for o in history.outages
            ],
            offline_steps=history.offline_steps,
        )


def trained_steps(seg: SegmentRecord) -> int:
    """Steps a segment charged: none while open; all of them when closed without a
    count (a completion never reports more than the segment's steps)."""
    if seg.status is SegmentStatus.open:
        return 0
    return seg.steps if seg.steps_done is None else seg.steps_done


def study_plan(history: StudyHistory) -> StudyPlan:
    """The plan (:func:`tuner.plan_stages`) with each stage's actual charge, status and
    chosen LR from the history."""
    config = tuner.with_offline_steps(
        StudyConfig.model_validate(history.study.config), history.offline_steps
    )
    planned, open_ended = tuner.plan_stages(config)
    charge: dict[int, int] = {}
    for seg in history.segments:
        charge[seg.stage] = charge.get(seg.stage, 0) + trained_steps(seg)
    actual = {st.index: st for st in history.stages}
    stages = []
    for p in planned:
        g = p.geometry
        record = actual.get(g.index)
        stages.append(
            PlanStage(
                index=g.index,
                start_step=g.start_step,
                tau=g.tau,
                tau_explore=g.tau_explore,
                candidates=p.candidates,
                kind=p.kind,
                planned_charge=p.charge,
                status=record.status if record is not None else "planned",
                actual_charge=charge.get(g.index, 0),
                chosen_lr=record.chosen_lr if record is not None else None,
            )
        )
    assert config.planner is not None
    bounds: tuple[float, float] | None = (config.lr_min, config.lr_max)
    if config.lr_bounds == "range_test":
        searched = tuner.search_config(config, trials_of(history))
        tested = searched is not config
        bounds = (searched.lr_min, searched.lr_max) if tested else None
    return StudyPlan(
        study_id=history.study.id,
        planner=config.planner,
        total_steps=config.total_steps,
        open_ended=open_ended,
        planned_charge=sum(p.charge for p in planned),
        actual_charge=sum(charge.values()),
        range_test_steps=tuner.range_test_charge(config),
        lr_bounds=bounds,
        stages=stages,
    )


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


def value_diverged(value: float, stop_above: float | None) -> bool:
    """A reported loss that ends an explore segment or a range test: NaN, inf, or above
    its threshold."""
    if not math.isfinite(value):
        return True
    return stop_above is not None and value > stop_above


def _forecast_view(fc: Forecast) -> ForecastView:
    return ForecastView(
        prediction=_finite(fc.prediction),
        std=_finite(fc.std),
        status=fc.status,
        model=fc.model,
        params={k: float(v) for k, v in fc.params.items() if math.isfinite(v)},
        n_points=fc.n_points,
    )
