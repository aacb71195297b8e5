"""Service load: many simulated jobs through the real client against live servers.

Each job is a thread running ``stagelr.Tuner`` against a `stagelr serve` child process;
it trains nothing (``stagelr_service.testing.simulation.SyntheticJob`` gives its losses) but
keeps a real job's pace: one step every ``--step-ms`` milliseconds, a report at every
step. The jobs are split over two client processes and start spread over the first
explore segment. Backends: SQLite (one server), PostgreSQL (one server), PostgreSQL
with two replicas (two servers on one database, jobs alternating between them); each
server runs ``--workers`` processes (`stagelr serve --workers`, default one per CPU).
``--baseline-tree DIR`` measures every row first with the servers and the jobs' client of
another checkout (the code before a change), then with this one's, in the same run.

Figures, per backend and number of jobs:

- decision latency: from the moment a job ends an explore segment (``complete()``,
  which first flushes its queued reports) until the next segment is in its hands
  (``next_segment()``), measured on the client: p50 / p95 / p99;
- observation ingest: points accepted by the service per second of the run;
- errors: exceptions in any job;
- server CPU per decision: the server processes' CPU time (psutil, every replica and
  worker) over the run, divided by the decisions; server memory: the largest RSS seen
  (the sum over those processes);
- database CPU per decision (PostgreSQL): the same for the machine's ``postgres``
  processes (its backends, which do a statement's work, and its writers);
- ``report()``: its mean cost on the training thread, in microseconds.
- when the decisions arrived: per second over the run's middle (mean, p90, max), and the
  median decision in each third of the run (a queue that builds up climbs).

    python benchmarks/load.py                         # 10, 100, 300 jobs x 3 backends
    python benchmarks/load.py --quick                 # CI smoke: 5 jobs on SQLite, 2 workers
    python benchmarks/load.py --jobs 100 --backend sqlite --profile /tmp/prof.html
    python benchmarks/load.py --jobs 300 --backend sqlite --profile /tmp/p.txt --profile-idle
    python benchmarks/load.py --jobs 300 --baseline-tree /tmp/before   # old and new
    python benchmarks/load.py --jobs 300 --step-spread 0.5   # jobs' steps over 50-150 ms

Needs PostgreSQL for the postgres backends (``--postgres-url``, default the local server;
each run gets a fresh database, dropped afterwards). Timings depend on what else the
machine runs: the output says how loaded it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import psutil  # noqa: E402
from trees import tree_pythonpath  # noqa: E402

import stagelr  # noqa: E402
from stagelr_service.server import ServerProcess, start_server  # noqa: E402
from stagelr_service.settings import usable_cpus  # noqa: E402
from stagelr_service.testing.simulation import SyntheticJob  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sqlite", "postgres", "postgres-2")
#: The bar (BENCHMARK.md section 2), at 300 concurrent jobs on one machine.
BAR = {"p50_ms": 30.0, "p99_ms": 150.0, "report_us": 50.0}
BAR_JOBS = 300


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- the jobs


def one_job(
    url: str, name: str, seed: int, sizes: dict[str, Any], step_s: float, delay: float
) -> dict[str, Any]:
    stages = sizes["total_steps"] // sizes["tau0"]
    """One simulated job: real client, synthetic losses, a real job's pace."""
    out: dict[str, Any] = {
        "decisions": [],
        "arrivals": [],  # (wall clock, seconds) of each timed decision
        "next_only": [],
        "other": [],
        "report_s": 0.0,
        "reports": 0,
        "report_samples": [],
        "errors": [],
        "retries": 0,
    }
    time.sleep(delay)
    job = SyntheticJob(seed=seed, noise=0.003)
    transport = stagelr.RetryTransport()  # the client's default, kept to count its retries
    try:
        with stagelr.Tuner(
            url,
            study=name,
            transport=transport,
            lr_min=1e-4,
            lr_max=3.0,
            seed=seed,
            metric_schedule="train_loss",
            **sizes,  # the stage sizes, and the sender's linger when --linger is given
        ) as tuner:
            segment = tuner.next_segment()
            while segment is not None:
                explore = segment.kind == "explore"
                if not explore and segment.stage + 1 >= stages:
                    # The last stage's LR is served: that was the last decision to time.
                    tuner.stop()
                    break
                # The losses of the whole segment, then paced out step by step.
                reports, _ = job.train(
                    segment.lr,
                    segment.planned_steps,
                    1,
                    explore=explore,
                    stop_above=segment.stop_above,
                )
                values = dict(reports)
                next_tick = time.perf_counter()
                for step in segment.steps():
                    next_tick += step_s
                    pause = next_tick - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    if step in values and segment.report_due(step):
                        started = time.perf_counter()
                        segment.report(step, values[step])
                        took = time.perf_counter() - started
                        out["report_s"] += took
                        out["reports"] += 1
                        if out["reports"] % 16 == 1:
                            out["report_samples"].append(took)
                started = time.perf_counter()
                segment.complete()
                asked = time.perf_counter()
                segment = tuner.next_segment()
                done = time.perf_counter()
                if explore:
                    out["decisions"].append(done - started)
                    out["arrivals"].append((time.time() - (done - started), done - started))
                    out["next_only"].append(done - asked)
                else:
                    out["other"].append(done - asked)
    except Exception as error:  # every failure is a figure of this benchmark
        out["errors"].append(f"{type(error).__name__}: {error}")
    out["retries"] = transport.retries
    return out


