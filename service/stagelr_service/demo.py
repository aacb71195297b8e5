"""`stagelr demo`: a real PyTorch job tuned by stagelr.

An MLP (64-256-256-10) learns scikit-learn's bundled handwritten digits (no download),
with SGD + Nesterov momentum, and asks the service for its learning rate stage by stage.
The same loop is what a user writes: see README.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import stagelr

if TYPE_CHECKING:
    import torch


@dataclass
class DigitsData:
    """The digits set as tensors, split 70/30 stratified (random_state 0)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @classmethod
    def load(cls) -> DigitsData:
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_tr, x_va, y_tr, y_va = train_test_split(
            x / 16.0, y, test_size=0.3, stratify=y, random_state=0
        )
        return cls(
            torch.tensor(x_tr, dtype=torch.float32),
            torch.tensor(y_tr, dtype=torch.long),
            torch.tensor(x_va, dtype=torch.float32),
            torch.tensor(y_va, dtype=torch.long),
        )


@dataclass
class DemoResult:
    study_id: int
    stages: list[tuple[int, int, float]] = field(default_factory=list)  # (stage, steps, lr)
    final_val_loss: float = math.nan
    trajectory_steps: int = 0
    charged_steps: int = 0
    seconds: float = 0.0


def train_digits(
    tuner: stagelr.Tuner,
    *,
    seed: int = 0,
    batch_size: int = 64,
    data: DigitsData | None = None,
    on_segment: Callable[[stagelr.Segment], None] | None = None,
) -> DemoResult:
    """Train the digits MLP under ``tuner`` until the study ends."""
    import torch
    from torch import nn

    from stagelr.torch import Checkpointer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = data or DigitsData.load()
    x_tr, y_tr = data.x_train, data.y_train
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    loss_fn = nn.CrossEntropyLoss()
    checkpoints = Checkpointer(model, optimizer)

    def val_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(model(data.x_val), data.y_val))

    started = time.perf_counter()
    result: DemoResult | None = None
    for segment in tuner:
        if result is None:
            result = DemoResult(study_id=segment.study_id)
        checkpoints.begin(segment)
        # The segment's data seed: every candidate of a stage sees the same batches.
        order = torch.randperm(
            len(x_tr), generator=torch.Generator().manual_seed(segment.data_seed)
        )
        position = 0
        model.train()
        for step in segment.steps():
            if position + batch_size > len(order):
                order = torch.randperm(
                    len(x_tr), generator=torch.Generator().manual_seed(segment.data_seed + step)
                )
                position = 0
            batch = order[position : position + batch_size]
            position += batch_size
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_tr[batch]), y_tr[batch])
            loss.backward()
            optimizer.step()
            if segment.report_due(step):
                value = loss.item() if segment.metric == "train_loss" else val_loss()
                segment.report(step, value)
        checkpoints.end(segment)
        segment.complete()
        if segment.kind == "exploit":
            result.stages.append((segment.stage, segment.planned_steps, segment.lr))
        if on_segment is not None:
            on_segment(segment)
    model.eval()
    if result is None:
        raise RuntimeError("the study had already ended: use a new study name")
    result.final_val_loss = val_loss()
    result.seconds = time.perf_counter() - started
    return result


def run_demo(args: object, settings: object) -> int:
    """`stagelr demo`: run the digits job against ``--url`` or a local server."""
    import argparse
    import contextlib
    import uuid

    from .server import BackgroundServer
    from .settings import Settings
    from .store import Store

    assert isinstance(args, argparse.Namespace) and isinstance(settings, Settings)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.local:
            store = Store(settings.resolved_database_url)
            store.migrate()
            store.close()
            print(f"stagelr demo: starting a local server on {store.safe_url}", flush=True)
            server = stack.enter_context(BackgroundServer(settings.model_copy(update={"port": 0})))
            url = server.url
        name = args.study or f"demo-digits-{uuid.uuid4().hex[:8]}"
        tuner = stack.enter_context(
            stagelr.Tuner(
                url,
                study=name,
                preset=args.preset,
                lr_min=1e-3,
                lr_max=1.0,
                total_steps=args.total_steps,
                seed=args.seed,
                tau0=args.tau0,
                tau_max=args.tau_max,
                k=args.k,
                explore_ratio=args.explore_ratio,
            )
        )
        print(f"stagelr demo: study {name!r} at {url}", flush=True)

        def show(segment: stagelr.Segment) -> None:
            if segment.kind == "exploit":
                print(
                    f"  stage {segment.stage}: trained {segment.planned_steps:5d} steps "
                    f"at lr={segment.lr:.4g} (from step {segment.start_step})",
                    flush=True,
                )

        result = train_digits(tuner, seed=args.seed, on_segment=show)
        study = tuner.study()
        print(
            f"stagelr demo: final validation loss {result.final_val_loss:.4f} after "
            f"{study.trajectory_steps} training steps ({study.charged_steps} charged, search "
            f"included) in {result.seconds:.1f} s; study {result.study_id} is {study.status.value}",
            flush=True,
        )
    return 0
