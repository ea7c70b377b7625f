"""The small interfaces services depend on, instead of ``Any``: what each one needs of another, and no more.

The real implementations are ModelManager (model_manager.py), InferenceScheduler (scheduler.py), EventBus
(events.py) and HistoryStore (history.py); ``Appliance`` (appliance.py) wires them together. Unit tests pass the
one set of fakes in ``tests/unit/fakes.py``, which implement these same Protocols. Nothing here imports Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..core.engines.base import Engine

if TYPE_CHECKING:
    from .model_manager import ModelStatus
    from .scheduler import Priority, Ticket

T = TypeVar("T")


class ModelStatusSource(Protocol):
    """Which model serves now (name, engine, state): what transcription, jobs and live sessions check."""

    def status(self) -> ModelStatus: ...


class EngineProvider(ModelStatusSource, Protocol):
    """What the scheduler needs of the model manager: the engine for one call, and when it changes."""

    @property
    def generation(self) -> int: ...

    @property
    def parallel_calls(self) -> int: ...

    def use(self, timeout: float | None = None) -> AbstractContextManager[Engine]: ...

    def add_listener(self, fn: Callable[[ModelStatus], None]) -> None: ...


class InferenceQueue(Protocol):
    """What callers need of the inference scheduler: submit model work at a priority and wait for it."""

    def submit(self, work: Callable[[Engine], T], priority: Priority = ..., *, label: str = ...) -> Ticket[T]: ...

    def submit_steps(self, steps: Callable[[Engine], Generator[Any, None, Any]], priority: Priority = ..., *,
                     label: str = ..., remaining: Callable[[], float] | None = None) -> Ticket[Any]: ...

    def wait(self, ticket: Ticket[T], timeout: float | None = None) -> T: ...

    def run(self, work: Callable[[Engine], T], priority: Priority = ..., *, label: str = ...) -> T: ...

    def position(self, ticket: Ticket[Any]) -> int | None: ...

    def reserve_lane_while(self, predicate: Callable[[], bool]) -> None: ...

    def wake(self) -> None: ...


class EventSink(Protocol):
    """Where services publish Socket.IO events from any thread (the web layer delivers them)."""

    def publish(self, name: str, data: dict[str, Any], *, room: str | None = None,
                coalesce: Any = None) -> None: ...
