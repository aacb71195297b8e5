"""Paired comparisons of stagelr presets at charged budget T on the dev split's fast variants.

Variants of a held-out split are refused until ``default`` has been judged there (its
frozen commit recorded): then its results have been read, and comparing on it makes it a
dev split for any later change to ``default`` (the tool says so).

    python -m benchmarks.quality.devsplit --seeds 10 \\
        --config 'old=default-v1:{}' --config 'new=default:{}'

Each ``NAME=PRESET:JSON`` config runs ``PRESET`` with the JSON overrides, told the job's
whole compute (``charged_steps`` = T), through the real client against a live server on
a throwaway SQLite database, on the same variants and seeds. Runs are kept in a JSON
file keyed by the stagelr code hash (``--runs``, default under the ignored
``benchmarks/results/tmp/``), so a rerun trains only what a code change affects.

It prints, per variant: each config's median final loss; the first config against every
other (paired difference, mean and 95% paired bootstrap interval, later minus first:
negative means the later config is better); each config against the Tier-A target
config of the committed cache on the same seeds; and the chosen LRs. Then a table of
each config's median against the best Tier-B rival of the committed report, with the
wins counted. Nothing is written to the docs: ``docs/tuner.md`` quotes its output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FAST = ["nqm-b8", "nqm-b64", "digits", "digits-noisy"]


def _parse(item: str) -> tuple[str, str, dict[str, Any]]:
    name, sep, rest = item.partition("=")
    preset, sep2, text = rest.partition(":")
    if not sep or not sep2:
        raise SystemExit(f"--config {item!r}: write NAME=PRESET:JSON")
    return name, preset, json.loads(text or "{}")


def split_check(variants: list[str], folder: Path) -> tuple[list[str], list[str]]:
    """The variants a comparison may not run on (a held-out split whose frozen commit is
    not recorded: ``default`` has not been judged there), and the held-out splits among
    ``variants`` whose results have been read (recorded)."""
    from . import harness, workloads

    read = {split for split in workloads.HELD_OUT if harness.frozen_default(folder, split)}
    held = [
        v
        for v in variants
        if workloads.VARIANTS[v].split in workloads.HELD_OUT
        and workloads.VARIANTS[v].split not in read
    ]
    return held, sorted({workloads.VARIANTS[v].split for v in variants} & read)


def rival_table(
    medians: dict[str, dict[str, float]], rows: list[dict[str, Any]], labels: list[str]
) -> list[str]:
    """A markdown table of each config's median final loss (``medians[variant][label]``)
    against the best Tier-B rival's median at T in the committed report's ``rows`` (its
    JSON summary's variants), and whether each config beats it; the last line counts the
    wins. Variants the report has no rival for are left out."""
    from .report import best_rival

    by_variant = {row["variant"]: row for row in rows}
    head = "| variant | " + " | ".join(f"`{label}`" for label in labels) + " | best rival | "
    head += " | ".join(f"`{label}` beats it" for label in labels) + " |"
    lines = [head, "| --- |" + " ---: |" * len(labels) + " --- |" + " --- |" * len(labels)]
    wins = dict.fromkeys(labels, 0)
    counted = 0
    for variant, values in medians.items():
        row = by_variant.get(variant)
        rival = best_rival(row) if row is not None else None
        if rival is None:
            continue
        level = float(rival["final_median"])
        counted += 1
        beats = []
        for label in labels:
            won = values[label] < level
            wins[label] += won
            beats.append("yes" if won else "no")
        lines.append(
            f"| {variant} | "
            + " | ".join(f"{values[label]:.4g}" for label in labels)
            + f" | {rival['label']} {level:.4g} | "
            + " | ".join(beats)
            + " |"
        )
    lines.append(
        "wins against the best rival: "
        + ", ".join(f"{label} {wins[label]} of {counted}" for label in labels)
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--config", action="append", required=True, metavar="NAME=PRESET:JSON")
    parser.add_argument("--budget", type=float, default=1.0, help="charged budget in T")
    parser.add_argument(
        "--frozen",
        action="append",
        default=[],
        metavar="NAME",
        help="a config whose code has not changed (e.g. the shipped default): its runs "
        "are reused whatever the current code hash",
    )
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "devsplit.json"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "docs" / "results" / "quality",
        help="the quality results folder: its frozen records say which held-out splits "
        "have been read, its grid runs give the target",
    )
    args = parser.parse_args(argv)
    configs = [_parse(c) for c in args.config]
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from . import harness, report, tuned, workloads
    from .harness import Cache, Task

    variants = args.variant or FAST
    folder = args.results
    held, spent = split_check(variants, folder)
    if held:
        # Comparing presets on a held-out split would read it before default is judged
        # there: it is for the dev split, and for a split whose results were read already.
        parser.error(
            f"{', '.join(held)}: held out from default's development, and default has not "
            "been judged there yet (dev split, or a held-out split already read, only)"
        )
    if spent:
        # BENCHMARK.md: a change to default made after looking at a held-out split's
        # results makes them dev results.
        print(
            f"note: the {', '.join(spent)} split's results were read at its frozen commit; "
            "a default changed after comparing on it is judged on a fresh split",
            flush=True,
        )
    if any(workloads.VARIANTS[v].workload == "charlm" for v in variants) and args.seeds > 3:
        print("note: charlm with more than 3 seeds takes long", flush=True)
    code = harness.code_hashes()["stagelr"]
    store: dict[str, Any] = json.loads(args.runs.read_text()) if args.runs.exists() else {}
    # The target is the committed report's: its grid runs, read under the code hashes
    # that report recorded (a later edit of the workloads' code leaves them valid data).
    report_json = ROOT / "docs" / "results" / "quality.json"
    summary = json.loads(report_json.read_text()) if report_json.exists() else None
    committed = summary["code"] if summary else None
    cache = (Cache(folder, hashes=committed) if committed else Cache(folder)).load()

    def key(label: str, variant: str, preset: str, overrides: dict[str, Any], seed: int) -> str:
        stamp = "frozen" if label in args.frozen else code
        return json.dumps([variant, preset, overrides, seed, args.budget, stamp], sort_keys=True)

    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        server: harness.Server | None = None
        try:
            for name in variants:
                variant = workloads.VARIANTS[name]
                for label, preset, overrides in configs:
                    runs = []
                    for seed in range(args.seeds):
                        k = key(label, name, preset, overrides, seed)
                        if k not in store:
                            if server is None:
                                server = harness.start_service(Path(scratch))
                            run = tuned.run_stagelr(
                                server.url,
                                variant,
                                seed,
                                preset,
                                overrides=overrides or None,
                                budget=args.budget,
                            )
                            store[k] = {
                                "final": run.final_loss,
                                "charged": run.charged_steps,
                                "lrs": [s["chosen_lr"] for s in run.extra["stages"]],
                            }
                            args.runs.parent.mkdir(parents=True, exist_ok=True)
                            args.runs.write_text(json.dumps(store))
                        runs.append(store[k])
                    results[(name, label)] = runs
        finally:
            if server is not None:
                server.stop()

    def final(r: dict[str, Any]) -> float:
        return math.inf if r["final"] is None or math.isnan(r["final"]) else float(r["final"])

    for name in variants:
        variant = workloads.VARIANTS[name]
        best = harness.best_config(cache, variant, False, None)
        target = None
        if best is not None:
            recs = [cache.get(Task(variant, "grid", s, best[0])) for s in range(args.seeds)]
            if all(r is not None for r in recs):
                target = [harness._final(r) for r in recs if r is not None]
        first_label = configs[0][0]
        base = [final(r) for r in results[(name, first_label)]]
        head = f"{name} (T = {variant.steps}, {args.seeds} seeds)"
        if best is not None:
            head += f": target {best[1]:.4f} ({dict(best[0])})"
        print(head)
        for label, _, _ in configs:
            values = [final(r) for r in results[(name, label)]]
            charged = max(r["charged"] for r in results[(name, label)])
            line = f"  {label:>14}: median {statistics.median(values):.4f} (charged <= {charged})"
            if label != first_label:
                m, lo, hi = report.paired_bootstrap(
                    [v - b for v, b in zip(values, base, strict=True)]
                )
                line += f"  - {first_label} {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            if target is not None:
                m, lo, hi = report.paired_bootstrap(
                    [v - t for v, t in zip(values, target, strict=True)]
                )
                line += f"  - target {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            print(line)
            print(f"  {'':>14}  seeds {[round(v, 4) for v in values]}")
            lrs = [r["lrs"] for r in results[(name, label)]]
            print(f"  {'':>14}  LRs {[[round(x, 3) for x in s if x] for s in lrs]}")
        if target is not None:
            print(
                f"  {'target':>14}: median {statistics.median(target):.4f} "
                f"seeds {[round(v, 4) for v in target]}"
            )
    if summary is not None:
        # The rivals from the committed report (trained on its machines: a run's loss
        # moves in its last digits across CPUs).
        medians = {
            name: {
                label: statistics.median(final(r) for r in results[(name, label)])
                for label, _, _ in configs
            }
            for name in variants
        }
        rows = summary["variants"]
        print("\nagainst the committed report's best Tier-B rival at T:")
        print("\n".join(rival_table(medians, rows, [label for label, _, _ in configs])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
