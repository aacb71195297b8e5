"""The load benchmark's pacing and arrival figures, without a server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
pytest.importorskip("psutil")

import load  # noqa: E402


def test_lockstep_jobs_share_one_step_time_and_a_spread_covers_its_range_evenly() -> None:
    assert {load.job_step_s(i, 0.1, 0.0) for i in range(300)} == {0.1}
    paces = [load.job_step_s(i, 0.1, 0.5) for i in range(300)]
    assert min(paces) >= 0.05 and max(paces) <= 0.15
    assert min(paces) < 0.052 and max(paces) > 0.148  # the whole range is used
    assert sum(paces) / len(paces) == pytest.approx(0.1, rel=0.01)
    # Each tenth of the range holds about a tenth of the jobs.
    tenths = [sum(1 for p in paces if 0.05 + k * 0.01 <= p < 0.06 + k * 0.01) for k in range(10)]
    assert min(tenths) >= 25 and max(tenths) <= 35
    assert paces == [load.job_step_s(i, 0.1, 0.5) for i in range(300)]  # deterministic


def test_arrival_pattern_tells_bunched_decisions_from_even_ones() -> None:
    # 100 s of decisions at 30 a second: evenly spread, then in one bunch per 10 s.
    even = [(i / 30.0, 0.01) for i in range(3000)]
    bunched = [((i // 300) * 10.0 + (i % 300) / 300.0, 0.01) for i in range(3000)]
    spread, bunch = load.arrival_pattern(even)["per_s"], load.arrival_pattern(bunched)["per_s"]
    assert spread["mean"] == pytest.approx(30, abs=1) and spread["max"] <= 31
    assert bunch["mean"] == pytest.approx(30, abs=5) and bunch["max"] >= 250
    # The median wait per third of the run: a queue building up climbs.
    climbing = [(i / 30.0, 0.01 * (1 + i // 1000)) for i in range(3000)]
    assert load.arrival_pattern(climbing)["p50_ms_by_third"] == pytest.approx([10, 20, 30])
    assert load.arrival_pattern(even[:5]) == {}  # too few to say


def test_database_cpu_counts_the_work_of_postgresql_backends() -> None:
    """The load benchmark's database CPU grows with what PostgreSQL's backends compute
    (here a statement that takes a backend a good tenth of a second)."""
    import os

    url = os.environ.get("STAGELR_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set STAGELR_TEST_POSTGRES_URL to run on PostgreSQL")
    from sqlalchemy import create_engine, text

    from stagelr_service.store.engine import normalize_url

    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            before = load.database_cpu_seconds()
            connection.execute(text("SELECT count(*) FROM generate_series(1, 5000000)"))
            after = load.database_cpu_seconds()
    finally:
        engine.dispose()
    assert after - before >= 0.05
