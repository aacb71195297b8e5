"""The tuning-quality benchmark: python -m benchmarks.quality [--quick | --full] [options].

Options: --workload W, --method M (repeatable), --seeds N, --jobs 1|2, --report-only,
--default-frozen-at COMMIT [--frozen-split test|test2|test3].

Trains what the results cache lacks (resumable: every run is written when it finishes),
then prints each split's summary table and tier verdicts and a table per workload
variant, and writes the plots, the JSON summary and the markdown section of
docs/benchmarks.md. The stagelr methods run on a held-out split (test, test2, test3) only
after ``--default-frozen-at COMMIT --frozen-split SPLIT`` has recorded the commit
``default`` is judged at there.

    python -m benchmarks.quality --quick                 # CI smoke: tiny T, 1 seed, 2-point grid
    python -m benchmarks.quality --full --jobs 1         # the protocol (W3 takes days)
    python -m benchmarks.quality --full --report-only    # re-plot from the cache, no training
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from . import harness, report  # noqa: E402
from .workloads import HELD_OUT, VARIANTS, WORKLOADS  # noqa: E402

ROOT = harness.ROOT
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- quality-summary:begin -->", "<!-- quality-summary:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed (CI smoke)")
    mode.add_argument("--full", action="store_true", help="the protocol (the default)")
    parser.add_argument(
        "--workload",
        action="append",
        help=f"a workload ({', '.join(WORKLOADS)}) or variant ({', '.join(VARIANTS)}); repeatable",
    )
    parser.add_argument(
        "--method", action="append", choices=harness.ALL_METHODS, help="repeatable; default all"
    )
    parser.add_argument("--seeds", type=int, default=None, help="override every seed count")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="processes at once")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument(
        "--no-rival-budgets",
        action="store_true",
        help="Prodigy and D-Adapt at T only (no 1.5T/2T/3T runs for their steps-to-target)",
    )
    parser.add_argument(
        "--default-frozen-at",
        metavar="COMMIT",
        default=None,
        help="record that default is frozen at COMMIT for --frozen-split, which lets the "
        "stagelr methods run on that split",
    )
    parser.add_argument(
        "--frozen-split",
        choices=HELD_OUT,
        default="test",
        help="the held-out split --default-frozen-at is for (default: test)",
    )
    parser.add_argument("--results", type=Path, default=None, help="the results cache folder")
    parser.add_argument("--img", type=Path, default=None, help="where the PNGs go")
    parser.add_argument("--json", type=Path, default=None, help="the JSON summary")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="the markdown file whose quality section is replaced (full mode: docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    scratch = ROOT / "benchmarks" / "results" / "tmp" / "quality-quick"
    results = args.results or (scratch if quick else ROOT / "docs" / "results" / "quality")
    img = args.img or (scratch / "img" if quick else ROOT / "docs" / "img")
    json_path = args.json or (
        scratch / "quality.json" if quick else ROOT / "docs" / "results" / "quality.json"
    )
    docs = (
        args.docs if args.docs is not None else (None if quick else ROOT / "docs" / "benchmarks.md")
    )
    methods = args.method or list(harness.ALL_METHODS)

    variants = harness.variants_for(quick, args.workload)
    cache = harness.Cache(results).load()
    if args.default_frozen_at:
        commit = args.default_frozen_at.strip()
        if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
            parser.error(f"--default-frozen-at {commit!r}: give a git commit hash")
        harness.record_frozen(results, commit, args.frozen_split)
    started = time.perf_counter()
    if not args.report_only:

        def log(text: str) -> None:
            print(text, flush=True)

        trained = harness.run_all(
            variants,
            cache,
            methods,
            quick=quick,
            seeds_override=args.seeds,
            jobs=args.jobs,
            log=log,
            rival_budgets=not args.no_rival_budgets,
        )
        print(f"trained {trained} runs in {time.perf_counter() - started:.0f} s", flush=True)

    # The report always covers every variant of the mode, finished or not.
    shown = harness.variants_for(quick, None)
    summaries = [report.summarize(v, cache, quick, args.seeds) for v in shown]
    verdicts = report.tier_verdicts(summaries)
    info = report.machine()
    command = (
        "python -m benchmarks.quality "
        + ("--quick" if quick else "--full --jobs 1")
        + (f" --seeds {args.seeds}" if args.seeds is not None else "")
    )
    img_prefix = "img/" if docs is not None else str(img) + "/"
    frozen = harness.frozen_defaults(results)
    overview = report.render_summary(
        summaries,
        verdicts,
        img_prefix=img_prefix,
        frozen=frozen,
        stagelr_code=harness.code_hashes()["stagelr"],
        equivalent=frozenset(
            old
            for kind, old, _, method in harness.load_aliases(results, harness.code_hashes())
            if kind == "stagelr" and method in (None, "stagelr-default")
        ),
    )
    lines = report.render(
        summaries, verdicts, command=command, info=info, img_prefix=img_prefix, cache=cache
    )
    print("\n".join(overview + [""] + lines))
    for summary, variant in zip(summaries, shown, strict=True):
        path = report.plot(summary, cache, variant, img)
        if path is not None:
            print(f"plot: {path}")
    report.write_json(
        json_path,
        {
            "command": command,
            "quick": quick,
            "machine": info,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code": cache.hashes,
            "default_frozen": frozen,
            "variants": summaries,
            "verdicts": verdicts,
        },
    )
    print(f"json: {json_path}")
    if docs is not None:
        update_docs(docs, overview, SUMMARY_BEGIN, SUMMARY_END)
        update_docs(docs, lines)
        print(f"docs: {docs} (sections between {SUMMARY_BEGIN} and {END})")
    return 0


def update_docs(path: Path, lines: list[str], begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated section of ``path`` (between the markers) with ``lines``."""
    text = path.read_text() if path.exists() else ""
    block = begin + "\n" + "\n".join(lines) + "\n" + end
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
