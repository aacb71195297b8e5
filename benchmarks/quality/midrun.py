"""Does a search partway through a run see the rest of the run's best LR?

    python -m benchmarks.quality.midrun --variant cnn --variant regression --seeds 3

A first-stage search answers a short run's question from the job's first state, and
holds its answer for the whole run. A check partway through would ask from a trained,
warmed-up state, about a shorter remaining horizon. This measures, before anything is
built, whether such a check would point the right way.

For each variant, seed and miss factor ``m`` (``--miss``, default 1/3, 1 and 3): the run
warms up over the variant's warmup to ``m`` times the full run's best peak (the vertex of
the committed full-length WSD grid), holds it until ``--at`` of T, and is saved there.
From that state:

- **windows**: for each factor ``f`` (``--factor``, default 1/4 to 4 in steps of 2), an
  annealed window (WSD: constant, then the 1-sqrt cooldown over its last 20%) of
  ``--window`` of T at ``f`` times the held LR; its last validation loss;
- **the truth**: for each ``f``, the rest of the run at ``f`` times the held LR, ending in
  a 1-sqrt decay over the last 20% of T (the planned run's decay); its final loss.

It prints, per variant and miss factor, the median over seeds of both, the factor each
picks, and the rest-of-run loss of the window's pick against the truth's (its regret)
and against holding the LR unchanged (what a check that follows its window would gain:
negative is better). Runs are kept
in ``--runs`` (default under the ignored ``benchmarks/results/tmp/``), keyed by the
baseline code hash, so a rerun trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.quality import harness, methods
from benchmarks.quality.horizon import full_length, vertex
from benchmarks.quality.workloads import VARIANTS, Job, Variant, make_job

ROOT = Path(__file__).resolve().parents[2]
DECAY = 0.2


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def branch_point(variant: Variant, seed: int, lr: float, at: int) -> tuple[Job, Any] | None:
    """The job and its state after warming up to ``lr`` and holding it until step ``at``
    (None: it diverged on the way)."""
    job = make_job(variant, seed)
    warmup = round(variant.warmup * variant.steps)
    for t in range(at):
        if not math.isfinite(job.train_step(t, methods.schedule_lr("constant", lr, t, at, warmup))):
            return None
    return job, job.snapshot()


def window_end(job: Job, state: Any, start: int, lr: float, steps: int) -> float:
    """The last validation loss of an annealed window of ``steps`` at ``lr`` from ``state``."""
    job.load(state)
    for i in range(steps):
        if not math.isfinite(
            job.train_step(start + i, methods.schedule_lr("wsd", lr, i, steps, 0))
        ):
            return math.inf
    value = float(job.val_loss())
    return value if math.isfinite(value) else math.inf


def rest_of_run(job: Job, state: Any, start: int, lr: float, total: int) -> float:
    """The final loss of the run's remaining steps at ``lr``, decayed (1-sqrt) over the
    last ``DECAY`` of ``total``."""
    job.load(state)
    decay_from = total - round(DECAY * total)
    for t in range(start, total):
        now = lr
        if t >= decay_from:
            now = lr * (1.0 - math.sqrt((t - decay_from) / max(1, total - decay_from)))
        if not math.isfinite(job.train_step(t, now)):
            return math.inf
    value = float(job.val_loss())
    return value if math.isfinite(value) else math.inf


def measure(
    variant: Variant, seed: int, lr: float, at: float, window: float, factors: list[float]
) -> dict[str, dict[str, float | None]] | None:
    """Windows and rest-of-run losses per factor for one seed (None: the branch point
    itself diverged)."""
    start = round(at * variant.steps)
    steps = max(1, round(window * variant.steps))
    point = branch_point(variant, seed, lr, start)
    if point is None:
        return None
    job, state = point
    windows = {str(f): _finite(window_end(job, state, start, lr * f, steps)) for f in factors}
    truth = {
        str(f): _finite(rest_of_run(job, state, start, lr * f, variant.steps)) for f in factors
    }
    return {"window": windows, "truth": truth}


def _median(values: list[float | None]) -> float:
    return statistics.median(math.inf if v is None else v for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--miss", action="append", type=float, default=None)
    parser.add_argument("--factor", action="append", type=float, default=None)
    parser.add_argument("--at", type=float, default=0.3, help="the check's step, in T")
    parser.add_argument("--window", type=float, default=1 / 30, help="window length, in T")
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "midrun.json"
    )
    args = parser.parse_args(argv)
    misses = args.miss or [1 / 3, 1.0, 3.0]
    factors = args.factor or [0.25, 0.5, 1.0, 2.0, 4.0]
    code = harness.code_hashes()["baseline"]
    args.runs.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.runs.read_text()) if args.runs.exists() else {}
    for name in args.variant:
        variant = VARIANTS[name]
        full = full_length(name, code)
        if not full:
            print(f"\n## {name}: no full-length WSD grid in the committed cache")
            continue
        best = vertex({p: statistics.median(v) for p, v in full.items()})
        print(
            f"\n## {name} (T = {variant.steps}, {variant.family}; full run's best peak "
            f"{best:.3g}; check at {args.at:g}T, windows of {args.window:.3g}T)"
        )
        print("| held / best | " + " | ".join(f"x{f:g}" for f in factors)
              + " | window picks | truth picks | regret of the window's pick "
              "| the window's pick - holding |")  # fmt: skip
        print("| --- |" + " ---: |" * (len(factors) + 4))
        for miss in misses:
            lr = best * miss
            per_seed = []
            for seed in range(args.seeds):
                key = json.dumps([name, seed, lr, args.at, args.window, factors, code])
                if key not in runs:
                    runs[key] = measure(variant, seed, lr, args.at, args.window, factors)
                    args.runs.write_text(json.dumps(runs))
                if runs[key] is not None:
                    per_seed.append(runs[key])
            if not per_seed:
                print(f"| {miss:.3g} | diverged before the check |")
                continue
            window = {f: _median([s["window"][str(f)] for s in per_seed]) for f in factors}
            truth = {f: _median([s["truth"][str(f)] for s in per_seed]) for f in factors}
            pick = min(factors, key=lambda f: window[f])
            right = min(factors, key=lambda f: truth[f])
            cells = " | ".join(f"{window[f]:.4g} / {truth[f]:.4g}" for f in factors)
            held = f"{truth[pick] - truth[1.0]:+.4g}" if 1.0 in truth else "-"
            print(
                f"| {miss:.3g} | {cells} | x{pick:g} | x{right:g} | "
                f"{truth[pick] - truth[right]:+.4g} | {held} |"
            )
    print("\n(cells: the window's end / the rest of the run's final loss, medians over seeds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
