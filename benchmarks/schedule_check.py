"""The schedule export, LR for LR: the digits MLP of `stagelr demo` tuned live, then
trained again under its exported schedule alone.

Starts `stagelr serve` on a fresh SQLite file, tunes the demo's MLP under it (real
PyTorch training, the demo's settings), recording the LR the optimizer held at every
trajectory step; exports the study with `stagelr schedule ID -o FILE.json`; trains a
fresh MLP with `stagelr.torch.ScheduleLR` over that file and no server; and prints how
many steps were compared, the largest LR difference, the schedule's pieces and both
runs' final validation losses (the rerun's differs: its data order and start are its
own, only the LRs are the study's)::

    .venv/bin/python benchmarks/schedule_check.py [--total-steps 2400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

import stagelr
from stagelr.schedule import Schedule
from stagelr.torch import Checkpointer, ScheduleLR
from stagelr_service.demo import DigitsData
from stagelr_service.server import run_cli, start_server


def _mlp(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    return model, optimizer


def _batch(step: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, size, (64,), generator=torch.Generator().manual_seed(seed + step))


def live(
    url: str, data: DigitsData, args: argparse.Namespace
) -> tuple[int, dict[int, float], float]:
    model, optimizer = _mlp(args.seed)
    checkpoints = Checkpointer(model, optimizer)
    loss_fn = nn.CrossEntropyLoss()
    kept: dict[int, float] = {}
    candidates: dict[str, list[float]] = {}
    stage_start: dict[int, int] = {}
    with stagelr.Tuner(
        url,
        study="digits-schedule-check",
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=args.total_steps,
        tau0=150,
        tau_max=600,
        k=8,
        explore_ratio=0.1,
        seed=args.seed,
    ) as tuner:
        for segment in tuner:
            checkpoints.begin(segment)
            lrs = []
            for step in segment.steps():
                lrs.append(float(optimizer.param_groups[0]["lr"]))
                rows = _batch(segment.start_step + step, len(data.x_train), segment.data_seed)
                optimizer.zero_grad()
                loss = loss_fn(model(data.x_train[rows]), data.y_train[rows])
                loss.backward()
                optimizer.step()
                if segment.report_due(step):
                    with torch.no_grad():
                        segment.report(step, float(loss_fn(model(data.x_val), data.y_val)))
            checkpoints.end(segment)
            segment.complete()
            if segment.kind == "explore":
                stage_start.setdefault(segment.stage, segment.start_step)
                if segment.save_end:
                    candidates[segment.save_end] = lrs
            elif segment.kind == "exploit":
                if segment.restore in candidates:
                    for i, lr in enumerate(candidates[segment.restore]):
                        kept[stage_start[segment.stage] + i] = lr
                for i, lr in enumerate(lrs):
                    kept[segment.start_step + i] = lr
        with torch.no_grad():
            final = float(loss_fn(model(data.x_val), data.y_val))
        return tuner.study_id, kept, final


def offline(path: Path, data: DigitsData, seed: int) -> tuple[list[float], float]:
    model, optimizer = _mlp(seed)
    scheduler = ScheduleLR(optimizer, path)
    loss_fn = nn.CrossEntropyLoss()
    lrs = []
    for step in range(scheduler.steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        rows = _batch(step, len(data.x_train), seed)
        optimizer.zero_grad()
        loss_fn(model(data.x_train[rows]), data.y_train[rows]).backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return lrs, float(loss_fn(model(data.x_val), data.y_val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = DigitsData.load()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(f"sqlite:///{tmp}/stagelr.db", Path(tmp) / "server.log")
        try:
            study_id, kept, live_loss = live(server.url, data, args)
            path = Path(tmp) / "digits.schedule.json"
            done = run_cli(
                "schedule", str(study_id), "-o", str(path), "--database-url", server.database_url
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            print(done.stderr.strip())
        finally:
            server.stop()
        schedule = Schedule.load(path)  # the server is gone from here on
        lrs, val_loss = offline(path, data, args.seed)
    assert sorted(kept) == list(range(len(lrs))), "the trajectory steps differ"
    diff = max(abs(lrs[t] - kept[t]) for t in kept)
    print(f"steps compared: {len(kept)}; max abs LR difference: {diff}")
    for p in schedule.pieces:
        end = f" -> {p.lr_end:.4g} ({p.shape.value})" if p.lr_end is not None else ""
        print(f"  steps {p.start}-{p.end - 1}: stage {p.stage} {p.kind}, lr {p.lr:.4g}{end}")
    print(
        f"searched: {schedule.provenance.searched}, {schedule.provenance.search_steps} steps "
        f"outside the schedule; final validation loss live {live_loss:.4f}, "
        f"rerun under the schedule alone {val_loss:.4f}"
    )


if __name__ == "__main__":
    main()
