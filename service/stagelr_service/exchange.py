"""Export and import of studies as JSON lines (``stagelr export`` / ``stagelr import``).

A file is a header line, then one line per study with everything the tuner and a replay
need: the resolved config, status, stages, segments with their observations (NaN and
infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``) and forecasts, the
outages its job reported (they shortened its plan), whether it is archived, and the
stored times. Row ids are not exported: segments are keyed by their position
``seq`` in the study, stages by their index, studies by (project, name). The format is
versioned by the header (:data:`FORMAT`, :data:`VERSION`); docs/replay.md specifies it.

Import is idempotent by (project, name): a study that is already stored exactly as the
file has it is left alone ("unchanged"); one stored with different content is a conflict,
reported and skipped, never overwritten (nothing of it is written). Each study is imported
in its own transaction: a failure leaves the others in place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stagelr.models import Metric, SegmentDecision, SegmentStatus, StudyStatus

from . import __version__
from .errors import InputError
from .store import Repository, Store
from .store.records import StudyHistory
from .tuner import LEGACY_CONFIG, ResolvedConfig, resolve

__all__ = [
    "FORMAT",
    "VERSION",
    "ExportHeader",
    "ExportedForecast",
    "ExportedOutage",
    "ExportedSegment",
    "ExportedStage",
    "ExportedStudy",
    "ImportResult",
    "export_studies",
    "exported_study",
    "import_studies",
]

#: The format name in the header line.
FORMAT = "stagelr-studies"
#: The format version this stagelr writes and reads. Version 2 added a segment's
#: ``lr_end``/``lr_shape`` and the planner's config fields; version 3 the range test
#: (segment kind ``range_test``, shape ``exponential``, config ``lr_bounds`` and
#: ``range_test_*``); version 4 the config's ``initial_design``; version 5 a study's
#: priors (config ``family``, ``prior_studies``, ``warm_start``; the study's stored prior
#: summary, ``priors``); version 6 the config's ``probe`` (segment shape ``wsd``,
#: forecast ``window_end``); version 7 a study's ``outages`` and ``archived_at``; version
#: 8 a warm start's ``start_reading`` (config ``warm_start``); version 9 the config's
#: ``finalists``; version 10 the config's ``pretrained`` and ``horizon_scale``. An older
#: file reads with :data:`stagelr_service.tuner.LEGACY_CONFIG` filled into its configs
#: where they lack a field (a version 1 file's segments are constant-LR); its studies have
#: no outages and are not archived, as that stagelr stored them.
VERSION = 10
#: The study fields a file of an older version cannot hold (they came with this one).
_SINCE_VERSION_7 = frozenset({"outages", "archived_at"})


class _Line(BaseModel):
    # Strict about unknown fields (a typo or a newer format is an error, not data loss);
    # NaN/inf written as strings, so every line is standard JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class ExportHeader(_Line):
    """The first line of a file."""

    format: Literal["stagelr-studies"]
    version: int = Field(ge=1)
    generator: str = Field(description="The stagelr that wrote the file.")


class ExportedForecast(_Line):
    model: str
    prediction: float | None
    std: float | None
    status: str
    params: dict[str, float]
    n_points: int
    objective: float | None
    created_at: datetime


class ExportedSegment(SegmentDecision):
    """A segment: its decision (every field of :class:`stagelr.models.SegmentDecision`),
    its state, its observations and its forecast."""

    seq: int = Field(ge=0)
    status: SegmentStatus
    steps_done: int | None
    fail_reason: str | None
    created_at: datetime
    completed_at: datetime | None
    heartbeat_at: datetime | None
    #: (step, metric, value), sorted by step then metric
    observations: list[tuple[int, Metric, float]]
    forecast: ExportedForecast | None

    @model_validator(mode="after")
    def _placed(self) -> ExportedSegment:
        for name in ("stage", "index"):
            if getattr(self, name) < 0:
                raise ValueError(f"a segment's {name} cannot be negative")
        return self


#: What an exported segment takes from its stored record as it is.
_RECORD_FIELDS = tuple(
    name for name in ExportedSegment.model_fields if name not in ("observations", "forecast")
)


class ExportedStage(_Line):
    index: int = Field(ge=0)
    tau: int
    tau_explore: int
    start_step: int
    status: Literal["searching", "training", "completed"]
    chosen_lr: float | None


class ExportedOutage(_Line):
    """Steps the study's job trained on fallback segments while the service was away."""

    key: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    steps: int = Field(ge=1)
    after_seq: int | None = Field(
        ge=0, description="Seq of the last segment handed out before it (None: before any)."
    )
    reported_at: datetime