def database_cpu_seconds() -> float:
    """The CPU time so far (user and system) of this machine's PostgreSQL processes: the
    server's backends, which run the statements, and its background writers. A backend
    that exits takes its time with it; a server's pooled connections live through a run.
    """
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] not in ("postgres", "postmaster"):
            continue
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def job_step_s(index: int, step_s: float, step_spread: float) -> float:
    """Job ``index``'s step time: ``step_s`` for every job (``step_spread`` 0, lockstep),
    else spread evenly over ``step_s * (1 +- step_spread)`` (a golden-ratio sequence over
    the job indices: a lab's jobs of different models and hardware)."""
    if not step_spread:
        return step_s
    fraction = (index * 0.6180339887498949) % 1.0
    return step_s * (1.0 + step_spread * (2.0 * fraction - 1.0))


def client_process(
    urls: list[str],
    indices: list[int],
    tag: str,
    sizes: dict[str, Any],
    step_s: float,
    start_at: float,
    step_spread: float = 0.0,
) -> dict[str, Any]:
    """Run the jobs ``indices`` as threads of this process; their merged figures."""
    results: list[dict[str, Any]] = [{} for _ in indices]
    spread = step_s * sizes["tau0"] * 0.1  # over the first explore segment
    cpu0 = time.process_time()

    def target(slot: int, index: int) -> None:
        delay = max(0.0, start_at - time.time()) + spread * (index / max(1, len(indices) * 2))
        pace = job_step_s(index, step_s, step_spread)
        results[slot] = one_job(
            urls[index % len(urls)], f"{tag}-{index}", index, sizes, pace, delay
        )

    threads = [
        threading.Thread(target=target, args=(slot, index), daemon=True)
        for slot, index in enumerate(indices)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = ("decisions", "arrivals", "next_only", "other", "errors", "report_samples")
    merged: dict[str, Any] = {key: [] for key in keys}
    merged["client_cpu_s"] = time.process_time() - cpu0
    merged["client_code"] = str(Path(stagelr.__file__).resolve().parent)
    merged["report_s"] = sum(r["report_s"] for r in results)
    merged["retries"] = sum(r["retries"] for r in results)
    merged["reports"] = sum(r["reports"] for r in results)
    for r in results:
        for key in keys:
            merged[key] += r[key]
    return merged


@contextlib.contextmanager
def client_code(tree: Path | None) -> Any:
    """While the client processes start, ``tree``'s ``client`` first on ``sys.path`` (None:
    nothing changes). A spawned process takes its parent's ``sys.path`` as it starts, so
    its jobs import that tree's ``stagelr``: a baseline row measures the code before a
    change on both ends, the jobs' client as well as the servers (the simulated jobs and
    the server helpers stay this checkout's)."""
    if tree is None:
        yield
        return
    saved = list(sys.path)
    sys.path.insert(0, str(tree / "client"))
    try:
        yield
    finally:
        sys.path[:] = saved


# --------------------------------------------------------------------------- servers


class Servers:
    """`stagelr serve` children on one database (one per replica, each with ``workers``
    worker processes), with their CPU and RSS summed over every process of theirs.

    ``tree`` runs the servers from another checkout's code (its ``client``, ``service``
    and root first on PYTHONPATH): the code before a change, measured in the same run.
    """

    def __init__(
        self,
        database_url: str,
        replicas: int,
        folder: Path,
        *,
        workers: int = 1,
        tree: Path | None = None,
    ) -> None:
        env = {"STAGELR_LOG_LEVEL": "warning"}
        if workers > 1:
            env["STAGELR_WORKERS"] = str(workers)
        # The servers run ``tree``'s code, or this checkout's (trees.py).
        env["PYTHONPATH"] = tree_pythonpath(tree)
        self.processes: list[ServerProcess] = []
        #: each replica's Prometheus folder (several workers): its workers' own counts
        self.metric_folders: list[Path] = []
        for i in range(replicas):
            replica_env = dict(env)
            if workers > 1:
                self.metric_folders.append(folder / f"metrics-{i}")
                replica_env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metric_folders[-1])
            self.processes.append(
                start_server(
                    database_url, folder / f"server-{i}.log", migrate=(i == 0), env=replica_env
                )
            )
        self.ps = [psutil.Process(p.process.pid) for p in self.processes]
        if workers > 1:
            self._settle(workers)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def tree(self) -> list[psutil.Process]:
        """Every process of the servers: each replica and its workers."""
        out: list[psutil.Process] = []
        for p in self.ps:
            out.append(p)
            with contextlib.suppress(psutil.Error):
                out.extend(p.children(recursive=True))
        return out

    def _settle(self, workers: int, timeout: float = 90.0) -> None:
        """Wait until every worker has started (imported torch, warmed up): the server
        tree has its processes and stays nearly idle for a second."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and quiet < 4:
            procs = self.tree()
            before = self._cpu(procs)
            time.sleep(0.25)
            busy = (self._cpu(procs) - before) / 0.25
            enough = len(procs) >= len(self.ps) * (workers + 1)
            quiet = quiet + 1 if enough and busy < 0.1 * len(procs) else 0

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def requests_by_worker(self) -> list[int]:
        """How many requests each worker answered (several workers), largest first: how
        evenly the kernel spread the jobs' connections over them."""
        from prometheus_client.mmap_dict import MmapedDict

        counts: list[int] = []
        for folder in self.metric_folders:
            for path in sorted(folder.glob("counter_*.db")):
                total = 0.0
                for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                    if json.loads(key)[1] == "stagelr_http_requests_total":
                        total += value
                counts.append(round(total))
        return sorted(counts, reverse=True)

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.processes]

    def database_cpu_seconds(self) -> float:
        """CPU time of the machine's PostgreSQL processes so far (0 without them)."""
        return database_cpu_seconds()

    def cpu_seconds(self) -> float:
        return self._cpu(self.tree())

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            rss = 0
            for p in self.tree():
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)

    def __enter__(self) -> Servers:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join(timeout=2)
        for p in self.processes:
            p.stop()


