"""One demo study per preset, recorded and plotted: what the tuner did on a real job.

Trains the digits MLP of ``stagelr demo`` under a local server (SQLite in a temporary
folder) once with the ``default`` preset and once with ``autolrs`` (same stage sizes),
reads every segment and its losses back through the client, writes them as JSON and
plots the LR schedule (with each stage's candidates) and the validation loss.

    python benchmarks/demo_run.py                  # writes docs/results/demo_run.json
    python benchmarks/plot_results.py              # draws docs/img/*.png from the JSON
    python benchmarks/demo_run.py --quick --out /tmp/demo.json   # CI smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import stagelr  # noqa: E402
from stagelr_service.demo import train_digits  # noqa: E402
from stagelr_service.server import BackgroundServer  # noqa: E402
from stagelr_service.settings import Settings  # noqa: E402
from stagelr_service.store import Store  # noqa: E402


def record(url: str, preset: str, sizes: dict[str, int], seed: int) -> dict[str, object]:
    """Train one study and read back what the service recorded."""
    with stagelr.Tuner(
        url,
        study=f"demo-{preset}-{seed}",
        preset=preset,
        lr_min=1e-3,
        lr_max=1.0,
        seed=seed,
        **sizes,
    ) as tuner:
        result = train_digits(tuner, seed=seed)
        study = tuner.study()
        segments = []
        for segment in tuner.client.list_segments(study.id):
            losses = tuner.client.list_observations(segment.id)
            segments.append(
                {
                    "stage": segment.stage,
                    "index": segment.index,
                    "kind": segment.kind.value,
                    "status": segment.status.value,
                    "lr": segment.lr,
                    "start_step": segment.start_step,
                    "steps_done": segment.steps_done,
                    "metric": segment.metric.value,
                    "losses": [
                        (o.step, o.value if math.isfinite(o.value) else None)
                        for o in losses
                        if o.metric == segment.metric
                    ],
                }
            )
    return {
        "preset": preset,
        "seed": seed,
        "final_val_loss": result.final_val_loss,
        "trajectory_steps": study.trajectory_steps,
        "charged_steps": study.charged_steps,
        "seconds": result.seconds,
        "segments": segments,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (CI smoke)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/demo_run.json"))
    args = parser.parse_args()
    sizes = (
        {"total_steps": 120, "tau0": 40, "tau_max": 40, "k": 2}
        if args.quick
        else {"total_steps": 2400, "tau0": 150, "tau_max": 600, "k": 8}
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/demo.db", port=0)
        with Store(settings.resolved_database_url) as store:
            store.migrate()
        with BackgroundServer(settings) as server:
            runs = [record(server.url, p, sizes, args.seed) for p in ("default", "autolrs")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sizes": sizes, "runs": runs}, indent=1))
    for run in runs:
        print(
            f"{run['preset']:>8}: final validation loss {run['final_val_loss']:.4f}, "
            f"{run['trajectory_steps']} training steps, {run['charged_steps']} charged"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
