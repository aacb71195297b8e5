"""A segment as the training loop sees it: the plan, plus reporting and completion."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, SupportsFloat

from ._exceptions import ConflictError, ServerError, TransportError
from .models import Metric, ObservationIn, SegmentKind, SegmentView, keeps_step

if TYPE_CHECKING:
    from ._client import Client
    from ._sender import ObservationSender

    # A type checker sees a segment's view fields as its own, from their one definition.
    _Fields = SegmentView
else:
    _Fields = object

__all__ = ["Segment", "ViewAttributes"]

#: Sends a segment's completion: (segment id, steps done, observations) -> its view.
Completer = Callable[[int, int | None, Sequence[ObservationIn]], SegmentView]

logger = logging.getLogger("stagelr")


class ViewAttributes(_Fields):
    """The fields of an object's :attr:`view` (a :class:`stagelr.models.SegmentView`)
    read as its attributes: ``segment.lr``, ``segment.restore``..."""

    view: SegmentView

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the object itself.
        view = self.__dict__.get("view")
        if view is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(view, name)


class Segment(ViewAttributes):
    """One stretch of training handed out by the service.

    The fields of :class:`stagelr.models.SegmentView` read as attributes (``segment.lr``,
    ``segment.kind``, ``segment.restore``...), except its ``steps``: that name is the step
    iterator here, and the planned count is :attr:`planned_steps`.

    A training loop::

        checkpointer.begin(segment)        # restore, save_start, apply segment.lr
        for step in segment.steps():       # 1..planned_steps, ends early on a stop
            train_one_step()
            if segment.report_due(step):
                segment.report(step, evaluate())
        checkpointer.end(segment)          # save_end, discard
        segment.complete()

    ``report()`` only queues the point; a background thread sends it. An explore
    segment whose reported value is NaN, infinite or above ``stop_above`` sets
    :attr:`should_stop` at once (divergence stop), and so does the service's ``stop``
    answer when it arrives.

    A *fallback* segment (:attr:`fallback` True) is one the :class:`stagelr.Tuner` makes
    up while the service is unreachable: train it like any other (it carries the LR to
    keep training with and no checkpoint names); its reports are not sent, since the
    service never handed it out, and completing it sends nothing.
    """

    def __init__(
        self,
        view: SegmentView,
        *,
        client: Client,
        sender: ObservationSender,
        flush_timeout: float | None = None,
        raise_on_error: bool = True,
        fallback: bool = False,
        completer: Completer | None = None,
    ) -> None:
        self.view = view
        #: True for a stand-in made up by the tuner while the service is unreachable.
        self.fallback = fallback
        #: True once the segment should end early; :meth:`steps` then stops yielding.
        self.should_stop = False
        #: Reports not sent because the service stores no point at their step (a segment
        #: of more than ``stagelr.models.MAX_SEGMENT_POINTS`` steps keeps every
        #: ``point_stride(steps)``-th step and its report cadence).
        self.thinned = 0
        self._client = client
        self._sender = sender
        self._flush_timeout = flush_timeout
        self._checks_divergence = view.kind in (SegmentKind.explore, SegmentKind.range_test)
        self._trained = 0
        self._tracked = False
        self._closed = False
        self._raise_on_error = raise_on_error
        # What the job asked for that has not reached the service yet.
        self._closing: Literal["complete", "fail"] | None = None
        self._fail_reason = ""
        self._step_hooks: list[Callable[[int], None]] = []
        # Sends a completion (the tuner's: it asks for the next segment in the same
        # request); the client's plain completion without one.
        self._completer = completer

    def __repr__(self) -> str:
        v = self.view
        return (
            f"<Segment id={v.id} stage={v.stage} {v.kind.value} #{v.index} "
            f"lr={v.lr:.3g} steps={v.steps}>"
        )

    @property
    def planned_steps(self) -> int:
        """The steps the service asks for (``SegmentView.steps``)."""
        return self.view.steps

    # The view's steps_done is the server's count; this one is tracked here.
    @property  # type: ignore[misc]
    def steps_done(self) -> int:  # type: ignore[override]
        """Steps trained so far, as tracked by :meth:`steps` and :meth:`report`."""
        return self._trained

    @property
    def closed(self) -> bool:
        """True once :meth:`complete` or :meth:`fail` has gone through."""
        return self._closed

    def lr_at(self, step: int) -> float:
        """The LR of step ``step`` (1-based): ``lr`` unless the segment is a decay."""
        return self.view.lr_at(step)

    def add_step_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(step)`` before :meth:`steps` yields each step (the checkpointers
        use it to set a decaying segment's LR every step)."""
        self._step_hooks.append(hook)

    # The view's steps is planned_steps here; steps() iterates them.
    def steps(self) -> Iterator[int]:  # type: ignore[misc, override]
        """Yield the step numbers 1..planned_steps; stop early once :attr:`should_stop`."""
        self._tracked = True
        for step in range(1, self.view.steps + 1):
            if self.should_stop:
                return
            # Counted as trained when handed out: a loop that breaks after training
            # this step never resumes the iterator.
            self._trained = max(self._trained, step)
            for hook in self._step_hooks:
                hook(step)
            yield step

    def report_due(self, step: int) -> bool:
        """Whether the service wants the metric at this step (1-based in the segment)."""
        return step % self.view.report_every == 0 or step == self.view.steps

    def report(self, step: int, value: SupportsFloat, metric: Metric | str | None = None) -> None:
        """Queue an observation of this segment; returns at once, never touches the network.

        Args:
            step: Steps done within the segment (1-based; 0 = before the first step).
            value: The loss. A tensor works too (``float()`` is applied, which waits for
                a GPU tensor). NaN or infinite means diverged.
            metric: Which loss this is; the segment's ``metric`` by default.
        """
        number = float(value)
        if metric is not None:
            metric = Metric(metric)
        if self._closed:
            raise RuntimeError(f"segment {self.view.id} is already {self.view.status.value}")
        if self._checks_divergence and (metric is None or metric == self.view.metric):
            limit = self.view.stop_above
            if not math.isfinite(number) or (limit is not None and number > limit):
                self.should_stop = True
        self._tracked = True
        self._trained = max(self._trained, step)
        if self.fallback:
            return
        if not keeps_step(step, self.view.steps, self.view.report_every):
            # A segment longer than MAX_SEGMENT_POINTS steps stores every stride-th step
            # (and its report cadence) only: a report between them is not sent.
            self.thinned += 1
            return
        self._sender.put(self, step, number, metric)

    def complete(self, steps_done: int | None = None) -> SegmentView:
        """Send this segment's queued observations, then mark it completed.

        ``steps_done`` defaults to the steps tracked by :meth:`steps` and :meth:`report`
        (or, if neither was used, to the service's own assumption that all were trained).
        Calling it again returns the same answer without a request.

        When the observations or the completion cannot be delivered (the service is
        unreachable after retries), the observations stay buffered and the segment stays
        open here; the tuner completes it before asking for the next segment. The error
        is raised only if the tuner was made with ``raise_on_error=True``.
        """
        if self._closed:
            return self.view
        self._closing = "complete"
        if steps_done is None and self._tracked:
            steps_done = self._trained
        return self._close(steps_done)

    def fail(self, reason: str = "") -> SegmentView:
        """Send this segment's queued observations, then mark it failed (same error
        handling as :meth:`complete`)."""
        if self._closed:
            return self.view
        self._closing = "fail"
        self._fail_reason = reason
        return self._close(None)

    def _close(self, steps_done: int | None) -> SegmentView:
        if self.fallback:
            self._closed = True
            return self.view
        taken: list[ObservationIn] | None = None
        try:
            if self._closing == "complete":
                # The last reports ride on the completion: one request, not two.
                taken = self._sender.take(self.view.id, self._flush_timeout)
            if taken is None:
                self._sender.flush(self.view.id, self._flush_timeout)
            if self._closing == "fail":
                self.view = self._client.fail_segment(self.view.id, self._fail_reason)
            else:
                self.view = self._complete(steps_done, taken)
        except (TransportError, ServerError) as exc:
            if taken:
                self._sender.give_back(self, taken)
            if self._raise_on_error:
                raise
            logger.warning(
                "could not %s segment %d (the service is unreachable: %s); it will be "
                "sent when the service is back",
                self._closing,
                self.view.id,
                exc,
            )
            return self.view
        self._closed = True
        return self.view

    def _complete(self, steps_done: int | None, taken: list[ObservationIn] | None) -> SegmentView:
        try:
            if self._completer is not None:
                return self._completer(self.view.id, steps_done, taken or ())
            return self._client.complete_segment(self.view.id, steps_done, taken or ())
        except ConflictError as exc:
            if not taken or exc.slug != "observation-conflict":
                raise
        # A carried point contradicts a stored one (a restarted job re-reporting a step
        # with another value): the whole request was refused. Send the points the usual
        # way, which stores the rest and drops the conflicting ones, then complete.
        self._sender.give_back(self, taken)
        taken.clear()  # the sender's again: the caller must not give them back twice
        self._sender.flush(self.view.id, self._flush_timeout)
        return self._client.complete_segment(self.view.id, steps_done)

    def _retry_close(self) -> bool:
        """Send a completion (or failure) that could not be delivered before, or complete
        a segment the job left open. True once the segment is closed."""
        if self._closing == "fail":
            self.fail(self._fail_reason)
        else:
            self.complete()
        return self._closed
