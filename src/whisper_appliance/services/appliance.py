"""The appliance's services wired together: one instance per server process.

``Appliance.build(settings)`` creates the ModelManager, the inference scheduler, the history database, the job
queue, live sessions, auth and metrics; ``start()`` loads the configured model in the background, starts the
scheduler and resumes unfinished jobs; ``stop()`` ends them. Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..core.config import Settings
from ..core.engines import resolve_workers
from .auth import AuthService
from .database import Database
from .events import EventBus
from .history import HistoryStore
from .job_store import JobStore
from .metrics import Metrics
from .model_manager import ModelManager
from .scheduler import InferenceScheduler
from .transcription import TranscriptionService

log = logging.getLogger(__name__)


@dataclass
class Appliance:
    settings: Settings
    models: ModelManager
    scheduler: InferenceScheduler
    database: Database
    history: HistoryStore
    job_store: JobStore
    auth: AuthService
    metrics: Metrics
    events: EventBus
    transcription: TranscriptionService
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, *, models: ModelManager | None = None) -> Appliance:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        models = models or ModelManager(settings)
        scheduler = InferenceScheduler(models, lanes=resolve_workers(settings.inference_workers))
        database = Database(settings.data_dir / "appliance.db")
        history = HistoryStore(database)
        job_store = JobStore(database)
        auth = AuthService(settings.data_dir, admin_password=settings.admin_password, api_keys=settings.api_keys)
        metrics = Metrics()
        events = EventBus()
        transcription = TranscriptionService(settings, models, scheduler, history, metrics)
        app = cls(settings=settings, models=models, scheduler=scheduler, database=database, history=history,
                  job_store=job_store, auth=auth, metrics=metrics, events=events, transcription=transcription)
        models.add_listener(lambda status: events.publish("model_status", status.to_dict(), coalesce="model"))
        return app

    def start(self, *, load_model: bool = True) -> None:
        self.scheduler.start()
        if load_model:
            try:
                self.models.load(self.settings.whisper_model, self.settings.whisper_engine, wait=False)
            except Exception:  # degraded mode: the server still starts and /health says why
                log.exception("could not start loading model %s", self.settings.whisper_model)

    def stop(self) -> None:
        self.scheduler.stop()
        self.models.unload()
        self.auth.flush()
        self.database.close()

    @property
    def uptime_seconds(self) -> float:
        return time.time() - self.started_at
