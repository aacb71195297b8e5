"""Learning from history on the dev split's fast variants: jobs of one family with and
without priors, at charged budget T, through the real client against a live server.

    python -m benchmarks.quality.history --seeds 10

Per variant (nqm-b8, nqm-b64, digits, digits-noisy), each seed ``s`` is trained as:

- ``cold``: the shipped ``default`` preset, no priors (seed 0 is job 1 of the family);
- ``family``: seeds 1.. are jobs 2..n of the family, in seed order: their priors are the
  family's most recent completed studies (job 1 and the earlier warm jobs, at most the
  server's ``STAGELR_MAX_PRIORS``);
- ``mismatch``: the control, seeds 1..: the priors are the family studies of the
  *partner* variant of the same LR grid and budget (nqm-b8 <-> nqm-b64, digits <->
  digits-noisy), named as ``prior_studies``, so that the fingerprint matches and only
  the tuner's check can notice the misfit. (A prior of another grid, e.g. digits priors
  for an NQM, differs in its fingerprint and is never used: that study runs exactly as
  ``cold``, decision for decision.)

Runs are kept in a JSON file keyed by the stagelr code hash, and the studies in a SQLite
database beside it, both under the ignored ``benchmarks/results/tmp/history/``, so an
interrupted run resumes (the family's studies are still there to be priors).

It prints, per variant and condition: the median final loss at T, the median search
cost (charged explore steps, and as a share of T), how many runs used their priors or
fell back, and the paired differences (mean and 95% paired bootstrap interval, seeds
1..n-1) against ``cold`` and against the Tier-A target config of the committed cache.
docs/history.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FAST = ["nqm-b8", "nqm-b64", "digits", "digits-noisy"]
#: The control's prior source: the variant of the same grid and budget.
PARTNER = {
    "nqm-b8": "nqm-b64",
    "nqm-b64": "nqm-b8",
    "digits": "digits-noisy",
    "digits-noisy": "digits",
}
CONDITIONS = ("cold", "family", "mismatch")
#: The most priors a control names (the server's default STAGELR_MAX_PRIORS).
MAX_PRIORS = 5


def _final(r: dict[str, Any]) -> float:
    return math.inf if r["final"] is None or math.isnan(r["final"]) else float(r["final"])


def _target_cache(cache_class: Any, hashes: dict[str, str]) -> Any:
    """The committed cache of the quality benchmark, for its Tier-A targets: its grid runs
    are read under the code hash they were recorded with (a later rename in the workloads'
    code changes their hash, not their numbers)."""
    folder = ROOT / "docs" / "results" / "quality"
    recorded = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if '"method":"grid"' in line.replace(" ", ""):
                recorded.add(json.loads(line)["code"])
                break
    if len(recorded) == 1:
        hashes = {**hashes, "baseline": recorded.pop()}
    return cache_class(folder, hashes=hashes).load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--folder", type=Path, default=ROOT / "benchmarks" / "results" / "tmp" / "history"
    )
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import stagelr

    from . import harness, report, tuned, workloads
    from .harness import Cache, Task

    variants = args.variant or FAST
    for name in variants:
        if name not in FAST:
            raise SystemExit(f"--variant {name}: only the dev split's fast variants ({FAST})")
    code = harness.code_hashes()["stagelr"]
    runs_path = args.folder / "runs.json"
    store: dict[str, Any] = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    cache = _target_cache(Cache, harness.code_hashes())

    def key(variant: str, condition: str, seed: int) -> str:
        return json.dumps([variant, condition, seed, code])

    def family(variant: str) -> str:
        return f"{variant}-{code[:12]}"

    server: harness.Server | None = None

    def train(variant: str, condition: str, seed: int, overrides: dict[str, Any]) -> None:
        nonlocal server
        k = key(variant, condition, seed)
        if k in store:
            return
        if server is None:
            server = harness.start_service(args.folder)
        run = tuned.run_stagelr(
            server.url,
            workloads.VARIANTS[variant],
            seed,
            "default",
            study_prefix=f"history/{condition}",
            overrides=overrides,
            budget=1.0,
        )
        study_id = run.extra["study_id"]
        with stagelr.Client(server.url) as client:
            segments = client.list_segments(study_id)
            view = client.get_study(study_id)
        search = sum(
            s.steps_done if s.steps_done is not None else s.steps
            for s in segments
            if s.kind == "explore"
        )
        store[k] = {
            "final": run.final_loss,
            "charged": run.charged_steps,
            "search": search,
            "study_id": study_id,
            "lr": view.stages[0].chosen_lr if view.stages else None,
            "use": view.priors.use.value if view.priors else None,
            "reason": view.priors.reason if view.priors else "",
            "priors": [s.id for s in view.priors.studies] if view.priors else [],
        }
        runs_path.parent.mkdir(parents=True, exist_ok=True)
        runs_path.write_text(json.dumps(store, indent=1))
        r = store[k]
        print(
            f"  {variant} {condition} seed {seed}: final {r['final']:.4f}, search "
            f"{r['search']} steps, priors {r['use']} {r['reason']}",
            flush=True,
        )

    try:
        chains = set(variants) | {PARTNER[v] for v in variants}
        # job 1 of each family, then the cold baselines, then jobs 2..n in seed order
        for name in sorted(chains):
            train(name, "cold", 0, {"family": family(name)})
        for name in variants:
            for seed in range(1, args.seeds):
                train(name, "cold", seed, {})
        for name in sorted(chains):
            for seed in range(1, args.seeds):
                train(name, "family", seed, {"family": family(name)})
        for name in variants:
            partner = PARTNER[name]
            for seed in range(1, args.seeds):
                ids = [store[key(partner, "cold", 0)]["study_id"]] + [
                    store[key(partner, "family", s)]["study_id"] for s in range(1, seed)
                ]
                train(name, "mismatch", seed, {"prior_studies": ids[-MAX_PRIORS:]})
    finally:
        if server is not None:
            server.stop()

    print(f"\nstagelr {code[:12]}, charged budget T, seeds 1..{args.seeds - 1} paired")
    header = (
        f"{'variant':<13} {'condition':<9} {'median final':>12} {'search':>13} "
        f"{'used/fell back':>14}  {'- cold':>26}  {'- target':>26}"
    )
    print(header)
    for name in variants:
        variant = workloads.VARIANTS[name]
        best = harness.best_config(cache, variant, False, None)
        target = None
        if best is not None:
            recs = [cache.get(Task(variant, "grid", s, best[0])) for s in range(1, args.seeds)]
            if all(r is not None for r in recs):
                target = [harness._final(r) for r in recs if r is not None]
        cold = [_final(store[key(name, "cold", s)]) for s in range(1, args.seeds)]
        for condition in CONDITIONS:
            rows = [store[key(name, condition, s)] for s in range(1, args.seeds)]
            finals = [_final(r) for r in rows]
            search = statistics.median(r["search"] for r in rows)
            used = sum(1 for r in rows if r["use"] == "used")
            fell = sum(1 for r in rows if r["use"] == "fallback")
            line = (
                f"{name:<13} {condition:<9} {statistics.median(finals):>12.4f} "
                f"{search:>6.0f} ({search / variant.steps:>4.1%}) {f'{used}/{fell}':>14}"
            )
            if condition != "cold":
                m, lo, hi = report.paired_bootstrap(
                    [v - b for v, b in zip(finals, cold, strict=True)]
                )
                line += f"  {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            else:
                line += f"  {'':>26}"
            if target is not None:
                m, lo, hi = report.paired_bootstrap(
                    [v - t for v, t in zip(finals, target, strict=True)]
                )
                line += f"  {m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            print(line)
        if target is not None and best is not None:
            sd = statistics.stdev(cold) if len(cold) > 1 else float("nan")
            print(
                f"{'':<13} target {statistics.median(target):.4f} ({dict(best[0])}); "
                f"cold seed-SD {sd:.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
