"""The stagelr client against an in-test fake of the HTTP API (httpx.MockTransport)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

import stagelr
from stagelr.models import (
    CompleteRequest,
    NextSegment,
    ObservationBatch,
    ObservationsAccepted,
    SegmentKind,
    SegmentStatus,
    SegmentView,
    StudyCreate,
    StudyStatus,
    StudyView,
)

URL = "http://stagelr.test"
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def segment(id: int, **fields: Any) -> SegmentView:
    """A segment of study 1 with sensible defaults."""
    values: dict[str, Any] = {
        "id": id,
        "study_id": 1,
        "seq": id - 1,
        "stage": 0,
        "index": id - 1,
        "kind": SegmentKind.explore,
        "status": SegmentStatus.open,
        "lr": 0.1,
        "steps": 10,
        "start_step": 0,
        "horizon": 100,
        "metric": "val_loss",
        "report_every": 2,
        "data_seed": 7,
    }
    values.update(fields)
    return SegmentView.model_validate(values)


def problem(status: int, slug: str, title: str = "Problem", detail: str = "") -> httpx.Response:
    body = {"type": f"urn:stagelr:problem:{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return httpx.Response(
        status, content=json.dumps(body), headers={"Content-Type": "application/problem+json"}
    )


def reply(model: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=model.model_dump_json(), headers={"Content-Type": "application/json"}
    )


class FakeService:
    """Just enough of the API to drive a Tuner: hands out a fixed plan of segments.

    ``events`` records, in order, ("create",), ("next",), ("observations", segment id,
    count), ("complete", segment id, steps_done) and ("fail", segment id, reason).
    """

    def __init__(self, plan: list[SegmentView], *, combined: bool = False) -> None:
        self.plan = list(plan)
        #: Whether it answers complete-and-next (a current service) or 404s it (an older
        #: one): each such request records its completion, then ("next",).
        self.combined = combined
        self.events: list[tuple[Any, ...]] = []
        self.observations: dict[int, dict[int, float]] = {}
        self.stop_segments: set[int] = set()
        self.config: dict[str, Any] | None = None
        self.requests: list[httpx.Request] = []
        self._open: SegmentView | None = None
        self._lock = threading.Lock()
        # Hook to make one endpoint slow or unreachable: called with the request first.
        self.before: Callable[[httpx.Request], httpx.Response | None] = lambda request: None

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def observation_posts(self, segment_id: int) -> int:
        return sum(1 for e in self.events if e[0] == "observations" and e[1] == segment_id)

    def handle(self, request: httpx.Request) -> httpx.Response:
        early = self.before(request)
        if early is not None:
            return early
        with self._lock:
            self.requests.append(request)
            return self._route(request)

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/studies":
            return self._create(StudyCreate.model_validate_json(request.content))
        if request.method == "POST" and path == "/v1/studies/1/next":
            return self._next()
        match = re.fullmatch(
            r"/v1/segments/(\d+)/(observations|complete|complete-and-next|fail)", path
        )
        if (
            request.method == "POST"
            and match
            and (self.combined or match[2] != "complete-and-next")
        ):
            segment_id, action = int(match[1]), match[2]
            if action == "complete-and-next":
                body = CompleteRequest.model_validate_json(request.content)
                closed = self._route(
                    httpx.Request(
                        "POST", f"{URL}/v1/segments/{segment_id}/complete", content=request.content
                    )
                )
                if closed.status_code != 200:
                    return closed
                answer = json.loads(self._next().content)
                return httpx.Response(
                    200, json={"completed": json.loads(closed.content), "next": answer}
                )
            if action == "observations":
                batch = ObservationBatch.model_validate_json(request.content)
                return self._observe(segment_id, batch)
            if action == "complete":
                body = CompleteRequest.model_validate_json(request.content)
                if body.observations:  # stored first, as the service does
                    batch = ObservationBatch(observations=body.observations)
                    answer = self._observe(segment_id, batch)
                    if answer.status_code != 200:
                        return answer
                    self.events[-1] = ("observations+complete", segment_id, len(batch.observations))
                return self._close(segment_id, ("complete", segment_id, body.steps_done))
            reason = json.loads(request.content)["reason"]
            return self._close(segment_id, ("fail", segment_id, reason))
        return problem(404, "not-found", "Not Found")

    def _create(self, body: StudyCreate) -> httpx.Response:
        config = body.config.model_dump(mode="json", exclude_none=True)  # what was set
        if self.config is not None and self.config != config:
            return problem(409, "config-mismatch", "Config mismatch")
        created = self.config is None
        self.config = config
        self.events.append(("create",))
        view = StudyView(
            id=1,
            project=body.project or "default",
            name=body.name,
            status=StudyStatus.running,
            config=body.config,
            created_at=NOW,
            updated_at=NOW,
            trajectory_steps=0,
            charged_steps=0,
        )
        return reply(view, 201 if created else 200)

    def _next(self) -> httpx.Response:
        self.events.append(("next",))
        if self._open is None and self.plan:
            self._open = self.plan.pop(0)
        status = StudyStatus.running if self._open else StudyStatus.completed
        return reply(NextSegment(status=status, segment=self._open))

    def _observe(self, segment_id: int, batch: ObservationBatch) -> httpx.Response:
        stored = self.observations.setdefault(segment_id, {})
        accepted = duplicates = 0
        for point in batch.observations:
            old = stored.get(point.step)
            same = old == point.value or (
                old is not None and math.isnan(old) and math.isnan(point.value)
            )
            if old is not None and not same:
                return problem(409, "observation-conflict", "Observation conflict")
        for point in batch.observations:
            if point.step in stored:
                duplicates += 1
            else:
                stored[point.step] = point.value
                accepted += 1
        self.events.append(("observations", segment_id, len(batch.observations)))
        answer = ObservationsAccepted(
            accepted=accepted, duplicates=duplicates, stop=segment_id in self.stop_segments
        )
        return reply(answer)

    def _close(self, segment_id: int, event: tuple[Any, ...]) -> httpx.Response:
        self.events.append(event)
        assert self._open is not None and self._open.id == segment_id
        status = SegmentStatus.completed if event[0] == "complete" else SegmentStatus.failed
        closed = self._open.model_copy(update={"status": status})
        self._open = None
        return reply(closed)


@pytest.fixture
def make_tuner() -> Iterator[Callable[..., stagelr.Tuner]]:
    tuners: list[stagelr.Tuner] = []

    def make(service: FakeService, **kwargs: Any) -> stagelr.Tuner:
        kwargs.setdefault("transport", service.transport)
        kwargs.setdefault("linger", 0.005)
        tuner = stagelr.Tuner(URL, study="s", lr_min=1e-3, lr_max=1.0, **kwargs)
        tuners.append(tuner)
        return tuner

    yield make
    for tuner in tuners:
        tuner.close(timeout=5)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


# --------------------------------------------------------------------------- the loop


def test_iterating_yields_segments_until_the_study_ends(make_tuner: Any) -> None:
    service = FakeService([segment(1), segment(2), segment(3, kind="exploit")])
    tuner = make_tuner(service)

    seen = [seg.id for seg in tuner]

    assert seen == [1, 2, 3]
    assert tuner.status is StudyStatus.completed


def test_study_is_created_once_on_first_use(make_tuner: Any) -> None:
    service = FakeService([segment(1), segment(2)])
    tuner = make_tuner(service)
    assert service.events == []

    for _ in tuner:
        pass

    assert service.events.count(("create",)) == 1
    assert service.events[0] == ("create",)


def test_config_overrides_reach_the_study_config(make_tuner: Any) -> None:
    service = FakeService([])
    tuner = make_tuner(service, total_steps=2000, tau0=200, k=4)

    tuner.connect()

    assert service.config is not None
    assert (service.config["tau0"], service.config["k"], service.config["total_steps"]) == (
        200,
        4,
        2000,
    )


def test_the_config_sent_holds_only_what_the_job_sets(make_tuner: Any) -> None:
    """Fields left to the preset are not sent at all: a server that predates a config
    field refuses it by name, even as null, and still serves a job that does not set it."""
    service = FakeService([])
    tuner = make_tuner(service, total_steps=2000, k=4, pretrained=True)

    tuner.connect()

    create = next(r for r in service.requests if r.url.path == "/v1/studies")
    sent = json.loads(create.content)["config"]
    assert sent["k"] == 4 and sent["total_steps"] == 2000 and sent["pretrained"] is True
    assert "horizon_scale" not in sent and "finalists" not in sent
    assert None not in sent.values()


def test_config_mismatch_raises_conflict_error(make_tuner: Any) -> None:
    service = FakeService([])
    make_tuner(service, k=4).connect()

    with pytest.raises(stagelr.ConflictError) as info:
        make_tuner(service, k=5).connect()

    assert info.value.slug == "config-mismatch"


def test_segment_left_open_by_the_loop_body_is_completed_before_the_next(
    make_tuner: Any,
) -> None:
    service = FakeService([segment(1), segment(2)])

    for _ in make_tuner(service):
        pass

    assert service.events[1:] == [
        ("next",),
        ("complete", 1, None),
        ("next",),
        ("complete", 2, None),
        ("next",),
    ]


def test_a_completion_brings_the_next_segment_from_a_current_service(
    make_tuner: Any,
) -> None:
    service = FakeService([segment(1), segment(2), segment(3, kind="exploit")], combined=True)

    seen = [seg.id for seg in make_tuner(service)]

    assert seen == [1, 2, 3]
    # One `next` for the first segment; each completion brings the next answer with it.
    assert [r.url.path for r in service.requests] == [
        "/v1/studies",
        "/v1/studies/1/next",
        "/v1/segments/1/complete-and-next",
        "/v1/segments/2/complete-and-next",
        "/v1/segments/3/complete-and-next",
    ]
    assert service.events[1:] == [
        ("next",),
        ("complete", 1, None),
        ("next",),
        ("complete", 2, None),
        ("next",),
        ("complete", 3, None),
        ("next",),
    ]


def test_a_service_without_complete_and_next_gets_complete_then_next(make_tuner: Any) -> None:
    """An older service answers 404 to the combined request: the client completes the
    plain way, remembers, and asks `next` on its own from then on."""
    service = FakeService([segment(1), segment(2), segment(3, kind="exploit")])

    seen = [seg.id for seg in make_tuner(service)]

    assert seen == [1, 2, 3]
    assert [r.url.path for r in service.requests] == [
        "/v1/studies",
        "/v1/studies/1/next",
        "/v1/segments/1/complete-and-next",  # 404: no such route
        "/v1/segments/1/complete",
        "/v1/studies/1/next",
        "/v1/segments/2/complete",
        "/v1/studies/1/next",
        "/v1/segments/3/complete",
        "/v1/studies/1/next",
    ]


def test_segment_fields_read_as_attributes(make_tuner: Any) -> None:
    service = FakeService([segment(1, lr=0.03, restore="s0", discard=["a"], steps=12)])

    seg = make_tuner(service).next_segment()

    assert (seg.id, seg.lr, seg.restore, seg.discard, seg.kind) == (
        1,
        0.03,
        "s0",
        ["a"],
        SegmentKind.explore,
    )
    assert seg.planned_steps == 12


def test_steps_yields_one_to_planned_steps(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1, steps=5)])).next_segment()

    assert list(seg.steps()) == [1, 2, 3, 4, 5]


def test_report_due_every_report_every_steps_and_at_the_last(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1, steps=7, report_every=3)])).next_segment()

    assert [s for s in seg.steps() if seg.report_due(s)] == [3, 6, 7]


def test_complete_sends_the_steps_actually_trained(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=10)])
    seg = make_tuner(service).next_segment()

    for step in seg.steps():
        if step == 4:
            seg.should_stop = True

    seg.complete()

    assert service.events[-1] == ("complete", 1, 4)


def test_complete_counts_up_to_the_last_report_when_steps_is_not_used(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=10)])
    seg = make_tuner(service).next_segment()

    seg.report(2, 1.0)
    seg.report(4, 0.9)
    seg.complete()

    assert service.events[-1] == ("complete", 1, 4)


def test_complete_twice_sends_once(make_tuner: Any) -> None:
    service = FakeService([segment(1)])
    seg = make_tuner(service).next_segment()

    first = seg.complete()
    second = seg.complete()

    assert first is second
    assert [e[0] for e in service.events].count("complete") == 1


def test_fail_marks_the_segment_failed(make_tuner: Any) -> None:
    service = FakeService([segment(1)])
    seg = make_tuner(service).next_segment()

    view = seg.fail("out of memory")

    assert view.status is SegmentStatus.failed
    assert service.events[-1] == ("fail", 1, "out of memory")


# --------------------------------------------------------------------------- reports


def test_reports_are_sent_in_background_batches(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=100, report_every=1)])
    tuner = make_tuner(service, linger=0.2)
    seg = tuner.next_segment()

    for step in seg.steps():
        seg.report(step, 1.0 / step)

    wait_until(lambda: tuner.pending_observations == 0)
    assert len(service.observations[1]) == 100
    assert service.observation_posts(1) < 10


def test_complete_carries_the_segments_last_observations(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=10)])
    # A long linger: the points are still waiting when the segment completes.
    tuner = make_tuner(service, linger=10.0)
    seg = tuner.next_segment()

    for step in seg.steps():
        seg.report(step, 1.0)
    seg.report(3, 1.0)  # an exact repeat is dropped, not sent
    seg.complete()

    # One request: the points travel with the completion, in step order.
    assert len(service.observations[1]) == 10
    assert service.observation_posts(1) == 0
    assert [e[0] for e in service.events if e[0] != "next"][-2:] == [
        "observations+complete",
        "complete",
    ]
    assert tuner.pending_observations == 0


def test_points_a_failed_completion_carried_are_sent_again(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=4)])
    tuner = make_tuner(service, linger=10.0)
    seg = tuner.next_segment()
    for step in seg.steps():
        seg.report(step, float(step))

    down = True
    service.before = lambda request: (
        httpx.Response(503) if down and request.url.path.endswith("/complete") else None
    )
    seg.complete()  # the service fails it: the segment stays open, nothing is lost
    assert not seg.closed and 1 not in service.observations
    assert tuner.pending_observations == 4

    down = False
    assert seg._retry_close()
    assert service.observations[1] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}


def test_a_step_reported_twice_differently_is_flushed_not_carried(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=4)])
    seg = make_tuner(service, linger=10.0).next_segment()
    for step in seg.steps():
        seg.report(step, 1.0)
    seg.report(2, 5.0)  # a different value for a reported step: the service refuses it
    seg.complete()

    assert service.observations[1] == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    kinds = [e[0] for e in service.events]
    assert "observations" in kinds and kinds.index("observations") < kinds.index("complete")


def test_non_finite_values_reach_the_server(make_tuner: Any) -> None:
    service = FakeService([segment(1, kind="exploit")])
    seg = make_tuner(service).next_segment()

    seg.report(1, float("nan"))
    seg.report(2, float("inf"))
    seg.complete()

    assert math.isnan(service.observations[1][1])
    assert service.observations[1][2] == math.inf


def test_report_does_not_block_when_the_server_is_slow(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=1000, report_every=1, kind="exploit")])

    def slow(request: httpx.Request) -> None:
        if request.url.path.endswith("/observations"):
            time.sleep(0.5)

    service.before = slow
    tuner = make_tuner(service)
    seg = tuner.next_segment()

    start = time.perf_counter()
    for step in range(1, 1001):
        seg.report(step, 0.5)
    elapsed = time.perf_counter() - start

    # ~1 microsecond each; the bound leaves room for a busy machine.
    assert elapsed < 0.1
    tuner.flush()


def test_unreachable_server_keeps_observations_buffered(make_tuner: Any) -> None:
    service = FakeService([segment(1, kind="exploit")])
    down = True

    def maybe_down(request: httpx.Request) -> None:
        if down and request.url.path.endswith("/observations"):
            raise httpx.ConnectError("connection refused", request=request)

    service.before = maybe_down
    tuner = make_tuner(service)
    seg = tuner.next_segment()
    for step in range(1, 6):
        seg.report(step, 1.0)

    with pytest.raises(stagelr.TransportError):
        tuner.flush(timeout=5)
    assert tuner.pending_observations == 5

    down = False
    tuner.flush(timeout=5)
    assert tuner.pending_observations == 0
    assert sorted(service.observations[1]) == [1, 2, 3, 4, 5]


def test_a_conflicting_point_is_dropped_and_the_rest_stored(make_tuner: Any) -> None:
    service = FakeService([segment(1, steps=8, report_every=1, kind="exploit")])
    service.observations[1] = {3: 0.25}
    seg = make_tuner(service, linger=10.0).next_segment()

    for step in seg.steps():
        seg.report(step, 1.0)
    seg.complete()

    assert service.observations[1] == {step: 0.25 if step == 3 else 1.0 for step in range(1, 9)}


def test_close_sends_what_is_queued(make_tuner: Any) -> None:
    service = FakeService([segment(1, kind="exploit")])
    tuner = make_tuner(service, linger=10.0)
    seg = tuner.next_segment()
    seg.report(1, 1.0)
    seg.report(2, 0.5)

    tuner.close()

    assert service.observations[1] == {1: 1.0, 2: 0.5}


def test_report_after_complete_raises(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1)])).next_segment()
    seg.complete()

    with pytest.raises(RuntimeError):
        seg.report(1, 1.0)


# --------------------------------------------------------------------------- divergence stop


def test_nan_stops_an_explore_segment_without_waiting_for_the_server(make_tuner: Any) -> None:
    service = FakeService([segment(1)])
    released = threading.Event()

    def hold(request: httpx.Request) -> None:
        if request.url.path.endswith("/observations"):
            released.wait(5)

    service.before = hold
    seg = make_tuner(service).next_segment()

    seg.report(2, float("nan"))

    assert seg.should_stop
    released.set()


def test_value_above_stop_above_stops_an_explore_segment(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1, stop_above=3.0)])).next_segment()

    seg.report(2, 2.9)
    assert not seg.should_stop
    seg.report(4, 3.1)
    assert seg.should_stop


def test_exploit_segment_is_not_stopped_locally(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1, kind="exploit", stop_above=3.0)])).next_segment()

    seg.report(2, float("nan"))
    seg.report(4, 5.0)

    assert not seg.should_stop


def test_steps_end_after_a_divergence_stop(make_tuner: Any) -> None:
    seg = make_tuner(FakeService([segment(1, steps=10, report_every=1)])).next_segment()

    trained = []
    for step in seg.steps():
        trained.append(step)
        seg.report(step, math.inf if step == 3 else 1.0)

    assert trained == [1, 2, 3]
    assert seg.steps_done == 3


def test_servers_stop_answer_sets_should_stop(make_tuner: Any) -> None:
    service = FakeService([segment(1)])
    service.stop_segments.add(1)
    tuner = make_tuner(service)
    seg = tuner.next_segment()

    seg.report(2, 1.0)
    tuner.flush()

    assert seg.should_stop


# --------------------------------------------------------------------------- retries


def counting(
    responses: Sequence[httpx.Response | Exception],
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that answers with ``responses`` in turn (raising the exceptions)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses[min(len(seen), len(responses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def next_answer() -> httpx.Response:
    return reply(NextSegment(status=StudyStatus.completed, segment=None))


def test_503_is_retried_until_success() -> None:
    inner, seen = counting(
        [problem(503, "schema-outdated"), problem(503, "internal"), next_answer()]
    )
    sleeps: list[float] = []
    client = stagelr.Client(URL, transport=stagelr.RetryTransport(inner, sleep=sleeps.append))

    answer = client.next_segment(1)

    assert answer.segment is None
    assert len(seen) == 3
    assert len(sleeps) == 2


def test_connection_errors_are_retried_until_success() -> None:
    refused = httpx.ConnectError("connection refused")
    inner, seen = counting([refused, httpx.ReadTimeout("slow"), next_answer()])
    client = stagelr.Client(URL, transport=stagelr.RetryTransport(inner, sleep=lambda s: None))

    client.next_segment(1)

    assert len(seen) == 3


def test_retried_requests_resend_the_body() -> None:
    inner, seen = counting([httpx.ConnectError("refused"), reply(segment(1))])
    client = stagelr.Client(URL, transport=stagelr.RetryTransport(inner, sleep=lambda s: None))

    client.complete_segment(1, steps_done=5)

    body = {"steps_done": 5, "observations": []}
    assert [json.loads(r.content) for r in seen] == [body, body]


def test_giving_up_raises_transport_error_from_next(make_tuner: Any) -> None:
    service = FakeService([segment(1)])
    attempts: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> None:
        if request.url.path.endswith("/next"):
            attempts.append(request)
            raise httpx.ConnectError("connection refused", request=request)

    service.before = refuse
    transport = stagelr.RetryTransport(service.transport, max_attempts=4, sleep=lambda s: None)
    tuner = make_tuner(service, transport=transport, raise_on_error=True)

    with pytest.raises(stagelr.TransportError) as info:
        tuner.next_segment()

    assert len(attempts) == 4
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_last_5xx_after_retries_raises_server_error() -> None:
    inner, seen = counting([problem(502, "internal")])
    transport = stagelr.RetryTransport(inner, max_attempts=3, sleep=lambda s: None)

    with pytest.raises(stagelr.ServerError):
        stagelr.Client(URL, transport=transport).next_segment(1)

    assert len(seen) == 3


def test_client_errors_are_not_retried() -> None:
    inner, seen = counting([problem(404, "not-found")])
    transport = stagelr.RetryTransport(inner, sleep=lambda s: None)

    with pytest.raises(stagelr.NotFoundError):
        stagelr.Client(URL, transport=transport).next_segment(1)

    assert len(seen) == 1


def test_backoff_doubles_up_to_max_delay_with_full_jitter() -> None:
    inner, _ = counting([httpx.ConnectError("refused")] * 7 + [next_answer()])
    sleeps: list[float] = []
    transport = stagelr.RetryTransport(
        inner,
        max_attempts=8,
        backoff=0.5,
        max_delay=3.0,
        sleep=sleeps.append,
        jitter=lambda: 0.5,
    )

    stagelr.Client(URL, transport=transport).next_segment(1)

    assert sleeps == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5, 1.5]


def test_retry_after_lengthens_the_wait_up_to_max_delay() -> None:
    busy = problem(503, "internal")
    busy.headers["Retry-After"] = "2"
    inner, _ = counting([busy, next_answer()])
    sleeps: list[float] = []
    transport = stagelr.RetryTransport(inner, max_delay=5.0, sleep=sleeps.append)

    stagelr.Client(URL, transport=transport).next_segment(1)

    assert sleeps == [2.0]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "slug", "cls"),
    [
        (404, "not-found", stagelr.NotFoundError),
        (409, "config-mismatch", stagelr.ConflictError),
        (409, "observation-conflict", stagelr.ConflictError),
        (409, "segment-closed", stagelr.ConflictError),
        (409, "invalid-state", stagelr.ConflictError),
        (422, "validation-error", stagelr.ValidationError),
        (503, "schema-outdated", stagelr.ServerError),
        (500, "internal", stagelr.ServerError),
    ],
)
def test_problem_documents_map_to_exception_classes(
    status: int, slug: str, cls: type[stagelr.APIError]
) -> None:
    inner, _ = counting([problem(status, slug, "Title", "what went wrong")])
    client = stagelr.Client(URL, transport=inner)

    with pytest.raises(cls) as info:
        client.get_segment(1)

    error = info.value
    assert (error.status, error.type, error.title, error.detail) == (
        status,
        f"urn:stagelr:problem:{slug}",
        "Title",
        "what went wrong",
    )


def test_an_error_page_that_is_no_problem_document_maps_by_status() -> None:
    page = httpx.Response(502, text="<html>Bad Gateway</html>")
    inner, _ = counting([page])

    with pytest.raises(stagelr.ServerError) as info:
        stagelr.Client(URL, transport=inner).get_segment(1)

    assert info.value.status == 502


def test_every_error_is_a_stagelr_error() -> None:
    for name in stagelr.__all__:
        obj = getattr(stagelr, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, stagelr.StagelrError)


def test_token_is_sent_as_a_bearer_header() -> None:
    inner, seen = counting([next_answer()])

    stagelr.Client(URL, token="s3cret", transport=inner).next_segment(1)

    assert seen[0].headers["Authorization"] == "Bearer s3cret"
