"""Worst-case route times for the configs that used to cost unbounded work.

Starts a live `stagelr serve` on a fresh SQLite file and, for each config, times: creating
the study, ``GET /plan``, the dashboard's study page, and the slowest ``/healthz`` answer
while those ran. Then one segment of ``--segment-steps`` steps gets a point at every step
(in batches of 10,000; the service refuses the steps it does not keep, and the script
counts what it stored) and ``complete`` and the study page are timed.

Run it on a commit before the bounds, and on one after, to compare::

    PYTHONPATH=client:service .venv/bin/python benchmarks/bounded_work.py
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from stagelr_service.server import start_server

TINY = {"lr_min": 1e-3, "lr_max": 1.0, "tau0": 2, "tau_max": 2, "planner": "fixed"}


def configs(total: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"tau 2, total_steps {total:g}", {**TINY, "explore_ratio": 1.0, "total_steps": total}),
        (f"tau 2, charged_steps {total:g}", {**TINY, "explore_ratio": 1.0, "charged_steps": total}),
        (
            "largest accepted: tau 2, total_steps 1990",
            {**TINY, "explore_ratio": 1.0, "total_steps": 1990},
        ),
    ]


class Prober:
    """Polls /healthz in a thread; the slowest answer while it ran."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                http.get("/healthz")
                self.worst = max(self.worst, time.perf_counter() - started)
                time.sleep(0.1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(
    http: httpx.Client, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    answer = http.request(method, path, **kwargs)
    return answer, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=10**6, help="steps of the audit's config")
    parser.add_argument("--segment-steps", type=int, default=300_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stagelr-bounded-"))
    server = start_server(f"sqlite:///{root / 'stagelr.db'}", root / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            print(f"{'config':42} {'create':>14} {'plan':>16} {'page':>8} {'healthz max':>11}")
            for n, (label, config) in enumerate(configs(args.total)):
                with Prober(server.url) as prober:
                    made, t_create = timed(
                        http, "POST", "/v1/studies", json={"name": f"b{n}", "config": config}
                    )
                    create = f"{made.status_code} {t_create:6.2f} s"
                    if made.status_code != 201:
                        print(f"{label:42} {create:>14} {'-':>16} {'-':>8} {prober.worst:9.2f} s")
                        continue
                    study = made.json()["id"]
                    plan, t_plan = timed(http, "GET", f"/v1/studies/{study}/plan")
                    stages = len(plan.json()["stages"])
                    _, t_page = timed(http, "GET", f"/dashboard/studies/{study}")
                print(
                    f"{label:42} {create:>14} {stages:6d} st {t_plan:5.2f} s "
                    f"{t_page:6.2f} s {prober.worst:9.2f} s"
                )
            steps = args.segment_steps
            config = {"lr_min": 1e-3, "lr_max": 1.0, "tau0": steps, "tau_max": steps}
            config |= {"explore_ratio": 1.0, "k": 2, "planner": "fixed"}
            study = http.post("/v1/studies", json={"name": "points", "config": config}).json()
            segment = http.post(f"/v1/studies/{study['id']}/next").json()["segment"]
            stored = 0
            for low in range(1, segment["steps"] + 1, 10_000):
                points = [
                    {"step": s, "value": 1.0 + 1.0 / s}
                    for s in range(low, min(low + 10_000, segment["steps"] + 1))
                ]
                answer = http.post(
                    f"/v1/segments/{segment['id']}/observations", json={"observations": points}
                )
                if answer.status_code == 422:  # not every step is kept: send those that are
                    stride = int(answer.json()["detail"].split(" at every ")[1].split("th")[0])
                    every = segment["report_every"]
                    points = [
                        p
                        for p in points
                        if p["step"] % stride == 0
                        or p["step"] % every == 0
                        or p["step"] == segment["steps"]
                    ]
                    answer = http.post(
                        f"/v1/segments/{segment['id']}/observations",
                        json={"observations": points},
                    )
                stored += answer.json()["accepted"]
            with Prober(server.url) as prober:
                done, t_complete = timed(http, "POST", f"/v1/segments/{segment['id']}/complete")
                _, t_page = timed(http, "GET", f"/dashboard/studies/{study['id']}")
            print(
                f"segment of {steps} steps, a point at each: stored {stored}, complete "
                f"{done.status_code} {t_complete:.2f} s, page {t_page:.2f} s, "
                f"healthz max {prober.worst:.2f} s"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
