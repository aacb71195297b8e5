"""Client resilience through a real TCP proxy between the client and a live server.

The proxy refuses, drops and delays connections at chosen moments of a study (mid-stage,
at ``next``, at ``complete``). The job must run to the end without an exception, keep
training (fallback segments) while the service is away, deliver every observation it
reported exactly once, and end with the decisions of an uninterrupted run up to the
outage; after it, the plan is shortened by the steps trained on fallback segments.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

import stagelr
from stagelr_service.testing.simulation import DrivenJob, SyntheticJob, drive_tuner, study_decisions
from tests.outage_checks import STUDY, check_outage_accounted
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

_names = itertools.count()


def fast_retries() -> stagelr.RetryTransport:
    return stagelr.RetryTransport(max_attempts=3, backoff=0.05, max_delay=0.2)


def make_tuner(url: str, name: str, **kwargs: Any) -> stagelr.Tuner:
    kwargs.setdefault("transport", fast_retries())
    return stagelr.Tuner(
        url,
        study=name,
        timeout=5.0,
        flush_timeout=10.0,
        linger=0.01,
        fallback_steps=5,
        **STUDY,
        **kwargs,
    )


#: The tuner of the job running now (the fault injectors watch its fallback segments).
CURRENT: dict[str, stagelr.Tuner] = {}


def run(url: str, on_event: Callable[[str, int], None] | None = None) -> tuple[Any, DrivenJob]:
    name = f"resilience-{next(_names)}"
    with make_tuner(url, name) as tuner:
        CURRENT["tuner"] = tuner
        record = drive_tuner(tuner, SyntheticJob(seed=11), on_event)
        study_id = tuner.study_id
    return study_id, record


def stored(client: stagelr.Client, segment_id: int) -> list[tuple[int, str]]:
    """A segment's stored points, values as text (so that NaN equals NaN)."""
    return [(o.step, repr(o.value)) for o in client.list_observations(segment_id)]


def as_text(points: list[tuple[int, float]]) -> list[tuple[int, str]]:
    return sorted({(step, repr(value)) for step, value in points})


def outage(proxy: TcpProxy, fault: str, seconds: float) -> None:
    """Start a fault now and end it after ``seconds`` (a timer thread)."""
    if fault == "refuse":
        proxy.refuse()
    elif fault == "drop":
        proxy.drop()
    else:
        proxy.delay(0.3)
    proxy.after(seconds, proxy.pass_through)


@pytest.fixture(scope="module")
def baseline(live_server) -> list[Any]:  # type: ignore[no-untyped-def]
    """The decisions of the study run straight against the server, no proxy, no fault."""
    study_id, record = run(live_server.url)
    assert record.status is stagelr.models.StudyStatus.completed
    with stagelr.Client(live_server.url) as client:
        return study_decisions(client, study_id)


@pytest.mark.parametrize(
    ("when", "segment", "fault"),
    [
        pytest.param("report", 2, "refuse", id="refused-mid-stage"),
        pytest.param("report", 5, "drop", id="dropped-mid-stage"),
        pytest.param("next", 3, "refuse", id="refused-at-next"),
        pytest.param("next", 6, "drop", id="dropped-at-next"),
        pytest.param("complete", 4, "refuse", id="refused-at-complete"),
        pytest.param("complete", 7, "drop", id="dropped-at-complete"),
        pytest.param("report", 1, "delay", id="delayed-mid-stage"),
    ],
)
def test_an_outage_is_ridden_out_and_nothing_is_lost(
    live_server,  # type: ignore[no-untyped-def]
    proxy: TcpProxy,
    baseline: list[Any],
    when: str,
    segment: int,
    fault: str,
) -> None:
    started = []

    def inject(kind: str, n: int) -> None:
        if (kind, n) == (when, segment) and not started:
            started.append(True)
            outage(proxy, fault, 1.0)
        elif kind == "next" and CURRENT["tuner"].fallback_segments and proxy.mode != "pass":
            # The synthetic job trains a fallback segment in no time: the service comes
            # back after the first one, as it would while a real job trains it.
            proxy.pass_through()

    study_id, record = run(proxy.url, inject)

    assert record.status is stagelr.models.StudyStatus.completed
    if fault != "delay":
        # The job trained on while the service was away.
        assert record.fallback_segments >= 1
    with stagelr.Client(live_server.url) as client:
        for segment_id, reported in record.reported.items():
            # Every point reported is stored, once (the store's unique key makes a
            # duplicate row impossible; a lost point would be missing here).
            assert stored(client, segment_id) == as_text(reported), segment_id
        if record.fallback_segments:
            # The plan shrank by the fallback steps: the decisions before the outage are
            # the uninterrupted run's, and every one of them replays.
            check_outage_accounted(client, study_id, record, baseline, STUDY["total_steps"])
        else:
            assert study_decisions(client, study_id) == baseline
        assert client.get_study(study_id).status is stagelr.models.StudyStatus.completed


def test_points_beyond_the_buffer_are_dropped_and_counted(live_server, proxy: TcpProxy) -> None:  # type: ignore[no-untyped-def]
    with make_tuner(proxy.url, f"resilience-{next(_names)}", max_buffered=4) as tuner:
        segment = tuner.next_segment()
        assert segment is not None and not segment.fallback
        proxy.refuse()
        for step in range(1, 11):
            segment.report(step, 2.0 - step * 0.01)
        assert tuner.dropped_observations == 6
        proxy.pass_through()
        segment.complete()
        assert segment.closed
        observations = tuner.client.list_observations(segment.id)
    assert [o.step for o in observations] == [1, 2, 3, 4]


def test_raise_on_error_raises_into_the_loop(proxy: TcpProxy) -> None:
    tuner = make_tuner(proxy.url, f"resilience-{next(_names)}", raise_on_error=True)
    with tuner:
        assert tuner.next_segment() is not None
        proxy.refuse()
        with pytest.raises(stagelr.TransportError):
            tuner.next_segment()
        proxy.pass_through()


def test_unreachable_at_start_trains_at_the_fallback_lr(live_server, proxy: TcpProxy) -> None:  # type: ignore[no-untyped-def]
    proxy.refuse()
    with make_tuner(proxy.url, f"resilience-{next(_names)}", fallback_lr=0.05) as tuner:
        first = tuner.next_segment()
        assert first is not None and first.fallback and first.lr == 0.05
        assert first.restore is None and first.save_start is None
        proxy.pass_through()
        second = tuner.next_segment()
        assert second is not None and not second.fallback
        assert tuner.fallback_segments == 1


def test_a_fallback_schedule_sets_each_fallback_segments_lr(live_server, proxy: TcpProxy) -> None:  # type: ignore[no-untyped-def]
    def decay(steps: int) -> float:
        return 0.1 * 0.5 ** (steps // 5)

    proxy.refuse()
    with make_tuner(proxy.url, f"resilience-{next(_names)}", fallback_lr=decay) as tuner:
        lrs = []
        for _ in range(3):
            segment = tuner.next_segment()
            assert segment is not None and segment.fallback
            lrs.append(segment.lr)
        assert lrs == [0.1, 0.05, 0.025]  # 5 steps per fallback segment
        proxy.pass_through()
        back = tuner.next_segment()
        assert back is not None and not back.fallback
        # A later outage starts the schedule again.
        proxy.refuse()
        again = tuner.next_segment()
        assert again is not None and again.fallback and again.lr == 0.1
        proxy.pass_through()


def test_a_bad_fallback_lr_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="fallback_lr"):
        stagelr.Tuner("http://127.0.0.1:9", study="x", lr_min=0.1, lr_max=1.0, fallback_lr=-1.0)
