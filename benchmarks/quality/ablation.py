"""The ablation of stagelr's `default` preset: each switch of DESIGN 4.2 turned off (or
back to the reference's setting) against `default` as shipped, on the same seeds.

    python -m benchmarks.quality.ablation [--quick] [--workload W ...] [--seeds N] [--jobs 2]

Runs go to the quality benchmark's results cache (same keys: `default` itself is shared
with the main benchmark; an ablated run is `stagelr-default` with its overrides as the
task's config), so a rerun trains only what is missing. The table goes to
docs/benchmarks.md between its markers and to docs/results/ablation.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from . import harness, report  # noqa: E402
from .harness import Cache, Task  # noqa: E402
from .workloads import Variant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
METHOD = "stagelr-default"

#: (label, what the row changes, overrides): one switch at a time, the rest as `default`
#: ships. Switches on by default are turned off; those off by default are turned on.
SWITCHES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "budget planner",
        "on: planner budget (3 searched stages, then the decay)",
        {"planner": "budget"},
    ),
    (
        "search size",
        "the reference's: 10 candidates of tau/10 (default: 6 of tau/20)",
        {"k": 10, "explore_ratio": 0.1},
    ),
    ("final decay", "off: constant to the end", {"decay_fraction": 0.0}),
    (
        "hold",
        "off: planner fixed (every stage before the decay searches)",
        {"planner": "fixed"},
    ),
    (
        "annealed probe",
        "off: constant-LR windows, the robust forecast at the stage horizon",
        {"probe": "constant", "forecast": "robust"},
    ),
    (
        "window-end score",
        "off: the annealed window forecast to the stage horizon by the robust fit",
        {"forecast": "robust"},
    ),
    (
        "no tie rule",
        "off: a tie within the lowest score's noise goes to the hotter LR",
        {"selection": "hottest_within_best_noise"},
    ),
    (
        "initial design",
        "off: one random start (default: one candidate in each half of the range)",
        {"initial_design": 1},
    ),
    ("continue_best", "off: the stage restarts from its start", {"continue_best": False}),
    (
        "range-test bounds",
        "on: no bounds given; a 100-step range test over 1e-6..10 finds them",
        {"lr_bounds": "range_test"},
    ),
    ("same_data", "off: each candidate its own batches", {"same_data": False}),
    ("noise-aware GP", "off: GP learns its own noise", {"noise_aware": False}),
    ("divergence stop", "off: diverging candidates run on", {"divergence_stop": False}),
    ("carry-over", "off: every search starts from the initial design", {"carry_over": False}),
    (
        "real acquisition",
        "off: LCB with the reference's kappa 1000",
        {"acquisition": "lcb", "kappa": 1000.0},
    ),
]
QUICK_VARIANTS = ["nqm-b8", "digits"]
FULL_VARIANTS = ["nqm-b8", "nqm-b64", "digits", "digits-noisy"]


def tasks_for(variant: Variant, seeds: list[int]) -> list[Task]:
    out = [Task(variant, METHOD, s) for s in seeds]
    for _, _, overrides in SWITCHES:
        config = tuple(sorted(overrides.items()))
        out += [Task(variant, METHOD, s, config) for s in seeds]
    return out


def _execute(task: Task) -> dict[str, Any]:
    return harness.execute(task)


def train(tasks: list[Task], cache: Cache, jobs: int) -> int:
    missing = [t for t in tasks if cache.get(t) is None]
    if not missing:
        return 0
    server = harness.start_service(cache.folder)
    try:
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=get_context("spawn"),
            initializer=harness._init_pool_worker,
            initargs=(server.url,),
        ) as pool:
            futures = {pool.submit(_execute, t): t for t in missing}
            for future in as_completed(futures):
                task = futures[future]
                run = future.result()
                cache.add(task, run)
                print(harness._describe(task, run), flush=True)
    finally:
        server.stop()
    for name in sorted({t.variant.name for t in missing}):
        cache.compact([name])
        harness.export_studies(cache, name)
    return len(missing)


def _final(record: dict[str, Any] | None) -> float:
    if record is None:
        return math.nan
    value = record["run"]["final_loss"]
    return math.inf if value is None else float(value)


def summarize(variant: Variant, cache: Cache, seeds: list[int]) -> dict[str, Any]:
    """Per switch: median final loss and charge, and the paired difference to default
    (ablated minus default: positive means the switch pays)."""
    base = [_final(cache.get(Task(variant, METHOD, s))) for s in seeds]
    base_charge = [
        r["run"]["charged_steps"] for s in seeds if (r := cache.get(Task(variant, METHOD, s)))
    ]
    rows = [
        {
            "switch": "default (as shipped)",
            "off": "",
            "median": report._median(base),
            "charged": float(np.median(base_charge)) if base_charge else math.nan,
            "runs": sum(math.isfinite(v) or v == math.inf for v in base),
        }
    ]
    for label, off, overrides in SWITCHES:
        config = tuple(sorted(overrides.items()))
        records = [cache.get(Task(variant, METHOD, s, config)) for s in seeds]
        values = [_final(r) for r in records]
        pairs = [
            (v - b)
            for v, b in zip(values, base, strict=True)
            if not (math.isnan(v) or math.isnan(b))
        ]
        ci = report.paired_bootstrap(pairs)
        charged = [r["run"]["charged_steps"] for r in records if r is not None]
        low, high = ci[1], ci[2]
        if not pairs:
            verdict = "n/a"
        elif low > 0:
            verdict = "default better"
        elif high < 0:
            verdict = "change better"
        else:
            verdict = "no clear effect"
        rows.append(
            {
                "switch": label,
                "off": off,
                "median": report._median(values),
                "charged": float(np.median(charged)) if charged else math.nan,
                "runs": len(pairs),
                "diff": ci,
                "verdict": verdict,
            }
        )
    return {"variant": variant.name, "steps": variant.steps, "seeds": seeds, "rows": rows}


def render(summaries: list[dict[str, Any]], command: str, info: dict[str, Any]) -> list[str]:
    lines = [
        f"Generated by `{command}` on {info.get('cpu', '?')}. Each row changes one switch of "
        "`default` as shipped (on or off, as the middle column says) and keeps the rest; "
        "the difference is the ablated run's final validation loss minus `default`'s on "
        "the same seed (mean, paired bootstrap 95% interval): **default better** when the "
        "interval is above zero, **change better** when below.",
        "",
    ]
    for s in summaries:
        lines += [
            f"#### {s['variant']} (T = {s['steps']}, {len(s['seeds'])} seeds)",
            "",
            "| switch | changed to | final loss median | charged steps "
            "| changed - default | verdict |",
            "| --- | --- | ---: | ---: | --- | --- |",
        ]
        for row in s["rows"]:
            diff = row.get("diff")
            diff_text = (
                f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"
                if diff and all(math.isfinite(x) for x in diff)
                else ("-" if diff is None else "diverged")
            )
            charged = "-" if not math.isfinite(row["charged"]) else f"{row['charged']:,.0f}"
            lines.append(
                f"| {row['switch']} | {row['off'] or '-'} | {report._fmt(row['median'])} | "
                f"{charged} | {diff_text} | {row.get('verdict', '-')} |"
            )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 2 seeds (CI smoke)")
    parser.add_argument("--workload", action="append", default=None, help="variants to ablate")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default: the protocol's)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    quick = bool(args.quick)
    scratch = ROOT / "benchmarks" / "results" / "tmp" / "ablation-quick"
    results = args.results or (scratch if quick else ROOT / "docs" / "results" / "quality")
    docs = (
        args.docs if args.docs is not None else (None if quick else ROOT / "docs" / "benchmarks.md")
    )
    json_path = args.json or (
        scratch / "ablation.json" if quick else ROOT / "docs" / "results" / "ablation.json"
    )
    names = args.workload or (QUICK_VARIANTS if quick else FULL_VARIANTS)
    variants = harness.variants_for(quick, names)
    cache = Cache(results).load()
    seed_count = args.seeds if args.seeds is not None else (2 if quick else None)
    started = time.perf_counter()
    per_variant = {v.name: harness.seeds(v, quick, seed_count, grid=False) for v in variants}
    if not args.report_only:
        tasks = [t for v in variants for t in tasks_for(v, per_variant[v.name])]
        trained = train(tasks, cache, args.jobs)
        print(f"trained {trained} runs in {time.perf_counter() - started:.0f} s", flush=True)
    summaries = [summarize(v, cache, per_variant[v.name]) for v in variants]
    command = (
        "python -m benchmarks.quality.ablation"
        + (" --quick" if quick else " --jobs 2")
        + (f" --seeds {args.seeds}" if args.seeds is not None else "")
    )
    lines = render(summaries, command, report.machine())
    print("\n".join(lines))
    report.write_json(json_path, {"command": command, "variants": summaries})
    print(f"json: {json_path}")
    if docs is not None:
        from .__main__ import update_docs

        update_docs(docs, lines, BEGIN, END)
        print(f"docs: {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
