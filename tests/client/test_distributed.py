"""DDP under stagelr: two CPU processes (gloo), one plan from rank 0, against a live server."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from stagelr.models import LRShape, lr_at
from tests.framework_runs import run_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(own_live_server):  # type: ignore[no-untyped-def]
    """This module's own server: its test checks /metrics request counters (only rank
    0 asked), which must count only what it did."""
    return own_live_server


def requests_by_route(url: str) -> dict[tuple[str, str], float]:
    """The server's request counters from /metrics: (method, route) -> count."""
    counts: dict[tuple[str, str], float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = r'^stagelr_http_requests_total\{method="(\w+)",route="([^"]+)",status="\d+"\} (\S+)'
    for method, route, value in re.findall(pattern, text, flags=re.M):
        counts[method, route] = counts.get((method, route), 0) + float(value)
    return counts


def test_two_gloo_ranks_share_one_plan_and_only_rank_zero_talks(live_server, tmp_path) -> None:
    pytest.importorskip("sklearn")
    stdout = run_example(
        "ddp_gloo.py",
        f"--url={live_server.url}",
        "--study=ddp-digits",
        "--total-steps=30",
        "--tau0=10",
        f"--out={tmp_path}",
    )
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # The same plan on both ranks: segments, LRs step by step, the study's end.
    assert rank0["status"] == rank1["status"] == "completed"
    assert rank0["segments"] == rank1["segments"]
    studies = httpx.get(f"{live_server.url}/v1/studies", timeout=30).json()["studies"]
    (study,) = (s for s in studies if s["name"] == "ddp-digits")
    segments = httpx.get(f"{live_server.url}/v1/studies/{study['id']}/segments").json()
    assert [s["id"] for s in rank0["segments"]] == [s["id"] for s in segments]
    for trained, planned in zip(rank0["segments"], segments, strict=True):
        shape = LRShape(planned["lr_shape"])
        expected = [
            lr_at(planned["lr"], planned["lr_end"], shape, step, planned["steps"])
            for step in range(1, planned["steps"] + 1)
        ]
        assert trained["lrs"] == pytest.approx(expected)
        assert planned["status"] == "completed"
    # DDP averaged the gradients and both restored the same checkpoints: same weights.
    assert rank0["params"] == rank1["params"]
    # one searched stage (two windows, the best one's check, its training segment), the
    # final decay
    assert "completed: 6 segments" in stdout

    # Only rank 0 asked: one study creation, one `next` for the first segment, one
    # completion per segment that brings the next answer with it, and reports from one
    # process.
    counts = requests_by_route(live_server.url)
    assert counts[("POST", "/v1/studies")] == 1
    assert counts[("POST", "/v1/studies/{study_id}/next")] == 1
    assert counts[("POST", "/v1/segments/{segment_id}/complete-and-next")] == len(segments)
    assert ("POST", "/v1/segments/{segment_id}/complete") not in counts
    metrics = httpx.get(f"{live_server.url}/metrics", timeout=30).text
    stored = sum(
        len(httpx.get(f"{live_server.url}/v1/segments/{s['id']}/observations").json())
        for s in segments
    )
    ingested = re.search(r"^stagelr_observations_ingested_total (\S+)", metrics, flags=re.M)
    duplicates = re.search(r"^stagelr_observations_duplicate_total (\S+)", metrics, flags=re.M)
    assert ingested and float(ingested.group(1)) == stored
    assert duplicates and float(duplicates.group(1)) == 0
