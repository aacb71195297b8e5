"""Decision latency through the whole service: client -> HTTP -> store -> tuner -> GP.

Starts a real `stagelr serve` on a fresh SQLite file and drives it with simulated jobs
(the synthetic loss model of ``stagelr_service.testing.simulation``, no torch) through the real
client, each job in its own thread. A *decision* is the ``next`` call that follows a
completed explore segment: the server forecasts the stage's candidates, fits the GP and
picks the next LR (or the stage's LR). Also measured: the client's ``report()`` cost on
the training thread.

    python benchmarks/service_latency.py            # 1 and 10 concurrent jobs
    python benchmarks/service_latency.py --quick    # CI smoke: 1 job, a few stages
    python benchmarks/service_latency.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import stagelr  # noqa: E402
from stagelr_service.server import start_server  # noqa: E402
from stagelr_service.testing.simulation import SyntheticJob  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def run_job(url: str, name: str, total_steps: int, seed: int, out: dict[str, list[float]]) -> None:
    job = SyntheticJob(seed=seed, noise=0.003)
    with stagelr.Tuner(
        url,
        study=name,
        lr_min=1e-4,
        lr_max=3.0,
        total_steps=total_steps,
        tau0=100,
        tau_max=400,
        k=10,
        seed=seed,
    ) as tuner:
        after_explore = False
        while True:
            started = time.perf_counter()
            segment = tuner.next_segment()
            elapsed = time.perf_counter() - started
            out["decision" if after_explore else "other"].append(elapsed)
            if segment is None:
                break
            reports, diverged = job.train(
                segment.lr,
                segment.planned_steps,
                segment.report_every,
                explore=segment.kind == "explore",
                stop_above=segment.stop_above,
            )
            started = time.perf_counter()
            for step, value in reports:
                segment.report(step, value)
            out["report"].append((time.perf_counter() - started) / max(1, len(reports)))
            started = time.perf_counter()
            segment.complete(reports[-1][0] if diverged else None)
            out["complete"].append(time.perf_counter() - started)
            after_explore = segment.kind == "explore"


def measure(url: str, jobs: int, total_steps: int, tag: str) -> dict[str, object]:
    results: list[dict[str, list[float]]] = [
        {"decision": [], "other": [], "report": [], "complete": []} for _ in range(jobs)
    ]
    threads = [
        threading.Thread(
            target=run_job, args=(url, f"{tag}-{i}", total_steps, i, results[i]), daemon=True
        )
        for i in range(jobs)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    merged = {key: [v for r in results for v in r[key]] for key in results[0]}
    ms = {key: [v * 1e3 for v in values] for key, values in merged.items()}
    return {
        "jobs": jobs,
        "decisions": len(ms["decision"]),
        "decision_ms": {q: percentile(ms["decision"], q) for q in (50, 95, 99)},
        "other_next_ms": {q: percentile(ms["other"], q) for q in (50, 95, 99)},
        "complete_ms": {q: percentile(ms["complete"], q) for q in (50, 95, 99)},
        "report_us_mean": statistics.fmean(merged["report"]) * 1e6 if merged["report"] else 0,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 job, 2 stages")
    parser.add_argument("--jobs", type=int, nargs="*", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    jobs_list = args.jobs or ([1] if args.quick else [1, 10])
    total_steps = 300 if args.quick else 1500

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(f"sqlite:///{tmp}/bench.db", Path(tmp) / "server.log")
        try:
            rows = [measure(server.url, j, total_steps, f"bench-{j}") for j in jobs_list]
        finally:
            server.stop()

    print(
        f"service decision latency: stagelr serve on SQLite, client in threads "
        f"({platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()})"
    )
    print("decision = `next` after a completed explore segment (forecasts + GP + insert);")
    print("jobs train in zero time, so more than one job measures the saturated server\n")
    header = (
        f"{'jobs':>4} {'decisions':>9}  {'decision p50/p95/p99 ms':>24}  "
        f"{'other next p50/p95 ms':>21}  {'complete p50/p95 ms':>19}  {'report() us':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        d, o, c = row["decision_ms"], row["other_next_ms"], row["complete_ms"]
        print(
            f"{row['jobs']:>4} {row['decisions']:>9}  "
            f"{d[50]:>7.1f} /{d[95]:>7.1f} /{d[99]:>7.1f}  "  # type: ignore[index]
            f"{o[50]:>9.1f} /{o[95]:>9.1f}  "  # type: ignore[index]
            f"{c[50]:>8.1f} /{c[95]:>8.1f}  "  # type: ignore[index]
            f"{row['report_us_mean']:>11.1f}  "
            f"{row['decisions'] / row['wall_s']:>11.1f}"  # type: ignore[operator]
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
