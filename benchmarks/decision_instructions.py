"""The server's work per decision in CPU instructions, counted by valgrind: a figure that
a shared, noisy machine does not move.

Time on a machine of two shared cores swings by 2x within an hour (docs/benchmarks.md,
section 7), so a change worth 10% of a decision's CPU is lost in the noise of a load run.
valgrind's callgrind counts the instructions a program executes instead: the same code
on the same inputs gives the same count (within a few hundredths of a percent) whatever
else the machine is doing. This drives ``--studies`` studies in process, at the load
benchmark's sizes (stages of 1,000 steps, 10 candidates of 100 steps, the synthetic
job), through ``StudyService.complete_and_next`` on a fresh SQLite file (or the
PostgreSQL of ``--postgres-url``), and counts only what runs inside those calls (the
job's simulation and the setup are not counted): the store's reads and writes, the
forecast, the GP, the records. HTTP is not included (the load benchmark measures the
whole path).

    python benchmarks/decision_instructions.py                        # this tree
    python benchmarks/decision_instructions.py --baseline-tree /tmp/before   # old, then new
    python benchmarks/decision_instructions.py --postgres-url postgresql://...
    python benchmarks/decision_instructions.py --reports-between   # reports land between

``--baseline-tree DIR`` (``git archive`` of the code before a change) runs the same
studies with that tree's ``client``, ``service`` and root first on ``PYTHONPATH``, then
with this one's, and prints both counts, their ratio, and whether the two made the same
decisions (the chosen LRs, compared exactly). ``--reports-between`` sends half of each
segment's points as a report of its own before the completion (not counted), as the load
benchmark's jobs do: the study then changed since the decision before it, and a server
that keeps the histories it read reads again what may have changed. Needs valgrind
(Debian's package).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from trees import tree_pythonpath  # benchmarks/ is on sys.path

#: The child's program: run the studies, toggling callgrind's collection around each
#: decision. It prints one JSON line: decisions made and a digest of the chosen LRs.
CHILD = r"""
import hashlib, json, os, subprocess, sys, tempfile
from sqlalchemy.engine import make_url
from stagelr.models import (CompleteRequest, ObservationBatch, ObservationIn, SegmentKind,
                            StudyConfig, StudyCreate)
from stagelr_service.optimizer import GPOptimizer
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob

url = make_url(sys.argv[1] or f"sqlite:///{tempfile.mkdtemp()}/decisions.db")
studies = int(sys.argv[2])
collect = sys.argv[3] == "1"
tag = sys.argv[4]
between = sys.argv[5] == "1"
migrate(url)
config = StudyConfig(lr_min=1e-4, lr_max=3.0, tau0=1000, tau_max=1000, total_steps=1000,
                     k=10, metric_schedule="train_loss")

def toggle(state):
    if collect:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())],
                       check=True, capture_output=True)

digest = hashlib.sha256()
decisions = 0
with Store(url) as store:
    service = StudyService(store, GPOptimizer())
    jobs = []
    for i in range(studies):
        study, _ = service.create_study(
            StudyCreate(name=f"{tag}-{i}", config=config.model_copy(update={"seed": i})))
        jobs.append([SyntheticJob(seed=i, noise=0.003), service.next_segment(study.id).segment])
    active = True
    while active:
        active = False
        for job in jobs:
            segment = job[1]
            if segment is None or segment.kind is not SegmentKind.explore:
                continue
            active = True
            reports, _ = job[0].train(segment.lr, segment.steps, segment.report_every,
                                      explore=True, stop_above=segment.stop_above)
            points = [ObservationIn(step=s, value=v) for s, v in reports]
            if between and len(points) > 1:
                # the first half as a report of its own (not counted), as a job's
                # background thread sends it while the segment trains
                service.add_observations(
                    segment.id, ObservationBatch(observations=points[: len(points) // 2]))
            request = CompleteRequest(observations=points)
            toggle("on")
            answer = service.complete_and_next(segment.id, request)
            toggle("off")
            job[1] = answer.next.segment
            decisions += 1
            digest.update(repr(None if job[1] is None else job[1].lr).encode())
print(json.dumps({"decisions": decisions, "lrs": digest.hexdigest()[:16]}))
"""


def child_env(tree: Path | None) -> dict[str, str]:
    """The child's environment: ``tree``'s (None: this checkout's) code first on
    ``PYTHONPATH`` (``trees.py``), one torch thread."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=tree_pythonpath(tree))


def run(
    tree: Path | None, studies: int, database: str, tag: str, between: bool = False
) -> dict[str, Any]:
    """Count the instructions of one tree's decisions; its figures."""
    env = child_env(tree)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        process = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                CHILD,
                database,
                str(studies),
                "1",
                tag,
                "1" if between else "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if process.returncode != 0:
            raise SystemExit(f"the child failed:\n{process.stderr[-3000:]}")
        found = re.search(r"Collected : (\d+)", process.stderr)
        if found is None:
            raise SystemExit(f"callgrind printed no count:\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    instructions = int(found.group(1))
    return {
        "tree": "this tree" if tree is None else str(tree),
        "decisions": result["decisions"],
        "lrs": result["lrs"],
        "instructions": instructions,
        "per_decision_m": instructions / result["decisions"] / 1e6,
    }


def report(rows: list[dict[str, Any]], backend: str) -> str:
    """The printed table: each tree's count per decision; with two, their ratio and
    whether they made the same decisions."""
    lines = [f"instructions per decision (complete_and_next in process, {backend}):"]
    for row in rows:
        lines.append(
            f"  {row['tree']:<30} {row['decisions']:>4} decisions  "
            f"{row['per_decision_m']:8.2f} M instructions each  (LRs {row['lrs']})"
        )
    if len(rows) == 2:
        old, new = rows
        same = "the same decisions" if old["lrs"] == new["lrs"] else "DIFFERENT decisions"
        ratio = float(new["instructions"]) / float(old["instructions"])
        lines.append(f"  new / old: {ratio:.3f} ({same})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3, help="studies (10 decisions each)")
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="a PostgreSQL database to run on (its tables are created; studies get fresh names)",
    )
    parser.add_argument(
        "--reports-between",
        action="store_true",
        help="send the first half of each segment's points as a report of its own before "
        "its completion (not counted), as the load benchmark's jobs do",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    database = args.postgres_url or ""
    # Study names unique to this run, so that a PostgreSQL database can be reused.
    tag = hashlib.sha256(os.urandom(8)).hexdigest()[:8]
    rows = []
    if args.baseline_tree is not None:
        rows.append(
            run(
                args.baseline_tree.resolve(),
                args.studies,
                database,
                f"old-{tag}",
                args.reports_between,
            )
        )
    rows.append(run(None, args.studies, database, f"new-{tag}", args.reports_between))
    backend = "postgresql" if database else "sqlite"
    print(report(rows, backend))
    if args.json is not None:
        args.json.write_text(json.dumps({"backend": backend, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
