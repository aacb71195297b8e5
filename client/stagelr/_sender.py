"""Observations leave the training thread through a queue; one daemon thread sends them."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError as _PydanticValidationError

from ._exceptions import APIError, ConflictError, ServerError, StagelrError, TransportError
from .models import Metric, ObservationIn

if TYPE_CHECKING:
    from ._client import Client
    from ._segment import Segment

__all__ = ["ObservationSender"]

logger = logging.getLogger("stagelr")

#: The most points one request may carry (ObservationBatch's limit).
_MAX_REQUEST = 10_000


@dataclass
class _Point:
    segment: Segment
    step: int
    value: float
    metric: Metric | None


@dataclass
class _Flush:
    """Queued behind the points it waits for: FIFO order makes "everything before me"."""

    segment_id: int | None  # None: every segment
    stop: bool = False  # the sender thread exits after this flush
    done: threading.Event = field(default_factory=threading.Event)
    error: StagelrError | None = None
    #: A take, not a flush: the segment's points are handed over instead of posted.
    take: bool = False
    taken: list[ObservationIn] | None = None


@dataclass
class _Buffered:
    segment: Segment
    points: list[ObservationIn] = field(default_factory=list)


class ObservationSender:
    """Batches observations per segment and posts them from one background thread.

    The training thread only puts points on a queue. The sender collects up to
    ``batch_size`` points or waits ``linger`` seconds, then posts one request per segment.
    When the service cannot be reached even after the transport's retries, the points stay
    buffered and are tried again after ``retry_interval`` seconds, doubling up to
    ``max_retry_interval``. Points the service refuses for good (a conflicting value, a
    closed or unknown segment) are dropped with a warning: sending them again cannot help.

    The buffer is bounded: once ``max_buffered`` points wait (a long outage), further
    points are dropped and counted in :attr:`dropped`, so that a training job never runs
    out of memory for the service's sake. Before posting, a segment's points are put in
    step order with exact repeats removed, the form the service requires of a batch.
    """

    def __init__(
        self,
        client: Client,
        *,
        batch_size: int = 500,
        linger: float = 10.0,
        retry_interval: float = 2.0,
        max_retry_interval: float = 60.0,
        max_buffered: int = 1_000_000,
    ) -> None:
        self._client = client
        self._batch_size = batch_size
        self._linger = linger
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._max_buffered = max_buffered
        #: Points dropped because the buffer was full (the service was away too long).
        self.dropped = 0
        #: Points the service stored (``accepted``), already had (``duplicates``), or
        #: refused for good (``refused``), over the sender's life.
        self.accepted = 0
        self.duplicates = 0
        self.refused = 0
        self._queue: queue.SimpleQueue[_Point | _Flush] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Owned by the sender thread; other threads only read the count.
        self._buffer: dict[int, _Buffered] = {}
        self._buffered = 0
        # Points put and not yet sent, refused or dropped (queue + buffer), under a lock:
        # the training thread adds, the sender thread takes away.
        self._held = 0
        self._held_lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0

    @property
    def pending(self) -> int:
        """Points reported but not yet accepted by the service."""
        return self._held

    def put(self, segment: Segment, step: int, value: float, metric: Metric | None) -> None:
        """Queue one point; never blocks on the network."""
        if self._thread is None or self._closed:
            self._start()
        with self._held_lock:
            full = self._held >= self._max_buffered
            if full:
                self.dropped += 1
            else:
                self._held += 1
        if full:
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning(
                    "observation buffer full (%d points): %d dropped so far; the service "
                    "has been unreachable for long",
                    self._max_buffered,
                    self.dropped,
                )
            return
        self._queue.put(_Point(segment, step, value, metric))

    def flush(self, segment_id: int | None = None, timeout: float | None = None) -> None:
        """Send the points queued so far, of one segment or of all, and wait.

        Raises the :class:`TransportError` or :class:`ServerError` that kept points from
        being sent; they stay buffered for a later try.
        """
        if self._closed:
            raise RuntimeError("the tuner is closed: its observations can no longer be sent")
        if self._thread is None:
            return
        self._wait(_Flush(segment_id), timeout)

    def take(self, segment_id: int, timeout: float | None = None) -> list[ObservationIn] | None:
        """Hand over the points of one segment not sent yet, in step order, instead of
        posting them (the caller sends them with the segment's completion).

        None when they cannot travel as one completion (a step reported twice with
        different values, or more than one request holds): then :meth:`flush` them.
        Points handed over are no longer the sender's; give them back with
        :meth:`give_back` if they could not be delivered.
        """
        if self._closed:
            raise RuntimeError("the tuner is closed: its observations can no longer be sent")
        if self._thread is None:
            return []
        marker = _Flush(segment_id, take=True)
        self._wait(marker, timeout)
        return marker.taken

    def give_back(self, segment: Segment, points: list[ObservationIn]) -> None:
        """Queue points again that :meth:`take` handed over and could not be delivered."""
        for point in points:
            self.put(segment, point.step, point.value, point.metric)

    def close(self, timeout: float | None = None) -> None:
        """Send what is left (waiting up to ``timeout``) and stop the thread.

        Points that could not be sent are logged as lost, not raised: closing happens at
        the end of training, which must not crash for the service's sake.
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is None:
            return
        try:
            self._wait(_Flush(None, stop=True), timeout)
        except StagelrError as exc:
            logger.warning("%d observations could not be sent: %s", self.pending, exc)

    # ------------------------------------------------------------------ caller side

    def _start(self) -> None:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the tuner is closed: no more observations can be reported")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stagelr-sender", daemon=True
                )
                self._thread.start()

    def _wait(self, marker: _Flush, timeout: float | None) -> None:
        self._queue.put(marker)
        if not marker.done.wait(timeout):
            raise TransportError(f"observations not sent within {timeout} s")
        if marker.error is not None:
            raise marker.error

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        while True:
            wait = None if not self._buffer else max(0.0, self._retry_at - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                marker = None
            else:
                marker = self._collect(item)
            if marker is not None and marker.take:
                self._hand_over(marker)
                continue
            error: StagelrError | None
            try:
                errors = self._send_buffered(marker)
                error = None if marker is None else _error_for(marker.segment_id, errors)
            except Exception as exc:  # a bug here must not kill the thread and hang flush()
                logger.exception("observation sender failed")
                self._retry_at = time.monotonic() + self._retry_interval
                error = StagelrError(f"observation sender failed: {exc!r}")
            if marker is not None:
                marker.error = error
                marker.done.set()
                if marker.stop:
                    return

    def _collect(self, item: _Point | _Flush) -> _Flush | None:
        """Move points from the queue into the buffer until a batch is full, the linger
        time is over, or a flush marker arrives (returned)."""
        deadline = time.monotonic() + self._linger
        count = 0
        while True:
            if isinstance(item, _Flush):
                return item
            self._buffer_point(item)
            count += 1
            remaining = deadline - time.monotonic()
            if count >= self._batch_size or remaining <= 0:
                return None
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None

    def _hand_over(self, marker: _Flush) -> None:
        """Answer a :meth:`take`: detach the segment's buffered points, if they can go
        as one completion request."""
        assert marker.segment_id is not None
        entry = self._buffer.get(marker.segment_id)
        if entry is None:
            marker.taken = []
        else:
            batch, later = _in_order(entry.points, entry.segment.metric)
            if later or len(batch) > _MAX_REQUEST:
                marker.taken = None  # the caller flushes them the usual way
            else:
                del self._buffer[marker.segment_id]
                self.duplicates += len(entry.points) - len(batch)
                self._release(len(entry.points))
                marker.taken = batch
        marker.done.set()

    def _release(self, count: int) -> None:
        """``count`` buffered points are gone (sent, refused or dropped as repeats)."""
        self._buffered -= count
        with self._held_lock:
            self._held -= count

    def _buffer_point(self, point: _Point) -> None:
        try:
            observation = ObservationIn(step=point.step, value=point.value, metric=point.metric)
        except _PydanticValidationError as exc:
            logger.warning("dropped an invalid observation: %s", exc)
            with self._held_lock:
                self._held -= 1
            return
        entry = self._buffer.get(point.segment.id)
        if entry is None:
            entry = self._buffer[point.segment.id] = _Buffered(point.segment)
        entry.points.append(observation)
        self._buffered += 1

    def _send_buffered(self, marker: _Flush | None) -> dict[int, StagelrError]:
        """Post each segment's buffered points; return the errors that kept some back.

        During a retry pause, and after a failure in this round, only the segments a flush
        waits for are tried.
        """
        errors: dict[int, StagelrError] = {}
        paused = time.monotonic() < self._retry_at
        for segment_id, entry in list(self._buffer.items()):
            waited_for = marker is not None and marker.segment_id in (None, segment_id)
            if (paused or errors) and not waited_for:
                continue
            try:
                self._post(entry)
            except (TransportError, ServerError) as exc:
                errors[segment_id] = exc
                self._failures += 1
                delay = self._retry_interval * 2.0 ** (self._failures - 1)
                self._retry_at = time.monotonic() + min(delay, self._max_retry_interval)
                continue
            self._failures = 0
            del self._buffer[segment_id]
        return errors

    def _post(self, entry: _Buffered) -> None:
        refused: list[APIError] = []
        size = max(1, min(self._batch_size, _MAX_REQUEST))
        while entry.points:
            batch, later = _in_order(entry.points, entry.segment.metric)
            self._release(len(entry.points) - len(batch) - len(later))
            self.duplicates += len(entry.points) - len(batch) - len(later)
            # A second value for a step waits for a request of its own, where the service
            # refuses it as the conflict it is; it stays buffered until then.
            entry.points = batch + later
            remaining = len(batch)
            while remaining:
                chunk = entry.points[: min(size, remaining)]
                self._post_chunk(entry.segment, chunk, refused)
                del entry.points[: len(chunk)]
                self._release(len(chunk))
                remaining -= len(chunk)
        self.refused += len(refused)
        if refused:
            logger.warning(
                "segment %d refused %d observation(s); last reason: %s",
                entry.segment.id,
                len(refused),
                refused[-1],
            )

    def _post_chunk(
        self, segment: Segment, chunk: list[ObservationIn], refused: list[APIError]
    ) -> None:
        """Post one chunk; points refused for good are recorded in ``refused``, one error
        per point."""
        try:
            answer = self._client.post_observations(segment.id, chunk)
        except (TransportError, ServerError):
            raise
        except APIError as exc:
            conflict = isinstance(exc, ConflictError) and exc.slug == "observation-conflict"
            if conflict and len(chunk) > 1:
                # The service refuses the whole batch; find the conflicting points by
                # halving, so that the rest is still stored (a resumed segment re-reports
                # its first steps, perhaps with slightly different values).
                half = len(chunk) // 2
                self._post_chunk(segment, chunk[:half], refused)
                self._post_chunk(segment, chunk[half:], refused)
            else:
                refused.extend([exc] * len(chunk))
            return
        self.accepted += answer.accepted
        self.duplicates += answer.duplicates
        if answer.stop:
            segment.should_stop = True


def _in_order(
    points: list[ObservationIn], default: Metric
) -> tuple[list[ObservationIn], list[ObservationIn]]:
    """``points`` sorted by step with one point per (step, metric), and the points that
    gave a step a second, different value (in report order). Exact repeats are dropped."""
    seen: dict[tuple[int, Metric], float] = {}
    batch: list[ObservationIn] = []
    later: list[ObservationIn] = []
    for point in sorted(points, key=lambda p: p.step):
        key = (point.step, point.metric or default)
        if key in seen:
            first = seen[key]
            if not (first == point.value or (math.isnan(first) and math.isnan(point.value))):
                later.append(point)
            continue
        seen[key] = point.value
        batch.append(point)
    return batch, later


def _error_for(segment_id: int | None, errors: dict[int, StagelrError]) -> StagelrError | None:
    if segment_id is None:
        return next(iter(errors.values()), None)
    return errors.get(segment_id)
