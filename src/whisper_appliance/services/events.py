"""A thread-safe outbox of Socket.IO events.

Services run partly on real OS threads (inference, model loading), and Socket.IO emits must happen on the event
loop. Services ``publish`` here from any thread; the Socket.IO layer drains the outbox from a background task on
the loop a few times a second. Events with a ``coalesce`` key replace an older undelivered one with the same
key, so a fast producer (job progress, download progress) never floods clients.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..core import concurrency

_threading = concurrency.real_threading()


@dataclass(frozen=True)
class OutgoingEvent:
    name: str
    data: dict[str, Any]
    room: str | None = None  # None = broadcast to the default namespace


class EventBus:
    def __init__(self, max_pending: int = 10_000) -> None:
        self._lock = _threading.Lock()
        self._pending: OrderedDict[Any, OutgoingEvent] = OrderedDict()
        self._counter = 0
        self._max = max_pending
        self.dropped = 0

    def publish(self, name: str, data: dict[str, Any], *, room: str | None = None, coalesce: Any = None) -> None:
        event = OutgoingEvent(name, data, room)
        with self._lock:
            if coalesce is not None:
                key = ("c", name, room, coalesce)
                self._pending.pop(key, None)
            else:
                self._counter += 1
                key = ("u", self._counter)
            if len(self._pending) >= self._max:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._pending[key] = event

    def drain(self) -> list[OutgoingEvent]:
        with self._lock:
            events = list(self._pending.values())
            self._pending.clear()
        return events
