"""The training job's entry point: a study, segment after segment."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from ._client import DEFAULT_TIMEOUT, Client
from ._exceptions import NotFoundError, ServerError, TransportError
from ._segment import Segment
from ._sender import ObservationSender
from .models import (
    LRShape,
    Metric,
    NextSegment,
    ObservationIn,
    SegmentKind,
    SegmentStatus,
    SegmentView,
    StudyConfig,
    StudyStatus,
    StudyView,
)

__all__ = ["Tuner"]

logger = logging.getLogger("stagelr")


class Tuner:
    """Tune the learning rate of one training job, segment by segment.

    ::

        with stagelr.Tuner("http://127.0.0.1:8321", study="digits-1",
                           lr_min=1e-3, lr_max=1.0, total_steps=2000) as tuner:
            for segment in tuner:
                ...  # train segment.steps() at segment.lr, segment.report(step, loss)
                segment.complete()

    The study is created on first use, or found again when one of the same project and
    name exists with the same resolved config (a restarted job resumes it, its open
    segment included); another config raises :class:`stagelr.ConflictError`.

    Only :meth:`next_segment`, ``segment.complete()`` and ``segment.fail()`` wait on the
    network. Reports go through a queue to one background thread, which sends them in
    batches and keeps them buffered while the service is unreachable. A completion also
    brings the next segment (one ``complete-and-next`` request, which the service serves
    in one write transaction); :meth:`next_segment` then answers from it without a
    request. A service without that request gets ``complete`` then ``next``.

    When the service is unreachable, training goes on. Every request is first retried
    with jittered exponential backoff (:class:`stagelr.RetryTransport`; every endpoint is
    idempotent, so a retry is always safe). If the service still cannot be reached (a
    connection error, a timeout or a 5xx after the retries):

    - ``segment.report()`` never notices: points stay buffered in the background sender
      and are delivered, exactly once, when the service is back. The buffer holds at most
      ``max_buffered`` points; beyond that, new points are dropped and counted in
      :attr:`dropped_observations`.
    - ``segment.complete()`` (or ``fail()``) returns without raising; the segment stays
      open here, and the next :meth:`next_segment` delivers its points and its completion
      first.
    - :meth:`next_segment` (and so the ``for segment in tuner`` loop) yields a *fallback*
      segment (``segment.fallback`` is True) of ``fallback_steps`` steps at
      ``fallback_lr``; without one, at the LR of the last training (exploit) segment, else
      of the last segment. A job that has not reached the service yet has no such LR: it
      decays linearly from the geometric mean of ``lr_min`` and ``lr_max`` to 0 at the
      planned end (``total_steps``, else ``charged_steps``), each fallback segment a piece
      of that decay (``segment.lr_at(step)``). A fallback segment has no checkpoint names
      and its reports are not sent. After it, the tuner asks the service again.
    - Fallback steps count against the job's planned length: a fallback segment is never
      longer than what is left of ``total_steps`` (else ``charged_steps``), and once the
      job has trained all of it without the service, :meth:`next_segment` returns None
      and the loop ends (:attr:`status` stays None: the service decided nothing). When the
      service answers again, the tuner first reports the steps trained meanwhile
      (``POST /v1/studies/{id}/outages``, idempotent); the service shortens the study's
      plan by them and lists the outage in the study, and the study resumes with what is
      left. An outage without fallback steps changes nothing: the study then makes the
      decisions it would have made without it.

    Nothing is raised into the training loop for an unreachable service unless
    ``raise_on_error=True``; then :class:`stagelr.TransportError` or
    :class:`stagelr.ServerError` propagate as they happen. Answers that no retry can
    change (a 4xx: another config for the study, a bad request) always raise.

    Args:
        url: The service, e.g. ``http://127.0.0.1:8321``.
        study: The study's name, unique within the project.
        lr_min: Lower bound of the LR search (with ``lr_bounds="range_test"``: of the
            range test's sweep, optional).
        lr_max: Upper bound of the LR search (likewise).
        total_steps: Training steps the job will run; None for no planned end.
        preset: ``"default"`` (stagelr's tuner) or ``"autolrs"`` (the published method).
        project: The project the study belongs to (default: the token's project, or
            ``default`` when the service has auth off).
        token: Bearer token for the project, when the service has auth on.
        seed: The tuner's seed.
        timeout: Per-request timeouts.
        transport: The httpx transport; a :class:`stagelr.RetryTransport` by default.
        batch_size: Most observations the sender collects before posting.
        linger: Seconds the sender waits for more observations before posting (10 s: at
            most one request per 10 s per job, however often it reports, so a short
            explore segment's reports mostly ride on its ``complete()``, which sends what
            is left at once; the dashboard sees a running segment's points up to that
            late; divergence is noticed by the segment itself). 2 s cost a server about
            70% more CPU per decision at 100 jobs (docs/benchmarks.md, section 7).
        flush_timeout: Longest wait, in seconds, for a segment's observations to be sent
            before it is completed.
        fallback_lr: The LR of fallback segments while the service is unreachable: a
            number, or a schedule ``f(steps) -> lr`` called with the steps already trained
            on fallback segments in this outage (e.g. a decay for a long outage); by
            default the last LR the service chose (see above).
        fallback_steps: Steps of one fallback segment: how long to train before asking
            the service again.
        raise_on_error: Raise into the training loop when the service is unreachable,
            instead of training on with fallback segments.
        max_buffered: Most observations kept while the service is unreachable.
        **config_overrides: Any other :class:`stagelr.models.StudyConfig` field, e.g.
            ``tau0=200, k=6``. Each field is checked here, before anything is sent;
            the service fills in the rest from the preset. ``family="resnet-cifar"``
            (or ``prior_studies=[ids]``) makes the family's completed studies of the
            project this one's priors: a narrow first search around their LR, with a
            fallback to the full search (docs/history.md).
    """

    def __init__(
        self,
        url: str,
        *,
        study: str,
        lr_min: float | None = None,
        lr_max: float | None = None,
        total_steps: int | None = None,
        preset: Literal["autolrs", "default", "default-v1"] = "default",
        project: str | None = None,
        token: str | None = None,
        seed: int = 0,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        batch_size: int = 500,
        linger: float = 10.0,
        flush_timeout: float | None = 120.0,
        fallback_lr: float | Callable[[int], float] | None = None,
        fallback_steps: int = 100,
        raise_on_error: bool = False,
        max_buffered: int = 1_000_000,
        **config_overrides: Any,
    ) -> None:
        bounds: dict[str, Any] = {"lr_min": lr_min, "lr_max": lr_max}
        #: What this job sets of the study's config (the service fills in the rest).
        self.request_config = StudyConfig(
            preset=preset,
            total_steps=total_steps,
            seed=seed,
            **{k: v for k, v in bounds.items() if v is not None},
            **config_overrides,
        )
        self.name = study
        self.project = project
        #: The low-level API client, for anything the tuner does not wrap.
        self.client = Client(url, token=token, timeout=timeout, transport=transport)
        self._sender = ObservationSender(
            self.client, batch_size=batch_size, linger=linger, max_buffered=max_buffered
        )
        self._flush_timeout = flush_timeout
        if (
            fallback_lr is not None
            and not callable(fallback_lr)
            and not (math.isfinite(fallback_lr) and fallback_lr > 0)
        ):
            raise ValueError(
                f"fallback_lr must be a finite positive LR or a schedule, not {fallback_lr!r}"
            )
        if fallback_steps < 1:
            raise ValueError(f"fallback_steps must be at least 1, not {fallback_steps}")
        self.fallback_lr = fallback_lr
        self.fallback_steps = fallback_steps
        self.raise_on_error = raise_on_error
        #: Fallback segments handed out so far (each one: the service was unreachable).
        self.fallback_segments = 0
        #: Steps handed out on fallback segments so far, over every outage.
        self.offline_steps = 0
        # Steps handed out on fallback segments since the service last answered, not yet
        # reported to it, and the key they are reported under.
        self._outage_steps = 0
        self._outage_key: str | None = None
        # Fallback steps the service has subtracted from the plan (its offline_steps).
        self._offline_known = 0
        # The trajectory step the service's segments have brought the job to.
        self._position = 0
        self._last_lr: float | None = None
        self._last_exploit_lr: float | None = None
        self._study: StudyView | None = None
        self._segment: Segment | None = None
        self._status: StudyStatus | None = None
        # Whether the service answers a completion with the next segment (its
        # complete-and-next request): None until the first completion tells.
        self._combined: bool | None = None
        # The service's next segment, answered with the completion of the one before:
        # (the completed segment's id, the answer).
        self._prefetched: tuple[int, NextSegment] | None = None

    # ------------------------------------------------------------------ study

    def connect(self) -> StudyView:
        """Create the study, or get the existing one; done once, on first use."""
        if self._study is None:
            self._study = self.client.create_study(
                self.name, self.request_config, project=self.project
            )
            self._offline_known = self._study.offline_steps
        return self._study

    @property
    def study_id(self) -> int:
        """The study's id (connects first if needed)."""
        return self.connect().id

    @property
    def status(self) -> StudyStatus | None:
        """How the study ended, once :meth:`next_segment` has returned None; else None."""
        return self._status

    def study(self) -> StudyView:
        """The study as the service has it now: stages, schedule, best loss."""
        return self.client.get_study(self.study_id)

    def stop(self) -> StudyView:
        """End the study early; the service hands out no more segments."""
        self._prefetched = None
        self.flush()
        return self.client.stop_study(self.study_id)

    # ------------------------------------------------------------------ segments

    def next_segment(self) -> Segment | None:
        """The segment to train now, or None once the study has ended.

        A segment of this tuner still open is completed first. After a restart, the
        service hands back the segment that was open, so the job resumes it. While the
        service is unreachable, a fallback segment (see the class docstring).
        """
        try:
            if self._segment is not None and not self._segment._retry_close():
                return self._fallback("the last segment could not be closed")
            prefetched, self._prefetched = self._prefetched, None
            if self._outage_steps:
                self._report_outage()
                prefetched = None
            if prefetched is not None and (
                self._segment is None or prefetched[0] != self._segment.id
            ):
                prefetched = None  # the answer to another segment's completion
            answer = (
                prefetched[1] if prefetched is not None else self.client.next_segment(self.study_id)
            )
        except (TransportError, ServerError) as exc:
            if self.raise_on_error:
                raise
            return self._fallback(str(exc))
        if answer.segment is None:
            self._segment = None
            self._status = answer.status
            return None
        view = answer.segment
        self._position = max(
            self._position,
            view.start_step + (view.steps if view.kind is SegmentKind.exploit else 0),
        )
        if view.kind is not SegmentKind.range_test:  # a sweep's LR is no LR to fall back to
            self._last_lr = view.lr
        if view.kind is SegmentKind.exploit:
            self._last_exploit_lr = view.lr
        self._segment = Segment(
            view,
            client=self.client,
            sender=self._sender,
            flush_timeout=self._flush_timeout,
            raise_on_error=self.raise_on_error,
            completer=self._complete,
        )
        return self._segment

    def _complete(
        self, segment_id: int, steps_done: int | None, observations: Sequence[ObservationIn]
    ) -> SegmentView:
        """Send a segment's completion, and with it ask for the next segment: one
        request, which :meth:`next_segment` then answers from. Not while fallback steps
        wait to be reported (the next decision must know them), nor to a service that
        has no such request (it answers 404: it gets the plain completion from then on).
        """
        self._prefetched = None
        if self._combined is False or self._outage_steps:
            return self.client.complete_segment(segment_id, steps_done, observations)
        try:
            answer = self.client.complete_and_next(segment_id, steps_done, observations)
        except NotFoundError:
            if self._combined:
                raise  # the service has the request: the segment is what it cannot find
            # An older service (no such route), or an unknown segment: the plain request
            # tells which, raising the segment's 404 in the second case.
            view = self.client.complete_segment(segment_id, steps_done, observations)
            self._combined = False
            return view
        self._combined = True
        self._prefetched = (segment_id, answer.next)
        return answer.completed

    def _report_outage(self) -> None:
        """Tell the service the steps trained on fallback segments since it last answered
        (raises TransportError or ServerError if it cannot be reached)."""
        if self._outage_key is None:
            self._outage_key = uuid.uuid4().hex
        study = self.client.report_outage(self.study_id, self._outage_key, self._outage_steps)
        logger.info(
            "stagelr service back: reported %d steps trained without it; the plan is "
            "shortened by them",
            self._outage_steps,
        )
        self._study = study
        self._offline_known = study.offline_steps
        self._outage_steps = 0
        self._outage_key = None

    def _planned_end(self) -> int | None:
        """The trajectory step the job's plan ends at, fallback steps reported so far
        taken off; None without a planned length."""
        config = self._study.config if self._study is not None else self.config
        end = config.total_steps if config.total_steps is not None else config.charged_steps
        return None if end is None else end - self._offline_known

    def _fallback_lr(self) -> float:
        if callable(self.fallback_lr):
            scheduled = float(self.fallback_lr(self._outage_steps))
            if not (math.isfinite(scheduled) and scheduled > 0):
                raise ValueError(f"the fallback_lr schedule gave {scheduled!r}: it must be > 0")
            return scheduled
        last = self.fallback_lr or self._last_exploit_lr or self._last_lr
        if last is not None:
            return last
        config = self.config
        if config.lr_min is None or config.lr_max is None:
            raise ValueError(
                "the stagelr service is unreachable and the study's LR range is not known "
                "yet (its range test finds it): give the tuner a fallback_lr to train at"
            )
        return math.sqrt(config.lr_min * config.lr_max)

    @property
    def config(self) -> StudyConfig:
        """The study's config as the service resolved it (every field set) once the
        tuner has connected; until then :attr:`request_config`, what this job set."""
        return self._study.config if self._study is not None else self.request_config

    def _decays(self) -> bool:
        """Whether fallback segments follow the default decay to the planned end: no LR
        given, none chosen by the service yet, and a planned length."""
        return (
            self.fallback_lr is None
            and self._last_exploit_lr is None
            and self._last_lr is None
            and self._planned_end() is not None
        )

    def _end_offline(self, why: str, end: int) -> Segment | None:
        """The job has trained its planned length without the service. What it still
        owes the service (a segment's completion, the outage's steps) is worth waiting
        for, up to ``flush_timeout``: then the study's record is complete, and the
        service says how it ends. Then None: the loop ends."""
        deadline = time.monotonic() + (self._flush_timeout or 0.0)
        while self._owes_service():
            try:
                if self._segment is not None and not self._segment._retry_close():
                    raise TransportError("the last segment could not be closed")
                if self._outage_steps:
                    self._report_outage()
            except (TransportError, ServerError):
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            return self.next_segment()  # the service answers: it decides the end
        logger.warning(
            "stagelr service unreachable (%s) and the job has trained its planned %d steps: ending",
            why,
            end,
        )
        self._segment = None
        return None

    def _owes_service(self) -> bool:
        # A job that never reached the service owes it nothing: there is no study yet.
        pending = self._segment is not None and not self._segment.closed
        return pending or (self._outage_steps > 0 and self._study is not None)

    def _fallback(self, why: str) -> Segment | None:
        """A stand-in segment to train on while the service is unreachable; None once the
        job has trained its planned length."""
        end = self._planned_end()
        steps = self.fallback_steps
        if end is not None:
            left = end - self._position - self._outage_steps
            if left <= 0:
                return self._end_offline(why, end)
            steps = min(steps, left)
        lr = self._fallback_lr()
        lr_end: float | None = None
        if self._decays():
            assert end is not None
            at = self._position + self._outage_steps
            lr, lr_end = lr * (1 - at / end), lr * (1 - (at + steps) / end)
        self.fallback_segments += 1
        logger.warning(
            "stagelr service unreachable (%s): training %d steps at lr=%.3g, then asking again",
            why,
            steps,
            lr,
        )
        view = SegmentView(
            id=-self.fallback_segments,
            study_id=self._study.id if self._study is not None else -1,
            seq=-1,
            stage=-1,
            index=-1,
            kind=SegmentKind.exploit,
            status=SegmentStatus.open,
            lr=lr,
            lr_end=lr_end,
            lr_shape=LRShape.constant if lr_end is None else LRShape.linear,
            steps=steps,
            start_step=-1,
            horizon=steps,
            metric=Metric.train_loss
            if self.config.metric_schedule == "train_loss"
            else Metric.val_loss,
            report_every=steps,
            data_seed=0,
        )
        self._outage_steps += steps
        self.offline_steps += steps
        return Segment(view, client=self.client, sender=self._sender, fallback=True)

    def __iter__(self) -> Iterator[Segment]:
        """Yield :meth:`next_segment` until the study ends."""
        while (segment := self.next_segment()) is not None:
            yield segment

    # ------------------------------------------------------------------ observations

    @property
    def dropped_observations(self) -> int:
        """Observations dropped because the buffer was full during a long outage."""
        return self._sender.dropped

    @property
    def pending_observations(self) -> int:
        """Observations reported but not yet accepted by the service."""
        return self._sender.pending

    def flush(self, timeout: float | None = None) -> None:
        """Send every queued observation now and wait for it.

        Raises :class:`stagelr.TransportError` if some could not be sent; they stay
        buffered.
        """
        self._sender.flush(None, timeout if timeout is not None else self._flush_timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Send what is queued (waiting up to ``timeout`` seconds), then close.

        An open segment stays open, so that a restarted job resumes it.
        """
        self._sender.close(timeout)
        self.client.close()

    def __enter__(self) -> Tuner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
