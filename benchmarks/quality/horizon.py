"""How the best peak LR moves with the run's length: the question a short search window
has to answer for the full run.

    python -m benchmarks.quality.horizon --variant cnn --variant charrnn --seeds 3

For each variant, every peak of its Tier-A grid is trained as a WSD run (constant, then
the 1-sqrt cooldown over the last 20%) planned for each ``--budget`` fraction of T, from
the job's start, on each seed; the full-length WSD runs (budget 1) are read from the
committed quality cache. It prints, per variant and budget, the median final loss per
peak and the best peak, then how far the best peak moves from one horizon to the next
(in log2 units per log2 of the horizon). A search that scores candidates by a short
annealed window assumes the short horizon's best peak is the full run's; where it moves,
that assumption fails (docs/tuner.md).

``--warmup F`` warms each short run up over the fraction F of its own length instead of
the variant's 5% (which is a step or two at these lengths): whether a search window that
warms up, as the planned run does, sees the full run's best peak better (docs/tuner.md:
it does not).

``--trunk`` starts every short run of a seed from one shared trunk instead of the job's
first state: as many steps as the short run, the LR rising linearly from 0 to the
coolest stratum of the range (its lowest sixth in log-LR, where the search's first
candidate would sit), so the model and its optimizer are warmed up before the windows
branch off: whether a search whose windows start warm sees the full run's best peak
better than one whose windows each start a cold optimizer at full LR
(docs/tuner.md: it does not).

Runs are kept in ``--runs`` (default under the ignored ``benchmarks/results/tmp/``),
keyed by the baseline code hash, so a rerun trains only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

from benchmarks.quality import harness, methods
from benchmarks.quality.workloads import VARIANTS, Variant, make_job

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "docs" / "results" / "quality"


def full_length(variant: str, code: str) -> dict[float, list[float]]:
    """The committed full-length WSD grid runs of ``variant``: peak -> final losses."""
    path = CACHE / f"{variant}.jsonl.gz"
    out: dict[float, list[float]] = {}
    if not path.exists():
        return out
    aliases = harness.load_aliases(CACHE, harness.code_hashes())
    for record in harness.read_records(path):
        if record["method"] != "grid" or record["config"].get("schedule") != "wsd":
            continue
        if float(record["config"].get("budget", 1.0)) != 1.0:
            continue
        workload = VARIANTS[variant].workload
        alias = harness.alias_of(aliases, "baseline", record["code"], workload, "grid")
        if (alias or record["code"]) != code:
            continue
        loss = record["run"]["final_loss"]
        out.setdefault(float(record["config"]["peak"]), []).append(
            math.inf if loss is None else float(loss)
        )
    return out


def _best(table: dict[float, float]) -> float:
    return min(table, key=lambda peak: table[peak])


def vertex(table: dict[float, float]) -> float:
    """The peak at the vertex of a parabola in log2(peak) through the best grid point
    and its neighbours (the best point itself at an edge)."""
    peaks = sorted(table)
    i = peaks.index(_best(table))
    if i == 0 or i == len(peaks) - 1:
        return peaks[i]
    xs = [math.log2(p) for p in peaks[i - 1 : i + 2]]
    ys = [table[p] for p in peaks[i - 1 : i + 2]]
    if not all(math.isfinite(y) for y in ys):
        return peaks[i]
    denom = (xs[0] - xs[1]) * (xs[0] - xs[2]) * (xs[1] - xs[2])
    a = (xs[2] * (ys[1] - ys[0]) + xs[1] * (ys[0] - ys[2]) + xs[0] * (ys[2] - ys[1])) / denom
    b = (
        xs[2] ** 2 * (ys[0] - ys[1]) + xs[1] ** 2 * (ys[2] - ys[0]) + xs[0] ** 2 * (ys[1] - ys[2])
    ) / denom
    if a <= 0:
        return peaks[i]
    return float(2 ** min(xs[2], max(xs[0], -b / (2 * a))))


def trunk_lr(variant: Variant) -> float:
    """The trunk's top LR: the centre of the coolest of three strata of the variant's
    range in log-LR (the range is its grid's, as the tuned runs are told)."""
    low, high = min(variant.grid), max(variant.grid)
    return float(low * (high / low) ** (1 / 6))


def trunk_windows(variant: Variant, seed: int, budget: float) -> dict[float, float]:
    """Every grid peak's WSD window of ``budget`` x T, each branching off one trunk of as
    many steps (a linear warmup to :func:`trunk_lr`): peak -> final validation loss."""
    steps = max(1, round(budget * variant.steps))
    top = trunk_lr(variant)
    job = make_job(variant, seed)
    for t in range(steps):
        if not math.isfinite(job.train_step(t, top * (t + 1) / steps)):
            return dict.fromkeys(variant.grid, math.inf)
    trunk = job.snapshot()
    out: dict[float, float] = {}
    for peak in variant.grid:
        job.load(trunk)
        loss = math.inf
        for i in range(steps):
            lr = methods.schedule_lr("wsd", peak, i, steps, 0)
            if not math.isfinite(job.train_step(steps + i, lr)):
                break
        else:
            value = job.val_loss()
            loss = value if math.isfinite(value) else math.inf
        out[peak] = loss
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", action="append", type=float, default=None)
    parser.add_argument(
        "--warmup", type=float, default=None, help="the short runs' warmup share (default 5%%)"
    )
    parser.add_argument(
        "--trunk", action="store_true", help="short runs branch off a shared warm trunk"
    )
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "horizon.json"
    )
    args = parser.parse_args(argv)
    budgets = sorted(args.budget or [0.04, 0.12])
    code = harness.code_hashes()["baseline"]
    args.runs.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, float | None] = json.loads(args.runs.read_text()) if args.runs.exists() else {}
    for name in args.variant:
        variant = VARIANTS[name]
        short = variant if args.warmup is None else dataclasses.replace(variant, warmup=args.warmup)
        tables: dict[float, dict[float, float]] = {}
        for budget in budgets:
            per_peak: dict[float, list[float]] = {}
            if args.trunk:
                for seed in range(args.seeds):
                    key = json.dumps([name, budget, seed, code, "trunk", trunk_lr(variant)])
                    if key not in runs:
                        table = trunk_windows(variant, seed, budget)
                        runs[key] = {
                            str(p): (v if math.isfinite(v) else None) for p, v in table.items()
                        }
                        args.runs.write_text(json.dumps(runs))
                    for peak, value in runs[key].items():
                        per_peak.setdefault(float(peak), []).append(
                            math.inf if value is None else value
                        )
            for peak in variant.grid if not args.trunk else ():
                for seed in range(args.seeds):
                    key = json.dumps([name, budget, peak, seed, code])
                    if args.warmup is not None:
                        key = json.dumps([name, budget, peak, seed, code, args.warmup])
                    if key not in runs:
                        run = methods.run_grid_point(short, seed, "wsd", peak, budget)
                        runs[key] = None if not math.isfinite(run.final_loss) else run.final_loss
                        args.runs.write_text(json.dumps(runs))
                    value = runs[key]
                    per_peak.setdefault(peak, []).append(math.inf if value is None else value)
            tables[budget] = {p: statistics.median(v) for p, v in per_peak.items()}
        full = full_length(name, code)
        if full:
            tables[1.0] = {p: statistics.median(v) for p, v in full.items()}
        warm = "" if args.warmup is None else f", short runs warmed up over {args.warmup:.0%}"
        if args.trunk:
            warm = f", short runs off a warm trunk to {trunk_lr(variant):.3g}"
        print(f"\n## {name} (T = {variant.steps}, {variant.family}{warm})")
        peaks = sorted(variant.grid)
        print("| horizon | " + " | ".join(f"{p:g}" for p in peaks) + " | best | vertex |")
        print("| --- |" + " ---: |" * (len(peaks) + 2))
        vertices: dict[float, float] = {}
        for budget, table in sorted(tables.items()):
            vertices[budget] = vertex(table)
            cells = " | ".join(f"{table.get(p, math.nan):.4f}" for p in peaks)
            print(f"| {budget:g}T | {cells} | {_best(table):g} | {vertices[budget]:.3g} |")
        ordered = sorted(vertices)
        for a, b in itertools.pairwise(ordered):
            slope = math.log2(vertices[b] / vertices[a]) / math.log2(b / a)
            print(
                f"- best peak from {a:g}T to {b:g}T: x{vertices[b] / vertices[a]:.2f} "
                f"(slope {slope:+.2f} in log2 LR per log2 horizon)"
            )
        if len(ordered) >= 3 and 1.0 in vertices:
            a, b = ordered[0], ordered[-2]
            slope = math.log2(vertices[b] / vertices[a]) / math.log2(b / a)
            predicted = vertices[b] * (1.0 / b) ** slope
            print(
                f"- extrapolated from {a:g}T and {b:g}T to T: {predicted:.3g}, "
                f"measured {vertices[1.0]:.3g} (x{predicted / vertices[1.0]:.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
