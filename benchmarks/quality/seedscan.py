"""Which seeds can reach the target at all: the Tier A grid on every method seed.

    python -m benchmarks.quality.seedscan --variant digits --variant digits-noisy

The Credible bar asks `default` to reach the target within 3T on every seed, but the
target is the median of three grid seeds and the seeds differ (a seed fixes the init, the
data order and the label noise). This trains every grid point of Tier A on every method
seed (the quality benchmark trains it on the grid seeds only) and prints, per seed, the
lowest harness evaluation that any grid schedule reaches within T, beside the lowest point
of `default` at 3T. A seed where no schedule of the grid ever gets to the target is one
where `default` has no known schedule to find.

The runs go to the quality benchmark's results cache (the same keys, so a rerun trains
only what is missing; the report reads the grid seeds only, so its figures do not move).
The table is printed, written to ``docs/results/seedscan.json`` and, with ``--docs``, to
a markdown file. ``--quick`` checks the pipeline on a tiny budget (no figures).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import harness, report
from .harness import Task
from .workloads import Variant

ROOT = Path(__file__).resolve().parents[2]
#: The method whose per-seed reach the table sets beside the grid's.
METHOD = "stagelr-default-3t"


def tasks_for(variant: Variant, seeds: list[int], quick: bool) -> list[Task]:
    return [
        Task(variant, "grid", seed, (("peak", peak), ("schedule", kind)))
        for seed in seeds
        for kind, peak in harness.grid_points(variant, quick)
    ]


def train_missing(cache: harness.Cache, tasks: list[Task], jobs: int) -> int:
    """Train the tasks the cache lacks (grid runs need no server); how many were trained."""
    missing = [t for t in tasks if cache.get(t) is None]
    if not missing:
        return 0
    trained = 0
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=harness._init_worker,
        initargs=(None,),
    ) as pool:  # fmt: skip
        futures = {
            pool.submit(harness.execute_item, item): item for item in harness._work_items(missing)
        }
        for future in as_completed(futures):
            for task, run in zip(futures[future], future.result(), strict=True):
                cache.add(task, run)
                trained += 1
    return trained


def _lowest(record: dict[str, Any], cap: int) -> float:
    values = [v for _, charged, v in report._curve(record) if charged <= cap]
    return min(values) if values else math.inf


def scan(
    variant: Variant, cache: harness.Cache, seeds: list[int], target: float, quick: bool
) -> dict[str, Any]:
    """Per seed: the grid's lowest point within T (and whose), and METHOD's within 3T."""
    rows = []
    for seed in seeds:
        best: tuple[float, str] = (math.inf, "-")
        for task in tasks_for(variant, [seed], quick):
            record = cache.get(task)
            if record is None:
                continue
            low = _lowest(record, variant.steps)
            config = dict(task.config)
            if low < best[0]:
                best = (low, f"{config['schedule']} @ {config['peak']:g}")
        method = cache.get(Task(variant, METHOD, seed))
        rows.append(
            {
                "seed": seed,
                "grid_lowest": best[0],
                "grid_lowest_config": best[1],
                "grid_reaches": best[0] <= target,
                "method_lowest": _lowest(method, 3 * variant.steps) if method else None,
                "method_reaches": (
                    math.isfinite(report.steps_to(report._curve(method), target, 3 * variant.steps))
                    if method
                    else None
                ),
            }
        )
    return {"variant": variant.name, "steps": variant.steps, "target": target, "seeds": rows}


def table(result: dict[str, Any]) -> list[str]:
    target = result["target"]
    lines = [
        f"{result['variant']} (target {target:.4f}): the lowest harness evaluation of any of the "
        f"grid's schedules within T, and of `default` within 3T",
        "",
        "| seed | grid's lowest point within T (schedule) | grid reaches the target | "
        "default-3T's lowest point | default-3T reaches it |",
        "| ---: | --- | --- | ---: | --- |",
    ]
    for row in result["seeds"]:
        method = row["method_lowest"]
        reaches = row["method_reaches"]
        lines.append(
            f"| {row['seed']} | {row['grid_lowest']:.4f} ({row['grid_lowest_config']}) | "
            f"{'yes' if row['grid_reaches'] else '**no**'} | "
            f"{'-' if method is None else f'{method:.4f}'} | "
            f"{'-' if reaches is None else 'yes' if reaches else 'no'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None, help="variants or workloads")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 (default: the method seeds)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny budget: checks the pipeline")
    parser.add_argument("--results", type=Path, default=None, help="the results cache folder")
    parser.add_argument("--quality-json", type=Path, default=None, help="where the targets are")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    quick = args.quick
    scratch = ROOT / "benchmarks" / "results" / "tmp" / "seedscan-quick"
    results = args.results or (scratch if quick else ROOT / "docs" / "results" / "quality")
    out_json = args.json or (
        scratch / "seedscan.json" if quick else ROOT / "docs" / "results" / "seedscan.json"
    )
    variants = harness.variants_for(quick, args.variant or ["digits"])
    cache = harness.Cache(results).load()

    targets: dict[str, float] = {}
    source = args.quality_json or (None if quick else ROOT / "docs" / "results" / "quality.json")
    if source is not None and source.exists():
        for row in json.loads(source.read_text())["variants"]:
            if row.get("target") is not None:
                targets[row["variant"]] = float(row["target"])

    started = time.perf_counter()
    results_out = []
    lines: list[str] = []
    for variant in variants:
        seeds = (
            list(range(args.seeds))
            if args.seeds is not None
            else harness.seeds(variant, quick, None, grid=False)
        )
        trained = train_missing(cache, tasks_for(variant, seeds, quick), args.jobs)
        print(f"{variant.name}: trained {trained} grid runs", flush=True)
        if variant.name in targets:
            target = targets[variant.name]
        else:  # no full report (quick mode): the cache's own target, or the seeds' best
            best = harness.best_config(cache, variant, quick, None)
            if best is None:
                raise SystemExit(f"{variant.name}: no target: run the quality benchmark first")
            target = best[1]
        result = scan(variant, cache, seeds, target, quick)
        results_out.append(result)
        lines += table(result) + [""]
    text = "\n".join(lines)
    print(text)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps(
            {"command": "python -m benchmarks.quality.seedscan", "variants": results_out},
            indent=1,
            default=lambda v: None,
        )
        + "\n"
    )
    if args.docs is not None:
        args.docs.write_text(text)
    print(f"done in {time.perf_counter() - started:.0f} s; {out_json}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
