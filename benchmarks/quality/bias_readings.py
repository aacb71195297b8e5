"""Does anything `default`'s search sees say which way its choice is off? Read offline.

    python -m benchmarks.quality.bias_readings

For every variant of the committed quality cache, from the stored studies of today's
`default` runs at T (the cache's current-code records, through its aliases, name their
studies in ``docs/results/quality/studies/``): the chosen LR's bias against the grid's best peak,
``log(best peak / chosen)`` (positive: chosen too cool), beside readings of the search
that chose it:

- ``progress``: the chosen window's end below its first reading, relative to that reading;
- ``from_start``: its end below the stage's start (the lowest first reading of any window);
- ``noise``: its reading noise (the window-end forecast's sd), relative to its end;
- ``cooler`` / ``hotter``: the rise of the window ends to the next cooler / hotter
  candidate, relative to the chosen end, per unit of log-LR;
- ``check``: the check window's end against the first window's, relative;
- ``edge``: log of the stability edge (half the lowest unstable window's LR, or the
  range's top) over the chosen LR;
- ``in_range``: log of the range's top over the chosen LR: where the choice sits in the
  range. The benchmark sets each variant's range to the grid it tuned it on, so this one
  predicts the bias by construction and says nothing about a user's range.

It prints each variant's medians over seeds and, per split group (dev, held-out), each
reading's Spearman rank correlation with the bias over the variants trained from scratch.
Nothing is trained.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.quality import harness
from benchmarks.quality.workloads import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "docs" / "results" / "quality"
#: The quality report's figures (``python -m benchmarks.quality --report-only`` writes it).
REPORT = ROOT / "docs" / "results" / "quality.json"
READINGS = ("progress", "from_start", "noise", "cooler", "hotter", "check", "edge", "in_range")


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    with gzip.open(path, "rt") as handle:
        for line in handle:
            yield json.loads(line)


def best_peaks(report: Path = REPORT) -> dict[str, float]:
    """Per variant, the peak of the report's target config (the grid's best, the peak its
    "chosen LR / best peak" column divides by), from the committed report."""
    variants = json.loads(report.read_text())["variants"]
    return {
        v["variant"]: float(v["target_config"]["peak"]) for v in variants if v.get("target_config")
    }


def readings(study: dict[str, Any], best: float) -> dict[str, float] | None:
    """The bias and the readings of one stored `default` study (None: no scored choice)."""
    chosen = study["stages"][0]["chosen_lr"]
    windows: dict[float, list[tuple[int, float, float, float, bool]]] = defaultdict(list)
    firsts = []
    for segment in study["segments"]:
        if segment["kind"] != "explore" or segment["stage"] != 0:
            continue
        points = [float(o[-1]) for o in segment["observations"]]
        forecast = segment.get("forecast") or {}
        if not points or forecast.get("prediction") is None:
            continue
        firsts.append(points[0])
        unstable = segment["status"] != "completed" or points[-1] > points[0]
        windows[segment["lr"]].append(
            (
                segment["seq"],
                forecast["prediction"],
                forecast.get("std") or 0.0,
                points[0],
                unstable,
            )
        )
    if chosen not in windows:
        return None
    first = sorted(windows[chosen])
    _, end, sd, start, _ = first[0]
    lrs = sorted(windows)
    at = lrs.index(chosen)

    def score(lr: float) -> float:
        return min(w[1] for w in windows[lr])

    def slope(other: float) -> float:
        return (score(other) - end) / end / abs(math.log(other / chosen))

    unstable = [lr for lr, ws in windows.items() if any(w[4] for w in ws)]
    top = study["config"]["lr_max"]
    nan = float("nan")
    return {
        "bias": math.log(best / chosen),
        "progress": (start - end) / start,
        "from_start": (min(firsts) - end) / min(firsts),
        "noise": sd / end if end else nan,
        "cooler": slope(lrs[at - 1]) if at > 0 else nan,
        "hotter": slope(lrs[at + 1]) if at + 1 < len(lrs) else nan,
        "check": (first[1][1] - end) / end if len(first) > 1 and end else nan,
        "edge": math.log((min(unstable) / 2 if unstable else top) / chosen),
        "in_range": math.log(top / chosen),
        "pretrained": 1.0 if study["config"].get("pretrained") else 0.0,
    }


def collect(folder: Path = CACHE) -> dict[str, list[dict[str, float]]]:
    """Every variant's readings, one entry per stored study of today's `default` at T."""
    cache = harness.Cache(folder).load()
    best = best_peaks()
    names: dict[str, set[str]] = defaultdict(set)
    for record in cache.records.values():
        if record["method"] == "stagelr-default":
            study = (record["run"].get("extra") or {}).get("study")
            if study:
                names[record["variant"]].add(study)
    out: dict[str, list[dict[str, float]]] = {}
    for name in sorted(names):
        studies = folder / "studies" / f"{name}.jsonl.gz"
        if name not in best or not studies.exists():
            continue
        rows = []
        for study in _lines(studies):
            if study.get("name") in names[name]:
                row = readings(study, best[name])
                if row is not None:
                    rows.append(row)
        if rows:
            out[name] = rows
    return out


def _median(values: Iterable[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return statistics.median(kept) if kept else float("nan")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Rank correlation of the finite pairs (NaN with fewer than three)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out

    rx, ry = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


def report(data: dict[str, list[dict[str, float]]]) -> str:
    """Per-variant medians, then each reading's correlation with the bias by split."""
    medians = {v: {k: _median(r[k] for r in rows) for k in rows[0]} for v, rows in data.items()}
    lines = [f"{'variant':<16} {'split':<6} {'seeds':>5} {'chosen/best':>11} "
             + " ".join(f"{k:>10}" for k in READINGS)]  # fmt: skip
    for name, m in sorted(medians.items(), key=lambda kv: kv[1]["bias"]):
        lines.append(
            f"{name:<16} {VARIANTS[name].split:<6} {len(data[name]):>5} "
            f"{math.exp(-m['bias']):>11.2f} " + " ".join(f"{m[k]:>10.3f}" for k in READINGS)
        )
    groups: dict[str, Callable[[str], bool]] = {
        "dev": lambda v: VARIANTS[v].split == "dev",
        "held-out": lambda v: VARIANTS[v].split != "dev",
    }
    lines.append("Spearman with the bias, variants trained from scratch (medians over seeds):")
    for group, member in groups.items():
        chosen = [m for v, m in medians.items() if member(v) and not m["pretrained"]]
        cells = " ".join(
            f"{k}:{spearman([m[k] for m in chosen], [m['bias'] for m in chosen]):+.2f}"
            for k in READINGS
        )
        lines.append(f"  {group} ({len(chosen)} variants): {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="the quality cache folder")
    args = parser.parse_args(argv)
    print(report(collect(args.cache)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
