"""The inference scheduler: the one place model calls are run.

All inference runs on real OS threads (``concurrency.start_os_thread``), never on the event loop: one per
*lane*, and never more calls at once than the loaded engine takes (``parallel_calls``: two faster-whisper
workers on a 2-core CPU, one call for openai-whisper). Work is picked by priority:

* ``LIVE`` passes of dictation sessions first (FIFO among them, so sessions interleave fairly);
* ``INTERACTIVE`` synchronous uploads next;
* ``JOB`` work last, and among jobs the one with the least remaining audio first (a 10-second file submitted
  later does not wait for a 2-hour one).

While a live session is open (``reserve_lane_while``), work other than ``LIVE`` leaves one lane free: a live
pass then never waits for a file's 30-s window to finish.

Long work is *stepped*: it is a generator that yields between segments, and after each step the scheduler puts
it back in the queue, so a live pass or a shorter job can run before its next segment. The engine is taken from
the ModelManager for each step; if the model was switched in between, stepped work restarts on the new model.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..core import concurrency
from ..core.engines.base import Engine
from ..core.errors import ApplianceError, Cancelled, ModelUnavailable
from .dependencies import EngineProvider

log = logging.getLogger(__name__)
T = TypeVar("T")

_threading = concurrency.real_threading()


class Priority(enum.IntEnum):
    LIVE = 0
    INTERACTIVE = 1
    JOB = 2


StepFactory = Callable[[Engine], Generator[Any, None, T]]


class Ticket(Generic[T]):
    """A handle on submitted work: wait for its result, cancel it, see where it stands."""

    def __init__(self, seq: int, priority: Priority, label: str, *, work: Callable[[Engine], T] | None = None,
                 steps: StepFactory | None = None, remaining: Callable[[], float] | None = None) -> None:
        self.seq = seq
        self.priority = priority
        self.label = label
        self._work = work
        self._steps = steps
        self._remaining = remaining
        self._gen: Generator[Any, None, T] | None = None
        self._generation = -1
        self._done = _threading.Event()
        self._cancel = _threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # -- caller side -------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask for cancellation: a queued ticket never runs; a stepped one stops at its next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until done; from request code on the event loop this is a green wait (no tpool thread)."""
        return concurrency.wait_event(self._done, timeout)

    def result(self, timeout: float | None = None) -> T:
        """Block (a real wait) until done; raise the work's error. Use ``Scheduler.wait`` from request code."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.label}: not finished within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def remaining_audio(self) -> float:
        if self._remaining is None:
            return 0.0
        try:
            return float(self._remaining())
        except Exception:  # a broken estimate must not stop the scheduler; order it last
            log.exception("remaining-audio estimate of %s failed", self.label)
            return float("inf")

    # -- scheduler side ----------------------------------------------------------------------------------------
    def _finish(self, result: T | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self.finished_at = time.monotonic()
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        self._done.set()


@dataclass(frozen=True)
class QueueDepth:
    live: int
    interactive: int
    job: int
    running: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.live + self.interactive + self.job

    def to_dict(self) -> dict[str, Any]:
        return {"live": self.live, "interactive": self.interactive, "job": self.job, "total": self.total,
                "running": list(self.running)}


class InferenceScheduler:
    """Runs model work on ``lanes`` OS threads, in priority order, stepping long work between segments."""

    def __init__(self, model_manager: EngineProvider, *, lanes: int = 1, acquire_timeout: float = 600.0) -> None:
        self._models = model_manager
        self._lanes = max(1, lanes)
        self._acquire_timeout = acquire_timeout
        self._cond = _threading.Condition()
        self._queue: list[Ticket[Any]] = []
        self._seq = itertools.count()
        self._running: list[Ticket[Any]] = []
        self._reserve: Callable[[], bool] = lambda: False
        self._stopped = False
        self._threads: list[Any] = []
        self._busy = 0.0
        # A model that takes more calls at once has just loaded: idle lanes may take work now.
        model_manager.add_listener(lambda status: self.wake())

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def busy_seconds(self) -> float:
        """Total time spent running work (summed over lanes), for metrics."""
        with self._cond:
            return self._busy

    def start(self) -> None:
        with self._cond:
            if not self._threads:
                self._stopped = False
                self._threads = [concurrency.start_os_thread(self._loop, name=f"inference-{i}")
                                 for i in range(self._lanes)]

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for t in pending:
            t._finish(error=Cancelled("the server is shutting down"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def reserve_lane_while(self, predicate: Callable[[], bool]) -> None:
        """While ``predicate()`` is true, work other than ``LIVE`` leaves one lane free (with two or more).
        Call ``wake`` when it may have turned false."""
        with self._cond:
            self._reserve = predicate
            self._cond.notify_all()

    def wake(self) -> None:
        """Let idle lanes look at the queue again (the engine or the reservation changed)."""
        with self._cond:
            self._cond.notify_all()

    # -- submitting --------------------------------------------------------------------------------------------
    def submit(self, work: Callable[[Engine], T], priority: Priority = Priority.INTERACTIVE, *,
               label: str = "work") -> Ticket[T]:
        """Queue ``work(engine)`` to run once, whole."""
        return self._enqueue(Ticket(next(self._seq), priority, label, work=work))

    def submit_steps(self, steps: StepFactory, priority: Priority = Priority.JOB, *, label: str = "job",
                     remaining: Callable[[], float] | None = None) -> Ticket[Any]:
        """Queue a generator factory; each ``next()`` is one step, its return value is the result."""
        return self._enqueue(Ticket(next(self._seq), priority, label, steps=steps, remaining=remaining))

    def run(self, work: Callable[[Engine], T], priority: Priority = Priority.INTERACTIVE, *,
            label: str = "work") -> T:
        """Submit and wait without blocking the event loop."""
        return self.wait(self.submit(work, priority, label=label))

    def wait(self, ticket: Ticket[T], timeout: float | None = None) -> T:
        if not ticket.done():
            ticket.wait(timeout)
        return ticket.result(0)

    def _enqueue(self, ticket: Ticket[T]) -> Ticket[T]:
        with self._cond:
            if self._stopped:
                raise ModelUnavailable("the inference scheduler is stopped")
            self._queue.append(ticket)
            self._cond.notify_all()
        return ticket

    # -- introspection -----------------------------------------------------------------------------------------
    def depth(self) -> QueueDepth:
        with self._cond:
            counts = {p: 0 for p in Priority}
            for t in self._queue:
                counts[t.priority] += 1
            running = tuple(t.label for t in self._running)
        return QueueDepth(counts[Priority.LIVE], counts[Priority.INTERACTIVE], counts[Priority.JOB], running)

    def position(self, ticket: Ticket[Any]) -> int | None:
        """0 = running now, 1 = next, ...; None once finished or unknown."""
        with self._cond:
            if ticket in self._running:
                return 0
            if ticket not in self._queue:
                return None
            order = sorted(self._queue, key=self._order_key)
            return order.index(ticket) + 1

    # -- worker ------------------------------------------------------------------------------------------------
    @staticmethod
    def _order_key(t: Ticket[Any]) -> tuple:
        if t.priority == Priority.JOB:
            return (t.priority, t.remaining_audio(), t.seq)
        return (t.priority, 0.0, t.seq)

    def _pick(self) -> Ticket[Any] | None:
        """The ticket a free lane should run now (called under the lock), or None."""
        capacity = min(self._lanes, self._models.parallel_calls)
        if not self._queue or len(self._running) >= capacity:
            return None
        ticket = min(self._queue, key=self._order_key)
        if ticket.priority != Priority.LIVE and capacity > 1:
            others = sum(1 for t in self._running if t.priority != Priority.LIVE)
            if others >= capacity - 1 and self._reserved():
                return None
        return ticket

    def _reserved(self) -> bool:
        try:
            return bool(self._reserve())
        except Exception:  # a broken predicate must not stop the scheduler; reserve nothing
            log.exception("lane reservation check failed")
            return False

    def _next(self) -> Ticket[Any] | None:
        with self._cond:
            while not self._stopped and (ticket := self._pick()) is None:
                self._cond.wait()
            if self._stopped:
                return None
            self._queue.remove(ticket)
            self._running.append(ticket)
            return ticket

    def _loop(self) -> None:
        while True:
            ticket = self._next()
            if ticket is None:
                return
            started = time.monotonic()
            requeue = False
            try:
                requeue = self._run_one(ticket)
            except BaseException as exc:  # delivered to the waiter; the scheduler itself keeps running
                if not isinstance(exc, ApplianceError):
                    log.exception("inference work %s failed", ticket.label)
                ticket._finish(error=exc)
            finally:
                with self._cond:
                    self._busy += time.monotonic() - started
                    self._running.remove(ticket)
                    if requeue and not self._stopped:
                        self._queue.append(ticket)
                    elif requeue:
                        ticket._finish(error=Cancelled("the server is shutting down"))
                    self._cond.notify_all()

    def _run_one(self, ticket: Ticket[Any]) -> bool:
        """Run one unit of ``ticket``; True when it has more steps to run."""
        if ticket.cancelled:
            ticket._finish(error=Cancelled(f"{ticket.label} was cancelled"))
            return False
        if ticket.started_at is None:
            ticket.started_at = time.monotonic()
        with self._models.use(timeout=self._acquire_timeout) as engine:
            if ticket._work is not None:
                ticket._finish(result=ticket._work(engine))
                return False
            generation = self._models.generation
            if ticket._gen is None or ticket._generation != generation:
                if ticket._gen is not None:
                    log.info("model changed under %s; restarting it on the new model", ticket.label)
                    ticket._gen.close()
                assert ticket._steps is not None
                ticket._gen = ticket._steps(engine)
                ticket._generation = generation
            try:
                next(ticket._gen)
            except StopIteration as stop:
                ticket._gen = None
                ticket._finish(result=stop.value)
                return False
        return True


def iterate_steps(gen: Iterator[Any]) -> Any:
    """Drive a step generator to completion in the calling thread (CLI and tests)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
