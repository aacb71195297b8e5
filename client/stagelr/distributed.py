"""Several processes, one plan: stagelr under ``torch.distributed`` (DDP and friends).

Only rank 0 talks to the service. Every rank gets the same plan (LR, steps, restore and
save names, when to stop) by broadcast, so every rank restores the same checkpoint,
trains the same number of steps at the same LR and stops at the same step::

    import stagelr
    from stagelr.torch import Checkpointer, DistributedTuner

    torch.distributed.init_process_group("gloo")        # or nccl; before or after
    model = DDP(net)
    checkpoints = Checkpointer(model, optimizer)        # each rank keeps its own copies
    tuner = DistributedTuner(stagelr.Tuner(url, study="ddp-run", lr_min=1e-4, lr_max=1.0,
                                           total_steps=10_000))
    with tuner:
        for segment in tuner:                           # collective: every rank calls it
            checkpoints.begin(segment)
            for step in segment.steps():
                train_step()
                if segment.report_due(step):
                    segment.report(step, val_loss)      # collective: the mean is sent
            checkpoints.end(segment)
            segment.complete()                          # collective

The wrapped :class:`stagelr.Tuner` may be built on every rank: it opens no connection
and starts no thread until it is used, and only rank 0 uses it. The rank is read when
the first segment is asked for, so the tuner can be made before
``init_process_group`` (PyTorch Lightning and the Hugging Face Trainer start the group
inside ``fit``/``train``). Without an initialized process group it is a one-process job
and the wrapper only delegates.

:meth:`DistributedTuner.next_segment`, :meth:`DistributedSegment.report`,
:meth:`DistributedSegment.complete` and :meth:`DistributedSegment.fail` are collective:
every rank must call them, in the same order. When rank 0's call to the service fails,
rank 0 raises the error and every other rank raises :class:`RankZeroError`, so that no
rank is left waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, SupportsFloat

import torch
import torch.distributed as dist

from ._exceptions import StagelrError
from ._segment import ViewAttributes
from .models import (
    Metric,
    SegmentView,
    StudyStatus,
    StudyView,
)

if TYPE_CHECKING:
    from ._segment import Segment
    from ._tuner import Tuner

__all__ = ["DistributedSegment", "DistributedTuner", "RankZeroError"]


class RankZeroError(StagelrError):
    """Rank 0 failed to reach the service (it raised the real error); this rank stops too."""


@dataclass(frozen=True)
class _Group:
    """Where the plan travels: the process group, this rank, and rank 0's global rank."""

    group: dist.ProcessGroup | None
    rank: int
    size: int
    src: int

    @classmethod
    def current(cls, group: dist.ProcessGroup | None) -> _Group:
        if not (dist.is_available() and dist.is_initialized()):
            return cls(None, 0, 1, 0)
        return cls(
            group,
            dist.get_rank(group),
            dist.get_world_size(group),
            dist.get_global_rank(group, 0) if group is not None else 0,
        )

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def _device(self) -> torch.device:
        # NCCL moves only CUDA tensors; every other backend here takes CPU ones.
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled: for small plans, not tensors)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=self.src, group=self.group)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (NaN anywhere gives NaN: diverged)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return float(tensor.item()) / self.size

    def flag(self, value: bool) -> bool:
        """Rank 0's boolean on every rank (a one-element tensor, no pickling)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([1 if value else 0], dtype=torch.int32, device=self._device)
        dist.broadcast(tensor, src=self.src, group=self.group)
        return bool(tensor.item())


@dataclass(frozen=True)
class _Failed:
    """What rank 0 broadcasts instead of an answer when its call raised."""

    error: str


def _leader_call(group: _Group, call: Callable[[], Any]) -> Any:
    """Run ``call`` on rank 0 and hand its result to every rank; a failure reaches all."""
    result: Any = None
    failure: BaseException | None = None
    if group.leader:
        try:
            result = call()
        except Exception as exc:  # every rank must learn of it, then rank 0 re-raises
            failure = exc
            result = _Failed(f"{type(exc).__name__}: {exc}")
    shared = group.share(result)
    if failure is not None:
        raise failure
    if isinstance(shared, _Failed):
        raise RankZeroError(f"rank 0 could not reach the stagelr service: {shared.error}")
    return shared


class DistributedSegment(ViewAttributes):
    """A segment as every rank sees it: the same plan, and collective reports.

    The plan's fields read as attributes (``segment.lr``, ``segment.restore``...), as on
    :class:`stagelr.Segment`. Rank 0 holds the real segment and sends what is reported.
    """

    def __init__(
        self,
        view: SegmentView,
        *,
        inner: Segment | None,
        group: _Group,
        reduce: Literal["mean", "none"],
    ) -> None:
        self.view = view
        self._inner = inner
        self._group = group
        self._reduce = reduce
        self._stop = False
        self._trained = 0
        self._closed = False
        self._step_hooks: list[Callable[[int], None]] = []

    def __repr__(self) -> str:
        v = self.view
        return (
            f"<DistributedSegment rank={self._group.rank} id={v.id} stage={v.stage} "
            f"{v.kind.value} #{v.index} lr={v.lr:.3g} steps={v.steps}>"
        )

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return self._group.rank

    @property
    def planned_steps(self) -> int:
        """The steps the service asks for."""
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

    @property
    def should_stop(self) -> bool:
        """True once the segment should end early; the same on every rank.

        With several ranks it changes only inside :meth:`report`, where rank 0's verdict
        (its divergence check, or the service's ``stop``) is broadcast: a rank deciding
        on its own would leave the others waiting in the next gradient all-reduce.
        """
        if self._group.size == 1 and self._inner is not None:
            return self._inner.should_stop
        return self._stop

    def lr_at(self, step: int) -> float:
        """The LR of step ``step`` (1-based): ``lr`` unless the segment is a decay."""
        return self.view.lr_at(step)

    def add_step_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(step)`` before :meth:`steps` yields each step."""
        self._step_hooks.append(hook)

    # The view's steps is planned_steps here; steps() iterates them.
    def steps(self) -> Iterator[int]:  # type: ignore[misc, override]
        """Yield 1..planned_steps; stop early once :attr:`should_stop`."""
        for step in range(1, self.view.steps + 1):
            if self.should_stop:
                return
            self._trained = max(self._trained, step)
            for hook in self._step_hooks:
                hook(step)
            yield step

    def report_due(self, step: int) -> bool:
        """Whether the service wants the metric at this step (1-based in the segment)."""
        return step % self.view.report_every == 0 or step == self.view.steps

    def report(self, step: int, value: SupportsFloat, metric: Metric | str | None = None) -> None:
        """Report a loss; collective. Rank 0 queues the mean over ranks (``reduce="mean"``)
        or its own value (``reduce="none"``), then every rank learns whether to stop."""
        number = float(value)
        if self._reduce == "mean":
            number = self._group.mean(number)
        self._trained = max(self._trained, step)
        stop = False
        if self._inner is not None:
            self._inner.report(step, number, metric)
            stop = self._inner.should_stop
        self._stop = self._group.flag(stop)

    def complete(self, steps_done: int | None = None) -> SegmentView:
        """Mark the segment trained (rank 0 sends it); collective."""
        if steps_done is None:
            steps_done = self._trained or None
        return self._close(lambda inner: inner.complete(steps_done))

    def fail(self, reason: str = "") -> SegmentView:
        """Mark the segment failed (rank 0 sends it); collective."""
        return self._close(lambda inner: inner.fail(reason))

    def _close(self, action: Callable[[Segment], SegmentView]) -> SegmentView:
        if self._closed:
            return self.view
        inner = self._inner
        view: SegmentView = _leader_call(
            self._group, (lambda: action(inner)) if inner is not None else (lambda: None)
        )
        self.view = view
        self._closed = True
        return view


class DistributedTuner:
    """Wrap a :class:`stagelr.Tuner` so that a job of several processes shares its plan.

    Args:
        tuner: The tuner, made the same way on every rank; only rank 0 uses it.
        reduce: ``"mean"`` (default): a reported loss is averaged over the ranks before
            rank 0 sends it (each rank's shard of the validation set counts);
            ``"none"``: rank 0's own value is sent and the others' are ignored.
        group: The process group; the default (world) group when None.
    """

    def __init__(
        self,
        tuner: Tuner,
        *,
        reduce: Literal["mean", "none"] = "mean",
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if reduce not in ("mean", "none"):
            raise ValueError(f"reduce must be 'mean' or 'none', not {reduce!r}")
        self.tuner = tuner
        self.reduce: Literal["mean", "none"] = reduce
        self._group_arg = group
        self._group: _Group | None = None
        self._status: StudyStatus | None = None
        self._segment: DistributedSegment | None = None

    @property
    def group(self) -> _Group:
        # Read once, at first use: the process group may start after the tuner is made.
        if self._group is None:
            self._group = _Group.current(self._group_arg)
        return self._group

    @property
    def rank(self) -> int:
        """This process's rank (0 without torch.distributed)."""
        return self.group.rank

    @property
    def world_size(self) -> int:
        """How many processes share the plan (1 without torch.distributed)."""
        return self.group.size

    @property
    def is_leader(self) -> bool:
        """True on rank 0, the one process that talks to the service."""
        return self.group.leader

    @property
    def status(self) -> StudyStatus | None:
        """How the study ended, on every rank, once :meth:`next_segment` returned None."""
        return self._status

    def next_segment(self) -> DistributedSegment | None:
        """The segment to train now, on every rank, or None once the study has ended.

        Collective. A still open segment is completed first, as
        :meth:`stagelr.Tuner.next_segment` does.
        """
        group = self.group
        if self._segment is not None and not self._segment.closed:
            self._segment.complete()

        held: list[Segment] = []  # rank 0's real segment, which reports and completes

        def ask() -> tuple[SegmentView | None, StudyStatus | None]:
            segment = self.tuner.next_segment()
            if segment is None:
                return None, self.tuner.status
            held.append(segment)
            return segment.view, None

        view, status = _leader_call(group, ask)
        if view is None:
            self._segment = None
            self._status = status
            return None
        inner = held[0] if held else None
        self._segment = DistributedSegment(view, inner=inner, group=group, reduce=self.reduce)
        return self._segment

    def __iter__(self) -> Iterator[DistributedSegment]:
        """Yield :meth:`next_segment` until the study ends."""
        while (segment := self.next_segment()) is not None:
            yield segment

    def study(self) -> StudyView:
        """The study as the service has it now; rank 0 only."""
        self._only_leader("study()")
        return self.tuner.study()

    def stop(self) -> StudyView:
        """End the study early; rank 0 only (the others see the end at the next segment)."""
        self._only_leader("stop()")
        return self.tuner.stop()

    def close(self, timeout: float | None = 30.0) -> None:
        """Send what rank 0 has queued, then close; an open segment stays open."""
        self.tuner.close(timeout)

    def _only_leader(self, what: str) -> None:
        if not self.group.leader:
            raise RuntimeError(
                f"{what} talks to the service, which only rank 0 does: call it where "
                "tuner.is_leader"
            )

    def __enter__(self) -> DistributedTuner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
