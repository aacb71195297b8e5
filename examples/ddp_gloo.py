"""DDP under stagelr: two CPU processes on the gloo backend, one plan.

Rank 0 asks the service for each segment and broadcasts it; both ranks restore the same
checkpoint, train the same steps at the same LR, and report their shard's validation
loss, averaged over the ranks before rank 0 sends it.

    stagelr serve &                       # or any running server
    python examples/ddp_gloo.py --url http://127.0.0.1:8321 --study ddp-digits

Needs torch and scikit-learn (for its bundled digits data; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import stagelr
from stagelr.torch import Checkpointer, DistributedTuner


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x_t = torch.tensor(x / 16.0, dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.long)
    return x_t[:1400], y_t[:1400], x_t[1400:], y_t[1400:]


def worker(rank: int, world: int, args: argparse.Namespace, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)  # the same initial weights on every rank
    x_tr, y_tr, x_val, y_val = digits()
    model = DistributedDataParallel(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    checkpoints = Checkpointer(model, optimizer)
    # Every rank builds the tuner; only rank 0 ever sends a request.
    tuner = DistributedTuner(
        stagelr.Tuner(
            args.url,
            study=args.study,
            lr_min=1e-3,
            lr_max=1.0,
            total_steps=args.total_steps,
            tau0=args.tau0,
            tau_max=args.tau0 * 2,
            explore_ratio=0.2,
            k=2,
        )
    )
    record: dict[str, Any] = {"rank": rank, "segments": []}
    with tuner:
        for segment in tuner:
            checkpoints.begin(segment)
            lrs = []
            for step in segment.steps():
                # The segment's data seed: the same global batch order on every rank and
                # for every candidate of a stage; each rank trains on its half.
                order = torch.randperm(
                    len(x_tr), generator=torch.Generator().manual_seed(segment.data_seed + step)
                )[:64]
                batch = order[rank::world]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x_tr[batch]), y_tr[batch]).backward()
                optimizer.step()
                lrs.append(optimizer.param_groups[0]["lr"])
                if segment.report_due(step):
                    with torch.no_grad():  # this rank's shard of the validation set
                        val = loss_fn(model(x_val[rank::world]), y_val[rank::world])
                    segment.report(step, val)
            checkpoints.end(segment)
            segment.complete()
            record["segments"].append({"id": segment.id, "lr": segment.lr, "lrs": lrs})
        record["status"] = None if tuner.status is None else tuner.status.value
        if tuner.is_leader:
            print(
                f"study {tuner.study().id} {record['status']}: {len(record['segments'])} segments"
            )
    record["params"] = [p.detach().flatten().tolist() for p in model.parameters()]
    if args.out:
        Path(args.out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STAGELR_URL", "http://127.0.0.1:8321"))
    parser.add_argument("--study", default="ddp-digits")
    parser.add_argument("--total-steps", type=int, default=30)
    parser.add_argument("--tau0", type=int, default=10)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--out", help="a folder for each rank's record (rank<N>.json)")
    args = parser.parse_args()
    mp.spawn(worker, args=(args.world, args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
