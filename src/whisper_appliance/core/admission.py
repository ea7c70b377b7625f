"""Admission limits: how much synchronous transcription and spooled upload data the server takes in at once.

A request that would go over a limit is refused at once, before its body is read, with a clear error: 503 and
``Retry-After`` when the server as a whole is full, 429 when one client holds its share. Nothing here imports
Flask; ``http.admitted_upload`` applies these limits to the upload routes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from . import concurrency
from .errors import RateLimited, ServerBusy

RETRY_AFTER_SECONDS = 5


class AdmissionLimits:
    """Counts what is in flight; ``transcription(client)`` and ``upload(size)`` hold a place while they run."""

    def __init__(self, *, max_transcriptions: int, max_per_client: int, max_spooled_bytes: int) -> None:
        self.max_transcriptions = max_transcriptions
        self.max_per_client = max_per_client
        self.max_spooled_bytes = max_spooled_bytes
        self._lock = concurrency.real_threading().Lock()  # held for a few operations only, never across a wait
        self._by_client: Counter[str] = Counter()
        self._spooled = 0

    @property
    def transcriptions(self) -> int:
        return sum(self._by_client.values())

    @property
    def spooled_bytes(self) -> int:
        return self._spooled

    @contextmanager
    def transcription(self, client: str) -> Iterator[None]:
        """One synchronous transcription of ``client`` (a user, or the address of an anonymous caller)."""
        with self._lock:
            if self.transcriptions >= self.max_transcriptions:
                raise ServerBusy(f"the server is running its limit of {self.max_transcriptions} synchronous "
                                 "transcriptions (MAX_CONCURRENT_TRANSCRIPTIONS); try again shortly, or submit "
                                 "a job (POST /api/jobs)", retry_after=RETRY_AFTER_SECONDS)
            if self._by_client[client] >= self.max_per_client:
                raise RateLimited(f"you already have {self.max_per_client} transcriptions running "
                                  "(MAX_CONCURRENT_TRANSCRIPTIONS_PER_CLIENT); wait for one to finish",
                                  code="too_many_concurrent_transcriptions",
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            self._by_client[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._by_client[client] -= 1
                if self._by_client[client] <= 0:
                    del self._by_client[client]

    @contextmanager
    def upload(self, size: int) -> Iterator[None]:
        """``size`` bytes of an upload on their way to disk (the request's Content-Length, or the upload limit)."""
        with self._lock:
            if self._spooled + size > self.max_spooled_bytes:
                raise ServerBusy(f"the server is receiving its limit of {self.max_spooled_bytes} bytes of uploads "
                                 "(MAX_SPOOLED_UPLOAD_BYTES); try again shortly", code="upload_capacity",
                                 retry_after=RETRY_AFTER_SECONDS)
            self._spooled += size
        try:
            yield
        finally:
            with self._lock:
                self._spooled -= size
