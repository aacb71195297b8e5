"""A study's learning-rate schedule as a portable file: the LR of every trajectory step.

Once a study has run, its trajectory (the kept training segments, search excluded) is a
schedule anyone can train with again, without the service: another seed, the production
run, a paper's table. This module holds that schedule's data and reading it; it needs
only pydantic (no torch). :class:`stagelr.torch.ScheduleLR` turns it into a PyTorch LR
scheduler::

    from stagelr.schedule import Schedule

    schedule = Schedule.load("digits.schedule.json")   # `stagelr schedule 7 -o ...`
    schedule = Schedule.fetch("http://127.0.0.1:8321", 7)   # or from a live server
    schedule.lr(0), schedule.lr(schedule.steps - 1)

The file (``GET /v1/studies/{id}/schedule``) is JSON, versioned by ``format`` and
``version``. It is piecewise: one piece per trained stage, each with its shape
(``constant`` for a held LR, the decay's ``one_minus_sqrt``, ``linear`` or ``cosine``),
and the provenance of the study that found it. A study that searched spent steps on
candidates that are not in the schedule: ``provenance.searched`` says so, and
``provenance.search_steps`` counts them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from bisect import bisect_right
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .models import LRShape, lr_at

__all__ = [
    "SCHEDULE_FORMAT",
    "SCHEDULE_VERSION",
    "Schedule",
    "ScheduleFormatError",
    "SchedulePiece",
    "ScheduleProvenance",
    "ScheduleStage",
]

#: The ``format`` field of every schedule file.
SCHEDULE_FORMAT: Final = "stagelr.schedule"
#: The version this client writes and reads. A reader refuses a newer one by name.
SCHEDULE_VERSION: Final = 1

#: How a stage reached its LR: chosen by a search, trained on at the previous stage's LR
#: (the hold planner, or a stage too short to search), or the final decay.
StageKind = Literal["search", "train_on", "decay"]


class _Wire(BaseModel):
    # As the wire models: unknown fields refused, values frozen, NaN as a string.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class ScheduleFormatError(ValueError):
    """A file that is not a stagelr schedule, or one of a newer format version."""


class SchedulePiece(_Wire):
    """One stretch of the schedule: trajectory steps ``start`` to ``start + steps - 1``.

    Step ``t`` of the piece's range trains at
    ``stagelr.models.lr_at(lr, lr_end, shape, t - start + 1, shape_steps)``: the LR moves
    from ``lr`` towards ``lr_end`` over ``shape_steps`` steps (the segment as planned; a
    stage stopped early trains fewer ``steps``). ``constant`` holds ``lr``.
    """

    start: int = Field(ge=0, description="First trajectory step of the piece (from 0).")
    steps: int = Field(ge=1, description="Trajectory steps in the piece.")
    lr: float = Field(gt=0, description="The LR of the piece's first step.")
    lr_end: float | None = Field(
        default=None, ge=0, description="The LR the shape moves towards (None: constant)."
    )
    shape: LRShape = LRShape.constant
    shape_steps: int = Field(ge=1, description="The steps the shape is drawn over.")
    stage: int = Field(ge=0, description="The study stage the piece trained in.")
    kind: StageKind = Field(description="How the stage got its LR.")

    @model_validator(mode="after")
    def _check(self) -> SchedulePiece:
        if self.shape is not LRShape.constant and self.lr_end is None:
            raise ValueError(f"a {self.shape.value} piece needs lr_end")
        return self

    @property
    def end(self) -> int:
        """The first step after the piece."""
        return self.start + self.steps

    def lr_at(self, step: int) -> float:
        """The LR of trajectory step ``step`` (inside the piece)."""
        return lr_at(self.lr, self.lr_end, self.shape, step - self.start + 1, self.shape_steps)


class ScheduleStage(_Wire):
    """A stage of the study the schedule came from."""

    index: int
    start_step: int
    kind: StageKind
    candidates: int = Field(description="LRs its search tried (0: it did not search).")
    chosen_lr: float | None = None


class ScheduleProvenance(_Wire):
    """Where the schedule came from."""

    study_id: int
    project: str
    name: str
    status: str = Field(description="The study's status when exported.")
    config: dict[str, Any] = Field(description="The study's resolved config.")
    stages: list[ScheduleStage]
    searched: bool = Field(
        description="Whether the study searched: the schedule is then its kept trajectory "
        "only, not the candidates' steps."
    )
    search_steps: int = Field(description="Steps the study spent outside the schedule.")
    charged_steps: int = Field(description="Every step the study trained.")
    exported_at: datetime
    server_version: str


class Schedule(_Wire):
    """A study's trajectory: the LR of each of its ``steps`` steps, piece by piece."""

    format: Literal["stagelr.schedule"] = SCHEDULE_FORMAT
    version: Literal[1] = SCHEDULE_VERSION
    steps: int = Field(ge=0, description="Trajectory steps (the pieces cover 0..steps-1).")
    pieces: list[SchedulePiece]
    provenance: ScheduleProvenance

    @model_validator(mode="after")
    def _contiguous(self) -> Schedule:
        at = 0
        for piece in self.pieces:
            if piece.start != at:
                raise ValueError(
                    f"piece of stage {piece.stage} starts at step {piece.start}, "
                    f"not {at}: the pieces must follow each other"
                )
            at = piece.end
        if at != self.steps:
            raise ValueError(f"the pieces cover {at} steps, not steps = {self.steps}")
        return self

    # ------------------------------------------------------------------ reading

    def lr(self, step: int) -> float:
        """The LR of trajectory step ``step`` (from 0). IndexError outside the schedule."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} is outside the schedule's 0..{self.steps - 1}")
        starts = [p.start for p in self.pieces]
        return self.pieces[bisect_right(starts, step) - 1].lr_at(step)

    def lrs(self) -> list[float]:
        """The LR of every step, in order."""
        return [p.lr_at(t) for p in self.pieces for t in range(p.start, p.end)]

    def to_csv(self) -> str:
        """One row per step: ``step,lr,stage,kind``."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "lr", "stage", "kind"])
        for p in self.pieces:
            for t in range(p.start, p.end):
                writer.writerow([t, repr(p.lr_at(t)), p.stage, p.kind])
        return out.getvalue()

    # ------------------------------------------------------------------ files

    @classmethod
    def loads(cls, text: str | bytes) -> Schedule:
        """Parse a schedule file's text; ScheduleFormatError for another format or a
        newer version."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ScheduleFormatError(f"not a JSON schedule file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
            raise ScheduleFormatError(
                f'not a stagelr schedule (no "format": "{SCHEDULE_FORMAT}"): write one '
                "with `stagelr schedule STUDY -o FILE.json`"
            )
        version = data.get("version")
        if not isinstance(version, int) or version > SCHEDULE_VERSION:
            raise ScheduleFormatError(
                f"schedule format version {version!r} is newer than this client reads "
                f"({SCHEDULE_VERSION}): upgrade stagelr"
            )
        return cls.model_validate(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read a schedule file (``stagelr schedule STUDY -o FILE.json``)."""
        return cls.loads(Path(path).read_bytes())

    def dumps(self) -> str:
        return self.model_dump_json(indent=1) + "\n"

    def dump(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.dumps(), encoding="utf-8")

    @classmethod
    def fetch(cls, base_url: str, study_id: int, *, token: str | None = None) -> Schedule:
        """The schedule of study ``study_id`` from a running server."""
        from ._client import Client

        with Client(base_url, token=token) as client:
            return client.get_schedule(study_id)
