"""What `default` could reach at T with the right LR: the search's cost against its choice.

    python -m benchmarks.quality.ceiling --variant nqm-b64 --variant cnn

At a charged budget of T, `default`'s search charges steps that its trajectory does not
keep (all but the winner's window), so its run trains ``f`` x T steps, ``f`` being the
share its planner leaves (``tuner.fit_charged_budget``: 0.83 at T from 300 to 1,000
steps). Its gap to the target at T then has two parts:

- **the search's cost**: the best WSD run (the grid's best WSD peak, the shape `default`
  holds and decays) planned for ``f`` x T, against the target at T: what even a perfect
  choice of LR would leave;
- **the choice**: `default` at T against that ceiling: what its LR (and the seed's luck
  in its search) costs on top.

Per variant it prints, as medians over the quality benchmark's ten seeds (the ceiling's
runs on the same seeds): the target, the ceiling, `default` and the best Tier-B rival
at T (from the committed report, ``docs/results/quality.json``), the two parts, and
whether the ceiling beats that rival. The ceiling's runs are kept in ``--runs``
(default under the ignored ``benchmarks/results/tmp/``), keyed by the baseline code
hash, so a rerun trains only what is missing. ``--share F`` plans the ceiling for F x T
instead: how cheap a search would have to be for the best LR to beat the rival (its
"choice" column then measures `default` against a plan it does not have). Nothing
here runs `default` or reads the held-out split it has not been judged on.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.quality import harness, methods
from benchmarks.quality.report import best_rival
from benchmarks.quality.workloads import HELD_OUT, VARIANTS

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "results" / "quality.json"


def trajectory_share(variant: str) -> float:
    """The share of a charged budget of T that `default`'s plan trains on its trajectory
    (the variant's LR range, as the tuned runs are told)."""
    from stagelr_service.tuner import fit_charged_budget
    from stagelr_service.tuner.config import resolve

    v = VARIANTS[variant]
    config = resolve(
        {
            "preset": "default",
            "lr_min": min(v.grid),
            "lr_max": max(v.grid),
            "charged_steps": v.steps,
        }
    )
    fitted = fit_charged_budget(config)
    assert fitted.total_steps is not None
    return fitted.total_steps / v.steps


def _median(values: list[float | None]) -> float:
    return statistics.median(math.inf if v is None else v for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument(
        "--share",
        type=float,
        default=None,
        help="the trajectory's share of T instead of default's plan's (how cheap a search "
        "would have to be)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "ceiling.json"
    )
    args = parser.parse_args(argv)
    report = {v["variant"]: v for v in json.loads(args.report.read_text())["variants"]}
    code = harness.code_hashes()["baseline"]
    args.runs.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, float | None] = json.loads(args.runs.read_text()) if args.runs.exists() else {}
    print(
        "| variant | f | target | ceiling (best WSD at f x T) | `default` | best rival "
        "| search's cost | the choice | ceiling beats the rival |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for name in args.variant:
        if VARIANTS[name].split in HELD_OUT and not harness.frozen_default(
            args.report.parent / "quality", VARIANTS[name].split
        ):
            raise SystemExit(f"{name}: its split is held out from default; leave it out")
        row: dict[str, Any] = report[name]
        peak = float(row["best_per_schedule"]["wsd"]["peak"])
        share = args.share if args.share is not None else trajectory_share(name)
        finals: list[float | None] = []
        for seed in row["method_seeds"]:
            key = json.dumps([name, seed, peak, round(share, 6), code])
            if key not in runs:
                run = methods.run_grid_point(VARIANTS[name], seed, "wsd", peak, share)
                runs[key] = run.final_loss if math.isfinite(run.final_loss) else None
                args.runs.write_text(json.dumps(runs))
            finals.append(runs[key])
        ceiling = _median(finals)
        target = float(row["methods"]["target"]["final_median"])
        default = float(row["methods"]["stagelr-default"]["final_median"])
        best = best_rival(row)
        assert best is not None, f"{name}: the report names no rival"
        rival, label = float(best["final_median"]), best["label"]
        print(
            f"| {name} | {share:.2f} | {target:.4g} | {ceiling:.4g} (peak {peak:g}) | "
            f"{default:.4g} | {label} {rival:.4g} | {ceiling - target:+.4g} | "
            f"{default - ceiling:+.4g} | {'yes' if ceiling < rival else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
