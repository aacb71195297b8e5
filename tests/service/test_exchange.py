"""Export and import: JSON lines between any two databases (SQLite, PostgreSQL).

export -> import -> export is byte-identical, import is idempotent by (project, name),
a conflicting study is skipped and reported, and imported studies still verify.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from stagelr.models import StudyCreate
from stagelr_service.errors import InputError
from stagelr_service.exchange import VERSION, export_studies, import_studies
from stagelr_service.replay import replay_study
from stagelr_service.store import Store, migrate
from stagelr_service.store.models import ObservationRow, SegmentRow, StudyRow
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob
from tests.live import run_cli
from tests.replay.test_replay import CONFIG, record_study
from tests.store_fixtures import BACKENDS, migrated_database


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, optimizer) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    """SQLite with a finished study, one with NaN losses, a running one mid-stage (open
    segment) and a stopped one in another project."""
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'source.db'}"
    migrate(url)
    with Store(url) as store:
        service = StudyService(store, optimizer)
        record_study(service, "done", job=SyntheticJob(seed=1))
        record_study(service, "nan", job=SyntheticJob(seed=2, cliff_lr=0.3))
        running, _ = service.create_study(StudyCreate(name="running", config=CONFIG))
        service.next_segment(running.id)
        stopped, _ = service.create_study(
            StudyCreate(project="other", name="stopped", config=CONFIG)
        )
        service.stop_study(stopped.id)
        # a family: the second study's priors (a summary and a warm start) travel too
        family = CONFIG.model_copy(update={"family": "fam"})
        record_study(service, "fam-1", config=family, job=SyntheticJob(seed=3))
        record_study(service, "fam-2", config=family, job=SyntheticJob(seed=4))
        yield store


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with migrated_database(request.param, tmp_path) as url, Store(url) as store:
        yield store


def exported(store: Store) -> str:
    with store.transaction(read_only=True) as repo:
        ids = [k[0] for k in repo.study_keys()]
    buffer = StringIO()
    export_studies(store, ids, buffer)
    return buffer.getvalue()


def url_of(store: Store) -> str:
    url: URL = store.url
    return url.render_as_string(hide_password=False)


def counts(store: Store) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.scalar(select(func.count()).select_from(table))
            for table in (StudyRow, SegmentRow, ObservationRow)
        )


def test_export_import_export_is_byte_identical(source, target) -> None:
    first = exported(source)
    result = import_studies(target, first.splitlines())
    assert sorted(result.imported) == [
        "default/done",
        "default/fam-1",
        "default/fam-2",
        "default/nan",
        "default/running",
        "other/stopped",
    ]
    assert exported(target) == first


def test_the_file_has_a_versioned_header_and_non_finite_losses_as_strings(source) -> None:
    lines = exported(source).splitlines()
    assert lines[0] == '{"format":"stagelr-studies","version":10,"generator":"stagelr ' + (
        __import__("stagelr").__version__ + '"}'
    )
    assert len(lines) == 7
    assert '"NaN"' in lines[2] or '"Infinity"' in lines[2]


def test_non_finite_losses_round_trip(source, target) -> None:
    import_studies(target, exported(source).splitlines())
    with target.transaction(read_only=True) as repo:
        study = repo.find_study("default", "nan")
        assert study is not None
        values = [o.value for obs in repo.observations_of_study(study.id).values() for o in obs]
    assert any(math.isnan(v) for v in values)


def test_import_is_idempotent(source, target) -> None:
    text = exported(source)
    import_studies(target, text.splitlines())
    before = counts(target)
    again = import_studies(target, text.splitlines())
    assert again.imported == [] and again.conflicts == [] and len(again.unchanged) == 6
    assert counts(target) == before


def test_a_conflicting_study_is_skipped_and_named(source, target) -> None:
    text = exported(source)
    import_studies(target, text.splitlines())
    before = exported(target)
    lines = text.splitlines()
    lines[1] = lines[1].replace('"status_reason":"trained 300 steps"', '"status_reason":"edited"')
    assert lines[1] != text.splitlines()[1]
    result = import_studies(target, lines)
    assert len(result.conflicts) == 1 and "differs in: status_reason" in result.conflicts[0]
    assert result.conflicts[0].startswith("default/done")
    assert exported(target) == before


def test_imported_studies_still_verify(source, target, optimizer) -> None:
    import_studies(target, exported(source).splitlines())
    with target.transaction(read_only=True) as repo:
        keys = repo.study_keys()
    reports = [replay_study(target, k[0], optimizer) for k in keys]
    assert [r.ok for r in reports] == [True] * 6
    assert sum(r.decisions for r in reports) == 16 + 16 + 1 + 16 + 15  # fam-2: 3 narrow


def test_a_file_that_is_not_an_export_is_refused_with_the_reason(target) -> None:
    with pytest.raises(InputError, match="not a stagelr-studies header"):
        import_studies(target, ['{"hello": 1}'])
    newer = json.dumps({"format": "stagelr-studies", "version": VERSION + 1, "generator": "x"})
    with pytest.raises(InputError, match="upgrade stagelr"):
        import_studies(target, [newer])
    header = '{"format":"stagelr-studies","version":1,"generator":"x"}'
    with pytest.raises(InputError, match="line 2: not a valid study"):
        import_studies(target, [header, '{"project": "p"}'])


@pytest.mark.slow
def test_the_export_and_import_commands(source, target, tmp_path) -> None:
    path = tmp_path / "studies.jsonl"
    source_env = {"STAGELR_DATABASE_URL": url_of(source)}
    done = run_cli(
        "export", "--project", "default", "--name", "d*", "-o", str(path), env=source_env
    )
    assert done.returncode == 0, done.stderr
    assert len(path.read_text().splitlines()) == 2  # the header and "done"
    target_env = {"STAGELR_DATABASE_URL": url_of(target)}
    done = run_cli("import", str(path), env=target_env)
    assert done.returncode == 0, done.stderr
    assert "1 imported" in done.stdout
    done = run_cli("import", str(path), env=target_env)
    assert done.returncode == 0 and "0 imported, 1 already stored unchanged" in done.stdout
    path.write_text(path.read_text().replace("trained 300 steps", "changed"))
    done = run_cli("import", str(path), env=target_env)
    assert done.returncode == 1 and "skipped default/done" in done.stderr
    done = run_cli("import", str(tmp_path / "missing.jsonl"), env=target_env)
    assert done.returncode == 2 and "No such file" in done.stderr


def test_a_version_1_file_imports_with_the_old_meaning_of_its_configs(source, target) -> None:
    """Version 1 predates the planner: its configs get LEGACY_CONFIG, its segments a
    constant LR, and the imported studies still verify."""
    from stagelr_service.tuner import LEGACY_CONFIG

    lines = exported(source).splitlines()
    header = json.loads(lines[0])
    header["version"] = 1
    old_lines = [json.dumps(header)]
    for line in lines[1:]:
        study = json.loads(line)
        for key in LEGACY_CONFIG:
            study["config"].pop(key, None)
        for seg in study["segments"]:
            seg.pop("lr_end"), seg.pop("lr_shape")
        study.pop("outages"), study.pop("archived_at")  # version 7's
        old_lines.append(json.dumps(study))
    import_studies(target, old_lines)
    with target.transaction(read_only=True) as repo:
        study = repo.find_study("default", "running")
        assert study is not None
        assert {k: study.config[k] for k in LEGACY_CONFIG} == LEGACY_CONFIG
        segments = repo.segments_of_study(study.id)
    assert all(s.lr_shape.value == "constant" and s.lr_end is None for s in segments)
