"""A process's kept copies of study histories, each used only while the database holds
the version it was read at.

Every transaction that writes to a study's stages, segments, observations, forecasts or
outages touches the study first (:mod:`.live`), and the touch raises the study's
``version`` by one. A history read starts with the study's row (always read: the study
record is never kept), so it knows the version the database holds:

- the version of the kept copy: nothing was written since, on any worker or replica,
  and the copy is the history;
- another version: what may have changed is read again. A closed segment never changes
  (no point, forecast, status or heartbeat is written to a segment once it is closed),
  so only the segments from the first one that was open in the copy on, their points
  and forecasts, and the study's stages and outages are read; the closed segments
  before them are kept;
- no copy, or a study that is not the one kept (another ``created_at``: a deleted
  study's id taken again): the whole history is read.

A transaction that stored a decision (:meth:`.live.LiveQueries.close_and_issue`) knows
what it wrote and the version its touch set: once it has committed, a copy at the
version just before is brought forward to it, so the study's next decision finds its
copy current, without reading the history again.

A copy is only ever put or brought forward with what a committed state of the database
holds at that version: the read of a transaction that has not written (a read-only one,
or a write transaction before its first write), or a commit's own writes on top of the
state its touch found.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from .records import (
    ForecastRecord,
    ObservationRecord,
    OutageRecord,
    SegmentRecord,
    StageRecord,
    StudyHistory,
    StudyRecord,
)

__all__ = ["HistoryCache", "KeptHistory", "study_identity"]

#: What tells one study from another, also from one that took its id after it was
#: deleted (SQLite may give a deleted row's id again): id, project, name, creation time.
Identity = tuple[int, int, str, datetime]


def study_identity(study: StudyRecord) -> Identity:
    return (study.id, study.project_id, study.name, study.created_at)


@dataclass(frozen=True, slots=True)
class KeptHistory:
    """A study's history without its study record, as read at ``version``."""

    identity: Identity
    version: int
    stages: tuple[StageRecord, ...]
    segments: tuple[SegmentRecord, ...]
    observations: Mapping[int, tuple[ObservationRecord, ...]]
    forecasts: Mapping[int, ForecastRecord]
    outages: tuple[OutageRecord, ...]

    @property
    def rows(self) -> int:
        """Its size, in rows: what the cache's budget counts."""
        points = sum(len(v) for v in self.observations.values())
        return 1 + len(self.stages) + len(self.segments) + points + len(self.forecasts)

    @classmethod
    def of(cls, history: StudyHistory, version: int) -> KeptHistory:
        return cls(
            identity=study_identity(history.study),
            version=version,
            stages=tuple(history.stages),
            segments=tuple(history.segments),
            observations={k: tuple(v) for k, v in history.observations.items()},
            forecasts=dict(history.forecasts),
            outages=tuple(history.outages),
        )

    def history(self, study: StudyRecord) -> StudyHistory:
        """The history with ``study`` (fresh containers: the caller may change them)."""
        return StudyHistory(
            study=study,
            stages=list(self.stages),
            segments=list(self.segments),
            observations={k: list(v) for k, v in self.observations.items()},
            forecasts=dict(self.forecasts),
            outages=list(self.outages),
        )

    def tail_seq(self) -> int:
        """The first segment that may have changed since: the first one open here, or
        (none open) the one after the last."""
        for segment in self.segments:
            if segment.status.value == "open":
                return segment.seq
        return self.segments[-1].seq + 1 if self.segments else 0


#: How many rows (stages, segments, points, forecasts) a process keeps, in all: about
#: 60 MB of records; the load benchmark's 300 studies hold about a third of it.
KEPT_ROWS = 1_000_000


class HistoryCache:
    """Study id -> :class:`KeptHistory`, the most recently used ones up to ``rows`` rows
    in all (thread-safe); and the study of each kept segment (a segment's study never
    changes), so that a history asked for by a segment finds its copy before the read."""

    def __init__(self, rows: int = KEPT_ROWS) -> None:
        self._budget = rows
        self._rows = 0
        self._kept: OrderedDict[int, KeptHistory] = OrderedDict()
        self._study_of: dict[int, int] = {}
        self._lock = threading.Lock()
        #: Reads answered by a copy at the database's version (nothing read but the
        #: study's row), counted for tests.
        self.used = 0

    def study_of(self, segment_id: int) -> int | None:
        """The study of a kept segment (None: no copy holds it). A hint only: a deleted
        study's segment id may have been taken again; the read checks the study."""
        return self._study_of.get(segment_id)

    def peek(self, study_id: int) -> KeptHistory | None:
        """The copy of that study id, whatever its version and identity (the caller
        checks both against what it reads)."""
        with self._lock:
            return self._kept.get(study_id)

    def _set(self, study_id: int, kept: KeptHistory) -> None:
        self._drop(study_id)
        rows = kept.rows
        if rows > self._budget:
            return
        self._kept[study_id] = kept
        self._rows += rows
        for segment in kept.segments:
            self._study_of[segment.id] = study_id
        while self._rows > self._budget:
            self._drop(next(iter(self._kept)))

    def get(self, study_id: int, identity: Identity) -> KeptHistory | None:
        """The copy of that study, whatever its version; None if none (or another
        study's, which is dropped)."""
        with self._lock:
            kept = self._kept.get(study_id)
            if kept is None:
                return None
            if kept.identity != identity:
                self._drop(study_id)
                return None
            self._kept.move_to_end(study_id)
            return kept

    def put(self, study_id: int, kept: KeptHistory) -> None:
        """Keep ``kept``, unless a copy of a later version of the same study is kept."""
        with self._lock:
            current = self._kept.get(study_id)
            if (
                current is not None
                and current.identity == kept.identity
                and current.version > kept.version
            ):
                return
            self._set(study_id, kept)

    def advance(
        self, study_id: int, before: int, change: Callable[[KeptHistory], KeptHistory | None]
    ) -> None:
        """Replace the copy at version ``before`` by ``change(copy)`` (a commit's writes
        on top of it; None: drop it); a copy of another version is left as it is."""
        with self._lock:
            current = self._kept.get(study_id)
            if current is None or current.version != before:
                return
            after = change(current)
            if after is None:
                self._drop(study_id)
            else:
                self._set(study_id, after)

    def drop(self, study_id: int) -> None:
        with self._lock:
            self._drop(study_id)

    def _drop(self, study_id: int) -> None:
        old = self._kept.pop(study_id, None)
        if old is not None:
            self._rows -= old.rows
            for segment in old.segments:
                self._study_of.pop(segment.id, None)

    def __len__(self) -> int:
        return len(self._kept)
