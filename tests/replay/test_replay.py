"""Replay: verify reproduces every recorded decision; what-if replays under overrides.

Studies are recorded for real: through the live server with the real client (synthetic
losses, and one real PyTorch run), or through the study service on a SQLite file. Then
stored decisions are altered in the database and verify must name each alteration.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

import stagelr
from stagelr.models import (
    ObservationIn,
    SegmentKind,
    StudyConfig,
    StudyCreate,
)
from stagelr_service.errors import InputError
from stagelr_service.exchange import ExportedStudy, export_studies, header_line, import_studies
from stagelr_service.replay import (
    ESTIMATED,
    parse_overrides,
    replay_study,
    verify_history,
    what_if_config,
)
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob, drive_service
from stagelr_service.tuner import resolve
from tests.live import run_cli

#: Three stages (60, 120, 120 steps) of four candidates: 15 decisions and the end (no
#: final decay, which would add a stage). The fixtures below name seqs of the studies this
#: config records: it keeps the preset they were written for, default-v1.
CONFIG = StudyConfig(
    preset="default-v1",
    lr_min=1e-4,
    lr_max=3.0,
    tau0=60,
    tau_max=120,
    total_steps=300,
    k=4,
    decay_fraction=0.0,
)


def record_study(
    service: StudyService,
    name: str,
    config: StudyConfig = CONFIG,
    job: SyntheticJob | None = None,
    project: str = "default",
) -> int:
    """Drive one study to its end through the study service with a synthetic job."""
    study, _ = service.create_study(StudyCreate(project=project, name=name, config=config))
    drive_service(service, study.id, job or SyntheticJob())
    return study.id


def record_with_client(client: stagelr.Client, name: str, job: SyntheticJob) -> int:
    """The same through a live server and the real client."""
    study = client.create_study(name, CONFIG)
    while (segment := client.next_segment(study.id).segment) is not None:
        reports, diverged = job.train(
            segment.lr,
            segment.steps,
            segment.report_every,
            explore=segment.kind is SegmentKind.explore,
            stop_above=segment.stop_above,
        )
        client.post_observations(segment.id, [ObservationIn(step=s, value=v) for s, v in reports])
        client.complete_segment(segment.id, reports[-1][0] if diverged else None)
    return study.id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, optimizer) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    """A SQLite store with two studies: a plain one, and one whose candidates diverge."""
    url = f"sqlite:///{tmp_path_factory.mktemp('replay') / 'stagelr.db'}"
    migrate(url)
    with Store(url) as store:
        service = StudyService(store, optimizer)
        record_study(service, "plain", job=SyntheticJob(seed=1))
        record_study(service, "diverging", job=SyntheticJob(seed=2, cliff_lr=0.3))
        annealed = CONFIG.model_copy(update={"preset": "default"})
        record_study(service, "annealed", annealed, job=SyntheticJob(seed=3, cliff_lr=0.3))
        yield store


def study_id(store: Store, name: str) -> int:
    with store.transaction(read_only=True) as repo:
        found = repo.find_study("default", name)
    assert found is not None
    return found.id


def altered_copy(store: Store, tmp_path: Path, optimizer, sql: str) -> tuple[Store, int]:  # type: ignore[no-untyped-def]
    """A copy of study "plain" in a fresh SQLite file, with ``sql`` run on that file."""
    from io import StringIO

    buffer = StringIO()
    export_studies(store, [study_id(store, "plain")], buffer)
    url = f"sqlite:///{tmp_path / 'altered.db'}"
    migrate(url)
    copy = Store(url)
    import_studies(copy, buffer.getvalue().splitlines())
    with sqlite3.connect(tmp_path / "altered.db") as db:
        assert db.execute(sql).rowcount == 1
    return copy, study_id(copy, "plain")


# --------------------------------------------------------------------------- verify


def test_verify_reproduces_every_decision_of_a_recorded_study(store, optimizer) -> None:
    for name in ("plain", "diverging"):
        report = replay_study(store, study_id(store, name), optimizer)
        assert report.ok and report.mismatches == [] and report.error is None
        # 15 segments handed out, and the end of the study.
        assert report.decisions == 16
        assert [s.replayed_lr for s in report.stages] == [s.recorded_lr for s in report.stages]
        assert all(s.lr_decades == 0.0 for s in report.stages)
        assert all(
            [c.lr for c in s.candidates] == s.recorded_lrs and len(s.recorded_lrs) == 4
            for s in report.stages
        )


def test_the_diverging_study_has_diverged_candidates_that_verify_still_matches(store) -> None:
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id(store, "diverging"))
    assert history is not None
    assert any(s.status.value == "diverged" for s in history.segments)
    assert any(not math.isfinite(o.value) for obs in history.observations.values() for o in obs)


def test_an_altered_chosen_lr_is_named_with_both_values(store, tmp_path, optimizer) -> None:
    copy, sid = altered_copy(
        store, tmp_path, optimizer, 'UPDATE stages SET chosen_lr = 0.5 WHERE "index" = 1'
    )
    with copy:
        report = replay_study(copy, sid, optimizer)
        original = replay_study(store, study_id(store, "plain"), optimizer).stages[1].recorded_lr
    assert not report.ok
    [m] = report.mismatches
    assert (m.stage, m.seq, m.field, m.recorded, m.replayed) == (
        1,
        None,
        "chosen_lr",
        0.5,
        original,
    )
    assert report.stages[1].differs and not report.stages[0].differs


def test_an_altered_candidate_lr_is_named_at_its_decision(store, tmp_path, optimizer) -> None:
    copy, sid = altered_copy(
        store, tmp_path, optimizer, "UPDATE segments SET lr = 0.0123 WHERE seq = 2"
    )
    with copy:
        report = replay_study(copy, sid, optimizer)
        segments = copy_segments(copy, sid)
    first = report.mismatches[0]
    assert (first.stage, first.seq, first.field, first.recorded) == (0, 2, "lr", 0.0123)
    assert first.replayed != 0.0123 and first.replayed == report.stages[0].candidates[2].lr
    assert segments[2].lr == 0.0123


def copy_segments(store: Store, sid: int):  # type: ignore[no-untyped-def]
    with store.transaction(read_only=True) as repo:
        return repo.segments_of_study(sid)


def test_an_altered_forecast_is_named_with_the_recomputed_value(store, tmp_path, optimizer) -> None:
    copy, sid = altered_copy(
        store,
        tmp_path,
        optimizer,
        "UPDATE forecasts SET prediction = 9.75 WHERE segment_id = "
        "(SELECT id FROM segments WHERE seq = 6)",
    )
    with copy:
        report = replay_study(copy, sid, optimizer)
    found = [m for m in report.mismatches if m.field == "forecast.prediction"]
    assert len(found) == 1
    assert (found[0].stage, found[0].seq, found[0].recorded) == (1, 6, 9.75)
    assert isinstance(found[0].replayed, float) and found[0].replayed != 9.75


@pytest.mark.parametrize(("factor", "flagged"), [(1 + 1e-6, False), (1 + 1e-2, True)])
def test_a_forecast_off_in_its_last_bits_is_the_same_one_moved_further_is_not(
    store, tmp_path, optimizer, factor: float, flagged: bool
) -> None:
    # Another machine's float kernels move a fit's last bit; an edit moves it further.
    copy, sid = altered_copy(
        store,
        tmp_path,
        optimizer,
        f"UPDATE forecasts SET prediction = prediction * {factor!r} WHERE segment_id = "
        "(SELECT id FROM segments WHERE seq = 6)",
    )
    with copy:
        report = replay_study(copy, sid, optimizer)
    found = [m for m in report.mismatches if m.field == "forecast.prediction"]
    assert bool(found) is flagged and report.ok is not flagged


def test_the_cli_exits_1_on_a_mismatch_and_prints_stage_and_values(
    store, tmp_path, optimizer
) -> None:
    copy, _ = altered_copy(
        store, tmp_path, optimizer, 'UPDATE stages SET chosen_lr = 0.5 WHERE "index" = 2'
    )
    copy.close()
    report_path = tmp_path / "report.json"
    done = run_cli(
        "replay", "verify", "--all", "--workers", "1", "--no-progress",
        "--report", str(report_path),
        env={"STAGELR_DATABASE_URL": f"sqlite:///{tmp_path / 'altered.db'}"},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "chosen_lr" in done.stdout and "0.5" in done.stdout
    data = json.loads(report_path.read_text())
    [study] = data["studies"]
    assert study["mismatches"][0]["stage"] == 2 and study["mismatches"][0]["recorded"] == 0.5
    assert data["summary"]["mismatching"] == 1


def test_the_cli_exits_2_on_a_bad_database_url_or_no_selection(tmp_path) -> None:
    done = run_cli("replay", "verify", "--all", "--database-url", "mysql://x/y")
    assert done.returncode == 2 and "unsupported database" in done.stderr
    assert "Traceback" not in done.stderr
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate(url)
    done = run_cli("replay", "verify", "--database-url", url)
    assert done.returncode == 2 and "--all" in done.stderr


def test_a_study_of_the_annealed_default_replays_exactly(store, optimizer) -> None:
    """default's annealed windows, window-end scores, stability edge and continued
    candidates are all decided from the history alone."""
    report = replay_study(store, study_id(store, "annealed"), optimizer)
    assert report.ok, report.mismatches
    assert report.decisions > 10


# --------------------------------------------------------------------------- what-if


def test_what_if_with_the_stored_config_reproduces_the_recorded_choices(store, optimizer) -> None:
    report = replay_study(store, study_id(store, "plain"), optimizer, {})
    assert report.mode == "what-if" and report.estimates == 0
    assert report.stages_compared == 3 and report.stages_differing == 0
    assert all(not c.estimated for s in report.stages for c in s.candidates)


@pytest.mark.parametrize("overrides", [{"k": 6}, {"acquisition": "lcb", "kappa": 5.0}])
def test_what_if_changes_decisions_and_flags_every_estimate(store, optimizer, overrides) -> None:
    report = replay_study(store, study_id(store, "plain"), optimizer, overrides)
    verify = replay_study(store, study_id(store, "plain"), optimizer)
    replayed = [[c.lr for c in s.candidates] for s in report.stages]
    assert replayed != [s.recorded_lrs for s in verify.stages]
    estimated = [c for s in report.stages for c in s.candidates if c.estimated]
    assert estimated and len(estimated) == report.estimates
    assert all(c.status == ESTIMATED for c in estimated)
    # An estimate is for an LR that never ran in its stage; a recorded LR is never one.
    for stage in report.stages:
        for c in stage.candidates:
            assert c.estimated == (c.lr not in stage.recorded_lrs)
    assert report.stages_compared == 3
    assert report.max_lr_decades is not None and report.max_lr_decades >= 0
    if "k" in overrides:
        assert all(len(s.candidates) == 6 for s in report.stages)


def test_what_if_refuses_fields_it_cannot_replay_naming_the_allowed_ones() -> None:
    with pytest.raises(InputError, match="a what-if may set acquisition"):
        what_if_config(resolve(CONFIG).to_stored(), {"tau0": 30})
    with pytest.raises(InputError, match="not a config field"):
        what_if_config(resolve(CONFIG).to_stored(), {"kapa": 3})
    with pytest.raises(InputError, match="k: Input should be greater than or equal to 1"):
        what_if_config(resolve(CONFIG).to_stored(), parse_overrides(["k=0"]))
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["k"])
    assert parse_overrides(["k=3", "acquisition=lcb", "noise_aware=false"]) == {
        "k": 3,
        "acquisition": "lcb",
        "noise_aware": False,
    }


def test_verify_of_a_what_if_history_is_pure(store, optimizer) -> None:
    """verify_history reads nothing but its argument: two runs, the same report."""
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id(store, "diverging"))
    assert history is not None
    assert verify_history(history, optimizer) == verify_history(history, optimizer)


# --------------------------------------------------------------------------- batch


def fill_copies(store: Store, names: list[str], copies: int) -> None:
    """Import ``copies`` copies of the named studies under new names (project "copies")."""
    from io import StringIO

    buffer = StringIO()
    export_studies(store, [study_id(store, n) for n in names], buffer)
    bases = [ExportedStudy.model_validate_json(x) for x in buffer.getvalue().splitlines()[1:]]
    lines = [header_line()] + [
        bases[i % len(bases)]
        .model_copy(update={"name": f"copy-{i:03d}", "project": "copies"})
        .model_dump_json()
        for i in range(copies)
    ]
    result = import_studies(store, lines)
    assert len(result.imported) == copies


@pytest.mark.slow
def test_a_batch_of_over_100_studies_in_2_workers_writes_json_and_csv(store, tmp_path) -> None:
    fill_copies(store, ["plain", "diverging"], 100)
    url = store.url.render_as_string(hide_password=False)
    report, table = tmp_path / "r.json", tmp_path / "r.csv"
    done = run_cli(
        "replay", "verify", "--all", "--workers", "2", "--report", str(report),
        "--csv", str(table), env={"STAGELR_DATABASE_URL": url},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # the module's store holds the copies and the studies its other tests recorded
    with store.engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM studies")).scalar_one()
    assert total >= 102
    assert "studies matching" in done.stdout and str(total) in done.stdout
    data = json.loads(report.read_text())
    assert data["format"] == "stagelr-replay-report" and data["mode"] == "verify"
    assert data["summary"]["studies"] == total and data["summary"]["ok"] == total
    assert data["summary"]["workers"] == 2
    assert sorted(s["study_id"] for s in data["studies"]) == [
        s["study_id"] for s in data["studies"]
    ]
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == total * 3
    assert {r["differs"] for r in rows} == {"0"} and {r["mismatches"] for r in rows} == {"0"}

    # what-if on a selection by project and name pattern: only the matching studies.
    done = run_cli(
        "replay", "what-if", "--project", "copies", "--name", "copy-00*", "--set", "k=6",
        "--report", str(report), "--csv", str(table), env={"STAGELR_DATABASE_URL": url},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["mode"] == "what-if" and data["overrides"] == {"k": 6}
    assert sorted(s["name"] for s in data["studies"]) == [f"copy-00{i}" for i in range(10)]
    assert data["summary"]["estimates"] > 0 and "estimated candidates" in done.stdout


# --------------------------------------------------------------------------- live


@pytest.mark.slow
def test_verify_over_the_api_for_studies_recorded_through_a_live_server(live_server) -> None:
    with stagelr.Client(live_server.url) as client:
        ids = [
            record_with_client(client, "live-plain", SyntheticJob(seed=3)),
            record_with_client(client, "live-diverging", SyntheticJob(seed=4, cliff_lr=0.3)),
        ]
        for sid in ids:
            report = client.replay(sid)
            assert report.ok and report.decisions == 16 and report.mode == "verify"
        what_if = client.replay(ids[0], {"k": 5, "acquisition": "lcb"})
        assert what_if.mode == "what-if" and what_if.estimates > 0
        assert all(len(s.candidates) == 5 for s in what_if.stages)
    bad = httpx.post(
        f"{live_server.url}/v1/studies/{ids[0]}/replay", json={"overrides": {"tau0": 5}}
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "a what-if may set" in bad.json()["detail"]
    missing = httpx.get(f"{live_server.url}/v1/studies/999999/replay")
    assert missing.status_code == 404
    # And the CLI agrees, on the server's own database, while the server runs.
    done = run_cli(
        "replay", "verify", "--name", "live-*", "--workers", "1",
        env={"STAGELR_DATABASE_URL": live_server.database_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_verify_passes_on_a_real_torch_trained_study(live_server) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from stagelr_service.demo import train_digits

    with stagelr.Tuner(
        live_server.url,
        study="replay-digits",
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=160,
        tau0=40,
        tau_max=40,
        k=3,
        seed=5,
        decay_fraction=0.0,
    ) as tuner:
        train_digits(tuner, seed=5)
        sid = tuner.study().id
        report = tuner.client.replay(sid)
    assert report.ok, report.mismatches
    # each stage: three windows, the best one's check window, the training segment
    assert report.decisions == 4 * (3 + 1 + 1) + 1
    assert [len(s.candidates) for s in report.stages] == [4, 4, 4, 4]
