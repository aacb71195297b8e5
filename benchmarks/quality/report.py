"""Statistics, tables, verdicts, plots and the docs section, from the results cache alone.

Definitions (BENCHMARK.md section 1, version 2, made exact):

- target: the median final validation loss, over the grid seeds, of the best Tier A
  config (lowest such median over every schedule and peak LR).
- a run's loss at T (the equal-compute figure): a run planned for T (budget T), its final
  validation loss; an anytime rival (run once to 3T), its harness evaluation at T.
- steps-to-target, per seed. A planned method (the target config, Prodigy + cosine,
  D-Adapt + cosine, stagelr ``default``) is run planned for each budget B in 1, 1.5, 2,
  3 T: the seed's figure is B x T for the smallest B whose run ENDS at or below the
  target (a miss, infinity, if none). An anytime rival (schedule-free, DoG): the charged
  steps at the first harness evaluation from which its curve stays at or below the
  target to the end of its 3T run. A method's figure is the median over its seeds (a
  miss on more than half of them is a miss). Tuning-inclusive compute ratio: 8T / that.
- gap closed, per seed: (untuned - method) / (untuned - target), the untuned default's
  and the method's losses at T on that seed; the figure is the median over seeds.
- chosen LR / best peak: a stagelr run's first chosen LR (the range test's chosen peak)
  over the target config's peak; the median over seeds.
- paired bootstrap: the mean over seeds of (method - target config) loss at T, seeds
  paired, 10,000 resamples, 95% percentile interval. "matches": the interval lies within
  one seed-SD of the target config; "beats": it lies below zero.
- W1 regret: E[L_T] of the LR path a run trained (the exact recursion, noise-free)
  minus the oracle's; an optimizer that is not plain SGD stands in with its median
  realized loss at T.

The tier verdicts (Credible, Strong, Moonshot) are read separately on each split; on a
held-out split (test, test2, test3) the stagelr rows exist only once the commit at which
``default`` was frozen for that split is recorded (``harness.record_frozen``), and until
then its verdicts read "not run".
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

from . import harness, methods, rivals, workloads
from .harness import BUDGETS, Cache, Task, cpu_name
from .workloads import HELD_OUT, SPLITS, Variant

RESAMPLES = 10_000
LABELS = {
    "target": "Tier A best (target config)",
    "untuned": "untuned default (linear)",
    "range_test": "LR range test + linear",
    "schedulefree": "schedule-free",
    "dog": "DoG + averaging",
    "prodigy": "Prodigy + cosine",
    "dadapt": "D-Adapt Adam + cosine",
    "stagelr-autolrs": "stagelr autolrs (tau T/16..T/4)",
    "stagelr-default": "stagelr default",
}
#: The rows of a variant's table, in order (each where it applies).
ROWS = tuple(LABELS)
#: Tier B: what a user would run instead of a tuning service.
TIER_B = ("untuned", "range_test", "schedulefree", "dog", "prodigy", "dadapt", "stagelr-autolrs")
#: Methods whose steps-to-target is read from budgeted runs, and the anytime ones.
PLANNED = ("target", "prodigy", "dadapt", "stagelr-default")
ANYTIME = rivals.ANYTIME
NOT_FROZEN = "not run: default not frozen"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _sd(values: Sequence[float]) -> float:
    finite = _finite(values)
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def _curve(record: dict[str, Any]) -> list[tuple[int, int, float]]:
    return [
        (int(t), int(c), math.inf if v is None else float(v)) for t, c, v in record["run"]["curve"]
    ]


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


def stays_below_from(curve: list[tuple[int, int, float]], level: float) -> float:
    """Charged steps at the first evaluation from which ``curve`` stays at or below
    ``level`` to its end (an anytime method's steps-to-target); inf if it ends above."""
    hit = math.inf
    for _, charged, value in reversed(curve):
        if value <= level:
            hit = float(charged)
        else:
            break
    return hit


def budgeted_steps(finals: dict[float, float], level: float, steps: int) -> float | None:
    """A planned method's steps-to-target on one seed from its final loss per budget (in
    T): B x T for the smallest B of ``BUDGETS`` whose run ends at or below ``level``;
    inf if every budget's run ends above it; None while a budget it needs is missing."""
    for budget in BUDGETS:
        if budget not in finals:
            return None
        if finals[budget] <= level:
            return budget * steps
    return math.inf


def median_steps(per_seed: Sequence[float]) -> float:
    """The median over seeds of per-seed steps-to-target (a miss is infinity)."""
    return _median(sorted(per_seed)) if per_seed else math.nan


def gap_closed(untuned: dict[int, float], method: dict[int, float], target: float) -> float:
    """The median over the seeds both ran of (untuned - method) / (untuned - target);
    NaN where no seed's untuned run ends above the target (nothing to close)."""
    gaps = []
    for seed in sorted(set(untuned) & set(method)):
        room = untuned[seed] - target
        if room > 0 and math.isfinite(untuned[seed]):
            value = method[seed]
            gaps.append((untuned[seed] - value) / room if math.isfinite(value) else -math.inf)
    return _median(gaps) if gaps else math.nan


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


def _record_sets(
    variant: Variant, cache: Cache, config: tuple[tuple[str, Any], ...], seeds: list[int],
    grid_seeds: list[int],
) -> dict[str, dict[float, dict[int, dict[str, Any]]]]:  # fmt: skip
    """method -> budget -> seed -> record, for every row (the target config's T runs on
    the grid seeds too)."""
    out: dict[str, dict[float, dict[int, dict[str, Any]]]] = {}
    for method in ROWS:
        by_budget: dict[float, dict[int, dict[str, Any]]] = {}
        budgets = BUDGETS if method in PLANNED else (1.0,)
        for budget in budgets:
            wanted = sorted(set(seeds) | set(grid_seeds)) if method == "target" else seeds
            found = {}
            for seed in wanted:
                if method == "target":
                    task = harness.budget_task(variant, "grid", seed, config, budget)
                elif method == "stagelr-default":
                    task = harness.budget_task(variant, method, seed, (), budget)
                else:
                    task = harness.budget_task(variant, method, seed, (), budget)
                if (record := cache.get(task)) is not None:
                    found[seed] = record
            if found:
                by_budget[budget] = found
        if by_budget.get(1.0):
            out[method] = by_budget
    return out


def _chosen_lr(record: dict[str, Any]) -> float | None:
    extra = record["run"].get("extra", {})
    if "chosen_peak" in extra:
        return float(extra["chosen_peak"])
    stages = extra.get("stages") or []
    if stages and stages[0].get("chosen_lr") is not None:
        return float(stages[0]["chosen_lr"])
    return None


def summarize(
    variant: Variant, cache: Cache, quick: bool, seeds_override: int | None
) -> dict[str, Any]:
    """Everything the tables, plots and verdicts need for one variant."""
    steps = variant.steps
    grid_seeds = harness.seeds(variant, quick, seeds_override, grid=True)
    method_seeds = harness.seeds(variant, quick, seeds_override, grid=False)
    points = harness.grid_points(variant, quick)
    everything = list(harness.ALL_METHODS)
    out: dict[str, Any] = {
        "variant": variant.name,
        "workload": variant.workload,
        "split": variant.split,
        "quick": quick,
        "family": variant.family,
        "steps": steps,
        "grid_points": len(points),
        "grid_seeds": grid_seeds,
        "method_seeds": method_seeds,
        "default_run": harness.method_applies("stagelr-default", variant, cache.folder),
    }

    # Completion: the first phase, and the budgeted runs the results so far leave open.
    empty = Cache(cache.folder, cache.hashes)
    planned = harness.plan(variant, empty, everything, quick, seeds_override)
    missing = [t for t in planned if cache.get(t) is None]
    # What the verdicts need: the rivals' own budgeted runs are optional (their
    # steps-to-target shows as pending without them).
    missing += harness.extension(
        variant, cache, everything, quick, seeds_override, rival_budgets=False
    )
    out["runs_done"] = sum(1 for t in planned if cache.get(t) is not None)
    out["runs_missing"] = len(missing)

    # The grid.
    grid_rows: list[dict[str, Any]] = []
    for kind, peak in sorted(points):
        config = (("peak", peak), ("schedule", kind))
        point = [r for s in grid_seeds if (r := cache.get(Task(variant, "grid", s, config)))]
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
    complete_grid = all(r["seeds"] == len(grid_seeds) for r in grid_rows)
    out["grid_complete"] = complete_grid
    full = [r for r in grid_rows if r["seeds"] == len(grid_seeds)]
    per_schedule: dict[str, dict[str, float]] = {}
    for kind in methods.SCHEDULES:
        mine = [r for r in full if r["schedule"] == kind]
        if mine:
            top = min(mine, key=lambda r: float(r["median"]))
            per_schedule[kind] = {"peak": top["peak"], "median": top["median"]}
    out["best_per_schedule"] = per_schedule
    oracle = cache.get(Task(variant, "oracle", 0)) if variant.workload == "nqm" else None
    if oracle is not None:
        out["oracle"] = {"final": oracle["run"]["final_loss"]}
    out["target_provisional"] = not complete_grid
    if not full:
        out.update(target=None, methods={})
        return out
    top = min(full, key=lambda r: float(r["median"]))
    config = (("peak", top["peak"]), ("schedule", top["schedule"]))
    target = float(top["median"])
    out["target"] = target
    out["target_config"] = dict(config)
    peaks = sorted(variant.grid)
    out["best_on_grid_edge"] = top["peak"] in (peaks[0], peaks[-1])

    sets = _record_sets(variant, cache, config, method_seeds, grid_seeds)
    target_at_t = {s: harness._final(r) for s, r in sets["target"][1.0].items()}
    sd = _sd(list(target_at_t.values()))
    out["target_seed_sd"] = sd

    def at_t(method: str, record: dict[str, Any]) -> float:
        if method in ANYTIME:
            return loss_at(_curve(record), steps)
        return harness._final(record)

    untuned = {s: at_t("untuned", r) for s, r in sets.get("untuned", {}).get(1.0, {}).items()}
    rows: dict[str, Any] = {}
    oracle_final = oracle["run"]["final_loss"] if oracle else None
    for method, by_budget in sets.items():
        records = by_budget[1.0]
        if method != "target":
            records = {s: r for s, r in records.items() if s in method_seeds}
        finals = {s: at_t(method, r) for s, r in records.items()}
        charged = [min(r["run"]["charged_steps"], steps) if method in ANYTIME
                   else r["run"]["charged_steps"] for r in records.values()]  # fmt: skip
        # Steps-to-target per seed.
        per_seed: dict[int, float | None] = {}
        for seed, record in records.items():
            if method in ANYTIME:
                per_seed[seed] = stays_below_from(_curve(record), target)
            elif method in PLANNED:
                finals_by_budget = {
                    b: harness._final(by_budget[b][seed]) for b in by_budget if seed in by_budget[b]
                }
                per_seed[seed] = budgeted_steps(finals_by_budget, target, steps)
        known = [v for v in per_seed.values() if v is not None]
        stt = median_steps(known) if per_seed and len(known) == len(per_seed) else math.nan
        common = sorted(set(finals) & set(target_at_t))
        ci = paired_bootstrap([finals[s] - target_at_t[s] for s in common])
        lrs = [lr for r in records.values() if (lr := _chosen_lr(r)) is not None]
        row: dict[str, Any] = {
            "label": LABELS[method],
            "seeds": sorted(records),
            "final_median": _median(list(finals.values())),
            "final_min": min(finals.values()),
            "final_max": max(finals.values()),
            "final_sd": _sd(list(finals.values())),
            "diverged": sum(1 for v in finals.values() if not math.isfinite(v)),
            "charged_median": _median(charged),
            "tuner_eval_steps": _median(
                [r["run"].get("eval_cost_steps", 0.0) for r in records.values()]
            ),
            "finals": finals,
            "steps_to_target_by_seed": per_seed,
            "steps_to_target": stt,
            "steps_to_target_pending": sum(1 for v in per_seed.values() if v is None),
            "reached_target": sum(1 for v in known if math.isfinite(v)),
            "tuning_inclusive_ratio": (8 * steps / stt if math.isfinite(stt) and stt > 0 else 0.0),
            "gap_closed": gap_closed(untuned, finals, target) if untuned else math.nan,
            "chosen_lr_ratio": (_median(lrs) / float(top["peak"])) if lrs else math.nan,
            "paired_diff": {"mean": ci[0], "low": ci[1], "high": ci[2], "seeds": len(common)},
            "vs_target": verdict(ci, sd),
        }
        if variant.workload == "nqm" and oracle_final is not None:
            expected = [r["run"].get("expected_final") for r in records.values()]
            if method not in ANYTIME and all(e is not None for e in expected):
                row["regret"] = _median([float(e) for e in expected]) - oracle_final
            else:
                row["regret"] = row["final_median"] - oracle_final
        if method.startswith("stagelr-"):
            errors = [
                st["predicted"] - st["realized"]
                for r in records.values()
                for st in r["run"]["extra"].get("stages", [])
                if st["predicted"] is not None and st["realized"] is not None
            ]
            row["forecast_error_median"] = _median(errors) if errors else math.nan
        rows[method] = row
    if variant.workload == "nqm" and oracle_final is not None and "linear" in per_schedule:
        lin = per_schedule["linear"]
        lin_config = (("peak", lin["peak"]), ("schedule", "linear"))
        lin_records = [
            r for s in grid_seeds if (r := cache.get(Task(variant, "grid", s, lin_config)))
        ]
        if lin_records:
            out["linear_regret"] = (
                _median([float(r["run"]["expected_final"]) for r in lin_records]) - oracle_final
            )
    out["methods"] = rows
    rivals_at_t = {m: r for m, r in rows.items() if m in TIER_B}
    if rivals_at_t:
        best = min(rivals_at_t, key=lambda m: rivals_at_t[m]["final_median"])
        out["best_rival"] = best
    return out


# --------------------------------------------------------------------------- verdicts


def _beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` beats ``b`` at T: the paired interval of a - b lies below zero."""
    seeds = sorted(set(a["finals"]) & set(b["finals"]))
    ci = paired_bootstrap([a["finals"][s] - b["finals"][s] for s in seeds])
    return bool(ci[2] < 0)


def _history_check(split: str) -> tuple[str, bool | None]:
    """The Moonshot tier's history clause, read from the history benchmark's committed
    runs (``benchmarks.quality.history``)."""
    from . import history

    ok, text = history.moonshot_check(split)
    return text, ok


def split_verdicts(summaries: list[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    """Credible / Strong / Moonshot on one split: met, not met, pending (runs missing) or
    not run (``default`` not frozen for the test split)."""
    mine = [s for s in summaries if s["split"] == split]
    complete = [s for s in mine if s["runs_missing"] == 0 and s.get("target") is not None]
    pending = [s["variant"] for s in mine if s not in complete]
    tiers = ("Credible", "Strong", "Moonshot")
    if mine and not any(s["default_run"] for s in mine):
        return {
            t: {"status": NOT_FROZEN, "checks": [], "on_variants": [], "pending_variants": []}
            for t in tiers
        }
    checks: dict[str, list[tuple[str, bool | None]]] = {t: [] for t in tiers}
    n = len(mine)
    at_least = math.ceil(0.8 * n) if n else 0

    def default(s: dict[str, Any]) -> dict[str, Any] | None:
        row: dict[str, Any] | None = s["methods"].get("stagelr-default")
        return row

    def judged(test: Any) -> bool | None:
        """A check over every workload: None while one is pending."""
        results = [test(s) for s in complete]
        if any(r is False for r in results):
            return False
        return None if pending else True

    def counted(test: Any) -> bool | None:
        """At least 80% of the split's workloads (pending ones could still count)."""
        hits = sum(1 for s in complete if test(s))
        if hits >= at_least:
            return True
        return None if hits + len(pending) >= at_least else False

    def below_every_rival(s: dict[str, Any]) -> bool:
        d = default(s)
        rows = [r for m, r in s["methods"].items() if m in TIER_B]
        return d is not None and all(d["final_median"] < r["final_median"] for r in rows)

    def near_best_rival(s: dict[str, Any]) -> bool:
        d = default(s)
        best = best_rival(s)
        if d is None or best is None:
            return d is not None
        return bool(d["final_median"] - best["final_median"] <= s["target_seed_sd"])

    def within_2t(s: dict[str, Any]) -> bool:
        d = default(s)
        return d is not None and d["steps_to_target"] <= 2 * s["steps"]

    def beats_autolrs(s: dict[str, Any]) -> bool:
        d, a = default(s), s["methods"].get("stagelr-autolrs")
        return d is not None and a is not None and _beats(d, a)

    def meets_target(s: dict[str, Any]) -> bool:
        d = default(s)
        return d is not None and d["vs_target"] in ("matches", "beats")

    checks["Credible"] += [
        (f"at T, default's median loss below every Tier-B rival's on >= {at_least} of {n} "
         "workloads", counted(below_every_rival)),
        ("never worse than the best rival by more than one seed-SD", judged(near_best_rival)),
        ("steps-to-target at most 2T (median) on every workload", judged(within_2t)),
        ("autolrs beaten everywhere (paired interval below zero)", judged(beats_autolrs)),
    ]  # fmt: skip
    checks["Strong"].append(
        (f"default matches or beats the target at T on >= {at_least} of {n} workloads",
         counted(meets_target))
    )  # fmt: skip
    checks["Moonshot"].append(
        ("default matches or beats the target at T on every workload", judged(meets_target))
    )
    checks["Moonshot"].append(
        _history_check(split)
        if not any(s.get("quick") for s in mine)
        else ("a job started from its family's stored history beats the target at T "
              "(the history benchmark: not part of the quick run)", None)
    )  # fmt: skip
    nqm = [s for s in complete if s["workload"] == "nqm"]
    if any(s["workload"] == "nqm" for s in mine):
        gap_ok: bool | None = None
        if nqm:
            gap_ok = True
            for s in nqm:
                d, lin = default(s), s.get("linear_regret")
                gap_ok = bool(
                    gap_ok
                    and d is not None
                    and lin is not None
                    and "regret" in d
                    and lin - d["regret"] >= 0.5 * lin
                )
        checks["Moonshot"].append(
            ("on W1, at least half of the linear-to-oracle gap closed", gap_ok)
        )
    out: dict[str, dict[str, Any]] = {}
    for tier, items in checks.items():
        if any(ok is False for _, ok in items):
            status = "not met"
        elif any(ok is None for _, ok in items):
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


def tier_verdicts(summaries: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The tier verdicts of each split that has workloads among ``summaries``."""
    return {
        split: split_verdicts(summaries, split)
        for split in SPLITS
        if any(s["split"] == split for s in summaries)
    }


# --------------------------------------------------------------------------- text


def best_rival(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A variant summary's best Tier-B rival at T (its method record: ``label``,
    ``final_median``, ...), None while there is none."""
    result: dict[str, Any] | None = summary.get("methods", {}).get(summary.get("best_rival") or "")
    return result


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "miss" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _in_t(value: float, steps: int) -> str:
    if value is None or math.isnan(value):
        return "pending"
    return "miss (> 3T)" if math.isinf(value) else f"{value / steps:.2g}T"


def table(summary: dict[str, Any]) -> list[str]:
    """The detailed markdown table of one variant."""
    nqm = summary["workload"] == "nqm"
    steps = summary["steps"]
    lines = [
        "| method | loss at T, median [min, max] (SD) | charged steps | steps-to-target "
        "(median; seeds at it) | gap closed | chosen LR / best peak | vs target "
        "(paired 95% CI) |" + (" W1 regret |" if nqm else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | --- |" + (" ---: |" if nqm else ""),
    ]
    for method, row in summary["methods"].items():
        pd = row["paired_diff"]
        name = row["label"]
        if method == "target":
            cfg = summary["target_config"]
            name += f": {cfg['schedule']} @ {cfg['peak']:g}"
        if row["diverged"]:
            name += f" ({row['diverged']} diverged)"
        if row["steps_to_target_by_seed"]:
            stt = _in_t(row["steps_to_target"], steps) + (
                f"; {row['reached_target']}/{len(row['seeds'])}"
                + (
                    f", {row['steps_to_target_pending']} pending"
                    if row["steps_to_target_pending"]
                    else ""
                )
            )
        else:
            stt = "-"
        cells = [
            name + f" [{len(row['seeds'])} seeds]",
            f"{_fmt(row['final_median'])} [{_fmt(row['final_min'])}, {_fmt(row['final_max'])}] "
            f"({_fmt(row['final_sd'])})",
            f"{row['charged_median']:,.0f}",
            stt,
            "-" if method == "target" else _fmt(row["gap_closed"], 2),
            _fmt(row["chosen_lr_ratio"], 2),
            "-"
            if method == "target"
            else f"{row['vs_target']}: {pd['mean']:+.4f} [{pd['low']:+.4f}, {pd['high']:+.4f}]",
        ]
        if nqm:
            cells.append(_fmt(row.get("regret", math.nan)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_table(summaries: list[dict[str, Any]], split: str, img_prefix: str) -> list[str]:
    """One row per workload of ``split``: target, default at T, the best Tier-B rival at
    T (named), default's gap closed and steps-to-target, its verdict against the target."""
    lines = [
        "| workload | target | `default` at T | best Tier-B rival at T | gap closed | "
        "steps-to-target | verdict | plot |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for s in summaries:
        if s["split"] != split:
            continue
        if s.get("target") is None:
            lines.append(f"| {s['variant']} | pending | | | | | | |")
            continue
        best = best_rival(s)
        rival = f"{LABELS[s['best_rival']]} {_fmt(best['final_median'])}" if best else "pending"
        d = s["methods"].get("stagelr-default")
        if not s["default_run"]:
            cells = [NOT_FROZEN, "-", "-", "-"]
        elif d is None:
            cells = ["pending", "-", "-", "-"]
        else:
            cells = [
                _fmt(d["final_median"]),
                _fmt(d["gap_closed"], 2),
                _in_t(d["steps_to_target"], s["steps"]),
                d["vs_target"],
            ]
        lines.append(
            f"| {s['variant']} | {_fmt(s['target'])} | {cells[0]} | {rival} | {cells[1]} | "
            f"{cells[2]} | {cells[3]} | [plot]({img_prefix}quality-{s['variant']}.png) |"
        )
    return lines


def render_summary(
    summaries: list[dict[str, Any]],
    verdicts: dict[str, dict[str, dict[str, Any]]],
    *,
    img_prefix: str,
    frozen: dict[str, dict[str, Any] | None] | None = None,
    stagelr_code: str | None = None,
    equivalent: frozenset[str] = frozenset(),
) -> list[str]:
    """Per split: the tier verdicts, their checks and the summary table (markdown).
    ``frozen``: each held-out split's frozen-commit record (None where there is none);
    ``stagelr_code``: the stagelr code hash the rows were read at (today's): a split
    frozen at another is said to hold dev results for it, unless that one is among
    ``equivalent`` (older hashes whose runs ``recheck`` reproduced with today's code)."""
    lines: list[str] = []
    for split, tiers in verdicts.items():
        lines += ["", f"**{split.capitalize()} split.**", ""]
        if split in HELD_OUT:
            record = (frozen or {}).get(split)
            lines.append(
                "`default` frozen at commit "
                + (
                    f"`{record['commit']}` (recorded {record['recorded_at']})."
                    if record
                    else f"(none): default not yet run on the {split} split."
                )  # fmt: skip
            )
            judged = (record or {}).get("stagelr_code")
            if judged and stagelr_code and judged not in {stagelr_code, *equivalent}:
                lines.append(
                    f"`default` changed after these results were read (stagelr {judged[:12]} "
                    f"then, {stagelr_code[:12]} now): the rows below are today's `default` "
                    "and are dev results for it (BENCHMARK.md); a fresh split judges it."
                )
            lines.append("")
        lines.append(
            "Tier verdicts: " + "; ".join(f"**{t}** {v['status']}" for t, v in tiers.items()) + "."
        )
        lines.append("")
        for tier, v in tiers.items():
            for c in v["checks"]:
                mark = {True: "yes", False: "no", None: "pending"}[c["ok"]]
                lines.append(f"- {tier}: {c['check']}: {mark}")
        pend = next(iter(tiers.values()))["pending_variants"]
        if pend:
            lines.append("- pending workloads (runs missing): " + ", ".join(pend))
        lines += [""] + summary_table(summaries, split, img_prefix)
    return lines[1:]


def render(
    summaries: list[dict[str, Any]],
    verdicts: dict[str, dict[str, dict[str, Any]]],
    *,
    command: str,
    info: dict[str, Any],
    img_prefix: str,
    cache: Cache,
) -> list[str]:
    """The detailed docs section, in markdown (also what the CLI prints): how the report
    was made, completion, and each variant's tables."""
    corpora = sorted({s["workload"] for s in summaries if workloads.corpus_sha256(s["workload"])})
    lines = [
        "```sh",
        command,
        "```",
        "",
        f"Report generated on: {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}, torch {info['torch']}, one torch thread per process. "
        f"Results cache: `{_rel(cache.folder)}` (gzip-compressed JSON lines, one file per "
        "variant, keyed by code hash"
        + ("".join(f"; {w} corpus SHA-256 `{(cache.corpus(w) or '')[:16]}...`" for w in corpora))
        + ").",
        "",
        "Runs by the machine that trained them: "
        + "; ".join(f"{name} {count}" for name, count in _machines(cache, summaries))
        + ".",
        "",
        "Completion: "
        + "; ".join(
            f"{s['variant']} {s['runs_done']} runs"
            + (f", {s['runs_missing']} still to train" if s["runs_missing"] else ", complete")
            for s in summaries
        )
        + ".",
    ]
    if cache.stale or cache.other_corpus:
        lines.append(
            f"Ignored: {cache.stale} cached runs of other code, "
            f"{cache.other_corpus} of another corpus."
        )
    for s in summaries:
        lines += ["", f"#### {s['variant']} ({s['split']} split, T = {s['steps']})", ""]
        if s.get("target") is None:
            lines.append(
                f"Pending: {s['runs_done']} runs done, {s['runs_missing']} to train; no grid "
                "point has all its seeds yet, so there is no target."
            )
            continue
        cfg = s["target_config"]
        note = " (provisional: the grid is incomplete)" if s["target_provisional"] else ""
        edge = (
            " The best peak sits on the grid's edge: widen the grid."
            if s["best_on_grid_edge"]
            else ""
        )
        lines.append(
            f"Target {s['target']:.4f}{note}: {cfg['schedule']} at peak {cfg['peak']:g}, median of "
            f"{len(s['grid_seeds'])} grid seeds; seed-SD {_fmt(s['target_seed_sd'])}."
            + (f" Oracle E[L_T] {s['oracle']['final']:.4f}." if "oracle" in s else "")
            + (
                f" Best linear schedule's regret {s['linear_regret']:.4f}."
                if "linear_regret" in s
                else ""
            )
            + edge
        )
        lines.append("")
        lines += table(s)
        lines += ["", "Tier A grid, median final validation loss over the grid seeds:", ""]
        lines += grid_table(s)
        fc = [
            f"{m}: median error {_fmt(r['forecast_error_median'])}"
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


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(harness.ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- plots


def plot(summary: dict[str, Any], cache: Cache, variant: Variant, out: Path) -> Path | None:
    """Left: validation loss against charged steps (the median over seeds at each step,
    a picture only: no reading uses it) of the runs at T, the anytime rivals to 3T.
    Right: the LR path of seed 0 of ``default`` and the stagelr rows against the best
    grid schedule's (and the oracle's on W1)."""
    if summary.get("target") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = variant.steps
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    config = tuple(sorted(summary["target_config"].items()))
    colours = {
        "target": "black",
        "untuned": "tab:gray",
        "range_test": "tab:olive",
        "schedulefree": "tab:purple",
        "dog": "tab:pink",
        "prodigy": "tab:green",
        "dadapt": "tab:brown",
        "stagelr-autolrs": "tab:orange",
        "stagelr-default": "tab:blue",
    }
    for method, row in summary["methods"].items():
        seeds = row["seeds"]

        def task_of(seed: int, m: str = method) -> Task:
            if m == "target":
                return Task(variant, "grid", seed, config)
            return Task(variant, m, seed)

        records = [r for s in seeds if (r := cache.get(task_of(s)))]
        curves = [_curve(r) for r in records]
        if not curves:
            continue
        last = max(c[-1][1] for c in curves)
        xs = np.linspace(0, last, 151)
        values = np.array([[loss_at(c, int(x)) for x in xs] for c in curves])
        median = np.median(values, axis=0)
        median[~np.isfinite(median)] = np.nan
        left.plot(xs, median, color=colours[method], label=LABELS[method])
        if method not in ("target", "stagelr-default", "stagelr-autolrs", "range_test"):
            continue
        path = records[0]["run"]["lr_path"]
        if path:
            ends = [p[0] for p in path[1:]] + [records[0]["run"]["trajectory_steps"]]
            px, py = [], []
            for (start, lr), end in zip(path, ends, strict=True):
                px += [start, end]
                py += [lr, lr]
            if len(path) > 60:  # a smooth schedule: a line through its steps
                px, py = [p[0] for p in path], [p[1] for p in path]
            label = LABELS[method]
            if method == "target":
                label = f"best grid: {config[1][1]} @ {config[0][1]:g}"
            right.plot(px, py, color=colours[method], label=label, lw=1.5)
    oracle = cache.get(Task(variant, "oracle", 0)) if variant.workload == "nqm" else None
    if oracle is not None:
        lrs = oracle["run"]["lrs"]
        right.plot(range(len(lrs)), lrs, color="tab:red", ls="--", label="oracle (exact E[L])")
    left.axhline(summary["target"], color="black", ls="--", lw=0.8, label="target")
    left.axvline(steps, color="gray", ls=":", lw=0.8)
    left.set_yscale("log")
    left.set_xlabel("charged steps (search, rolled-back and diverged steps included)")
    left.set_ylabel("validation loss (median over seeds)")
    left.set_title(f"{variant.name} ({variant.split} split): loss vs compute", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_xlabel("trajectory step")
    right.set_ylabel("learning rate (seed 0)")
    right.set_title("LR path: stagelr against the best grid schedule", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path_out = out / f"quality-{variant.name}.png"
    fig.savefig(path_out, dpi=100)
    plt.close(fig)
    return path_out


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
