"""A study's schedule as a portable artifact: the API's export, `stagelr schedule`, and
`stagelr.torch.ScheduleLR` training a model again with no service, LR for LR."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stagelr
from stagelr.models import LRShape
from stagelr.schedule import SCHEDULE_VERSION, Schedule, ScheduleFormatError
from stagelr.torch import Checkpointer, ScheduleLR
from tests.live import ServerProcess, run_cli

#: Two studies: the default preset (a search, stages held at its LR, the final
#: one_minus_sqrt decay), and every stage searched with the chosen candidate's steps kept
#: (continue_best) and a cosine decay.
CONFIGS: dict[str, dict[str, Any]] = {
    "hold-decay": {"preset": "default", "tau0": 100, "tau_max": 200, "k": 3},
    "continue-cosine": {
        "preset": "default",
        "planner": "fixed",
        "continue_best": True,
        "decay_shape": "cosine",
        "tau0": 100,
        "tau_max": 100,
        "k": 3,
    },
}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)).squeeze(1) + 0.1 * torch.randn(512, generator=g)
    return x, y


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def _batch(x: torch.Tensor, step: int) -> slice:
    start = (step * 32) % (len(x) - 32)
    return slice(start, start + 32)


def _train_live(url: str, name: str, overrides: dict[str, Any]) -> tuple[int, dict[int, float]]:
    """Train under the live service; the LR of every trajectory step as it was applied."""
    x, y = _data()
    model, optimizer = _model()
    checkpoints = Checkpointer(model, optimizer)
    loss_fn = nn.MSELoss()
    trajectory: dict[int, float] = {}
    # a candidate's save_end -> the LR of each step its state trained (a finalist's check
    # window continues its candidate's state: both windows' steps)
    candidate_lrs: dict[str, dict[int, float]] = {}
    study_id = -1
    with stagelr.Tuner(
        url, study=name, lr_min=1e-3, lr_max=0.5, total_steps=400, explore_ratio=0.1, **overrides
    ) as tuner:
        for segment in tuner:
            study_id = segment.study_id
            checkpoints.begin(segment)
            lrs: list[float] = []
            model.train()
            for step in segment.steps():
                lrs.append(float(optimizer.param_groups[0]["lr"]))
                optimizer.zero_grad()
                rows = _batch(x, segment.start_step + step)
                loss = loss_fn(model(x[rows]).squeeze(1), y[rows])
                loss.backward()
                optimizer.step()
                if segment.report_due(step):
                    segment.report(step, loss.item())
            checkpoints.end(segment)
            segment.complete()
            if segment.kind == "explore":
                if segment.save_end:
                    steps = dict(candidate_lrs.get(segment.restore or "", {}))
                    steps.update({segment.start_step + i: lr for i, lr in enumerate(lrs)})
                    candidate_lrs[segment.save_end] = steps
            elif segment.kind == "exploit":
                if segment.restore in candidate_lrs:  # continue_best: its steps are kept
                    trajectory.update(candidate_lrs[segment.restore])
                for i, lr in enumerate(lrs):
                    trajectory[segment.start_step + i] = lr
    return study_id, trajectory


def _train_offline(schedule_file: Path) -> list[float]:
    """Train a fresh model under the exported schedule alone (no service)."""
    x, y = _data()
    model, optimizer = _model()
    scheduler = ScheduleLR(optimizer, schedule_file)
    loss_fn = nn.MSELoss()
    lrs = []
    for step in range(scheduler.steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.zero_grad()
        rows = _batch(x, step)
        loss_fn(model(x[rows]).squeeze(1), y[rows]).backward()
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_the_exported_schedule_trains_at_the_live_runs_lr_at_every_step(
    live_server: ServerProcess, tmp_path: Path, label: str
) -> None:
    study_id, live = _train_live(live_server.url, f"schedule-{label}", CONFIGS[label])

    out = tmp_path / "study.schedule.json"
    done = run_cli(
        "schedule", str(study_id), "-o", str(out), "--database-url", live_server.database_url
    )
    assert done.returncode == 0, done.stderr
    assert "searched" in done.stderr
    schedule = Schedule.load(out)
    with stagelr.Client(live_server.url) as client:
        fetched = client.get_schedule(study_id)
    assert fetched.pieces == schedule.pieces
    _, optimizer = _model()
    remote = ScheduleLR.from_study(optimizer, live_server.url, study_id)
    assert remote.schedule.pieces == fetched.pieces

    offline = _train_offline(out)

    assert sorted(live) == list(range(schedule.steps)) == list(range(len(offline)))
    diff = max(abs(offline[t] - live[t]) for t in live)
    print(f"{label}: {len(live)} trajectory steps compared, max abs LR difference {diff}")
    assert diff == 0.0
    # The decay is a decay: the last piece moves, and its LR falls step by step.
    last = schedule.pieces[-1]
    assert last.kind == "decay" and last.shape is not LRShape.constant
    tail = offline[last.start :]
    assert all(b < a for a, b in zip(tail, tail[1:], strict=False))
    provenance = schedule.provenance
    assert provenance.study_id == study_id and provenance.searched
    assert provenance.search_steps == provenance.charged_steps - schedule.steps > 0
    assert provenance.config["k"] == 3
    assert provenance.stages[0].kind == "search" and provenance.stages[0].candidates == 3
    if label == "continue-cosine":
        assert last.shape is LRShape.cosine
        # 320 steps before the decay: three searched stages of 100, each the chosen
        # candidate's annealed window of 10 steps (kept: continue_best), the finalist's
        # check window of 10 that continued it, and the 80 steps that continued that,
        # then 20 steps too short to search, at the last chosen LR.
        assert [p.kind for p in schedule.pieces] == ["search"] * 9 + ["train_on", "decay"]
        starts = [0, 10, 20, 100, 110, 120, 200, 210, 220, 300, 320]
        assert [p.start for p in schedule.pieces] == starts
        windows = [p for i, p in enumerate(schedule.pieces[:9]) if i % 3 != 2]
        assert [p.shape for p in windows] == [LRShape.wsd] * 6
        assert all(p.steps == 10 for p in windows)
    else:
        assert {p.kind for p in schedule.pieces} == {"search", "train_on", "decay"}


@pytest.mark.slow
def test_the_csv_export_has_one_row_per_step(live_server: ServerProcess, tmp_path: Path) -> None:
    study_id, live = _train_live(live_server.url, "schedule-csv", CONFIGS["hold-decay"])
    out = tmp_path / "s.csv"
    done = run_cli(
        "schedule",
        "schedule-csv",
        "--format",
        "csv",
        "-o",
        str(out),
        "--database-url",
        live_server.database_url,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["step"]) for r in rows] == sorted(live)
    assert [float(r["lr"]) for r in rows] == [live[t] for t in sorted(live)]
    assert rows[-1]["kind"] == "decay"


@pytest.mark.slow
def test_an_unknown_study_is_a_clear_cli_error(live_server: ServerProcess) -> None:
    done = run_cli("schedule", "no-such-study", "--database-url", live_server.database_url)
    assert done.returncode == 2
    assert "no study named 'no-such-study'" in done.stderr


@pytest.mark.slow
def test_the_api_answers_404_for_an_unknown_study(live_server: ServerProcess) -> None:
    with stagelr.Client(live_server.url) as client, pytest.raises(stagelr.NotFoundError):
        client.get_schedule(987654)


# --------------------------------------------------------------------------- the format


def _file(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": "stagelr.schedule",
        "version": SCHEDULE_VERSION,
        "steps": 30,
        "pieces": [
            {
                "start": 0,
                "steps": 20,
                "lr": 0.1,
                "shape": "constant",
                "shape_steps": 20,
                "stage": 0,
                "kind": "search",
            },
            {
                "start": 20,
                "steps": 10,
                "lr": 0.1,
                "lr_end": 0.0,
                "shape": "linear",
                "shape_steps": 10,
                "stage": 1,
                "kind": "decay",
            },
        ],
        "provenance": {
            "study_id": 1,
            "project": "p",
            "name": "n",
            "status": "completed",
            "config": {},
            "stages": [],
            "searched": True,
            "search_steps": 5,
            "charged_steps": 35,
            "exported_at": "2026-01-01T00:00:00Z",
            "server_version": "0",
        },
    }
    data.update(changes)
    return data


def test_a_schedule_file_gives_each_steps_lr() -> None:
    schedule = Schedule.loads(json.dumps(_file()))
    assert schedule.lr(0) == schedule.lr(19) == 0.1
    assert schedule.lr(20) == 0.1 and schedule.lr(25) == pytest.approx(0.05)
    assert len(schedule.lrs()) == 30
    with pytest.raises(IndexError):
        schedule.lr(30)


def test_a_newer_format_version_is_refused_by_name() -> None:
    with pytest.raises(ScheduleFormatError, match="newer than this client reads"):
        Schedule.loads(json.dumps(_file(version=SCHEDULE_VERSION + 1)))


def test_a_file_that_is_not_a_schedule_is_refused() -> None:
    with pytest.raises(ScheduleFormatError, match="stagelr schedule STUDY"):
        Schedule.loads(json.dumps({"hello": 1}))


def test_pieces_with_a_gap_are_refused() -> None:
    data = _file()
    data["pieces"][1]["start"] = 21
    with pytest.raises(ValueError, match="must follow each other"):
        Schedule.loads(json.dumps(data))


def test_the_scheduler_holds_the_last_lr_past_the_end_and_saves_its_position() -> None:
    schedule = Schedule.loads(json.dumps(_file()))
    model, optimizer = _model()
    scheduler = ScheduleLR(optimizer, schedule)
    for _ in range(35):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == schedule.lr(29)
    state = scheduler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    _, optimizer2 = _model()
    again = ScheduleLR(optimizer2, schedule)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.last_epoch == scheduler.last_epoch
