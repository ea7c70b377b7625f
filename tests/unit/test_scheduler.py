"""InferenceScheduler: priority order, stepping between segments, least-remaining-audio first, cancel."""

from __future__ import annotations

import threading
import time

import pytest

from whisper_appliance.core.errors import Cancelled, ModelUnavailable
from whisper_appliance.services.scheduler import InferenceScheduler, Priority

from .fakes import FakeModels


@pytest.fixture
def sched():
    s = InferenceScheduler(FakeModels())
    s.start()
    yield s
    s.stop()


def blocker(s: InferenceScheduler):
    """Occupy the worker until released, so the queue fills up in a known state."""
    gate = threading.Event()
    ticket = s.submit(lambda engine: gate.wait(5), Priority.LIVE, label="blocker")
    deadline = time.monotonic() + 5
    while s.position(ticket) != 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    return gate, ticket


def test_runs_work_with_engine(sched):
    assert sched.submit(lambda engine: engine is sched._models.engine).result(5) is True


def test_priority_order_live_before_interactive_before_job(sched):
    order: list[str] = []
    gate, _ = blocker(sched)
    tickets = [sched.submit(lambda e, n=n: order.append(n), p, label=n)
               for n, p in (("job", Priority.JOB), ("upload", Priority.INTERACTIVE), ("live", Priority.LIVE))]
    gate.set()
    for t in tickets:
        t.result(5)
    assert order == ["live", "upload", "job"]


def test_jobs_with_least_remaining_audio_go_first(sched):
    order: list[str] = []
    gate, _ = blocker(sched)

    def steps(name):
        def factory(engine):
            order.append(name)
            yield
            return name
        return factory

    long = sched.submit_steps(steps("long"), remaining=lambda: 7200.0, label="long")
    short = sched.submit_steps(steps("short"), remaining=lambda: 10.0, label="short")
    assert sched.position(short) < sched.position(long)
    gate.set()
    assert long.result(5) == "long" and short.result(5) == "short"
    assert order == ["short", "long"]


def test_live_work_cuts_in_between_steps_of_a_job(sched):
    events: list[str] = []
    live_submitted = threading.Event()

    def job(engine):
        for i in range(4):
            events.append(f"seg{i}")
            if i == 1:
                sched.submit(lambda e: events.append("live"), Priority.LIVE, label="live")
                live_submitted.set()
            yield
        return "done"

    assert sched.submit_steps(job, label="job").result(5) == "done"
    assert live_submitted.is_set()
    assert events.index("live") == events.index("seg1") + 1


def test_cancel_stops_a_stepped_job_at_its_next_step(sched):
    steps_run: list[int] = []
    started = threading.Event()
    release = threading.Event()

    def job(engine):
        for i in range(100):
            steps_run.append(i)
            started.set()
            release.wait(5)
            yield
        return "finished"

    ticket = sched.submit_steps(job, label="job")
    started.wait(5)
    ticket.cancel()
    release.set()
    with pytest.raises(Cancelled):
        ticket.result(5)
    assert len(steps_run) < 100


def test_errors_reach_the_waiter_and_the_worker_survives(sched):
    def boom(engine):
        raise ValueError("bad")

    with pytest.raises(ValueError):
        sched.submit(boom).result(5)
    assert sched.submit(lambda e: 42).result(5) == 42


def test_model_unavailable_is_reported(sched):
    sched._models.fail = ModelUnavailable("no model")
    with pytest.raises(ModelUnavailable):
        sched.submit(lambda e: 1).result(5)
    sched._models.fail = None
    assert sched.submit(lambda e: 2).result(5) == 2


def test_stepped_work_restarts_after_a_model_switch(sched):
    runs: list[int] = []
    first_step = threading.Event()
    go_on = threading.Event()

    def job(engine):
        runs.append(sched._models.generation)
        first_step.set()
        go_on.wait(5)
        yield
        yield
        return len(runs)

    ticket = sched.submit_steps(job, label="job")
    first_step.wait(5)
    sched._models.generation = 2
    go_on.set()
    assert ticket.result(5) == 2
    assert runs == [1, 2]


def test_depth_counts_by_priority(sched):
    gate, _ = blocker(sched)
    sched.submit(lambda e: None, Priority.JOB)
    sched.submit(lambda e: None, Priority.INTERACTIVE)
    depth = sched.depth()
    assert (depth.live, depth.interactive, depth.job) == (0, 1, 1)
    assert depth.running == ("blocker",)
    assert depth.to_dict()["running"] == ["blocker"]
    gate.set()


def test_stop_cancels_pending_work():
    s = InferenceScheduler(FakeModels())
    s.start()
    gate, _ = blocker(s)
    pending = s.submit(lambda e: None, Priority.JOB)
    gate.set()
    s.stop()
    assert pending.done()


