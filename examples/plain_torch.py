"""Plain PyTorch under stagelr: an MLP on scikit-learn's bundled digits, on CPU.

    stagelr serve &                       # or any running server
    python examples/plain_torch.py --url http://127.0.0.1:8321 --study torch-digits

Needs torch and scikit-learn (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import stagelr
from stagelr.torch import Checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STAGELR_URL", "http://127.0.0.1:8321"))
    parser.add_argument("--study", default="torch-digits")
    parser.add_argument("--total-steps", type=int, default=300)
    parser.add_argument("--tau0", type=int, default=50)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_all, y_all = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    x_tr, y_tr, x_val, y_val = x_all[:1400], y_all[:1400], x_all[1400:], y_all[1400:]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    checkpoints = Checkpointer(model, optimizer)  # in memory; directory=... for disk

    with stagelr.Tuner(
        args.url,
        study=args.study,
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=args.total_steps,
        tau0=args.tau0,
        tau_max=args.tau0 * 2,
        explore_ratio=0.2,
        k=3,
    ) as tuner:
        for segment in tuner:  # asks the service what to train next
            checkpoints.begin(segment)  # restore / save, then set segment.lr
            for step in segment.steps():  # ends early if a candidate diverges
                # The segment's data seed: every candidate of a stage sees the same batches.
                batch = torch.randperm(
                    len(x_tr), generator=torch.Generator().manual_seed(segment.data_seed + step)
                )[:64]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x_tr[batch]), y_tr[batch]).backward()
                optimizer.step()
                if segment.report_due(step):
                    with torch.no_grad():
                        segment.report(step, loss_fn(model(x_val), y_val))  # queued
            checkpoints.end(segment)
            segment.complete()
        study = tuner.study()
    print(f"study {study.id} {study.status.value}: {study.trajectory_steps} training steps")
    for stage in study.stages:
        print(f"stage {stage.index}: lr={stage.chosen_lr}")


if __name__ == "__main__":
    main()
