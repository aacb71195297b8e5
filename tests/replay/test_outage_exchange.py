"""A study whose job trained through an outage, and an archived one, carried by export
and import: the copy keeps its outages (the shortened plan's reason) and its archiving,
verify and a what-if with the stored config replay it exactly, and files of the version
before outages travelled still import, with their old meaning.

The study is recorded in-process through the study service with a synthetic job that
reports an outage between its first and second stage, as the client does once the
service is back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from stagelr.models import (
    OutageReport,
    SegmentKind,
    StudyConfig,
    StudyCreate,
)
from stagelr_service.errors import InputError
from stagelr_service.exchange import VERSION, export_studies, import_studies
from stagelr_service.replay import replay_study, verify_history
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob, drive_service
from stagelr_service.tuner import ResolvedConfig, plan_stages
from tests.outage_checks import STUDY
from tests.store_fixtures import BACKENDS, migrated_database

#: Two searched stages of 20 and 28 steps and a decay of 12 (the fixed planner); the
#: outages after the first stage's training leave 60 - 20 - 26 = 14 steps, trained
#: without a search.
CONFIG = StudyConfig.model_validate(STUDY)
OFFLINE = 25


def record_with_outage(service: StudyService, name: str, seed: int, outage: bool = True) -> int:
    """Drive a study to its end; once stage 0 has trained, report an outage of OFFLINE
    steps and one of a single step (the job trained them on fallback segments) before
    the next ``next``."""
    study, _ = service.create_study(StudyCreate(name=name, config=CONFIG))
    reported = not outage

    def report(segment: Any) -> None:
        nonlocal reported
        if not reported and segment.kind is SegmentKind.exploit:
            service.report_outage(study.id, OutageReport(key="net-1", steps=OFFLINE))
            service.report_outage(study.id, OutageReport(key="net-2", steps=1))
            reported = True

    drive_service(service, study.id, SyntheticJob(seed=seed), after=report)
    return study.id


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, optimizer) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    """A study with outages (archived afterwards), and one without (not archived)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('outage-source') / 'source.db'}"
    migrate(url)
    with Store(url) as store:
        service = StudyService(store, optimizer)
        offline = record_with_outage(service, "offline", seed=5)
        service.archive_study(offline)
        record_with_outage(service, "plain", seed=6, outage=False)
        yield store


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh SQLite file (and a fresh PostgreSQL database where one is configured)."""
    with migrated_database(request.param, tmp_path) as url, Store(url) as store:
        yield store


def exported(store: Store, names: tuple[str, ...] = ("offline",)) -> str:
    with store.transaction(read_only=True) as repo:
        ids = [k[0] for k in repo.study_keys() if k[2] in names]
    buffer = StringIO()
    export_studies(store, ids, buffer)
    return buffer.getvalue()


def history_of(store: Store, name: str):  # type: ignore[no-untyped-def]
    with store.transaction(read_only=True) as repo:
        found = repo.find_study("default", name)
        assert found is not None
        history = repo.history(found.id)
    assert history is not None
    return history


def test_the_outage_shortened_the_recorded_plan(source: Store) -> None:
    """The premise: the outage changed what the study trained, so a replay without it
    cannot reproduce the study."""
    history = history_of(source, "offline")
    assert [(o.key, o.steps, o.after_seq) for o in history.outages] == [
        ("net-1", OFFLINE, history.outages[0].after_seq),
        ("net-2", 1, history.outages[0].after_seq),
    ]
    config = ResolvedConfig.stored(history.study.config)
    full, _ = plan_stages(config)
    # Without the outage, stage 1 would search over 28 steps; after it, 7 steps are
    # left before the decay and stage 1 trains them at stage 0's LR, unsearched.
    assert full[1].geometry.search and full[1].geometry.tau == 28
    assert [(s.tau, s.tau_explore) for s in history.stages] == [(20, 10), (7, 0), (7, 0)]
    assert history.study.archived_at is not None


def test_an_exported_and_imported_study_keeps_its_outages_and_archiving_and_replays(
    source: Store, target: Store, optimizer
) -> None:  # type: ignore[no-untyped-def]
    text = exported(source)
    header, line = text.splitlines()
    assert json.loads(header)["version"] == VERSION == 10
    study = json.loads(line)
    assert [o["key"] for o in study["outages"]] == ["net-1", "net-2"]
    assert study["archived_at"] is not None

    result = import_studies(target, text.splitlines())
    assert result.imported == ["default/offline"]
    original, copy = history_of(source, "offline"), history_of(target, "offline")
    assert copy.outages == original.outages
    assert copy.study.archived_at == original.study.archived_at
    assert exported(target) == text  # byte for byte

    report = replay_study(target, copy.study.id, optimizer)
    assert report.ok, report.mismatches
    assert report.decisions == verify_history(original, optimizer).decisions
    # A what-if under the stored config reproduces every recorded choice, from the
    # recorded evidence alone (no estimate), with the stages the outage shortened.
    what_if = replay_study(target, copy.study.id, optimizer, overrides={})
    assert what_if.stages_compared == 3 and what_if.stages_differing == 0
    assert what_if.estimates == 0
    assert [s.replayed_lr for s in what_if.stages] == [s.chosen_lr for s in copy.stages]
    assert [len(s.candidates) for s in what_if.stages] == [
        sum(1 for seg in copy.segments if seg.stage == i and seg.kind is SegmentKind.explore)
        for i in range(3)
    ]


def test_the_copy_without_its_outages_would_not_replay(
    source: Store, target: Store, optimizer
) -> None:  # type: ignore[no-untyped-def]
    """What export version 6 did: the outages dropped, verify names the shortened stage."""
    lines = exported(source).splitlines()
    study = json.loads(lines[1])
    study["outages"] = []
    import_studies(target, [lines[0], json.dumps(study)])
    report = replay_study(target, history_of(target, "offline").study.id, optimizer)
    assert not report.ok
    assert any(m.field.startswith("stage.") for m in report.mismatches)


def version_6(text: str) -> list[str]:
    """``text`` as a version 6 file: no outages, no archived_at."""
    lines = text.splitlines()
    header = json.loads(lines[0])
    header["version"] = 6
    old = [json.dumps(header)]
    for line in lines[1:]:
        study = json.loads(line)
        del study["outages"], study["archived_at"]
        old.append(json.dumps(study))
    return old


def test_a_version_6_file_imports_with_no_outages_and_not_archived(
    source: Store, target: Store, optimizer
) -> None:  # type: ignore[no-untyped-def]
    old = version_6(exported(source, names=("offline", "plain")))
    result = import_studies(target, old)
    assert sorted(result.imported) == ["default/offline", "default/plain"]
    for name in ("offline", "plain"):
        copy = history_of(target, name)
        assert copy.outages == [] and copy.study.archived_at is None
    # Importing it again finds the same content: idempotent.
    again = import_studies(target, old)
    assert again.imported == [] and again.conflicts == [] and len(again.unchanged) == 2


def test_a_version_6_file_cannot_hold_outages_and_bad_outages_are_refused(
    source: Store, target: Store
) -> None:
    lines = exported(source).splitlines()
    header = json.loads(lines[0])
    with pytest.raises(InputError, match="version 6 file cannot hold archived_at, outages"):
        import_studies(target, [json.dumps({**header, "version": 6}), lines[1]])
    study = json.loads(lines[1])
    twice = {**study, "outages": study["outages"][:1] * 2}
    with pytest.raises(InputError, match="outage key is listed twice"):
        import_studies(target, [lines[0], json.dumps(twice)])
    beyond = {**study, "outages": [{**study["outages"][0], "after_seq": 10_000}]}
    with pytest.raises(InputError, match="follows segment 10000, which is not listed"):
        import_studies(target, [lines[0], json.dumps(beyond)])
    with target.transaction(read_only=True) as repo:
        assert repo.study_keys() == []
