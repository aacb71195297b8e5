"""How well does each forecaster rank candidate LRs? Predicted vs realized stage-end loss.

On the digits MLP of `stagelr demo`: from checkpoints of one training run, every LR of a
log grid is trained for a whole stage (tau steps, the same batches for every LR); the
first tau' = tau/10 steps are the forecast window (validation loss at 10 points, as the
`default` preset reports it), the loss after tau steps is the truth. Each forecaster
predicts the stage-end loss from the window alone; the last value of the window ("no
forecast": a greedy choice) is the baseline. The same forecasters also rank from the
window's per-step training loss (the signal of the AutoLRS reference's early stages),
judged against the same truth, the stage-end validation loss.

Figures per forecaster: regret of training the LR it ranks first (its realized loss minus
the best realized loss of the grid), Spearman rank correlation between prediction and
truth over the finite LRs, and the median absolute error of the prediction.

    python benchmarks/forecast_quality.py [--seeds 0 1 2] [--json out.json]
    python benchmarks/forecast_quality.py --quick        # CI smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torch import nn  # noqa: E402

from stagelr.torch import Checkpointer  # noqa: E402
from stagelr_service.demo import DigitsData  # noqa: E402
from stagelr_service.forecast import forecast  # noqa: E402

FORECASTERS = ("robust", "exp_reference")


def make_model(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    return model, optimizer


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DigitsData,
    lr: float,
    steps: int,
    seed: int,
    every: int = 0,
    train_losses: list[tuple[int, float]] | None = None,
) -> list[tuple[int, float]]:
    """Train ``steps`` steps at ``lr`` on batches drawn with ``seed``; validation losses
    every ``every`` steps (and at the end); each step's training loss appended to
    ``train_losses`` when given."""
    loss_fn = nn.CrossEntropyLoss()
    for group in optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(seed)
    order, position, reports = torch.randperm(len(data.x_train), generator=generator), 0, []
    for step in range(1, steps + 1):
        if position + 64 > len(order):
            order, position = torch.randperm(len(data.x_train), generator=generator), 0
        batch = order[position : position + 64]
        position += 64
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(data.x_train[batch]), data.y_train[batch])
        loss.backward()
        optimizer.step()
        if train_losses is not None:
            train_losses.append((step, loss.item()))
        if (every and step % every == 0) or step == steps:
            with torch.no_grad():
                reports.append((step, float(loss_fn(model(data.x_val), data.y_val))))
    return reports


def regret(scores: list[float], truth: list[float]) -> float:
    best = min(truth)
    chosen = min(range(len(scores)), key=lambda i: (scores[i], i))
    return truth[chosen] - best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed, one small stage")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # (checkpoint step, stage length tau) as the demo's stages start.
    stages = [(0, 40)] if args.quick else [(0, 150), (150, 300), (450, 600), (1050, 600)]
    seeds = args.seeds[:1] if args.quick else args.seeds
    lrs = [float(v) for v in np.geomspace(1e-3, 1.0, 4 if args.quick else 10)]
    data = DigitsData.load()

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        model, optimizer = make_model(seed)
        trained = 0
        for start, tau in stages:
            # The trajectory between checkpoints: a plain constant LR of 0.05.
            train(model, optimizer, data, 0.05, start - trained, seed + 1000 + start)
            trained = start
            # The client's own checkpointer: deep copies, so training a candidate cannot
            # change the checkpoint (optimizer.state_dict() alone holds live references).
            checkpoints = Checkpointer(model, optimizer)
            checkpoints.save("stage")
            window_steps = max(1, tau // 10)
            every = max(1, window_steps // 10)
            windows, train_windows, truth = [], [], []
            for lr in lrs:
                checkpoints.restore("stage")
                per_step: list[tuple[int, float]] = []
                reports = train(model, optimizer, data, lr, tau, seed + start, every, per_step)
                windows.append([(s, v) for s, v in reports if s <= window_steps])
                train_windows.append(per_step[:window_steps])
                final = reports[-1][1]
                truth.append(final if math.isfinite(final) else math.inf)
            checkpoints.restore("stage")
            finite = [i for i, t in enumerate(truth) if math.isfinite(t)]
            best_lr = lrs[min(range(len(lrs)), key=lambda i: truth[i])]
            row: dict[str, Any] = {"seed": seed, "start": start, "tau": tau, "best_lr": best_lr}
            scorers: dict[str, list[float]] = {
                "last value": [w[-1][1] if math.isfinite(w[-1][1]) else math.inf for w in windows]
            }
            for signal, source in (("val", windows), ("train", train_windows)):
                for name in FORECASTERS:
                    predictions = []
                    for w in source:
                        fc = forecast([s for s, _ in w], [v for _, v in w], float(tau), name)
                        usable = fc.status not in ("diverged", "empty")
                        ok = usable and math.isfinite(fc.prediction)
                        predictions.append(fc.prediction if ok else math.inf)
                    scorers[f"{name} ({signal})" if signal == "train" else name] = predictions
            for name, scores in scorers.items():
                both = [i for i in finite if math.isfinite(scores[i])]
                rho = (
                    float(spearmanr([scores[i] for i in both], [truth[i] for i in both])[0])
                    if len(both) >= 3
                    else math.nan
                )
                errors = [abs(scores[i] - truth[i]) for i in both]
                row[name] = {
                    "chosen_lr": lrs[min(range(len(lrs)), key=lambda i: (scores[i], i))],
                    "regret": regret(scores, truth),
                    "spearman": rho,
                    "abs_error": statistics.median(errors) if errors else math.nan,
                }
            rows.append(row)
            print(
                f"  seed {seed} stage at {start:4d} (tau {tau}): best realized "
                f"{min(truth):.4f} at LR {best_lr:.3g}; regret "
                + ", ".join(f"{n} {row[n]['regret']:.4f}" for n in scorers),
                flush=True,
            )

    names = ["last value", *FORECASTERS, *(f"{n} (train)" for n in FORECASTERS)]
    print(f"\nforecast quality on the digits MLP: {len(rows)} stages ({len(seeds)} seeds), "
          f"{len(lrs)} LRs each, 1e-3..1")  # fmt: skip
    header = (f"{'ranking by':>22}  {'regret median / mean':>22}  {'Spearman median':>16}  "
              f"{'|error| median':>15}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name in names:
        regrets = [r[name]["regret"] for r in rows]
        rhos = [r[name]["spearman"] for r in rows if math.isfinite(r[name]["spearman"])]
        errs = [r[name]["abs_error"] for r in rows if math.isfinite(r[name]["abs_error"])]
        print(
            f"{name:>22}  {statistics.median(regrets):>10.4f} / {statistics.fmean(regrets):<9.4f}  "
            f"{statistics.median(rhos) if rhos else math.nan:>16.3f}  "
            f"{statistics.median(errs) if errs else math.nan:>15.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"lrs": lrs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
