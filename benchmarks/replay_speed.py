"""Batch replay speed: studies per second for `stagelr replay verify` over N stored studies.

Records a few distinct studies through the real study service (``StudyService`` on a
SQLite file, driven by the synthetic job of ``stagelr_service.testing.simulation``: real tuner,
real GP, real store; no HTTP, for speed), then fills the database to N studies by
importing copies of them under new names (``stagelr import``'s code path), and replays
them all with ``replay verify`` in worker processes, as the CLI does. Prints the figures.

    python benchmarks/replay_speed.py                 # 1000 studies, 2 workers
    python benchmarks/replay_speed.py --studies 100 --workers 1
    python benchmarks/replay_speed.py --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from stagelr.models import (  # noqa: E402
    StudyConfig,
    StudyCreate,
)
from stagelr_service.exchange import (  # noqa: E402
    ExportedStudy,
    export_studies,
    header_line,
    import_studies,
)
from stagelr_service.replay.batch import StudySelection, replay_many, select_studies  # noqa: E402
from stagelr_service.store import Store, migrate  # noqa: E402
from stagelr_service.studies import StudyService  # noqa: E402
from stagelr_service.testing.simulation import SyntheticJob, drive_service  # noqa: E402

#: A study of three stages (60, 120, 120 steps), 4 candidates each: 15 decisions.
CONFIG = StudyConfig(lr_min=1e-4, lr_max=3.0, tau0=60, tau_max=120, total_steps=300, k=4)


def record(service: StudyService, name: str, seed: int) -> int:
    """One study driven to its end by the synthetic job through the study service."""
    config = CONFIG.model_copy(update={"seed": seed})
    study, _ = service.create_study(StudyCreate(name=name, config=config))
    drive_service(service, study.id, SyntheticJob(seed=seed, best_lr=0.02 * (1 + seed % 7)))
    return study.id


def fill(url: str, studies: int, distinct: int) -> tuple[float, float]:
    """Record ``distinct`` studies, then import copies up to ``studies``; the seconds
    each part took."""
    from stagelr_service.optimizer import GPOptimizer

    started = time.perf_counter()
    with Store(url) as store:
        service = StudyService(store, GPOptimizer())
        ids = [record(service, f"base-{i}", seed=i) for i in range(distinct)]
        recorded = time.perf_counter() - started
        buffer = io.StringIO()
        export_studies(store, ids, buffer)
        bases = [
            ExportedStudy.model_validate_json(line) for line in buffer.getvalue().splitlines()[1:]
        ]
        lines = [header_line()]
        for n in range(studies - distinct):
            base = bases[n % len(bases)]
            lines.append(
                base.model_copy(update={"name": f"copy-{n}-{base.name}"}).model_dump_json()
            )
        started = time.perf_counter()
        import_studies(store, lines)
    return recorded, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=20, help="studies recorded for real")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.distinct > args.studies:
        parser.error("--distinct must not exceed --studies")

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/replay.db"
        migrate(url)
        recorded_s, imported_s = fill(url, args.studies, args.distinct)
        with Store(url) as store:
            keys = select_studies(store, StudySelection(all_=True))
        result = replay_many(url, keys, workers=args.workers)
        bad = [r for r in result.reports if r.error or r.mismatches]

    decisions = sum(r.decisions for r in result.reports)
    figures = {
        "studies": len(result.reports),
        "workers": args.workers,
        "decisions": decisions,
        "seconds": round(result.seconds, 2),
        "studies_per_second": round(len(result.reports) / result.seconds, 1),
        "decisions_per_second": round(decisions / result.seconds, 1),
        "not_ok": len(bad),
        "record_seconds": round(recorded_s, 2),
        "import_seconds": round(imported_s, 2),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(f"recorded {args.distinct} studies in {recorded_s:.1f} s through StudyService")
    print(f"imported {args.studies - args.distinct} copies in {imported_s:.1f} s")
    print(
        f"replay verify: {figures['studies']} studies ({decisions} decisions) in "
        f"{result.seconds:.1f} s with {args.workers} workers (worker start-up included): "
        f"{figures['studies_per_second']} studies/s, {figures['decisions_per_second']} "
        f"decisions/s; {len(bad)} not ok"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
