"""Tuner variants side by side on the digits MLP, several seeds each, through the service.

Each variant is a preset plus config overrides; every variant gets the same seeds (a seed
fixes the model's init, the data order and the tuner's own randomness) and the same stage
sizes. All runs go through one local server on a temporary SQLite file.

    python benchmarks/digits_variants.py \\
        --variant default --variant autolrs:preset=autolrs \\
        --variant upper:selection=min_upper_bound --seeds 0 1 2

Prints, per variant, the median and range of the final validation loss and of the
charged steps (every step trained, search included), and the paired difference to the
first variant on each seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import stagelr  # noqa: E402
from stagelr_service.demo import DigitsData, train_digits  # noqa: E402
from stagelr_service.server import BackgroundServer  # noqa: E402
from stagelr_service.settings import Settings  # noqa: E402
from stagelr_service.store import Store  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,key=value]`` -> (name, overrides); values parsed as JSON if they can."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: write key=value, not {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None, help="name[:key=val,...]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--total-steps", type=int, default=2400)
    parser.add_argument("--tau0", type=int, default=150)
    parser.add_argument("--tau-max", type=int, default=600)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["default", "autolrs:preset=autolrs"])]
    sizes = {
        "total_steps": args.total_steps,
        "tau0": args.tau0,
        "tau_max": args.tau_max,
        "k": args.k,
    }

    data = DigitsData.load()
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/variants.db", port=0)
        with Store(settings.resolved_database_url) as store:
            store.migrate()
        with BackgroundServer(settings) as server:
            for seed in args.seeds:
                for name, overrides in variants:
                    config = {"preset": "default", **sizes, **overrides}
                    with stagelr.Tuner(
                        server.url,
                        study=f"{name}-{seed}",
                        lr_min=1e-3,
                        lr_max=1.0,
                        seed=seed,
                        **config,
                    ) as tuner:
                        run = train_digits(tuner, seed=seed, data=data)
                        study = tuner.study()
                    results[name][seed] = {
                        "final_val_loss": run.final_val_loss,
                        "charged_steps": study.charged_steps,
                    }
                    print(
                        f"  seed {seed} {name:>12}: val loss {run.final_val_loss:.4f}, "
                        f"{study.charged_steps} charged steps",
                        flush=True,
                    )

    first = variants[0][0]
    print(f"\ndigits MLP, {args.total_steps} training steps, seeds {args.seeds}")
    header = (
        f"{'variant':>12}  {'val loss median [min, max]':>28}  "
        f"{'charged steps median':>20}  {'paired diff to ' + first + ' (median)':>28}"
    )
    print(header)
    print("-" * len(header))
    for name, _ in variants:
        losses = [results[name][s]["final_val_loss"] for s in args.seeds]
        charged = [results[name][s]["charged_steps"] for s in args.seeds]
        diffs = [
            results[name][s]["final_val_loss"] - results[first][s]["final_val_loss"]
            for s in args.seeds
        ]
        print(
            f"{name:>12}  {statistics.median(losses):>10.4f} [{min(losses):.4f}, "
            f"{max(losses):.4f}]  {statistics.median(charged):>20.0f}  "
            f"{statistics.median(diffs):>+28.4f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "sizes": sizes,
                    "seeds": args.seeds,
                    "variants": dict(variants),
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
