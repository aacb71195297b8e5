"""Crashes: the server killed mid-stage, and the training process killed mid-segment.

Either way the study must end with exactly the decisions of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stagelr
from stagelr.models import StudyStatus
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import LiveServer, start_server
from tests.store_fixtures import BACKENDS, fresh_database

pytestmark = pytest.mark.slow

_names = itertools.count()

STUDY: dict[str, Any] = {
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "total_steps": 60,
    "tau0": 20,
    "k": 3,
    "explore_ratio": 0.5,
    "seed": 5,
}


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url.render_as_string(hide_password=False)


def test_a_server_killed_mid_stage_comes_back_and_the_job_ends_as_if_nothing_happened(
    database: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(database, log)
    port = int(server.url.rsplit(":", 1)[1])
    servers = [server]
    restarted = threading.Event()

    def run(on_event: Any = None) -> tuple[int, Any]:
        transport = stagelr.RetryTransport(max_attempts=3, backoff=0.05, max_delay=0.5)
        with stagelr.Tuner(
            server.url,
            study=f"crash-{next(_names)}",
            transport=transport,
            timeout=10.0,
            fallback_steps=5,
            **STUDY,
        ) as tuner:
            record = drive_tuner(tuner, SyntheticJob(seed=2), on_event)
            return tuner.study_id, record

    def restart() -> None:
        servers.append(start_server(database, log, migrate=False, port=port))
        restarted.set()

    def kill_mid_stage(kind: str, n: int) -> None:
        # Segment 6 is the second candidate of stage 1; its first point is reported.
        if (kind, n) == ("report", 6):
            servers[0].process.send_signal(signal.SIGKILL)
            servers[0].process.wait(timeout=10)
            threading.Thread(target=restart, daemon=True).start()

    try:
        baseline_id, _ = run()
        crashed_id, record = run(kill_mid_stage)
        assert restarted.wait(timeout=90)
        assert servers[0].process.returncode == -signal.SIGKILL
        assert record.status is StudyStatus.completed
        # The kill hits the study's last segment: the job has trained its planned length,
        # so it trains no fallback segment past its plan; it waits for the restarted
        # server to take the segment's completion, and the study completes.
        assert record.fallback_segments == 0
        with stagelr.Client(servers[-1].url) as client:
            assert study_decisions(client, crashed_id) == study_decisions(client, baseline_id)
            for segment_id, reported in record.reported.items():
                stored = [(o.step, repr(o.value)) for o in client.list_observations(segment_id)]
                assert stored == sorted({(s, repr(v)) for s, v in reported})
    finally:
        for s in servers:
            s.stop()


# ---------------------------------------------------------------------------- job crash

JOB = r"""
import os, signal, sys

import torch

import stagelr
from stagelr.torch import Checkpointer

torch.set_num_threads(1)
url, study, directory = sys.argv[1], sys.argv[2], sys.argv[3]
crash_seq, crash_step = int(sys.argv[4]), int(sys.argv[5])

torch.manual_seed(0)
X = torch.randn(256, 8)
Y = X @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
checkpoints = Checkpointer(model, optimizer, directory=directory)
transport = stagelr.RetryTransport(max_attempts=8, backoff=0.1, max_delay=1.0)

with stagelr.Tuner(url, study=study, lr_min=1e-3, lr_max=1.0, total_steps=60, tau0=20, k=3,
                   explore_ratio=0.5, seed=1, raise_on_error=True, transport=transport) as tuner:
    for segment in tuner:
        checkpoints.begin(segment)
        batches = torch.Generator().manual_seed(segment.data_seed)
        for step in segment.steps():
            index = torch.randint(0, 256, (32,), generator=batches)
            loss = torch.nn.functional.mse_loss(model(X[index]), Y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if segment.report_due(step):
                with torch.no_grad():
                    segment.report(step, torch.nn.functional.mse_loss(model(X), Y))
            if segment.seq == crash_seq and step == crash_step:
                tuner.flush()  # the points so far reach the service, then: kill -9
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.end(segment)
        segment.complete()
print("finished", tuner.status.value)
"""


def run_job(script: Path, url: str, study: str, directory: Path, crash: tuple[int, int]) -> Any:
    return subprocess.run(
        [sys.executable, str(script), url, study, str(directory), *map(str, crash)],
        capture_output=True,
        text=True,
        timeout=240,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_a_job_killed_mid_segment_resumes_from_its_disk_checkpoint(
    live_server: LiveServer, tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    url = live_server.url

    baseline = run_job(script, url, "job-base", tmp_path / "base", (-1, 0))
    assert baseline.returncode == 0, baseline.stderr
    # Segment 4 is stage 1's first candidate: it restores nothing, so only the
    # checkpointer's own start checkpoint can bring the job back to where it began.
    crashed = run_job(script, url, "job-crash", tmp_path / "crash", (4, 5))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    with stagelr.Client(url) as client:
        studies = client.list_studies(name="job-crash").studies
        study = next(s for s in studies if s.name == "job-crash")
        assert study.open_segment is not None and study.open_segment.seq == 4
        partial = client.list_observations(study.open_segment.id)
        every = study.open_segment.report_every
        assert [o.step for o in partial] == [s for s in range(1, 6) if s % every == 0] != []

        resumed = run_job(script, url, "job-crash", tmp_path / "crash", (-1, 0))
        assert resumed.returncode == 0, resumed.stderr
        assert "finished completed" in resumed.stdout

        listed = client.list_studies(name="job-base").studies
        base_id = next(s.id for s in listed if s.name == "job-base")
        assert study_decisions(client, study.id) == study_decisions(client, base_id)
        # Every loss the resumed job reported is the one the uninterrupted job did: the
        # resumed segment re-reported steps 1-5 as exact duplicates, not conflicts.
        for ours, theirs in zip(
            client.list_segments(study.id), client.list_segments(base_id), strict=True
        ):
            assert [repr(o.value) for o in client.list_observations(ours.id)] == [
                repr(o.value) for o in client.list_observations(theirs.id)
            ]
    assert not [p for p in (tmp_path / "crash").iterdir() if p.name.startswith(".start-")]