class ExportedStudy(_Line):
    project: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    status: StudyStatus
    status_reason: str | None
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    stages: list[ExportedStage]
    segments: list[ExportedSegment]
    priors: dict[str, Any] | None = Field(
        default=None, description="The prior summary stored when the study was created."
    )
    archived_at: datetime | None = Field(
        default=None, description="When the study was archived (None: it is not)."
    )
    outages: list[ExportedOutage] = Field(
        default_factory=list,
        description="The outages its job reported, in the order reported; they shortened "
        "its plan, so a replay needs them.",
    )


def exported_study(history: StudyHistory) -> ExportedStudy:
    """One stored study in the export format."""
    study = history.study
    segments = []
    for seg in history.segments:
        fc = history.forecasts.get(seg.id)
        segments.append(
            ExportedSegment(
                **{name: getattr(seg, name) for name in _RECORD_FIELDS},
                observations=[
                    (o.step, o.metric, o.value) for o in history.observations.get(seg.id, ())
                ],
                forecast=None
                if fc is None
                else ExportedForecast(
                    model=fc.model,
                    prediction=fc.prediction,
                    std=fc.std,
                    status=fc.status,
                    params=dict(fc.params),
                    n_points=fc.n_points,
                    objective=fc.objective,
                    created_at=fc.created_at,
                ),
            )
        )
    return ExportedStudy(
        project=study.project,
        name=study.name,
        status=study.status,
        status_reason=study.status_reason,
        config=study.config,
        created_at=study.created_at,
        updated_at=study.updated_at,
        stages=[
            ExportedStage(
                index=st.index,
                tau=st.tau,
                tau_explore=st.tau_explore,
                start_step=st.start_step,
                status=st.status,
                chosen_lr=st.chosen_lr,
            )
            for st in history.stages
        ],
        segments=segments,
        priors=study.priors,
        archived_at=study.archived_at,
        outages=[
            ExportedOutage(
                key=o.key, steps=o.steps, after_seq=o.after_seq, reported_at=o.reported_at
            )
            for o in history.outages
        ],
    )


def header_line() -> str:
    header = ExportHeader(
        format="stagelr-studies", version=VERSION, generator=f"stagelr {__version__}"
    )
    return header.model_dump_json() + "\n"


def export_studies(store: Store, study_ids: Iterable[int], out: IO[str]) -> int:
    """Write the header and one line per study (each read in its own read-only
    transaction) to ``out``; returns the number of studies written."""
    out.write(header_line())
    written = 0
    for study_id in study_ids:
        with store.transaction(read_only=True) as repo:
            history = repo.history(study_id)
        if history is None:
            continue  # deleted since it was selected
        out.write(exported_study(history).model_dump_json() + "\n")
        written += 1
    return written


@dataclass
class ImportResult:
    """What an import did, study by study."""

    imported: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: "project/name: why" for each study stored with other content (skipped)
    conflicts: list[str] = field(default_factory=list)


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}" for e in exc.errors()[:5]
    )


def read_lines(lines: Iterable[str]) -> Iterator[tuple[int, ExportedStudy]]:
    """Check the header, then parse each study line; InputError names the line."""
    numbered = ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise InputError("the file is empty: expected a stagelr export (stagelr export)")
    try:
        header = ExportHeader.model_validate_json(first[1])
    except ValidationError as exc:
        raise InputError(
            f"line {first[0]} is not a {FORMAT} header ({_errors(exc)}): is this a file "
            "written by `stagelr export`?"
        ) from None
    if header.version > VERSION:
        raise InputError(
            f"the file is {FORMAT} version {header.version}, written by {header.generator}; "
            f"this stagelr reads version {VERSION}: upgrade stagelr to import it"
        )
    for number, line in numbered:
        try:
            study = ExportedStudy.model_validate_json(line)
        except ValidationError as exc:
            raise InputError(f"line {number}: not a valid study ({_errors(exc)})") from None
        newer = sorted(_SINCE_VERSION_7 & study.model_fields_set)
        if header.version < 7 and newer:
            raise InputError(
                f"line {number}: a version {header.version} file cannot hold "
                f"{', '.join(newer)} (version 7 added them): fix the header's version"
            )
        if header.version < VERSION:
            study = study.model_copy(update={"config": {**LEGACY_CONFIG, **study.config}})
        _check(study, number)
        yield number, study


