"""Reliability soak: N synthetic jobs through TCP proxies with random faults.

Starts 1 or 2 `stagelr serve` replicas (PostgreSQL when --database names one, else a
fresh SQLite file for one replica), puts a fault-injecting TCP proxy in front of each, and
runs N concurrent jobs (the synthetic loss model through the real client). Each job's
requests go round-robin over the proxies. While they run, a chaos thread picks a proxy
every --fault-every seconds and refuses, drops or delays its connections for up to a
second. Afterwards it compares what every job reported with what is stored and prints:
jobs, decisions, observations sent/stored/duplicated/lost, faults injected, client
retries, fallback segments trained, and wall time.

    python benchmarks/reliability_soak.py --jobs 40 --replicas 2 \
        --database postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

import stagelr
from stagelr.models import StudyStatus
from stagelr_service.server import ServerProcess, start_server
from stagelr_service.store import normalize_url
from stagelr_service.testing.simulation import DrivenJob, SyntheticJob, drive_tuner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.tcp_proxy import TcpProxy  # noqa: E402  (the tests' proxy, one implementation)


class RoundRobin(httpx.BaseTransport):
    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=next(self._ports))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def chaos(proxies: list[TcpProxy], every: float, stop: threading.Event, seed: int) -> int:
    rng = random.Random(seed)
    faults = 0
    while not stop.wait(rng.uniform(0.5, 1.5) * every):
        proxy = rng.choice(proxies)
        kind = rng.choice(["refuse", "drop", "delay"])
        if kind == "refuse":
            proxy.refuse()
        elif kind == "drop":
            proxy.drop()
        else:
            proxy.delay(0.2)
        faults += 1
        stop.wait(rng.uniform(0.2, 1.0))
        proxy.pass_through()
    return faults


def run_job(i: int, ports: list[int], url: str, retries: list[int]) -> tuple[int, DrivenJob]:
    transport = stagelr.RetryTransport(RoundRobin(ports), max_attempts=4, backoff=0.1)
    with stagelr.Tuner(
        url,
        study=f"soak-{i}",
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=120,
        tau0=20,
        k=4,
        explore_ratio=0.5,
        seed=i % 11,
        transport=transport,
        timeout=5.0,
        fallback_steps=10,
    ) as tuner:
        record = drive_tuner(tuner, SyntheticJob(seed=i))
        study_id = tuner.study_id
    retries.append(transport.retries)
    return study_id, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--replicas", type=int, choices=[1, 2], default=2)
    parser.add_argument("--database", help="PostgreSQL server URL (a fresh database is made)")
    parser.add_argument(
        "--fault-every", type=float, default=1.0, help="mean seconds between faults"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.replicas == 2 and not args.database:
        parser.error("two replicas need --database postgresql://...")

    tmp = Path(tempfile.mkdtemp(prefix="stagelr-soak-"))
    admin = None
    if args.database:
        admin = create_engine(normalize_url(args.database), isolation_level="AUTOCOMMIT")
        name = f"stagelr_soak_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        database = normalize_url(args.database).set(database=name)
        url = database.render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp / 'soak.db'}"
    servers: list[ServerProcess] = []
    try:
        for r in range(args.replicas):
            servers.append(start_server(url, tmp / f"server-{r}.log", migrate=r == 0))
        proxies = [TcpProxy(int(s.url.rsplit(":", 1)[1])) for s in servers]
        ports = [p.port for p in proxies]
        stop = threading.Event()
        faults: list[int] = []
        chaos_thread = threading.Thread(
            target=lambda: faults.append(chaos(proxies, args.fault_every, stop, args.seed))
        )
        retries: list[int] = []
        start = time.perf_counter()
        chaos_thread.start()
        try:
            with ThreadPoolExecutor(args.jobs) as pool:
                results = list(
                    pool.map(lambda i: run_job(i, ports, proxies[0].url, retries), range(args.jobs))
                )
        finally:
            stop.set()
            chaos_thread.join()
            for p in proxies:
                p.pass_through()
        wall = time.perf_counter() - start

        sent = stored = lost = duplicated = decisions = complete = fallbacks = 0
        with stagelr.Client(servers[-1].url) as client:
            for study_id, record in results:
                study = client.get_study(study_id)
                complete += study.status is StudyStatus.completed
                decisions += len(client.list_segments(study_id))
                fallbacks += record.fallback_segments
                for segment_id, reported in record.reported.items():
                    want = {(s, repr(v)) for s, v in reported}
                    rows = [(o.step, repr(o.value)) for o in client.list_observations(segment_id)]
                    sent += len(want)
                    stored += len(rows)
                    lost += len(want - set(rows))
                    duplicated += len(rows) - len(set(rows))
        for p in proxies:
            p.close()
    finally:
        for s in servers:
            s.stop()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    backend = "postgresql" if args.database else "sqlite"
    print(f"replicas {args.replicas} on {backend}, jobs {args.jobs}, wall {wall:.1f} s")
    print(f"studies completed          {complete}/{args.jobs}")
    print(f"decisions (segments)       {decisions}")
    print(f"observations sent          {sent}")
    print(f"observations stored        {stored}")
    print(f"observations duplicated    {duplicated}")
    print(f"observations lost          {lost}")
    print(f"faults injected            {sum(faults)}")
    print(f"client retries             {sum(retries)}")
    print(f"fallback segments trained  {fallbacks}")


if __name__ == "__main__":
    main()
