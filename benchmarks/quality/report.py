"""Statistics, tables, verdicts, plots and the docs section, from the results cache alone.

Definitions (BENCHMARK.md section 1, made exact):

- target: the median final validation loss, over the grid seeds, of the best Tier A
  config (lowest such median over every schedule and peak LR).
- steps-to-target of a run: the charged steps at the first harness evaluation at or
  below the target, interpolated linearly from the evaluation before it; beyond 3T, or
  never, it is a miss (infinity). A method's figure: the same on its median curve over
  seeds (sampled every T/100 charged steps); the per-seed hits are counted beside it,
  and the median over seeds of each run's own figure is reported too (not judged).
- best Tier A steps: the steps-to-target of the target config's median curve (the
  per-evaluation median over its grid seeds), which reaches the target by T.
- speedup: best Tier A steps / the method's steps-to-target (every step charged).
- speedup vs untuned: the untuned default's median curve reaches its own median final
  loss at some step S; the method's steps to reach that loss, S / those steps.
- equal-compute loss: the loss of the last trajectory evaluation made within T charged
  steps (a method that is still searching at T has only its starting loss).
- tuning-inclusive compute ratio: 8T / the method's charged steps to target (judged on
  the median curve; also printed run by run, ``tuning_inclusive_ratio_per_seed``).
- paired bootstrap: the mean over seeds of (method - target config) final loss, seeds
  paired, 10,000 resamples, 95% percentile interval. "matches": the interval lies within
  one seed-SD of the target config; "beats": it lies below zero.
- W1 regret: E[L_T] of the LR path a run trained (the exact recursion, noise-free)
  minus the oracle's; schedule-free's path is not plain SGD, so its median realized
  final loss stands in.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import harness, methods
from .harness import Cache, Task, cpu_name
from .workloads import Variant

RESAMPLES = 10_000
LABELS = {
    "target": "Tier A best (target config)",
    "untuned": "untuned default (linear)",
    "range_test": "LR range test + linear",
    "schedulefree": "schedule-free",
    "stagelr-autolrs": "stagelr autolrs (tau T/16..T/4)",
    "stagelr-default": "stagelr default (budget T)",
    "stagelr-default-3t": "stagelr default (budget 3T)",
}
SINGLE = (
    "untuned",
    "range_test",
    "schedulefree",
    "stagelr-autolrs",
    "stagelr-default",
    "stagelr-default-3t",
)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _curve(record: dict[str, Any]) -> list[tuple[int, int, float]]:
    return [
        (int(t), int(c), math.inf if v is None else float(v)) for t, c, v in record["run"]["curve"]
    ]


def steps_to(curve: list[tuple[int, int, float]], level: float, cap: float) -> float:
    """Charged steps at which ``curve`` first reaches ``level`` (interpolated), or inf."""
    previous: tuple[float, float] | None = None
    for _, charged, value in curve:
        if value <= level:
            if previous is None or not math.isfinite(previous[1]) or previous[1] == value:
                hit = float(charged)
            else:
                c0, v0 = previous
                hit = c0 + (charged - c0) * (v0 - level) / (v0 - value)
            return hit if hit <= cap else math.inf
        previous = (float(charged), value)
    return math.inf


def lowest(curve: list[tuple[int, int, float]], budget: int) -> float:
    """The lowest evaluation made within ``budget`` charged steps (inf if none)."""
    return min((v for _, charged, v in curve if charged <= budget), default=math.inf)


def loss_at(curve: list[tuple[int, int, float]], budget: int) -> float:
    """The last trajectory evaluation made within ``budget`` charged steps."""
    value = math.inf
    for _, charged, v in curve:
        if charged <= budget:
            value = v
    return value


def median_curve(curves: list[list[tuple[int, int, float]]]) -> list[tuple[int, int, float]]:
    """Per-evaluation median of curves evaluated at the same points (Tier A seeds)."""
    length = min(len(c) for c in curves)
    return [
        (curves[0][i][0], curves[0][i][1], float(np.median([c[i][2] for c in curves])))
        for i in range(length)
    ]


def charged_median_curve(
    curves: list[list[tuple[int, int, float]]], steps: int
) -> list[tuple[int, int, float]]:
    """The per-point median over seeds of curves sampled every T/100 charged steps to 3T."""
    grid = range(0, 3 * steps + 1, max(1, steps // 100))
    return [(x, x, float(np.median([loss_at(c, x) for c in curves]))) for x in grid]


def paired_bootstrap(diffs: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean paired difference, 95% percentile interval."""
    values = np.asarray(diffs, dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    if not np.all(np.isfinite(values)):
        mean = float(np.mean(values)) if not np.any(np.isnan(values)) else math.inf
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    means = values[picks].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def verdict(ci: tuple[float, float, float], sd: float) -> str:
    _, low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return "worse (diverged)" if low == math.inf else "n/a"
    if high < 0:
        return "beats"
    if math.isfinite(sd) and -sd <= low and high <= sd:
        return "matches"
    if low > 0:
        return "worse"
    return "inconclusive"


# --------------------------------------------------------------------------- per variant


def summarize(
    variant: Variant, cache: Cache, quick: bool, seeds_override: int | None
) -> dict[str, Any]:
    """Everything the tables, plots and verdicts need for one variant."""
    steps = variant.steps
    cap = 3 * steps
    grid_seeds = harness.seeds(variant, quick, seeds_override, grid=True)
    method_seeds = harness.seeds(variant, quick, seeds_override, grid=False)
    points = harness.grid_points(variant, quick)
    out: dict[str, Any] = {
        "variant": variant.name,
        "workload": variant.workload,
        "steps": steps,
        "grid_points": len(points),
        "grid_seeds": grid_seeds,
        "method_seeds": method_seeds,
    }

    # Completion.
    everything = list(harness.ALL_METHODS)
    expected = harness.plan(
        variant, Cache(cache.folder, cache.hashes), everything, quick, seeds_override
    )
    found = harness.best_config(cache, variant, quick, seeds_override)
    if found is not None:
        expected += [
            Task(variant, "grid", s, found[0]) for s in method_seeds if s not in grid_seeds
        ]
    missing = [t for t in expected if cache.get(t) is None]
    out["runs_done"] = len(expected) - len(missing)
    out["runs_planned"] = len(expected)

    # The grid.
    grid: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for kind, peak in points:
        config = (("peak", peak), ("schedule", kind))
        grid[(kind, peak)] = [
            r for s in grid_seeds if (r := cache.get(Task(variant, "grid", s, config)))
        ]
    grid_rows: list[dict[str, Any]] = []
    for (kind, peak), point in sorted(grid.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        point_finals = [harness._final(r) for r in point]
        grid_rows.append(
            {
                "schedule": kind,
                "peak": peak,
                "seeds": len(point),
                "median": _median(point_finals) if point else math.nan,
                "finals": point_finals,
            }
        )
    out["grid"] = grid_rows
    complete_grid = all(len(r) == len(grid_seeds) for r in grid.values())
    out["grid_complete"] = complete_grid
    best = harness.best_config(cache, variant, quick, seeds_override)
    if best is None:
        # A partial grid still names its best so far, clearly marked provisional.
        candidates = [row for row in grid_rows if row["seeds"] == len(grid_seeds)]
        if candidates:
            top = min(candidates, key=lambda r: float(r["median"]))
            best = ((("peak", top["peak"]), ("schedule", top["schedule"])), float(top["median"]))
    out["target_provisional"] = not complete_grid
    per_schedule: dict[str, dict[str, float]] = {}
    for kind in methods.SCHEDULES:
        full = [r for r in grid_rows if r["schedule"] == kind and r["seeds"] == len(grid_seeds)]
        if full:
            top = min(full, key=lambda r: float(r["median"]))
            per_schedule[kind] = {"peak": top["peak"], "median": top["median"]}
    out["best_per_schedule"] = per_schedule

    oracle = cache.get(Task(variant, "oracle", 0)) if variant.workload == "nqm" else None
    if oracle is not None:
        out["oracle"] = {"final": oracle["run"]["final_loss"]}

    if best is None:
        out["target"] = None
        out["methods"] = {}
        out["missing"] = len(missing)
        return out
    config, target = best
    out["target"] = target
    out["target_config"] = dict(config)

    # The target config's curve and its best-Tier-A steps.
    target_grid = [r for s in grid_seeds if (r := cache.get(Task(variant, "grid", s, config)))]
    target_curve = median_curve([_curve(r) for r in target_grid])
    tier_a_steps = steps_to(target_curve, target, cap)
    out["tier_a_steps"] = tier_a_steps
    target_records = {
        s: r for s in method_seeds if (r := cache.get(Task(variant, "grid", s, config)))
    }
    for s in grid_seeds:
        if s not in target_records and (r := cache.get(Task(variant, "grid", s, config))):
            target_records[s] = r
    target_finals = {s: harness._final(r) for s, r in target_records.items()}
    sd = (
        float(np.std(_finite(list(target_finals.values())), ddof=1))
        if len(_finite(list(target_finals.values()))) > 1
        else math.nan
    )
    out["target_seed_sd"] = sd

    untuned = {s: r for s in method_seeds if (r := cache.get(Task(variant, "untuned", s)))}
    untuned_level = math.nan
    untuned_steps = math.nan
    if untuned:
        untuned_level = _median([harness._final(r) for r in untuned.values()])
        untuned_median_curve = median_curve([_curve(r) for r in untuned.values()])
        untuned_steps = steps_to(untuned_median_curve, untuned_level, cap)
    out["untuned_level"] = untuned_level

    # The grid's reach on each seed it was trained on (the grid seeds, and every method
    # seed after `python -m benchmarks.quality.seedscan`): the lowest evaluation of any
    # schedule within T, so a seed no schedule gets to the target on is known as such.
    grid_reach: dict[int, float] = {}
    for s in method_seeds:
        records = [
            cache.get(Task(variant, "grid", s, (("peak", peak), ("schedule", kind))))
            for kind, peak in points
        ]
        if all(r is not None for r in records):
            grid_reach[s] = min(lowest(_curve(r), steps) for r in records if r is not None)
    out["grid_reach"] = grid_reach

    rows: dict[str, Any] = {}
    sources: dict[str, dict[int, dict[str, Any]]] = {"target": target_records}
    for method in SINGLE:
        sources[method] = {s: r for s in method_seeds if (r := cache.get(Task(variant, method, s)))}
    oracle_final = oracle["run"]["final_loss"] if oracle else None
    for method, records in sources.items():
        if not records:
            continue
        finals = {s: harness._final(r) for s, r in records.items()}
        curves = {s: _curve(r) for s, r in records.items()}
        charged = [r["run"]["charged_steps"] for r in records.values()]
        to_target_by_seed = {seed: steps_to(c, target, cap) for seed, c in curves.items()}
        to_target = list(to_target_by_seed.values())
        # A method's steps-to-X: where its median curve over seeds (on a common grid of
        # charged steps) reaches X; per-seed hits are counted separately.
        middle = charged_median_curve(list(curves.values()), steps)
        to_untuned = [steps_to(middle, untuned_level, cap)]
        at_budget = {s: loss_at(c, steps) for s, c in curves.items()}
        common = sorted(set(finals) & set(target_finals))
        ci = paired_bootstrap([finals[s] - target_finals[s] for s in common])
        stt = tier_a_steps if method == "target" else steps_to(middle, target, cap)
        row: dict[str, Any] = {
            "label": LABELS[method],
            "seeds": sorted(records),
            "final_median": _median(list(finals.values())),
            "final_min": min(finals.values()),
            "final_max": max(finals.values()),
            "final_sd": float(np.std(_finite(list(finals.values())), ddof=1))
            if len(_finite(list(finals.values()))) > 1
            else math.nan,
            "diverged": sum(1 for v in finals.values() if not math.isfinite(v)),
            "charged_median": _median(charged),
            "grid_fraction": _median(charged) / (len(points) * steps),
            "tuner_eval_steps": _median(
                [r["run"].get("eval_cost_steps", 0.0) for r in records.values()]
            ),
            "steps_to_target": stt,
            "reached_target": sum(1 for v in to_target if math.isfinite(v)),
            "missed_seeds": [s for s, v in to_target_by_seed.items() if not math.isfinite(v)],
            "speedup": tier_a_steps / stt if math.isfinite(stt) and stt > 0 else 0.0,
            "speedup_vs_untuned": (
                untuned_steps / _median(to_untuned)
                if math.isfinite(_median(to_untuned)) and math.isfinite(untuned_steps)
                else 0.0
            ),
            "tuning_inclusive_ratio": 8 * steps / stt if math.isfinite(stt) and stt > 0 else 0.0,
            # The same read run by run: the median over seeds of each run's own
            # steps-to-target (a miss is infinity, so it is finite while most seeds hit).
            # Not what the verdicts use; printed beside them (docs/benchmarks.md, 6).
            "steps_to_target_per_seed": (per_seed := _median(to_target)),
            "tuning_inclusive_ratio_per_seed": (
                8 * steps / per_seed if math.isfinite(per_seed) and per_seed > 0 else 0.0
            ),
            "loss_at_budget_median": _median(list(at_budget.values())),
            "loss_at_budget": at_budget,
            "finals": finals,
            "paired_diff": {"mean": ci[0], "low": ci[1], "high": ci[2], "seeds": len(common)},
            "vs_target": verdict(ci, sd),
        }
        if variant.workload == "nqm" and oracle_final is not None:
            expected = [r["run"].get("expected_final") for r in records.values()]
            if all(e is not None for e in expected):
                row["regret"] = _median([float(e) for e in expected]) - oracle_final
                row["regret_basis"] = "exact E[L_T] of the trained LR path"
            else:
                row["regret"] = row["final_median"] - oracle_final
                row["regret_basis"] = "median realized final loss"
        if method.startswith("stagelr-"):
            errors = [
                st["predicted"] - st["realized"]
                for r in records.values()
                for st in r["run"]["extra"].get("stages", [])
                if st["predicted"] is not None and st["realized"] is not None
            ]
            row["forecast_error_median"] = _median(errors) if errors else math.nan
            row["forecast_abs_error_median"] = (
                _median([abs(e) for e in errors]) if errors else math.nan
            )
        rows[method] = row
    if variant.workload == "nqm" and oracle_final is not None:
        lin = per_schedule.get("linear")
        lin_records = (
            [
                r
                for s in grid_seeds
                if (
                    r := cache.get(
                        Task(variant, "grid", s, (("peak", lin["peak"]), ("schedule", "linear")))
                    )
                )
            ]
            if lin
            else []
        )
        if lin_records:
            out["linear_regret"] = (
                _median([float(r["run"]["expected_final"]) for r in lin_records]) - oracle_final
            )
    out["methods"] = rows
    out["missing"] = len(missing)
    return out


# --------------------------------------------------------------------------- verdicts


def tier_verdicts(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Credible / Strong / Moonshot, each met, not met, or pending (incomplete data)."""
    complete = [s for s in summaries if s["missing"] == 0 and s.get("target") is not None]
    pending = [s["variant"] for s in summaries if s not in complete]
    checks: dict[str, list[tuple[str, bool | None]]] = {
        "Credible": [],
        "Strong": [],
        "Moonshot": [],
    }

    def default(s: dict[str, Any]) -> dict[str, Any] | None:
        """The equal-compute run: default told a budget of T charged steps."""
        row: dict[str, Any] | None = s["methods"].get("stagelr-default")
        return row

    def to_target(s: dict[str, Any]) -> dict[str, Any] | None:
        """The run the steps-to-target checks read: default told a budget of 3T (the
        cap of those checks), so it plans its search and decay for that much compute."""
        row: dict[str, Any] | None = s["methods"].get("stagelr-default-3t")
        return row

    beats_tier_b = []
    for s in complete:
        d = default(s)
        if d is None:
            continue
        ok = True
        for rival in ("untuned", "range_test", "schedulefree"):
            r = s["methods"].get(rival)
            if r is None:
                ok = False
                continue
            seeds = sorted(set(d["loss_at_budget"]) & set(r["loss_at_budget"]))
            ci = paired_bootstrap([d["loss_at_budget"][x] - r["loss_at_budget"][x] for x in seeds])
            ok = ok and ci[2] < 0
        beats_tier_b.append(ok)
    checks["Credible"].append(
        (
            "default beats every Tier-B rival at equal charged compute on most variants",
            sum(beats_tier_b) > len(complete) / 2 if complete else None,
        )
    )
    checks["Credible"].append(
        (
            "default reaches the target within 3T on every seed",
            all(
                (d := to_target(s)) is not None and d["reached_target"] == len(d["seeds"])
                for s in complete
            )
            if complete
            else None,
        )
    )
    checks["Credible"].append(
        (
            "default's tuning-inclusive compute ratio >= 2.5 everywhere",
            all(
                (d := to_target(s)) is not None and d["tuning_inclusive_ratio"] >= 2.5
                for s in complete
            )
            if complete
            else None,
        )
    )
    auto_ok = []
    for s in complete:
        d, a = default(s), s["methods"].get("stagelr-autolrs")
        if d is None or a is None:
            auto_ok.append(False)
            continue
        seeds = sorted(set(d["loss_at_budget"]) & set(a["loss_at_budget"]))
        ci = paired_bootstrap([d["loss_at_budget"][x] - a["loss_at_budget"][x] for x in seeds])
        auto_ok.append(ci[2] < 0)
    checks["Credible"].append(
        (
            "default beats autolrs at equal charged steps everywhere",
            all(auto_ok) if complete else None,
        )
    )
    checks["Strong"].append(
        (
            "default's speedup >= 1.0 against best-of-grid, every step charged",
            all((d := to_target(s)) is not None and d["speedup"] >= 1.0 for s in complete)
            if complete
            else None,
        )
    )
    nqm = [s for s in complete if s["workload"] == "nqm"]
    regret_ok: bool | None = None
    gap_ok: bool | None = None
    if nqm:
        regret_ok, gap_ok = True, True
        for s in nqm:
            d, t = default(s), s["methods"].get("target")
            if d is None or t is None or "regret" not in d:
                regret_ok = gap_ok = False
                continue
            regret_ok = regret_ok and d["regret"] <= 0.5 * t["regret"]
            lin = s.get("linear_regret")
            gap_ok = gap_ok and lin is not None and lin - d["regret"] >= 0.5 * lin
    checks["Strong"].append(("on W1, default's regret <= half the best grid schedule's", regret_ok))
    checks["Moonshot"].append(
        (
            "default reaches the target within 1.0T charged steps everywhere",
            all(
                (d := default(s)) is not None and d["steps_to_target"] <= s["steps"]
                for s in complete
            )
            if complete
            else None,
        )
    )
    checks["Moonshot"].append(("on W1, at least half of the linear-to-oracle gap closed", gap_ok))

    out: dict[str, dict[str, Any]] = {}
    for tier, items in checks.items():
        if any(ok is False for _, ok in items):
            status = "not met"
        elif pending or any(ok is None for _, ok in items):
            status = "pending"
        else:
            status = "met"
        out[tier] = {
            "status": status,
            "checks": [{"check": text, "ok": ok} for text, ok in items],
            "on_variants": [s["variant"] for s in complete],
            "pending_variants": pending,
        }
    return out


# --------------------------------------------------------------------------- text


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "miss" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _steps(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "miss" if math.isinf(value) else f"{value:,.0f}"


def table(summary: dict[str, Any]) -> list[str]:
    """The markdown table of one variant (printed as is, too)."""
    lines = [
        "| method | final val loss, median [min, max] (SD) | charged steps (incl. search) | "
        "compute / one grid pass | tuner evals (step-equiv.) | steps-to-target | speedup vs "
        "best Tier A | speedup vs untuned | loss at charged T | vs target (paired 95% CI) |"
        + (" W1 regret |" if summary["workload"] == "nqm" else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        + (" ---: |" if summary["workload"] == "nqm" else ""),
    ]
    for method, row in summary["methods"].items():
        pd = row["paired_diff"]
        name = row["label"]
        if method == "target":
            cfg = summary["target_config"]
            name += f": {cfg['schedule']} @ {cfg['peak']:g}"
        if row["diverged"]:
            name += f" ({row['diverged']} diverged)"
        cells = [
            name + f" [{len(row['seeds'])} seeds]",
            f"{_fmt(row['final_median'])} [{_fmt(row['final_min'])}, {_fmt(row['final_max'])}] "
            f"({_fmt(row['final_sd'])})",
            f"{row['charged_median']:,.0f}",
            f"{row['grid_fraction']:.3f}",
            f"{row['tuner_eval_steps']:.0f}",
            f"{_steps(row['steps_to_target'])} ({row['reached_target']}/{len(row['seeds'])} hit)",
            f"{row['speedup']:.2f}x",
            f"{row['speedup_vs_untuned']:.2f}x",
            _fmt(row["loss_at_budget_median"]),
            "-"
            if method == "target"
            else f"{row['vs_target']}: {pd['mean']:+.4f} [{pd['low']:+.4f}, {pd['high']:+.4f}]",
        ]
        if summary["workload"] == "nqm":
            cells.append(_fmt(row.get("regret", math.nan)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grid_table(summary: dict[str, Any]) -> list[str]:
    peaks = sorted({r["peak"] for r in summary["grid"]})
    lines = [
        "| schedule | " + " | ".join(f"{p:g}" for p in peaks) + " |",
        "| --- |" + " ---: |" * len(peaks),
    ]
    for kind in methods.SCHEDULES:
        cells = []
        for p in peaks:
            row = next(
                (r for r in summary["grid"] if r["schedule"] == kind and r["peak"] == p), None
            )
            if row is None or not row["seeds"]:
                cells.append("pending")
            else:
                text = _fmt(row["median"])
                if row["seeds"] < len(summary["grid_seeds"]):
                    text += f" ({row['seeds']}/{len(summary['grid_seeds'])} seeds)"
                cells.append(text)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads_per_process": 1,
    }


def _machines(cache: Cache, summaries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many of the shown variants' cached runs each machine trained."""
    shown = {s["variant"] for s in summaries}
    counts = Counter(
        r.get("machine", "not recorded") for r in cache.records.values() if r["variant"] in shown
    )
    return counts.most_common()


def _three_t(summary: dict[str, Any]) -> dict[str, Any] | None:
    """default's row told a budget of 3T, the run the steps-to-target checks read."""
    row: dict[str, Any] | None = summary.get("methods", {}).get("stagelr-default-3t")
    return row


def missed_seed_notes(summaries: list[dict[str, Any]]) -> list[str]:
    """Each seed where default told 3T misses the target, and whether any grid schedule
    reaches the target on that seed within T (known where the grid was trained on it)."""
    misses: list[str] = []
    for s in summaries:
        row = _three_t(s)
        for seed in row["missed_seeds"] if row else []:
            reach = s.get("grid_reach", {}).get(seed)
            if reach is None:
                why = "the grid was not trained on it"
            elif reach <= s["target"]:
                why = f"the grid's lowest point on it within T is {reach:.4f}: reachable"
            else:
                why = f"no grid schedule reaches the target on it within T: lowest {reach:.4f}"
            misses.append(f"{s['variant']} seed {seed} ({why})")
    return misses


def per_run_ratio_note(summaries: list[dict[str, Any]]) -> str | None:
    """default's (3T) compute ratio read run by run, beside the median-curve figure the
    verdict uses: the two differ where runs dip below the target at different steps."""
    cells = []
    for s in summaries:
        row = _three_t(s)
        if row is None or "tuning_inclusive_ratio_per_seed" not in row:
            continue
        cells.append(
            f"{s['variant']} {row['tuning_inclusive_ratio_per_seed']:.1f}x "
            f"(median curve {row['tuning_inclusive_ratio']:.1f}x)"
        )
    if not cells:
        return None
    return (
        "- default's tuning-inclusive compute ratio read run by run (the median over seeds "
        "of each run's own steps-to-target; the verdict reads the median curve): "
        + "; ".join(cells)
        + "."
    )


def render(
    summaries: list[dict[str, Any]],
    verdicts: dict[str, dict[str, Any]],
    *,
    command: str,
    info: dict[str, Any],
    img_prefix: str,
    cache: Cache,
) -> list[str]:
    """The docs section, in markdown (also what the CLI prints)."""
    lines = [
        "```sh",
        command,
        "```",
        "",
        f"Report generated on: {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}, torch "
        f"{info['torch']}, one torch thread per process. Results cache: "
        f"`{_rel(cache.folder)}` (one JSONL per variant, keyed by code hash"
        + (
            f" and corpus SHA-256 `{cache.corpus()[:16]}...`"
            if any(s["workload"] == "charlm" for s in summaries)
            else ""
        )
        + "); stagelr's studies in `studies.sqlite3` beside it.",
        "",
        "Runs by the machine that trained them: "
        + "; ".join(f"{name} {count}" for name, count in _machines(cache, summaries))
        + ".",
        "",
        "Completion: "
        + "; ".join(f"{s['variant']} {s['runs_done']}/{s['runs_planned']} runs" for s in summaries)
        + ".",
    ]
    if cache.stale or cache.other_corpus:
        lines.append(
            f"Ignored: {cache.stale} cached runs of other code, "
            f"{cache.other_corpus} of another corpus."
        )
    lines.append("")
    lines.append(
        "Tier verdicts (BENCHMARK.md): "
        + "; ".join(f"**{t}** {v['status']}" for t, v in verdicts.items())
        + "."
    )
    lines.append("")
    for tier, v in verdicts.items():
        for c in v["checks"]:
            mark = {True: "yes", False: "no", None: "pending"}[c["ok"]]
            lines.append(f"- {tier}: {c['check']}: {mark}")
    per_run = per_run_ratio_note(summaries)
    if per_run:
        lines.append(per_run)
    misses = missed_seed_notes(summaries)
    if misses:
        lines.append(
            "- seeds where default (budget 3T) misses the target: " + "; ".join(misses) + "."
        )
    if any(v["pending_variants"] for v in verdicts.values()):
        lines.append(
            "- pending variants (not yet in the verdicts): "
            + ", ".join(next(iter(verdicts.values()))["pending_variants"])
        )
    for s in summaries:
        lines += ["", f"#### {s['variant']} (T = {s['steps']})", ""]
        if s.get("target") is None:
            lines.append(
                f"Pending: {s['runs_done']}/{s['runs_planned']} runs done; no grid point has all "
                "its seeds yet, so there is no target."
            )
            continue
        cfg = s["target_config"]
        note = " (provisional: the grid is incomplete)" if s["target_provisional"] else ""
        lines.append(
            f"Target {s['target']:.4f}{note}: {cfg['schedule']} at peak {cfg['peak']:g}, median of "
            f"{len(s['grid_seeds'])} grid seeds; seed-SD {_fmt(s['target_seed_sd'])}; best Tier A "
            f"reaches it at {_steps(s['tier_a_steps'])} steps."
            + (f" Oracle E[L_T] {s['oracle']['final']:.4f}." if "oracle" in s else "")
            + (
                f" Best linear schedule's regret {s['linear_regret']:.4f}."
                if "linear_regret" in s
                else ""
            )
            + (f" {s['missing']} runs still pending." if s["missing"] else "")
        )
        lines.append("")
        lines += table(s)
        lines += ["", "Tier A grid, median final validation loss over the grid seeds:", ""]
        lines += grid_table(s)
        fc = [
            f"{m}: median error {_fmt(r['forecast_error_median'])}, median |error| "
            f"{_fmt(r['forecast_abs_error_median'])}"
            for m, r in s["methods"].items()
            if "forecast_error_median" in r
        ]
        if fc:
            lines += [
                "",
                "Forecast error (chosen LR's forecast minus the stage's realized end loss): "
                + "; ".join(fc)
                + ".",
            ]
        lines += ["", f"![{s['variant']}]({img_prefix}quality-{s['variant']}.png)"]
    return lines


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(harness.ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- plots


def plot(summary: dict[str, Any], cache: Cache, variant: Variant, out: Path) -> Path | None:
    """Validation loss vs charged steps (median over seeds) and the LR paths trained."""
    if summary.get("target") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = variant.steps
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    grid_x = np.linspace(0, 3 * steps, 301)
    config = tuple(sorted(summary["target_config"].items()))
    colours = {
        "target": "black",
        "untuned": "tab:gray",
        "range_test": "tab:olive",
        "schedulefree": "tab:purple",
        "stagelr-autolrs": "tab:orange",
        "stagelr-default": "tab:blue",
        "stagelr-default-3t": "tab:cyan",
    }
    for method in ("target", *SINGLE):
        if method not in summary["methods"]:
            continue
        seeds = summary["methods"][method]["seeds"]
        task_of = (
            (lambda s: Task(variant, "grid", s, config))
            if method == "target"
            else (lambda s, m=method: Task(variant, m, s))
        )
        curves = [_curve(r) for s in seeds if (r := cache.get(task_of(s)))]
        if not curves:
            continue
        values = np.array([[loss_at(c, int(x)) for x in grid_x] for c in curves])
        last = max(c[-1][1] for c in curves)
        keep = grid_x <= last
        median = np.median(values, axis=0)
        median[~np.isfinite(median)] = np.nan
        left.plot(grid_x[keep], median[keep], color=colours[method], label=LABELS[method])
        # The LR path of seed 0.
        record = cache.get(task_of(seeds[0]))
        path = record["run"]["lr_path"] if record else []
        if path:
            xs, ys = [], []
            ends = [p[0] for p in path[1:]] + [record["run"]["trajectory_steps"]]
            for (start, lr), end in zip(path, ends, strict=True):
                xs += [start, end]
                ys += [lr, lr]
            if len(path) > 60:  # a smooth schedule: draw it as a line through its steps
                xs = [p[0] for p in path]
                ys = [p[1] for p in path]
            right.plot(xs, ys, color=colours[method], label=LABELS[method], lw=1.5)
    oracle = cache.get(Task(variant, "oracle", 0)) if variant.workload == "nqm" else None
    if oracle is not None:
        lrs = oracle["run"]["lrs"]
        right.plot(range(len(lrs)), lrs, color="tab:red", ls="--", label="oracle (exact E[L])")
        left.axhline(
            oracle["run"]["final_loss"], color="tab:red", ls=":", lw=1, label="oracle E[L_T]"
        )
    left.axhline(summary["target"], color="black", ls="--", lw=0.8, label="target")
    left.axvline(steps, color="gray", ls=":", lw=0.8)
    left.set_yscale("log")
    left.set_xlabel("charged steps (search, rolled-back and diverged steps included)")
    left.set_ylabel("validation loss (median over seeds)")
    left.set_title(f"{variant.name}: validation loss vs compute", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_xlabel("trajectory step")
    right.set_ylabel("learning rate (seed 0)")
    right.set_title("LR path trained", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality-{variant.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def to_json(value: Any) -> Any:
    """Summaries as strict JSON (inf and NaN as strings, as the API writes them)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(payload), indent=1) + "\n")