def _check(study: ExportedStudy, number: int) -> None:
    """What the schema cannot say: the config resolves, seqs and stages are consistent."""
    where = f"line {number} ({study.project}/{study.name})"
    try:
        # each field's bounds, as a request's (the warm start is the server's own)
        resolve({k: v for k, v in study.config.items() if k != "warm_start"})
        ResolvedConfig.stored(study.config)  # every field there
    except ValidationError as exc:
        raise InputError(f"{where}: the config is invalid ({_errors(exc)})") from None
    seqs = [s.seq for s in study.segments]
    if seqs != list(range(len(seqs))):
        raise InputError(f"{where}: segment seqs must run 0, 1, 2, ... in order")
    stages = {st.index for st in study.stages}
    missing = sorted({s.stage for s in study.segments} - stages)
    if missing:
        raise InputError(f"{where}: segments refer to stage {missing[0]}, which is not listed")
    for seg in study.segments:
        if not math.isfinite(seg.lr):
            raise InputError(f"{where}: segment {seg.seq} has a non-finite lr")
    keys = [o.key for o in study.outages]
    if len(set(keys)) != len(keys):
        raise InputError(f"{where}: an outage key is listed twice")
    for outage in study.outages:
        if outage.after_seq is not None and outage.after_seq >= len(seqs):
            raise InputError(
                f"{where}: outage {outage.key!r} follows segment {outage.after_seq}, which "
                "is not listed"
            )


def _write(store: Store, study: ExportedStudy) -> tuple[str, str | None]:
    """Import one study in one transaction: ("imported" | "unchanged" | "conflict", why)."""
    with store.transaction() as repo:
        existing = repo.find_study(study.project, study.name)
        if existing is None:
            project = repo.get_or_create_project(study.project)
            record = repo.insert_study_row(
                project.id,
                study.name,
                config=study.config,
                status=study.status,
                status_reason=study.status_reason,
                created_at=study.created_at,
                updated_at=study.updated_at,
                priors=study.priors,
                archived_at=study.archived_at,
            )
            if record is not None:
                _write_children(repo, record.id, study)
                return "imported", None
            existing = repo.find_study(study.project, study.name)  # a racing import won
            assert existing is not None
        history = repo.history(existing.id)
        assert history is not None
        stored = exported_study(history)
    if stored.model_dump_json() == study.model_dump_json():
        return "unchanged", None
    differs = [
        name for name in ExportedStudy.model_fields if getattr(stored, name) != getattr(study, name)
    ]
    return "conflict", f"stored with other content (differs in: {', '.join(differs) or 'values'})"


def _write_children(repo: Repository, study_id: int, study: ExportedStudy) -> None:
    stage_ids = repo.insert_stage_rows(
        study_id,
        [st.model_dump(mode="python") for st in study.stages],
    )
    segment_ids = repo.insert_segment_rows(
        study_id,
        [
            {
                **seg.model_dump(mode="python", exclude={"stage", "observations", "forecast"}),
                "stage_id": stage_ids[seg.stage],
            }
            for seg in study.segments
        ],
    )
    repo.insert_observation_rows(
        (segment_ids[seg.seq], step, metric, value)
        for seg in study.segments
        for step, metric, value in seg.observations
    )
    repo.insert_forecast_rows(
        [
            {**seg.forecast.model_dump(mode="python"), "segment_id": segment_ids[seg.seq]}
            for seg in study.segments
            if seg.forecast is not None
        ]
    )
    repo.insert_outage_rows(study_id, [o.model_dump(mode="python") for o in study.outages])


def import_studies(store: Store, lines: Iterable[str]) -> ImportResult:
    """Import every study of an export file's lines into ``store``; see the module."""
    result = ImportResult()
    for _, study in read_lines(lines):
        key = f"{study.project}/{study.name}"
        outcome, why = _write(store, study)
        if outcome == "imported":
            result.imported.append(key)
        elif outcome == "unchanged":
            result.unchanged.append(key)
        else:
            result.conflicts.append(f"{key}: {why}")
    return result


def run_export(url: str, selection: Any, output: str) -> int:
    """``stagelr export``: the selected studies to ``output`` (``-``: stdout); exit status."""
    import sys

    from .replay.batch import select_studies

    with Store(url) as store:
        store.check_schema()
        keys = select_studies(store, selection)
        if output == "-":
            written = export_studies(store, (k[0] for k in keys), sys.stdout)
        else:
            with open(output, "w", encoding="utf-8", newline="\n") as handle:
                written = export_studies(store, (k[0] for k in keys), handle)
    print(f"stagelr export: {written} studies written to {output}", file=sys.stderr)
    return 0


def run_import(url: str, path: str) -> int:
    """``stagelr import``: load a file; exit status 1 when a study conflicted."""
    import sys

    with Store(url) as store:
        store.check_schema()
        with open(path, encoding="utf-8") as handle:
            result = import_studies(store, handle)
        where = store.safe_url
    for conflict in result.conflicts:
        print(f"stagelr import: skipped {conflict}", file=sys.stderr)
    print(
        f"stagelr import: {len(result.imported)} imported, {len(result.unchanged)} already "
        f"stored unchanged, {len(result.conflicts)} skipped as conflicting, into {where}"
    )
    if result.conflicts:
        print(
            "stagelr import: a conflicting study is stored under the same project and name "
            "with other content; it was left as it is (rename it in the file, or import "
            "into another database)",
            file=sys.stderr,
        )
        return 1
    return 0
