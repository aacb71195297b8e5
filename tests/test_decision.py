"""One definition of a segment's decision (:class:`stagelr.models.SegmentDecision`).

Every field of it, whatever it is, is stored and read back by the store, shown by the
segment's view, exported and imported, and compared by replay's verify, without any of
them naming it: the tests run over the fields of the class, so a field added there is
covered here too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from enum import Enum
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from stagelr.models import (
    DECISION_FIELDS,
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    SegmentDecision,
    SegmentKind,
    SegmentView,
    StudyConfig,
    StudyCreate,
    StudyStatus,
)
from stagelr_service import tuner
from stagelr_service.exchange import (
    ExportedSegment,
    export_studies,
    exported_study,
    header_line,
    import_studies,
)
from stagelr_service.history import segment_view
from stagelr_service.replay import verify_history
from stagelr_service.store import SegmentRecord, Store, StudyHistory, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob

#: A study whose segments leave few decision fields at their defaults: a range test (an
#: exponential sweep), candidates that save their end states and drop the others, a
#: divergence threshold, and a final decay.
CONFIG = StudyConfig(
    lr_bounds="range_test",
    range_test_steps=20,
    tau0=60,
    tau_max=120,
    total_steps=300,
    k=3,
    continue_best=True,
    decay_fraction=0.2,
)


def record(service: StudyService, name: str) -> int:
    study, _ = service.create_study(StudyCreate(name=name, config=CONFIG))
    job = SyntheticJob()
    while (segment := service.next_segment(study.id).segment) is not None:
        reports, diverged = job.segment(segment)
        if reports:
            observations = [ObservationIn(step=s, value=v) for s, v in reports]
            service.add_observations(segment.id, ObservationBatch(observations=observations))
        done = reports[-1][0] if diverged or segment.kind is SegmentKind.range_test else None
        service.complete_segment(segment.id, CompleteRequest(steps_done=done))
    return study.id


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, optimizer: Any) -> Iterator[StudyHistory]:
    url = f"sqlite:///{tmp_path_factory.mktemp('decision') / 'store.sqlite3'}"
    migrate(url)
    with Store(url) as store:
        study_id = record(StudyService(store, optimizer), "fields")
        with store.transaction(read_only=True) as repo:
            found = repo.history(study_id)
    assert found is not None
    yield found


def other_value(name: str, value: Any) -> Any:
    """A valid value of decision field ``name`` that differs from ``value``."""
    annotation = SegmentDecision.model_fields[name].annotation
    choices = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if value is None:
        kind = next(c for c in choices if c is not type(None))
        return {str: "other", float: 1.5, int: 1}[kind]
    if isinstance(value, Enum):
        return next(member for member in type(value) if member is not value)
    if isinstance(value, (tuple, list)):
        return (*value, "other")
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):  # down where it can: a stage may not skip one
        return value - 1 if value > 0 else value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    raise AssertionError(f"no other value for {name} = {value!r}: extend other_value")


def test_every_view_of_a_segment_is_a_decision() -> None:
    """The one definition: the tuner's answer, the stored record, the wire view and the
    exported segment all carry SegmentDecision's fields, declared nowhere else."""
    for kind in (tuner.Decision, SegmentRecord, SegmentView, ExportedSegment):
        assert issubclass(kind, SegmentDecision)
        own = set(kind.model_fields) - set(DECISION_FIELDS)
        assert not own & set(DECISION_FIELDS)
        assert list(kind.model_fields)[: len(DECISION_FIELDS)] == list(DECISION_FIELDS)
    assert tuple(SegmentDecision.model_fields) == DECISION_FIELDS


def test_the_study_sets_most_decision_fields(history: StudyHistory) -> None:
    """The study below exercises the fields: each but a few takes two values or more."""
    varied = {
        name for name in DECISION_FIELDS if len({getattr(s, name) for s in history.segments}) > 1
    }
    assert set(DECISION_FIELDS) - varied <= {"metric"}, set(DECISION_FIELDS) - varied


@pytest.mark.parametrize("name", DECISION_FIELDS)
def test_the_view_shows_the_stored_field(history: StudyHistory, name: str) -> None:
    for seg in history.segments:
        view = segment_view(seg)
        assert getattr(view, name) == getattr(seg, name)
        assert view.decision() == seg.decision()
        wire = SegmentView.model_validate_json(view.model_dump_json())
        assert wire.model_dump(mode="json") == view.model_dump(mode="json")


@pytest.mark.parametrize("name", DECISION_FIELDS)
def test_the_field_is_exported_and_imported(
    history: StudyHistory, tmp_path: Path, name: str
) -> None:
    source = tmp_path / "source.sqlite3"
    target = tmp_path / "target.sqlite3"
    for path in (source, target):
        migrate(f"sqlite:///{path}")
    with Store(f"sqlite:///{source}") as store:
        # the recorded study, in a store of its own
        line = exported_study(history).model_dump_json()
        import_studies(store, [header_line(), line])
        out = StringIO()
        export_studies(store, [1], out)
    exported = out.getvalue().splitlines()
    with Store(f"sqlite:///{target}") as store:
        assert import_studies(store, exported).imported == ["default/fields"]
        with store.transaction(read_only=True) as repo:
            imported = repo.history(1)
    assert imported is not None
    assert [getattr(s, name) for s in imported.segments] == [
        getattr(s, name) for s in history.segments
    ]


@pytest.mark.parametrize("name", DECISION_FIELDS)
def test_replay_compares_the_field(history: StudyHistory, optimizer: Any, name: str) -> None:
    assert verify_history(history, optimizer).ok
    seg = history.segments[-1]
    altered = seg.model_copy(update={name: other_value(name, getattr(seg, name))})
    changed = StudyHistory(
        # running: only the decisions are compared, not how the altered study would end
        study=dataclasses.replace(history.study, status=StudyStatus.running),
        stages=history.stages,
        segments=[*history.segments[:-1], altered],
        observations=history.observations,
        forecasts=history.forecasts,
    )
    report = verify_history(changed, optimizer)
    assert not report.ok
    assert any(m.field == name and m.seq == seg.seq for m in report.mismatches), [
        (m.field, m.seq) for m in report.mismatches
    ]