def postgres_database(admin_url: str) -> tuple[str, Any]:
    """A fresh database on the server of ``admin_url``; returns (url, drop)."""
    import psycopg

    name = f"stagelr_load_{uuid.uuid4().hex[:10]}"
    base = admin_url.rsplit("/", 1)[0]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


# --------------------------------------------------------------------------- a run


def measure(
    backend: str,
    jobs: int,
    sizes: dict[str, Any],
    step_s: float,
    args: argparse.Namespace,
    *,
    code: str = "new",
    workers: int = 1,
    tree: Path | None = None,
) -> dict[str, Any]:
    """One row: ``jobs`` jobs against fresh servers of ``backend``; ``code`` labels the
    code of the servers and the jobs' client (``tree``: another checkout's, else this
    one's)."""
    drop = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if backend == "sqlite":
            url = f"sqlite:///{folder}/load.db"
        else:
            url, drop = postgres_database(args.postgres_url)
        replicas = 2 if backend == "postgres-2" else 1
        profiler = None
        try:
            with Servers(url, replicas, folder, workers=workers, tree=tree) as servers:
                if args.profile:
                    # With several workers, the first worker (their load is alike).
                    first = servers.ps[0]
                    workers_of = [
                        c for c in first.children() if "spawn_main" in " ".join(c.cmdline())
                    ]
                    path = Path(args.profile)
                    if args.baseline_tree is not None:  # one file per code: x-old.txt, x-new.txt
                        path = path.with_name(f"{path.stem}-{code}{path.suffix}")
                    profiler = start_profiler(
                        (workers_of or [first])[0].pid,
                        str(path),
                        gil_only=args.profile_gil,
                        idle=args.profile_idle,
                    )
                cpu0 = servers.cpu_seconds()
                db0 = servers.database_cpu_seconds() if backend != "sqlite" else 0.0
                load0 = os.getloadavg()[0]
                started = time.perf_counter()
                start_at = time.time() + 2.0
                processes = min(args.client_processes, jobs)
                split = [list(range(i, jobs, processes)) for i in range(processes)]
                tag = f"load-{backend}-{jobs}-{uuid.uuid4().hex[:6]}"
                with (
                    client_code(tree),
                    ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool,
                ):
                    parts = list(
                        pool.map(
                            client_process,
                            [servers.urls] * processes,
                            split,
                            [tag] * processes,
                            [sizes] * processes,
                            [step_s] * processes,
                            [start_at] * processes,
                            [args.step_spread] * processes,
                        )
                    )
                wall = time.perf_counter() - started - max(0.0, start_at - time.time())
                cpu = servers.cpu_seconds() - cpu0
                db = servers.database_cpu_seconds() - db0 if backend != "sqlite" else math.nan
                inside = server_side_ms(servers.urls)
                by_worker = servers.requests_by_worker()
                load1 = os.getloadavg()[0]
                rss = servers.peak_rss
                accepted = sum(p["reports"] for p in parts)
        finally:
            if profiler is not None:
                stop_profiler(profiler)
            if drop is not None:
                drop()
    decisions = [v for p in parts for v in p["decisions"]]
    arrivals = [tuple(a) for p in parts for a in p["arrivals"]]
    next_only = [v for p in parts for v in p["next_only"]]
    other = [v for p in parts for v in p["other"]]
    errors = [e for p in parts for e in p["errors"]]
    report_calls = sum(p["reports"] for p in parts)
    return {
        "code": code,
        "backend": backend,
        "jobs": jobs,
        "replicas": replicas,
        "workers": workers,
        "decisions": len(decisions),
        "decision_ms": {str(q): percentile(decisions, q) * 1e3 for q in (50, 95, 99)},
        "step_spread": args.step_spread,
        "arrivals": arrival_pattern(arrivals),
        "next_only_ms": {str(q): percentile(next_only, q) * 1e3 for q in (50, 95, 99)},
        "other_next_ms": {str(q): percentile(other, q) * 1e3 for q in (50, 95, 99)},
        "ingest_points_per_s": accepted / wall if wall > 0 else math.nan,
        "points": accepted,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        # Requests the client sent again (a 503, a dropped connection): hidden in latency.
        "client_retries": sum(p["retries"] for p in parts),
        # The client package the jobs' processes imported: ``tree``'s for its rows.
        "client_code": sorted({p["client_code"] for p in parts}),
        "server_cpu_ms_per_decision": cpu / max(1, len(decisions)) * 1e3,
        # PostgreSQL's own processes (NaN on SQLite, which runs inside the server's).
        "database_cpu_ms_per_decision": db / max(1, len(decisions)) * 1e3,
        # Mean time inside the server (its request middleware, all replicas) per route:
        # against the client's figures, what the client, the loop and the kernel add.
        "server_side_mean_ms": inside,
        # Requests each worker answered (several workers): how evenly they shared the load.
        "requests_by_worker": by_worker,
        "server_cpu_s": cpu,
        "server_cpu_share": cpu / wall if wall > 0 else math.nan,
        # The simulated jobs' processes share the machine's cores with the server.
        "client_cpu_share": sum(p["client_cpu_s"] for p in parts) / wall if wall > 0 else math.nan,
        "server_rss_mb": rss / 2**20,
        "report_us": sum(p["report_s"] for p in parts) / max(1, report_calls) * 1e6,
        "report_us_p50": percentile([v for p in parts for v in p["report_samples"]], 50) * 1e6,
        "report_us_p99": percentile([v for p in parts for v in p["report_samples"]], 99) * 1e6,
        "wall_s": wall,
        "loadavg_before_after": [load0, load1],
    }


