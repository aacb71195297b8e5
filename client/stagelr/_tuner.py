"""The training job's entry point: a study, segment after segment."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal

import httpx

from ._client import DEFAULT_TIMEOUT, Client
from ._segment import Segment
from ._sender import ObservationSender
from .models import StudyConfig, StudyStatus, StudyView

__all__ = ["Tuner"]


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
    batches and keeps them buffered while the service is unreachable.

    Args:
        url: The service, e.g. ``http://127.0.0.1:8321``.
        study: The study's name, unique within the project.
        lr_min: Lower bound of the LR search.
        lr_max: Upper bound of the LR search.
        total_steps: Training steps the job will run; None for no planned end.
        preset: ``"default"`` (stagelr's tuner) or ``"autolrs"`` (the published method).
        project: The project the study belongs to.
        token: Bearer token for the project, when the service has auth on.
        seed: The tuner's seed.
        timeout: Per-request timeouts.
        transport: The httpx transport; a :class:`stagelr.RetryTransport` by default.
        batch_size: Most observations the sender collects before posting.
        linger: Seconds the sender waits for more observations before posting.
        flush_timeout: Longest wait, in seconds, for a segment's observations to be sent
            before it is completed.
        **config_overrides: Any other :class:`stagelr.models.StudyConfig` field, e.g.
            ``tau0=200, k=6``. Validated here, before anything is sent.
    """

    def __init__(
        self,
        url: str,
        *,
        study: str,
        lr_min: float,
        lr_max: float,
        total_steps: int | None = None,
        preset: Literal["autolrs", "default"] = "default",
        project: str = "default",
        token: str | None = None,
        seed: int = 0,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        batch_size: int = 500,
        linger: float = 0.05,
        flush_timeout: float | None = 120.0,
        **config_overrides: Any,
    ) -> None:
        self.config = StudyConfig(
            preset=preset,
            lr_min=lr_min,
            lr_max=lr_max,
            total_steps=total_steps,
            seed=seed,
            **config_overrides,
        )
        self.name = study
        self.project = project
        #: The low-level API client, for anything the tuner does not wrap.
        self.client = Client(url, token=token, timeout=timeout, transport=transport)
        self._sender = ObservationSender(self.client, batch_size=batch_size, linger=linger)
        self._flush_timeout = flush_timeout
        self._study: StudyView | None = None
        self._segment: Segment | None = None
        self._status: StudyStatus | None = None

    # ------------------------------------------------------------------ study

    def connect(self) -> StudyView:
        """Create the study, or get the existing one; done once, on first use."""
        if self._study is None:
            self._study = self.client.create_study(self.name, self.config, project=self.project)
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
        self.flush()
        return self.client.stop_study(self.study_id)

    # ------------------------------------------------------------------ segments

    def next_segment(self) -> Segment | None:
        """The segment to train now, or None once the study has ended.

        A segment of this tuner still open is completed first. After a restart, the
        service hands back the segment that was open, so the job resumes it.
        """
        if self._segment is not None and not self._segment.closed:
            self._segment.complete()
        answer = self.client.next_segment(self.study_id)
        if answer.segment is None:
            self._segment = None
            self._status = answer.status
            return None
        self._segment = Segment(
            answer.segment,
            client=self.client,
            sender=self._sender,
            flush_timeout=self._flush_timeout,
        )
        return self._segment

    def __iter__(self) -> Iterator[Segment]:
        """Yield :meth:`next_segment` until the study ends."""
        while (segment := self.next_segment()) is not None:
            yield segment

    # ------------------------------------------------------------------ observations

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