# -- lanes -----------------------------------------------------------------------------------------------------


@pytest.fixture
def two_lanes():
    models = FakeModels(parallel_calls=2)
    s = InferenceScheduler(models, lanes=2)
    s.start()
    yield s
    s.stop()


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def gated(s: InferenceScheduler, priority: Priority, label: str):
    gate = threading.Event()
    return gate, s.submit(lambda engine: gate.wait(5), priority, label=label)


def test_two_lanes_run_two_calls_at_once(two_lanes):
    gate_a, a = gated(two_lanes, Priority.JOB, "a")
    gate_b, b = gated(two_lanes, Priority.INTERACTIVE, "b")
    assert wait_until(lambda: two_lanes.position(a) == 0 and two_lanes.position(b) == 0)
    assert sorted(two_lanes.depth().running) == ["a", "b"]
    gate_a.set()
    gate_b.set()
    assert a.result(5) and b.result(5)


def test_lanes_never_exceed_what_the_engine_takes():
    models = FakeModels(parallel_calls=1)  # openai-whisper: one call at a time
    s = InferenceScheduler(models, lanes=2)
    s.start()
    try:
        gate_a, a = gated(s, Priority.LIVE, "a")
        gate_b, b = gated(s, Priority.LIVE, "b")
        assert wait_until(lambda: s.position(a) == 0)
        time.sleep(0.1)
        assert s.position(b) == 1
        models.parallel_calls = 2  # a model that takes two calls was loaded
        s.wake()
        assert wait_until(lambda: s.position(b) == 0)
        gate_a.set()
        gate_b.set()
        assert a.result(5) and b.result(5)
    finally:
        s.stop()


def test_a_reserved_lane_is_kept_for_live_passes(two_lanes):
    dictating = [True]
    two_lanes.reserve_lane_while(lambda: dictating[0])
    gate_a, job_a = gated(two_lanes, Priority.JOB, "job-a")
    assert wait_until(lambda: two_lanes.position(job_a) == 0)
    gate_b, job_b = gated(two_lanes, Priority.INTERACTIVE, "upload-b")
    time.sleep(0.1)
    assert two_lanes.position(job_b) == 1  # the second lane stays free ...
    live = two_lanes.submit(lambda engine: "live", Priority.LIVE, label="live")
    assert live.result(5) == "live"         # ... so a live pass runs while the job holds the first
    assert two_lanes.position(job_b) == 1
    dictating[0] = False                    # the last session ended
    two_lanes.wake()
    assert wait_until(lambda: two_lanes.position(job_b) == 0)
    gate_a.set()
    gate_b.set()
    assert job_a.result(5) and job_b.result(5)


def test_a_broken_reservation_check_reserves_nothing(two_lanes):
    def broken():
        raise RuntimeError("boom")

    two_lanes.reserve_lane_while(broken)
    gate_a, a = gated(two_lanes, Priority.JOB, "a")
    gate_b, b = gated(two_lanes, Priority.JOB, "b")
    assert wait_until(lambda: two_lanes.position(a) == 0 and two_lanes.position(b) == 0)
    gate_a.set()
    gate_b.set()
    assert a.result(5) and b.result(5)


def test_waiting_for_inference_on_the_event_loop_holds_no_tpool_thread(sched, monkeypatch):
    """Under eventlet, 25 request handlers waiting for inference (more than tpool's 20 threads) leave tpool free:
    each waits on a green poll, and a short blocking call made meanwhile still runs."""
    eventlet = pytest.importorskip("eventlet")
    from eventlet import tpool

    from whisper_appliance.core import concurrency

    monkeypatch.setattr(concurrency, "_eventlet_active", True)
    handed_to_tpool: list[object] = []
    original = tpool.execute

    def counting(fn, *args, **kwargs):
        handed_to_tpool.append(fn)
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(tpool, "execute", counting)
    gate, _ = blocker(sched)
    tickets = [sched.submit(lambda e, n=n: n, Priority.INTERACTIVE, label=f"upload-{n}") for n in range(25)]
    waiters = [eventlet.spawn(sched.wait, t) for t in tickets]
    eventlet.sleep(0.05)  # every waiter is now parked in its wait
    assert handed_to_tpool == []
    assert concurrency.wait_blocking(lambda: "history read") == "history read"  # tpool still serves
    gate.set()
    assert [w.wait() for w in waiters] == list(range(25))
    assert handed_to_tpool == handed_to_tpool[:1]  # only the one short call above


def test_a_green_wait_times_out(monkeypatch):
    pytest.importorskip("eventlet")
    from whisper_appliance.core import concurrency

    monkeypatch.setattr(concurrency, "_eventlet_active", True)
    assert concurrency.wait_event(threading.Event(), 0.01) is False