def arrival_pattern(arrivals: list[tuple[float, float]]) -> dict[str, Any]:
    """How the decisions arrived over the run, and what they waited.

    ``per_s``: decisions arriving per second, over 1-s windows of the run's middle (its
    first and last tenth left out: the jobs' start and end): mean, p90 and max; jobs
    whose decisions come in bunches show a p90 and max far above the mean. ``p50_ms_by_
    third``: the median decision in each third of the run, by arrival (a queue that
    builds up over the run climbs from third to third)."""
    if len(arrivals) < 10:
        return {}
    ordered = sorted(arrivals)
    t0, t1 = ordered[0][0], ordered[-1][0]
    span = t1 - t0
    lo, hi = t0 + 0.1 * span, t1 - 0.1 * span
    windows = max(1, int(hi - lo))
    counts = [0] * windows
    for t, _ in ordered:
        if lo <= t < lo + windows:
            counts[int(t - lo)] += 1
    thirds = [
        [d for t, d in ordered if t0 + i * span / 3 <= t <= t0 + (i + 1) * span / 3]
        for i in range(3)
    ]
    return {
        "per_s": {
            "mean": sum(counts) / windows,
            "p90": percentile([float(c) for c in counts], 90),
            "max": max(counts),
        },
        "p50_ms_by_third": [percentile(third, 50) * 1e3 for third in thirds],
    }


