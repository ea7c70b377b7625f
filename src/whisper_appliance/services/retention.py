"""History retention: ``RetentionTask`` deletes entries older than ``HISTORY_RETENTION_DAYS``, hourly.

It runs on one OS thread started by ``Appliance.start`` and ended by ``Appliance.stop``. A failed round is logged
and retried at the next one; it never ends the task. Nothing here imports Flask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..core import concurrency

log = logging.getLogger(__name__)

RETENTION_INTERVAL_SECONDS = 3600


class RetentionTask:
    def __init__(self, purge: Callable[[int], int], days: int, *,
                 interval: float = RETENTION_INTERVAL_SECONDS) -> None:
        self.purge = purge
        self.days = days
        self.interval = interval
        self._stop = concurrency.real_threading().Event()
        self._thread: Any = None
        self.rounds = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Purge now and then every ``interval`` seconds; nothing when ``days`` is 0 (keep forever)."""
        if self.days <= 0 or self._thread is not None:
            return
        log.info("history retention: entries older than %d days are deleted hourly", self.days)
        self._stop.clear()
        self._thread = concurrency.start_os_thread(self._loop, name="history-retention")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.purge(self.days)
            except Exception:
                # The next round tries again; a failure must not end the task for good.
                log.exception("history retention clean-up failed")
            self.rounds += 1
            self._stop.wait(self.interval)
