"""Prometheus metrics of one appliance instance (prometheus-client), on a registry of its own.

A private ``CollectorRegistry`` per instance keeps test apps independent. Gauges that mirror live state (queue
depth, live sessions, model state) are read at scrape time through callbacks, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported for the web layer)
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

MODEL_STATES = ("unloaded", "loading", "ready", "error")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("whisper_http_requests_total", "HTTP requests by route and status",
                                ("route", "method", "status"), registry=r)
        self.audio_seconds = Counter("whisper_audio_seconds_total", "Seconds of audio transcribed",
                                     ("source",), registry=r)
        self.processing_seconds = Counter("whisper_processing_seconds_total", "Seconds spent transcribing",
                                          ("source",), registry=r)
        self.transcriptions = Counter("whisper_transcriptions_total", "Transcriptions by source and outcome",
                                      ("source", "outcome"), registry=r)
        self.real_time_factor = Histogram(
            "whisper_real_time_factor", "Audio seconds per processing second (higher is faster)", ("source",),
            buckets=(0.5, 1, 2, 4, 8, 12, 16, 24, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("whisper_queue_depth", "Inference work waiting, by priority", ("priority",),
                                 registry=r)
        self.live_sessions = Gauge("whisper_live_sessions", "Open live dictation sessions", registry=r)
        self.jobs = Gauge("whisper_jobs", "Async jobs by status", ("status",), registry=r)
        self.model_state = Enum("whisper_model_state", "State of the loaded model", states=list(MODEL_STATES),
                                registry=r)
        self.model_state.state("unloaded")

    def observe_transcription(self, source: str, audio_seconds: float, processing_seconds: float) -> None:
        self.transcriptions.labels(source, "ok").inc()
        self.audio_seconds.labels(source).inc(audio_seconds)
        self.processing_seconds.labels(source).inc(processing_seconds)
        if processing_seconds > 0 and audio_seconds > 0:
            self.real_time_factor.labels(source).observe(audio_seconds / processing_seconds)

    def bind_live_state(self, *, queue_depth: Callable[[], dict[str, int]], live_sessions: Callable[[], int],
                        model_state: Callable[[], str], jobs: Callable[[], dict[str, int]] | None = None) -> None:
        """Read these at scrape time."""
        for priority in ("live", "interactive", "job"):
            self.queue_depth.labels(priority).set_function(lambda p=priority: queue_depth().get(p, 0))
        self.live_sessions.set_function(live_sessions)
        self._model_state = model_state
        self._jobs = jobs

    def render(self) -> bytes:
        state_fn = getattr(self, "_model_state", None)
        if state_fn is not None:
            state = state_fn()
            self.model_state.state(state if state in MODEL_STATES else "error")
        jobs_fn = getattr(self, "_jobs", None)
        if jobs_fn is not None:
            for status, count in jobs_fn().items():
                self.jobs.labels(status).set(count)
        return generate_latest(self.registry)