def server_side_ms(urls: list[str]) -> dict[str, float]:
    """Mean request time inside the servers (stagelr_http_request_duration_seconds, from
    /metrics) of the decision path's routes, in ms; this includes every request of the
    run (exploit segments' too)."""
    import httpx

    routes = {
        "next": "/v1/studies/{study_id}/next",
        "complete": "/v1/segments/{segment_id}/complete",
        "complete-and-next": "/v1/segments/{segment_id}/complete-and-next",
        "observations": "/v1/segments/{segment_id}/observations",
    }
    sums = {name: [0.0, 0.0] for name in routes}
    for url in urls:
        for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
            if not line.startswith("stagelr_http_request_duration_seconds_"):
                continue
            for name, route in routes.items():
                if f'method="POST",route="{route}"' not in line:
                    continue
                if line.startswith("stagelr_http_request_duration_seconds_sum"):
                    sums[name][0] += float(line.rsplit(" ", 1)[1])
                elif line.startswith("stagelr_http_request_duration_seconds_count"):
                    sums[name][1] += float(line.rsplit(" ", 1)[1])
    return {
        name: (total / count * 1e3 if count else math.nan) for name, (total, count) in sums.items()
    }


def start_profiler(pid: int, path: str, *, gil_only: bool = False, idle: bool = False) -> Any:
    """py-spy record on the server, if py-spy is installed (it needs ptrace rights).

    ``gil_only`` samples only the thread holding the GIL: where the CPU goes, without
    the threads waiting on a lock. ``idle`` samples the waiting threads too (blocked on
    a lock, the database, the GIL): where a request's time goes when it is not work."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("--profile: py-spy is not installed; skipping", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--output",
            path,
            "--format",
            "raw" if path.endswith(".txt") else "speedscope",
            # Sample without pausing the server (a paused server is not the one measured);
            # a rate that two busy cores can afford with 40+ threads sampled.
            "--nonblocking",
            "--rate",
            "25" if idle else "100",
            *(["--gil"] if gil_only else []),
            *(["--idle"] if idle else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(process: Any) -> None:
    import signal

    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except Exception:
        process.kill()


# --------------------------------------------------------------------------- output


def anchors() -> dict[str, str]:
    """The reference points of BENCHMARK.md section 2; BoTorch's from our own measurement."""
    botorch = "about 100 ms (BENCHMARK.md)"
    path = ROOT / "docs" / "results" / "decision_latency.json"
    if path.exists():
        ref = json.loads(path.read_text())["reference"]["10"]["log_ei"]
        ours = json.loads(path.read_text())["fast"]["10"]["log_ei"]
        botorch = (
            f"{ref['ref_p50_ms']:.0f} ms p50 / {ref['ref_p95_ms']:.0f} ms p95 at 10 points, "
            f"one thread (benchmarks/decision_latency.py; stagelr's GP: "
            f"{ours['p50_ms']:.1f} ms)"
        )
    return {
        "BoTorch fit_gpytorch_mll + optimize_acqf": botorch,
        "Optuna RDB storage": "about 100 ms per trial (BENCHMARK.md)",
        "Ax get_next_trial": "0.5-2 s (BENCHMARK.md)",
    }


