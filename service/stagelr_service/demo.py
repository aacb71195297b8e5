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
from stagelr.models import CandidateView, LRShape, SegmentView, StageDetail

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


#: How each selection rule picks among the forecasts, for the demo's stage report.
SELECTION_NOTES = {
    "min_forecast": "the lowest forecast",
    "min_upper_bound": "the lowest forecast + sd",
    "min_posterior_mean": "the lowest GP mean",
    "hottest_within_noise": "the hottest LR whose forecast is within noise of the lowest, "
    "at most half a decade above it",
    "hottest_within_best_noise": "the hottest LR whose forecast is within the lowest's "
    "noise, at most half a decade above it",
}


def _scored(cand: CandidateView) -> str:
    """A window's outcome as the demo prints it."""
    fc = cand.forecast
    if cand.status.value == "diverged":
        return "diverged"
    if fc is None or fc.prediction is None:
        return f"no forecast ({fc.status if fc else cand.status.value})"
    spread = f" ± {fc.std:.3f}" if fc.std is not None else ""
    return f"forecast {fc.prediction:.4f}{spread}"


def describe_stage(
    detail: StageDetail,
    segment: SegmentView,
    selection: str | None = None,
    forecast: str | None = None,
) -> list[str]:
    """What a stage did, as the demo prints it once the stage's training segment is done:
    its search (each candidate's LR and forecast, the chosen one marked, and the rule that
    chose it), then how it trained (a held LR, or a decay from its LR to its end)."""
    lines = []
    tried = [c for c in detail.candidates if c.checks is None]
    checks = [c for c in detail.candidates if c.checks is not None]
    if tried:
        scored = (
            "scoring each by the loss at its annealed window's end"
            if forecast == "window_end"
            else f"forecasting the loss at step {detail.tau} of the stage"
        )
        lines.append(
            f"  stage {detail.index}: searched {len(tried)} LRs for {detail.tau_explore} steps "
            f"each, {scored}:"
        )
        for cand in sorted(tried, key=lambda c: c.lr):
            chosen = detail.chosen_lr is not None and cand.lr == detail.chosen_lr
            lines.append(
                f"      lr={cand.lr:<10.4g} {_scored(cand)}{'   <- chosen' if chosen else ''}"
            )
        if selection in SELECTION_NOTES:
            lines.append(f"      (chosen by {selection}: {SELECTION_NOTES[selection]})")
        for cand in checks:
            held = detail.chosen_lr is not None and cand.lr == detail.chosen_lr
            lines.append(
                f"      then checked lr={cand.lr:.4g} for {detail.tau_explore} more steps "
                f"from its window's end: {_scored(cand)}"
            )
            lines.append(
                "      (it held its ground: the stage goes on from there)"
                if held
                else "      (it lost ground: the search chose again below half its LR)"
            )
    shape = LRShape(segment.lr_shape)
    steps = segment.steps
    end = segment.start_step + steps
    if shape is not LRShape.constant and segment.lr_end is not None:
        lines.append(
            f"  stage {detail.index}: {shape.value} decay of {steps} steps from "
            f"lr={segment.lr:.4g} to lr={segment.lr_end:.4g} (steps {segment.start_step}-{end})"
        )
    else:
        how = "trained" if tried else "no search: trained on"
        lines.append(
            f"  stage {detail.index}: {how} {steps:5d} steps at lr={segment.lr:.4g} "
            f"(steps {segment.start_step}-{end})"
        )
    return lines


def closing_lines(
    url: str, study_id: int, database: str | None, serving: bool, port: int
) -> list[str]:
    """Where the study can be seen now, and how to see it again."""
    lines = [f"stagelr demo: the study's dashboard: {url}/dashboard/studies/{study_id}"]
    if database is None:  # a server of the user's own (--url): it stays up
        return lines
    if serving:
        lines.append("stagelr demo: the server stays up (--serve); Ctrl-C stops it")
        return lines
    lines += [
        "stagelr demo: the server stops with the demo; to see the study again:",
        f"  stagelr serve --database-url '{database}'",
        f"  then http://127.0.0.1:{port}/dashboard/studies/{study_id}"
        " (or run the demo with --serve to keep this one up)",
        f"  and its schedule, to train with again without the service: stagelr schedule "
        f"{study_id} --database-url '{database}' -o study-{study_id}.schedule.json",
    ]
    return lines


def run_demo(args: object, settings: object) -> int:
    """`stagelr demo`: run the digits job against ``--url`` or a local server."""
    import argparse
    import contextlib
    import uuid

    from .server import BackgroundServer
    from .settings import Settings
    from .store import Store, mask_url

    assert isinstance(args, argparse.Namespace) and isinstance(settings, Settings)
    with contextlib.ExitStack() as stack:
        url = args.url
        database: str | None = None
        if args.local:
            store = Store(settings.resolved_database_url)
            store.migrate()
            store.close()
            database = mask_url(settings.resolved_database_url)
            print(f"stagelr demo: starting a local server on {store.safe_url}", flush=True)
            port = settings.port if args.serve else 0
            server = stack.enter_context(
                BackgroundServer(settings.model_copy(update={"port": port}))
            )
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
        print(f"stagelr demo: study {name!r} (id {tuner.study_id}) at {url}", flush=True)

        def show(segment: stagelr.Segment) -> None:
            if segment.kind == "exploit":
                detail = tuner.client.get_stage(segment.study_id, segment.stage)
                config = tuner.connect().config
                rule, fitted = config.selection, config.forecast
                selection = None if rule is None else rule.value
                kind = None if fitted is None else fitted.value
                lines = describe_stage(detail, segment.view, selection, kind)
                print("\n".join(lines), flush=True)

        result = train_digits(tuner, seed=args.seed, on_segment=show)
        study = tuner.study()
        print(
            f"stagelr demo: final validation loss {result.final_val_loss:.4f} after "
            f"{study.trajectory_steps} training steps ({study.charged_steps} charged, search "
            f"included) in {result.seconds:.1f} s; study {result.study_id} is {study.status.value}",
            flush=True,
        )
        lines = closing_lines(url, result.study_id, database, args.serve, settings.port)
        print("\n".join(lines), flush=True)
        if args.serve and args.local:
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0
