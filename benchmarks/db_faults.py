"""Database faults through a TCP proxy between a live server and PostgreSQL: the figures.

A fresh PostgreSQL database, a TCP proxy in front of it (tests/tcp_proxy.py), and a real
`stagelr serve` that reaches the database only through the proxy (default database
timeouts unless overridden). Synthetic jobs (the real client, ``drive_tuner``) run
studies against the server while a probe sends ``GET /v1/studies/{id}`` on one keep-alive
``httpx.Client`` every 0.1 s and ``/readyz`` probes run alongside. The proxy then refuses
connections, stalls them, and stalls them before resetting them, one fault after the
other. Printed per fault: the probe's answers by status (and connection errors), its
latency during the fault, the time from the fault's end to the next 200 (recovery),
the slowest ``/readyz``; then, over the whole run: studies completed, observations sent
and stored, lost, duplicated, and the server log's tracebacks::

    STAGELR_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        PYTHONPATH=client:service:. .venv/bin/python benchmarks/db_faults.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import stagelr
from stagelr_service.server import start_server
from stagelr_service.store import Store, normalize_url
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.store_fixtures import fresh_postgres_database  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

STUDY: dict[str, Any] = {
    "planner": "fixed",
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "total_steps": 1600,
    "tau0": 20,
    "tau_max": 80,
    "k": 3,
    "explore_ratio": 0.5,
}


@dataclass
class Probe:
    """One request of the probe: when it was sent, how long it took, what came back."""

    sent: float
    seconds: float
    status: str


@dataclass
class Run:
    probes: list[Probe] = field(default_factory=list)
    ready: list[Probe] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def probe_loop(url: str, path: str, into: list[Probe], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:  # one keep-alive connection
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status = str(http.get(path).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            into.append(Probe(sent, time.monotonic() - sent, status))
            time.sleep(0.1)


def job(url: str, name: str, seed: int, out: dict[str, Any]) -> None:
    transport = stagelr.RetryTransport(max_attempts=6, backoff=0.25, max_delay=4.0)
    with stagelr.Tuner(
        url, study=name, transport=transport, linger=0.5, fallback_steps=10, seed=seed, **STUDY
    ) as tuner:
        record = drive_tuner(tuner, SyntheticJob(seed=seed))
        out[name] = (tuner.study_id, record)


def window(probes: list[Probe], start: float, end: float) -> list[Probe]:
    return [p for p in probes if start <= p.sent < end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--fault-seconds", type=float, default=15.0)
    parser.add_argument(
        "--database",
        default=os.environ.get("STAGELR_TEST_POSTGRES_URL"),
        help="a PostgreSQL server URL the script may create a database on",
    )
    args = parser.parse_args()
    if not args.database:
        parser.error("give --database or set STAGELR_TEST_POSTGRES_URL")
    root = Path(tempfile.mkdtemp(prefix="stagelr-dbfaults-"))
    with fresh_postgres_database(args.database) as url:
        with Store(url) as store:
            store.migrate()
        with TcpProxy(url.port or 5432, host=url.host or "127.0.0.1") as proxy:
            proxied = normalize_url(url).set(port=proxy.port)
            server = start_server(
                proxied.render_as_string(hide_password=False), root / "server.log", migrate=False
            )
            try:
                report(server.url, server.log, proxy, args)
            finally:
                proxy.pass_through()
                server.stop()


def report(url: str, log: Any, proxy: TcpProxy, args: argparse.Namespace) -> None:
    with stagelr.Client(url) as client:
        probe_study = client.create_study(
            "probe", stagelr.models.StudyConfig(lr_min=1e-3, lr_max=1.0)
        ).id
    run = Run()
    threads = [
        threading.Thread(
            target=probe_loop, args=(url, f"/v1/studies/{probe_study}", run.probes, run.stop)
        ),
        threading.Thread(target=probe_loop, args=(url, "/readyz", run.ready, run.stop)),
    ]
    results: dict[str, Any] = {}
    jobs = [
        threading.Thread(target=job, args=(url, f"job-{i}", i, results), daemon=True)
        for i in range(args.jobs)
    ]
    for thread in itertools.chain(threads, jobs):
        thread.start()
    seconds = args.fault_seconds
    faults: list[tuple[str, float, float]] = []
    for name in ("refuse", "stall", "stall, then reset"):
        time.sleep(2.0)
        start = time.monotonic()
        if name == "refuse":
            proxy.refuse()
        else:
            proxy.stall()
        time.sleep(seconds)
        if name == "stall, then reset":
            proxy.drop()
        proxy.pass_through()
        faults.append((name, start, time.monotonic()))
    for thread in jobs:
        thread.join(timeout=240)
    if any(thread.is_alive() for thread in jobs):
        print("a job did not end within 240 s of the last fault: the figures below are partial")
    time.sleep(1.0)
    run.stop.set()
    for thread in threads:
        thread.join()

    print(f"{args.jobs} jobs, faults of {seconds:g} s, default database timeouts")
    print(
        f"{'fault':20} {'answers during the fault':34} {'latency p50/max':>16} "
        f"{'recovery':>9} {'readyz max':>10}"
    )
    for name, start, end in faults:
        during = window(run.probes, start, end)
        counts: dict[str, int] = {}
        for p in during:
            counts[p.status] = counts.get(p.status, 0) + 1
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))
        lat = [p.seconds for p in during] or [0.0]
        back = next((p for p in run.probes if p.sent >= end and p.status == "200"), None)
        recovery = f"{back.sent + back.seconds - end:.1f} s" if back else "never"
        ready = window(run.ready, start, end + 1)
        ready_max = max((p.seconds for p in ready), default=0.0)
        print(
            f"{name:20} {answers:34} {statistics.median(lat):6.2f}/{max(lat):5.2f} s "
            f"{recovery:>9} {ready_max:8.2f} s"
        )
    all_status: dict[str, int] = {}
    for p in run.probes:
        all_status[p.status] = all_status.get(p.status, 0) + 1
    print(f"probe answers, whole run: {dict(sorted(all_status.items()))}")
    sent = stored = lost = duplicated = completed = fallback = 0
    with stagelr.Client(url) as client:
        for study_id, record in results.values():
            completed += client.get_study(study_id).status is stagelr.models.StudyStatus.completed
            fallback += record.fallback_segments
            for segment_id, points in record.reported.items():
                mine = {(s, repr(v)) for s, v in points}
                have = [(o.step, repr(o.value)) for o in client.list_observations(segment_id)]
                sent += len(mine)
                stored += len(set(have) & mine)
                lost += len(mine - set(have))
                duplicated += len(have) - len(set(have))
    print(f"studies completed          {completed}/{args.jobs}")
    print(f"observations sent          {sent}")
    print(f"observations stored        {stored}")
    print(f"observations lost          {lost}")
    print(f"observations duplicated    {duplicated}")
    print(f"fallback segments trained  {fallback}")
    print(f"tracebacks in server log   {log().count('Traceback')}")


if __name__ == "__main__":
    main()