def print_table(rows: list[dict[str, Any]], setup: dict[str, Any]) -> None:
    print(
        f"service load: simulated jobs through stagelr.Tuner against live `stagelr serve` "
        f"processes ({setup['cpu']}, {setup['cores']} cores, python {setup['python']})"
    )
    print(
        f"pace: a step every {setup['step_ms']:g} ms, a report when the segment asks; stages of "
        f"{setup['sizes']['tau0']} steps, k = {setup['sizes']['k']} candidates and the best "
        "one's check (the default preset's windows); "
        + (
            f"job step times spread over {setup['step_ms']:g} ms x (1 +- "
            f"{setup['step_spread']:g}); "
            if setup.get("step_spread")
            else ""
        )
        + "each job runs "
        f"{setup['sizes']['total_steps'] // setup['sizes']['tau0']} stage(s) and stops once "
        f"the last stage's LR is served; {setup['client_processes']} client processes"
    )
    print(
        "report() on the training thread: p50 is the call's own cost; the mean includes "
        "the GIL waits of a process running many job threads"
    )
    print(
        "decision = complete() of an explore segment (flushes its reports) + next_segment(), "
        "on the client (one complete-and-next request where the server has it)"
    )
    print(
        "load = the machine's 1-minute load average before/after (2 cores: above 2 means "
        "other work competes)\n"
    )
    header = (
        f"{'code':>4} {'backend':>10} {'wrk':>3} {'jobs':>4} {'decisions':>9} "
        f"{'decision p50/p95/p99 ms':>24} "
        f"{'next p50':>8} {'points/s':>9} {'errors':>6} {'srv CPU ms/dec':>14} "
        f"{'srv RSS MB':>10} {'report() us p50/mean':>20} {'load':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        d = r["decision_ms"]
        print(
            f"{r.get('code', 'new'):>4} {r['backend']:>10} {r.get('workers', 1):>3} "
            f"{r['jobs']:>4} {r['decisions']:>9} "
            f"{d['50']:>7.1f} /{d['95']:>7.1f} /{d['99']:>7.1f} "
            f"{r['next_only_ms']['50']:>8.1f} {r['ingest_points_per_s']:>9.0f} "
            f"{r['errors']:>6} {r['server_cpu_ms_per_decision']:>14.1f} "
            f"{r['server_rss_mb']:>10.0f} {r['report_us_p50']:>9.1f} /{r['report_us']:>8.1f} "
            f"{r['loadavg_before_after'][0]:>4.1f}/{r['loadavg_before_after'][1]:<4.1f}"
        )
        for sample in r["error_samples"]:
            print(f"{'':>16}error: {sample[:150]}")
    print()
    print("inside the server (mean ms from its request middleware, every request of the run):")
    for r in rows:
        inside = r.get("server_side_mean_ms", {})
        figures = ", ".join(f"{name} {ms:.1f}" for name, ms in inside.items() if not math.isnan(ms))
        clients = r.get("client_cpu_share", math.nan)
        shares = r.get("requests_by_worker") or []
        split = f"; requests by worker {'/'.join(str(n) for n in shares)}" if shares else ""
        database = r.get("database_cpu_ms_per_decision", math.nan)
        if not math.isnan(database):
            split += f"; database CPU {database:.1f} ms/decision"
        pattern = r.get("arrivals") or {}
        if pattern:
            rate, thirds = pattern["per_s"], pattern["p50_ms_by_third"]
            figures += (
                f"; decisions arriving per s mean {rate['mean']:.0f}, p90 {rate['p90']:.0f}, "
                f"max {rate['max']}; p50 by third of the run "
                + "/".join(f"{ms:.0f}" for ms in thirds)
            )
        print(
            f"  {r.get('code', 'new'):>4} {r['backend']:>10} x{r.get('workers', 1)} "
            f"{r['jobs']:>4} jobs: {figures}; cores busy: server "
            f"{r['server_cpu_share']:.2f}, client processes {clients:.2f}{split}; client "
            f"retries {r.get('client_retries', 0)}"
        )
    print()
    print("anchors:")
    for name, value in anchors().items():
        print(f"  {name}: {value}")
    at_bar = [
        r for r in rows if r["jobs"] == BAR_JOBS and r["replicas"] == 1 and r.get("code") != "old"
    ]
    print()
    print(
        f"the bar (BENCHMARK.md): at {BAR_JOBS} jobs on one machine decision p50 <= "
        f"{BAR['p50_ms']:.0f} ms and p99 <= {BAR['p99_ms']:.0f} ms; report() < "
        f"{BAR['report_us']:.0f} us; zero errors"
    )
    for r in at_bar:
        d = r["decision_ms"]
        ok = (
            d["50"] <= BAR["p50_ms"]
            and d["99"] <= BAR["p99_ms"]
            and r["report_us_p50"] < BAR["report_us"]
            and r["errors"] == 0
        )
        print(
            f"  {r['backend']} x{r.get('workers', 1)} workers: {'MET' if ok else 'MISSED'} "
            f"(p50 {d['50']:.1f} ms, p99 "
            f"{d['99']:.1f} ms, report() p50 {r['report_us_p50']:.1f} us, mean "
            f"{r['report_us']:.1f} us, {r['errors']} errors)"
        )
    if not any(r["errors"] for r in rows):
        print("errors: none")


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 5 jobs, SQLite, short")
    parser.add_argument("--jobs", type=int, nargs="+", default=None, help="default 10 100 300")
    parser.add_argument("--backend", choices=BACKENDS, nargs="+", default=None)
    parser.add_argument(
        "--step-ms",
        type=float,
        default=None,
        help="a job's step time (default 100 ms: a fast GPU step; 20 ms is a stress pace)",
    )
    parser.add_argument(
        "--step-spread",
        type=float,
        default=0.0,
        help="spread the jobs' step times evenly over step-ms * (1 +- F) (default 0: every "
        "job at step-ms, in lockstep)",
    )
    parser.add_argument("--stage", type=int, default=None, help="stage length tau (steps)")
    parser.add_argument("--stages", type=int, default=None, help="stages per job")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--workers",
        default=None,
        help="worker processes of each server (`stagelr serve --workers`; default `auto`: one "
        "per CPU; --quick: 2, so that CI runs the several-process path)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="another checkout (e.g. `git archive` of the code before a change): every row is "
        "run first with its servers and its client in the jobs' processes, then with this "
        "tree's, in this run",
    )
    parser.add_argument(
        "--linger", type=float, default=None, help="the client's linger (default: its own)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STAGELR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--baseline-workers",
        type=int,
        default=1,
        help="worker processes of the baseline tree's servers (1: code before --workers)",
    )
    parser.add_argument(
        "--profile", default=None, help="py-spy output (1st server; .txt: raw, else speedscope)"
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="profile only the thread holding the GIL"
    )
    parser.add_argument(
        "--profile-idle",
        action="store_true",
        help="profile the waiting threads too (where a request waits, not only works)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    jobs_list = args.jobs or ([5] if args.quick else [10, 100, 300])
    backends = args.backend or (["sqlite"] if args.quick else list(BACKENDS))
    step_ms = args.step_ms if args.step_ms is not None else (2.0 if args.quick else 100.0)
    stage = args.stage or (50 if args.quick else 1000)
    stages = args.stages or 1
    sizes: dict[str, Any] = {
        "tau0": stage, "tau_max": stage, "k": 10, "total_steps": stage * stages
    }  # fmt: skip
    if args.linger is not None:
        sizes["linger"] = args.linger
    setup = {
        **machine(),
        "step_ms": step_ms,
        "step_spread": args.step_spread,
        "sizes": sizes,
        "client_processes": args.client_processes,
    }
    chosen = args.workers or ("2" if args.quick else "auto")
    workers = usable_cpus() if chosen == "auto" else int(chosen)
    setup["workers"] = workers
    runs: list[dict[str, Any]] = []
    if args.baseline_tree is not None:
        setup["baseline_tree"] = str(args.baseline_tree.resolve())
        runs.append(
            {
                "code": "old",
                "workers": args.baseline_workers,
                "tree": args.baseline_tree.resolve(),
            }
        )
    runs.append({"code": "new", "workers": workers, "tree": None})
    rows = []
    for backend in backends:
        for jobs in jobs_list:
            for run in runs:
                row = measure(backend, jobs, sizes, step_ms / 1e3, args, **run)
                rows.append(row)
                d = row["decision_ms"]
                print(
                    f"  {run['code']} {backend} x {jobs} ({run['workers']} worker(s)): decision "
                    f"p50 {d['50']:.1f} ms p99 {d['99']:.1f} ms, {row['errors']} errors, "
                    f"{row['wall_s']:.0f} s",
                    flush=True,
                )
    print()
    print_table(rows, setup)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"setup": setup, "rows": rows, "anchors": anchors(), "bar": BAR},
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
