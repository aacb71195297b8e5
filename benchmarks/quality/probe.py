"""Quick paired comparisons of `default` with config overrides, outside the cache.

    python -m benchmarks.quality.probe --seeds 10 \\
        --config 'previous={"selection": "min_forecast", "decay_fraction": 0.0}' \\
        --config 'decay={"selection": "min_forecast"}'

Each config trains ``default`` with its overrides through the real client against a live
server (a throwaway SQLite database), on the given variants and seeds, and prints the
median, mean and per-seed final losses, charged steps and the first stage's chosen LR.
Nothing is cached or written to the docs: this is for deciding what to measure in full
(the quality benchmark and the ablation are the record). Section 8 of docs/benchmarks.md
quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", action="append", default=None, help="variants (default: W1 and W2)"
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="NAME=JSON",
        help='a named override set, e.g. decay={"decay_fraction": 0.2} (default: none)',
    )
    args = parser.parse_args(argv)
    configs: dict[str, dict[str, object]] = {"default": {}}
    for item in args.config or []:
        name, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--config {item!r}: write NAME=JSON")
        try:
            configs[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            parser.error(f"--config {name}: not JSON ({exc})")
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from . import harness, tuned, workloads

    # The targets of the last full report, to count the seeds that reach them.
    results = Path(__file__).resolve().parents[2] / "docs" / "results" / "quality.json"
    targets = {}
    if results.exists():
        for row in json.loads(results.read_text())["variants"]:
            if row.get("target") is not None:
                targets[row["variant"]] = float(row["target"])

    variants = args.variant or ["nqm-b8", "nqm-b64", "digits", "digits-noisy"]
    held = [v for v in variants if workloads.VARIANTS[v].split in workloads.HELD_OUT]
    if held:
        # Probing default on a held-out split would read it: it is for the dev split.
        parser.error(f"{', '.join(held)}: held out from default's development (dev split only)")
    with tempfile.TemporaryDirectory() as folder:
        server = harness.start_service(Path(folder))
        try:
            for name in variants:
                variant = workloads.VARIANTS[name]
                for label, overrides in configs.items():
                    runs = [
                        tuned.run_stagelr(
                            server.url, variant, seed, "default", overrides=overrides or None
                        )
                        for seed in range(args.seeds)
                    ]
                    losses = [r.final_loss for r in runs]
                    first_lrs = [r.extra["stages"][0]["chosen_lr"] for r in runs]
                    hits = ""
                    if name in targets:
                        # The budgeted reading at T: which seeds' runs END at or below the
                        # last report's target (steps-to-target T on those seeds).
                        misses = [
                            i for i, r in enumerate(runs) if not r.final_loss <= targets[name]
                        ]
                        hits = (
                            f"target {targets[name]:.4f} ends at it {len(runs) - len(misses)}"
                            f"/{len(runs)} (misses {misses}) "
                        )
                    print(
                        f"{name} {label}: median {statistics.median(losses):.4f} "
                        f"mean {statistics.mean(losses):.4f} "
                        f"charged {statistics.mean(r.charged_steps for r in runs):.0f} "
                        f"first LR median {statistics.median(first_lrs):.4g} {hits}"
                        f"first LRs {[round(v, 3) for v in first_lrs]} "
                        f"seeds {[round(v, 4) for v in losses]}",
                        flush=True,
                    )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
