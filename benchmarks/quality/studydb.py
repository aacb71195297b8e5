"""Rebuild a stagelr database from the quality benchmark's kept studies, to replay them.

    python -m benchmarks.quality.studydb sqlite:////tmp/quality-studies.sqlite3
    stagelr replay verify --all --workers 1 --database-url sqlite:////tmp/quality-studies.sqlite3

The benchmark keeps each stagelr run's study (every segment, observation and decision)
as a gzip-compressed ``stagelr export`` file per variant, ``docs/results/quality/studies/
<variant>.jsonl.gz``. This creates the schema at the given URL and imports every such
file (``--variant`` for some of them), so ``stagelr replay`` can run the tuner over them
again.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

from . import harness


def rebuild(url: str, folder: Path, variants: list[str] | None = None) -> dict[str, int]:
    """Import the kept studies of ``folder`` into the database at ``url``: per variant,
    how many were imported (a study already there, unchanged, is not counted)."""
    from stagelr_service.exchange import import_studies
    from stagelr_service.store.database import Store

    files = sorted((folder / harness.STUDIES_DIR).glob("*.jsonl.gz"))
    if variants:
        files = [f for f in files if f.name.removesuffix(".jsonl.gz") in variants]
    out: dict[str, int] = {}
    with Store(url) as store:
        store.migrate()
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                result = import_studies(store, lines)
            if result.conflicts:
                raise SystemExit(
                    f"{path}: {len(result.conflicts)} conflicts: {result.conflicts[0]}"
                )
            out[path.name.removesuffix(".jsonl.gz")] = len(result.imported)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url", help="SQLAlchemy URL of the database to fill")
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument(
        "--results", type=Path, default=harness.ROOT / "docs" / "results" / "quality"
    )
    args = parser.parse_args(argv)
    counts = rebuild(args.database_url, args.results, args.variant)
    for name, count in counts.items():
        print(f"{name}: {count} studies imported")
    if not counts:
        print(f"no kept studies under {args.results / harness.STUDIES_DIR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
