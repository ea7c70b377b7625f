"""The one set of test fakes for the services' dependencies (the Protocols in services/dependencies.py).

Only the model is faked: ``SegmentEngine`` makes one segment per second of audio, ``SilentEngine`` hears nothing.
``FakeModels`` hands an engine out as ModelManager does, ``InlineScheduler`` runs model work in the calling
thread, ``RecordingEvents`` keeps every published event. Everything else in the unit tests is the real service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_appliance.core.engines.base import Engine
from whisper_appliance.core.records import LanguageDetection, Segment, TranscribeOptions, TranscriptionInfo
from whisper_appliance.services.model_manager import ModelStatus
from whisper_appliance.services.scheduler import Priority, iterate_steps

SR = 16_000


class SegmentEngine(Engine):
    """One segment ``word<i>`` per second of audio, each after ``delay`` seconds; ``fail_on(audio)`` raises."""

    engine_name = "fake"

    def __init__(self, delay: float = 0.0, *, model_name: str = "fake-model",
                 fail_on: Callable[[np.ndarray], bool] | None = None) -> None:
        super().__init__(model_name, "cpu", "int8")
        self.delay = delay
        self.fail_on = fail_on
        self.segments_made = 0

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions):
        if self.fail_on is not None and self.fail_on(audio):
            raise RuntimeError("the fake engine refuses this audio")
        duration = len(audio) / SR

        def segments() -> Iterator[Segment]:
            for i in range(int(np.ceil(duration))):
                time.sleep(self.delay)
                self.segments_made += 1
                yield Segment(id=i, start=float(i), end=min(duration, i + 1.0), text=f" word{i}")

        return segments(), TranscriptionInfo(language="en", language_probability=1.0, duration=duration)

    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        return LanguageDetection("en", 1.0)


class SilentEngine(Engine):
    """Hears nothing: an empty transcript of the audio's length."""

    engine_name = "faster-whisper"

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions):
        return iter(()), TranscriptionInfo("en", 1.0, len(audio) / SR)

    def detect_language(self, audio: np.ndarray) -> LanguageDetection:
        return LanguageDetection("en", 1.0)


def silent_factory(engine: str, model_name: str, path: Any, *, device: str, compute_type: str, cpu_threads: int,
                   workers: int) -> Engine:
    """An ``EngineFactory`` for the real ModelManager that loads a SilentEngine."""
    return SilentEngine(model_name, "cpu", "int8")


class FakeModels:
    """A model manager with one engine that is always ready (``fail``: what ``use`` raises instead)."""

    def __init__(self, engine: Any = None, *, parallel_calls: int = 1, name: str = "fake-model",
                 engine_name: str = "fake") -> None:
        self.engine = engine if engine is not None else object()
        self.generation = 1
        self.parallel_calls = parallel_calls
        self.name = name
        self.engine_name = engine_name
        self.state = "ready"
        self.fail: Exception | None = None
        self.listeners: list[Callable[[ModelStatus], None]] = []

    def status(self) -> ModelStatus:
        return ModelStatus(name=self.name, engine=self.engine_name, device="cpu", compute_type="int8",
                           state=self.state, generation=self.generation)  # type: ignore[arg-type]

    @contextmanager
    def use(self, timeout: float | None = None) -> Iterator[Any]:
        if self.fail is not None:
            raise self.fail
        yield self.engine

    def add_listener(self, fn: Callable[[ModelStatus], None]) -> None:
        self.listeners.append(fn)


@dataclass
class InlineTicket:
    work: Any
    steps: Any = None

    def done(self) -> bool:
        return True


class InlineScheduler:
    """Runs model work in the caller's thread when it is waited for; records the priorities asked for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.priorities: list[Priority] = []
        self.fail: Exception | None = None
        self.reserve: Callable[[], bool] = lambda: False
        self.wakes = 0

    def submit(self, work, priority=Priority.INTERACTIVE, *, label="work"):
        self.priorities.append(priority)
        return InlineTicket(work)

    def submit_steps(self, steps, priority=Priority.JOB, *, label="job", remaining=None):
        self.priorities.append(priority)
        return InlineTicket(None, steps)

    def wait(self, ticket, timeout=None):
        if self.fail is not None:
            raise self.fail
        if ticket.steps is not None:
            return iterate_steps(ticket.steps(self.engine))
        return ticket.work(self.engine)

    def run(self, work, priority=Priority.INTERACTIVE, *, label="work"):
        return self.wait(self.submit(work, priority, label=label))

    def position(self, ticket) -> int | None:
        return None

    def reserve_lane_while(self, predicate: Callable[[], bool]) -> None:
        self.reserve = predicate

    def wake(self) -> None:
        self.wakes += 1


class RecordingEvents:
    """An event sink that keeps every event (the real EventBus coalesces, which is what the pump wants)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self._lock = threading.Lock()

    def publish(self, name: str, data: dict[str, Any], *, room: str | None = None, coalesce: Any = None) -> None:
        with self._lock:
            self.events.append((name, dict(data), room))

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for n, d, room in self.events if n == "job_progress" and room == f"job:{job_id}"]
