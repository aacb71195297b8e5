"""Shared checks for the framework examples (Lightning, Transformers) run against a live
server: what the job trained must be what the service planned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from stagelr.models import LRShape, lr_at

ROOT = Path(__file__).resolve().parent.parent


def run_example(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run examples/<script> to completion; its stdout (the test fails on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def check_trained_as_planned(url: str, record_path: Path) -> dict[str, Any]:
    """The study completed; every step trained at its segment's LR; each restore brought
    back the weights saved under that name; every report reached the store."""
    record = json.loads(record_path.read_text())
    with httpx.Client(base_url=url, timeout=30) as api:
        study = api.get(f"/v1/studies/{record['study_id']}").json()
        segments = api.get(f"/v1/studies/{record['study_id']}/segments").json()
        observations = {
            s["id"]: api.get(f"/v1/segments/{s['id']}/observations").json() for s in segments
        }
    assert study["status"] == "completed"
    assert study["trajectory_steps"] == study["config"]["total_steps"]
    assert [s["id"] for s in record["segments"]] == [s["id"] for s in segments]
    assert all(s["status"] == "completed" for s in segments)

    # Step by step: the LR the optimizer held is the segment's, and a segment that
    # restores starts from the weights its checkpoint was saved with.
    trained = record["trained"]
    assert len(trained) == sum(s["steps_done"] for s in segments)
    start_weights: dict[str, float] = {}
    end_states: set[str] = set()
    position = 0
    for segment in segments:
        steps = trained[position : position + segment["steps_done"]]
        position += segment["steps_done"]
        expected = [
            lr_at(
                segment["lr"], segment["lr_end"], LRShape(segment["lr_shape"]), i, segment["steps"]
            )
            for i in range(1, segment["steps_done"] + 1)
        ]
        assert [step["lr"] for step in steps] == pytest.approx(expected), segment
        if segment["restore"] in start_weights:
            assert steps[0]["weights"] == start_weights[segment["restore"]], segment
        elif segment["restore"]:
            # a candidate's end state (continue_best): saved by an earlier segment
            assert segment["restore"] in end_states, segment
        if segment["save_start"]:
            start_weights[segment["save_start"]] = steps[0]["weights"]
        if segment.get("save_end"):
            end_states.add(segment["save_end"])
    restores = [s["restore"] for s in segments if s["restore"]]
    assert record["restores"] == restores and len(restores) >= 2

    # Reports on the segment's cadence, all stored.
    for segment in segments:
        due = [
            step
            for step in range(1, segment["steps"] + 1)
            if step % segment["report_every"] == 0 or step == segment["steps"]
        ]
        stored = observations[segment["id"]]
        assert [o["step"] for o in stored] == due, segment
        assert {o["metric"] for o in stored} == {segment["metric"]}
    return record
